//! Test support for the qemu provider, driven through envy's library: the tiny test box
//! (built by boxes/recipes/tiny-vm.sh, made a box by `envy box build --kind qemu` and
//! added to a store under target/), and a machine fixture with its own project dir and
//! ENVY_HOME that destroys the machine (and so its QEMU) when dropped, even when the
//! test fails. Tests using it require `need::VMS`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use envy::boxes::{BoxSource, Store, StoredBox};
use envy::state::Home;
use envy::envfile::{MachineSpec, SyncFolder};
use envy::model::{Accel, BoxRef, Forward};
use envy::plan::{project_id, MachinePlan, Project};
use envy::provider::qemu::QemuProvider;
use envy::provider::Provider;
use envy::ui::Ui;

use super::{quiet_ui, tiny_vm_box, TestEnv};

/// The kernel command line of the working test box.
pub const GOOD_CMDLINE: &str = "console=ttyS0 root=/dev/vda rw";

/// The tiny test box as the store hands it over: built by `envy box build --kind qemu`
/// from boxes/recipes/tiny-vm.sh's root filesystem and added to a store under target/
/// shared by the qemu tests (the store serializes concurrent adds).
pub fn tiny_box() -> StoredBox {
    static STORED: OnceLock<StoredBox> = OnceLock::new();
    STORED
        .get_or_init(|| {
            let env = TestEnv::new();
            let built = tiny_vm_box(&env);
            let home = Home::at(Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-test-store"));
            let source = BoxSource::from_ref(&BoxRef::Path { path: built, sha256: None }, None, None);
            Store::open(&home, &Default::default()).unwrap().ensure(&source, &quiet_ui()).unwrap().stored
        })
        .clone()
}

/// The tiny box booted with another kernel command line.
pub fn with_cmdline(stored: StoredBox, cmdline: &str) -> StoredBox {
    let mut stored = stored;
    stored.manifest.qemu.as_mut().expect("a qemu box").cmdline = Some(cmdline.into());
    stored
}

/// One machine in a temp project, destroyed on drop (the project folder goes with the
/// last machine that shares it).
pub struct TestMachine {
    pub tmp: Arc<tempfile::TempDir>,
    pub plan: MachinePlan,
    pub provider: QemuProvider,
    pub ui: Ui,
}

impl TestMachine {
    /// A machine named `name`; with `sync`, the project folder is synced to /project.
    pub fn new(name: &str, forwards: Vec<Forward>, sync: bool) -> TestMachine {
        let tmp = tempfile::tempdir().unwrap();
        let project_dir = tmp.path().join("project");
        std::fs::create_dir_all(&project_dir).unwrap();
        let home = Home::at(tmp.path().join("home"));
        let id = project_id(&project_dir);
        let project = Project {
            envfile: project_dir.join("Envfile"),
            state_dir: Project::state_dir_for(&home, &project_dir),
            id: id.clone(),
            dir: project_dir.clone(),
        };
        let spec = MachineSpec {
            name: name.into(),
            box_ref: BoxRef::Path { path: "/dev/null".into(), sha256: None },
            provider: envy::provider::qemu::KIND,
            cpus: 1,
            memory: 256 << 20,
            disk: None,
            // TCG: KVM here is kvm-pvm, and CI hosts may lack it (scripts/test.sh also
            // sets ENVY_ACCEL=tcg, which would win over this).
            accel: Some(Accel::Tcg),
            env: BTreeMap::from([("ENVY_TEST".to_string(), "from the Envfile".to_string())]),
            forwards: forwards.clone(),
            sync: if sync {
                vec![SyncFolder { host: project_dir.clone(), guest: "/project".into(), readonly: false, allow_outside: false, mode: Default::default() }]
            } else {
                vec![]
            },
            provision: vec![],
            ready: None,
            user_data: None,
            forward_auto: None,
            placement: Default::default(),
        };
        let plan = MachinePlan {
            home,
            dir: project.machine_dir(name),
            runtime_id: format!("envy-{id}-{name}"),
            project,
            spec,
            index: 0,
            forwards,
            peers: vec![],
        };
        TestMachine {
            tmp: Arc::new(tmp),
            plan,
            provider: QemuProvider::new(),
            ui: Ui { interactive: false, fancy: false, json: false, quiet: false },
        }
    }

    /// A second machine of the same project, at the next index; both name each other
    /// as peers.
    pub fn peer(&mut self, name: &str) -> TestMachine {
        let index = self.plan.index + 1;
        let mut plan = self.plan.clone();
        plan.spec.name = name.into();
        plan.index = index;
        plan.dir = plan.project.machine_dir(name);
        plan.runtime_id = format!("envy-{}-{name}", plan.project.id);
        plan.peers = vec![(self.plan.spec.name.clone(), self.plan.index)];
        self.plan.peers.push((name.into(), index));
        TestMachine { tmp: self.tmp.clone(), plan, provider: QemuProvider::new(), ui: self.ui.clone() }
    }

    pub fn project_dir(&self) -> PathBuf {
        self.plan.project.dir.clone()
    }

    /// Runs a shell command line in the machine; returns its exit code.
    pub fn sh(&self, line: &str) -> i32 {
        self.provider
            .exec(&self.plan, &envy::provider::ExecRequest { command: vec![line.into()], ..Default::default() })
            .unwrap()
    }

    /// QEMU processes with this machine's runtime id on their command line.
    pub fn qemu_processes(&self) -> usize {
        qemu_processes(&self.plan.runtime_id)
    }
}

impl Drop for TestMachine {
    fn drop(&mut self) {
        let _ = self.provider.destroy(&self.plan, &self.ui);
    }
}

/// QEMU processes with `runtime_id` (`envy-PROJECT-MACHINE`) on their command line.
pub fn qemu_processes(runtime_id: &str) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.starts_with("qemu-system") && cmdline.contains(runtime_id) {
                count += 1;
            }
        }
    }
    count
}
