//! Test support for the qemu provider: the tiny test box (built by
//! boxes/recipes/tiny-vm.sh, turned into a qcow2 box and cached under target/), and a
//! machine fixture with its own project dir and ENVY_HOME that destroys the machine
//! (and so its QEMU) when dropped, even when the test fails.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use envy::boxes::{BootMethod, Manifest, QemuPayload, StoredBox};
use envy::context::Home;
use envy::envfile::{Accel, BoxRef, Forward, MachineSpec, ProviderKind, SyncFolder};
use envy::plan::{project_id, MachinePlan, Project};
use envy::provider::qemu::QemuProvider;
use envy::provider::Provider;
use envy::ui::Ui;

/// The kernel command line of the working test box.
pub const GOOD_CMDLINE: &str = "console=ttyS0 root=/dev/vda rw";

fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "{tool} is needed by the qemu tests; install the Debian package {package}");
}

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Directory of the built box: disk.qcow2, vmlinuz, initrd.img. Built once per content
/// of the recipe, shared by every test binary (a file lock serializes the build).
pub fn tiny_box_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        for (tool, package) in [
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("qemu-img", "qemu-utils"),
            ("mkfs.ext4", "e2fsprogs"),
            ("busybox", "busybox-static"),
            ("dropbear", "dropbear-bin"),
            ("ssh", "openssh-client"),
            ("ssh-keygen", "openssh-client"),
        ] {
            need(tool, package);
        }
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().to_path_buf();
        std::fs::create_dir_all(target.join("boxes")).unwrap();
        let lock = std::fs::File::create(target.join("boxes/.tiny-vm.lock")).unwrap();
        lock.lock().unwrap();
        let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("boxes/recipes/tiny-vm.sh");
        let rootfs = PathBuf::from(run(Command::new(&recipe).env("CARGO_TARGET_DIR", &target)));
        let dir = rootfs.parent().unwrap().join("box");
        if !dir.join("disk.qcow2").exists() {
            let tmp = rootfs.parent().unwrap().join("box.tmp");
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).unwrap();
            run(Command::new("mkfs.ext4").args(["-q", "-d"]).arg(&rootfs).arg(tmp.join("disk.raw")).arg("128M"));
            run(Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(tmp.join("disk.raw")).arg(tmp.join("disk.qcow2")));
            std::fs::remove_file(tmp.join("disk.raw")).unwrap();
            for (prefix, name) in [("vmlinuz-", "vmlinuz"), ("initrd.img-", "initrd.img")] {
                let file = std::fs::read_dir(rootfs.join("boot"))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
                    .unwrap_or_else(|| panic!("the tiny rootfs has no /boot/{prefix}*"));
                std::fs::copy(file, tmp.join(name)).unwrap();
            }
            std::fs::rename(&tmp, &dir).unwrap();
        }
        dir
    })
}

/// The test box as the store would hand it over, booted with `cmdline`, from `dir`.
pub fn stored_box(dir: &Path, cmdline: &str) -> StoredBox {
    StoredBox {
        digest: "0".repeat(64),
        dir: dir.to_path_buf(),
        manifest: Manifest {
            format: 1,
            name: "tiny-vm".into(),
            version: "1".into(),
            arch: "x86_64".into(),
            providers: vec![ProviderKind::Qemu],
            container: None,
            qemu: Some(QemuPayload {
                disk: "disk.qcow2".into(),
                boot: BootMethod::Kernel,
                kernel: Some("vmlinuz".into()),
                initrd: Some("initrd.img".into()),
                cmdline: Some(cmdline.into()),
            }),
            files: BTreeMap::new(),
            envfile: None,
        },
    }
}

pub fn tiny_box() -> StoredBox {
    stored_box(tiny_box_dir(), GOOD_CMDLINE)
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
        // Tests run under TCG: KVM here is kvm-pvm, and CI hosts may lack it.
        std::env::set_var("ENVY_ACCEL", "tcg");
        let tmp = tempfile::tempdir().unwrap();
        let project_dir = tmp.path().join("project");
        std::fs::create_dir_all(&project_dir).unwrap();
        let home = Home::at(tmp.path().join("home"));
        let id = project_id(&project_dir);
        let project = Project {
            envfile: project_dir.join("Envfile"),
            state_dir: project_dir.join(".envy"),
            id: id.clone(),
            dir: project_dir.clone(),
        };
        let spec = MachineSpec {
            name: name.into(),
            box_ref: BoxRef::Path { path: "/dev/null".into(), sha256: None },
            provider: ProviderKind::Qemu,
            cpus: 1,
            memory: 256 << 20,
            disk: None,
            accel: Some(Accel::Tcg),
            env: BTreeMap::from([("ENVY_TEST".to_string(), "from the Envfile".to_string())]),
            forwards: forwards.clone(),
            sync: if sync {
                vec![SyncFolder { host: project_dir.clone(), guest: "/project".into(), readonly: false }]
            } else {
                vec![]
            },
            provision: vec![],
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

    /// Whether any process has this machine's runtime id on its command line.
    pub fn qemu_processes(&self) -> usize {
        let mut count = 0;
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let cmdline = String::from_utf8_lossy(&cmdline);
                if cmdline.starts_with("qemu-system") && cmdline.contains(&self.plan.runtime_id) {
                    count += 1;
                }
            }
        }
        count
    }
}

impl Drop for TestMachine {
    fn drop(&mut self) {
        let _ = self.provider.destroy(&self.plan, &self.ui);
    }
}
