//! Fixture for the container provider's tests, which drive the provider through envy's
//! library: a busybox box built on the spot, a project with an Envfile model, its own
//! ENVY_HOME, and a guard that destroys every machine (processes, mounts, namespaces)
//! even when the test fails. Tests using it require `need::CONTAINERS`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use envy::boxes::{BoxSource, Store, StoredBox};
use envy::state::Home;
use envy::envfile::{Envfile, MachineSpec, SyncFolder};
use envy::model::{BoxRef, Forward, Protocol};
use envy::plan::{MachinePlan, Project};
use envy::provider::container::ContainerProvider;
use envy::provider::{ExecRequest, MachineState, Provider};
use envy::ui::Ui;

use super::{busybox_rootfs, mounts_below, netns_names, quiet_ui, container_ids};

pub fn forward(host_port: u16, guest_port: u16) -> Forward {
    Forward {
        host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        host_port,
        guest_port,
        protocol: Protocol::Tcp,
        auto: false,
    }
}

/// One test's world: home, box, project; destroys its machines when dropped.
pub struct Fixture {
    /// The test's temp dir: home, box, project.
    pub tmp: tempfile::TempDir,
    pub home: Home,
    pub project_dir: PathBuf,
    pub envfile: Envfile,
    pub project: Project,
    pub stored: StoredBox,
    pub provider: ContainerProvider,
    pub ui: Ui,
}

impl Fixture {
    /// A project whose machines (by name, with their forwards) all sync the project
    /// folder to /project.
    pub fn new(machines: &[(&str, Vec<Forward>)]) -> Fixture {
        let tmp = tempfile::Builder::new().prefix("envy-ct-").tempdir().unwrap();
        let home = Home::at(tmp.path().join("home"));
        // A real box in the real store, as `envy up` would use it.
        let rootfs = tmp.path().join("rootfs");
        busybox_rootfs(&rootfs);
        let tarball = tmp.path().join("busybox.tar");
        envy::boxes::pack_rootfs_dir(&rootfs, &tarball).unwrap();
        let source = BoxSource::from_ref(&BoxRef::Path { path: tarball, sha256: None }, None, Some(envy::model::BoxFormat::Container));
        let stored = Store::open(&home, &Default::default()).unwrap().ensure(&source, &quiet_ui()).unwrap().stored;
        let project_dir = tmp.path().join("project");
        std::fs::create_dir_all(&project_dir).unwrap();
        let envfile = Envfile::new(
            project_dir.join("Envfile"),
            project_dir.clone(),
            machines.iter().map(|(name, forwards)| spec(name, &project_dir, forwards.clone())).collect(),
        );
        Fixture {
            project: Project::new(&home, &envfile),
            tmp,
            home,
            project_dir,
            envfile,
            stored,
            provider: ContainerProvider::new(),
            ui: quiet_ui(),
        }
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    pub fn plan(&self, name: &str) -> MachinePlan {
        let spec = self.envfile.machine(name).expect("machine in the fixture");
        MachinePlan::new(&self.home, &self.project, &self.envfile, spec)
    }

    pub fn up(&self, name: &str) {
        self.provider.up(&self.plan(name), &self.stored, &self.ui).unwrap();
        assert_eq!(self.state(name), MachineState::Running);
    }

    pub fn state(&self, name: &str) -> MachineState {
        self.provider.state(&self.plan(name)).unwrap()
    }

    /// Runs `sh -c script` in the machine; stdio inherited, exit code returned.
    pub fn sh(&self, name: &str, script: &str) -> i32 {
        let request = ExecRequest { command: vec!["sh".into(), "-c".into(), script.into()], ..ExecRequest::default() };
        self.provider.exec(&self.plan(name), &request).unwrap()
    }

    /// Runs a command through the provider and returns what it printed and its exit
    /// code; stdout goes to a file in the synced project folder. (Stdio passing through
    /// to the user is tested through the `envy` binary, in tests/lifecycle.rs.)
    pub fn exec_captured(&self, name: &str, command: &[&str]) -> (String, i32) {
        let captured = self.project_dir.join(".exec-out");
        let mut wrapped: Vec<String> = ["sh", "-c", "\"$@\" > /project/.exec-out", "sh"].map(String::from).to_vec();
        wrapped.extend(command.iter().map(|s| s.to_string()));
        let code = self.provider.exec(&self.plan(name), &ExecRequest { command: wrapped, ..ExecRequest::default() }).unwrap();
        let out = std::fs::read_to_string(&captured).unwrap_or_default();
        let _ = std::fs::remove_file(&captured);
        (out, code)
    }

    /// The slirp4netns pid recorded for the project, if any.
    pub fn slirp_pid(&self) -> Option<u32> {
        let path = self.home.runtime_dir().join("net").join(&self.project.id).join("slirp.pid");
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?["pid"].as_u64().map(|p| p as u32)
    }

    /// Ids runc still knows in this home.
    pub fn container_ids(&self) -> Vec<String> {
        container_ids(self.home.root())
    }

    /// Mount points below this test's temp dir.
    pub fn mounts(&self) -> Vec<String> {
        mounts_below(self.root())
    }

    /// Network namespaces of this project.
    pub fn namespaces(&self) -> Vec<String> {
        let prefix = format!("envy-{}", self.project.id);
        netns_names(self.home.root()).into_iter().filter(|n| n.starts_with(&prefix)).collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for spec in &self.envfile.machines {
            if let Err(e) = self.provider.destroy(&MachinePlan::new(&self.home, &self.project, &self.envfile, spec), &self.ui) {
                eprintln!("cleanup: destroying {} failed: {e:#}", spec.name);
            }
        }
    }
}

fn spec(name: &str, project_dir: &Path, forwards: Vec<Forward>) -> MachineSpec {
    MachineSpec {
        name: name.into(),
        box_ref: BoxRef::Path { path: "/nonexistent/test.box".into(), sha256: None },
        provider: envy::provider::container::KIND,
        cpus: 1,
        memory: 256 << 20,
        disk: None,
        accel: None,
        env: BTreeMap::from([("ENVY_TEST".to_string(), "yes".to_string())]),
        forwards,
        sync: vec![SyncFolder { host: project_dir.to_path_buf(), guest: "/project".into(), readonly: false, allow_outside: false, mode: Default::default() }],
        provision: Vec::new(),
        ready: None,
        user_data: None,
        forward_auto: None,
        placement: Default::default(),
    }
}

/// Connects to 127.0.0.1:port (retried while the listener inside starts) and sends `data`.
pub fn send_all(port: u16, data: &[u8]) {
    for _ in 0..50 {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            stream.write_all(data).unwrap();
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}
