//! Fixture for the container provider's tests: a busybox box built on the spot, a
//! project with an Envfile model, its own ENVY_HOME, and a guard that destroys every
//! machine (processes, mounts, namespaces) even when the test fails.

#![allow(dead_code)]

#[path = "../common/mod.rs"]
pub mod common;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use envy::boxes::{BoxSource, Store, StoredBox};
use envy::context::Home;
use envy::envfile::{BoxRef, Envfile, Forward, MachineSpec, Protocol, ProviderKind, SyncFolder};
use envy::plan::{MachinePlan, Project};
use envy::provider::container::ContainerProvider;
use envy::provider::{ExecRequest, MachineState, Provider};
use envy::ui::Ui;

/// Tools the tests drive, with the Debian package of each.
const TOOLS: [(&str, &str); 6] = [
    ("runc", "runc"),
    ("slirp4netns", "slirp4netns"),
    ("ip", "iproute2"),
    ("busybox", "busybox-static"),
    ("tar", "tar"),
    ("zstd", "zstd"),
];

pub fn require_host() {
    assert!(nix::unistd::geteuid().is_root(), "the container tests run runc and create namespaces: run them as root");
    for (tool, package) in TOOLS {
        let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success());
        assert!(found, "{tool} is needed by the container tests: apt-get install {package}");
    }
}

pub fn quiet_ui() -> Ui {
    Ui { interactive: false, fancy: false, json: false, quiet: true }
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

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
        require_host();
        let tmp = tempfile::Builder::new().prefix("envy-ct-").tempdir().unwrap();
        let home = Home::at(tmp.path().join("home"));
        // A real box in the real store, as `envy up` would use it.
        let rootfs = tmp.path().join("rootfs");
        common::busybox_rootfs(&rootfs);
        let tarball = tmp.path().join("busybox.tar");
        envy::boxes::pack_rootfs_dir(&rootfs, &tarball).unwrap();
        let source = BoxSource::from_ref(&BoxRef::Path { path: tarball, sha256: None }, None, Some(ProviderKind::Container));
        let stored = Store::open(&home).unwrap().ensure(&source, &quiet_ui()).unwrap();
        let project_dir = tmp.path().join("project");
        std::fs::create_dir_all(&project_dir).unwrap();
        let envfile = Envfile {
            path: project_dir.join("Envfile"),
            project_dir: project_dir.clone(),
            machines: machines.iter().map(|(name, forwards)| spec(name, &project_dir, forwards.clone())).collect(),
        };
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
    pub fn runc_containers(&self) -> Vec<String> {
        let out = Command::new("runc").arg("--root").arg(self.home.runtime_dir().join("runc")).args(["list", "-q"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }

    /// Mount points below this test's temp dir.
    pub fn mounts(&self) -> Vec<String> {
        common::mounts_below(self.root())
    }

    /// Network namespaces of this project.
    pub fn namespaces(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let prefix = format!("envy-{}", self.project.id);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
            .map(str::to_string)
            .collect()
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
        provider: ProviderKind::Container,
        cpus: 1,
        memory: 256 << 20,
        disk: None,
        accel: None,
        env: BTreeMap::from([("ENVY_TEST".to_string(), "yes".to_string())]),
        forwards,
        sync: vec![SyncFolder { host: project_dir.to_path_buf(), guest: "/project".into(), readonly: false, allow_outside: false }],
        provision: Vec::new(),
        ready: None,
        user_data: None,
        forward_auto: None,
        placement: Default::default(),
    }
}

/// GET / from 127.0.0.1:port; retried while the server inside starts (bounded).
pub fn http_get(port: u16) -> String {
    http_get_path(port, "/")
}

pub fn http_get_path(port: u16, path: &str) -> String {
    let mut last = String::new();
    for _ in 0..50 {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut stream) => {
                stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).unwrap();
                let mut reply = String::new();
                let _ = stream.read_to_string(&mut reply);
                if reply.starts_with("HTTP/") {
                    return reply;
                }
                last = format!("reply: {reply:?}");
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no HTTP answer on 127.0.0.1:{port}: {last}");
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

/// Polls `check` until it holds (bounded), for state that settles asynchronously.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not happen");
}
