//! A real LXD daemon for the lxd tests: Debian's `lxd`, started in a temp dir of its
//! own (`LXD_DIR`) with a `dir` storage pool and no managed network, shut down and
//! unmounted when the test ends.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::mounts_below;

/// One daemon; dropped, it stops its instances, exits and leaves no mount behind.
pub struct Lxd {
    pub dir: tempfile::TempDir,
    daemon: Child,
}

/// A `dir` pool and a default profile using it: what `lxd init --auto` would make,
/// without the bridge it fails to find a subnet for on these machines.
const PRESEED: &str = "storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  devices:
    root:
      path: /
      pool: default
      type: disk
";

/// A free TCP port on `ip` (the cluster's members listen on 127.0.0.1 and 127.0.0.2).
pub fn free_port_on(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// Two daemons on this host made one cluster: node1 on 127.0.0.1, node2 on 127.0.0.2
/// (one network namespace, so no managed network: a bridge breaks the join).
pub struct Cluster {
    /// Dropped in reverse: node2 leaves first.
    pub node2: Lxd,
    pub node1: Lxd,
    /// `https://127.0.0.1:PORT`, node1's API.
    pub url: String,
}

impl Cluster {
    pub fn start() -> Cluster {
        let port1 = free_port_on("127.0.0.1");
        let node1 = Lxd::start_with(&format!(
            "config:\n  core.https_address: 127.0.0.1:{port1}\ncluster:\n  server_name: node1\n  enabled: true\n{PRESEED}"
        ));
        let out = node1.lxc(&["cluster", "add", "node2"]);
        let token = last_line(&out);
        let port2 = free_port_on("127.0.0.2");
        let node2 = Lxd::start_with(&format!(
            "cluster:\n  enabled: true\n  server_name: node2\n  server_address: 127.0.0.2:{port2}\n  cluster_token: {token}\n  \
             member_config:\n  - entity: storage-pool\n    name: default\n    key: source\n    value: \"\"\n"
        ));
        Cluster { node1, node2, url: format!("https://127.0.0.1:{port1}") }
    }

    /// A token that makes a client trusted (`lxc config trust add`).
    pub fn trust_token(&self) -> String {
        last_line(&self.node1.lxc(&["config", "trust", "add", "--name", "envy"]))
    }
}

fn last_line(text: &str) -> String {
    text.lines().map(str::trim).rfind(|l| !l.is_empty()).expect("a token line").to_string()
}

impl Lxd {
    /// Starts a daemon and initialises it; panics with install advice when lxd is missing.
    pub fn start() -> Lxd {
        Lxd::start_with(PRESEED)
    }

    /// Starts a daemon initialised with `preseed`.
    pub fn start_with(preseed: &str) -> Lxd {
        let dir = tempfile::Builder::new().prefix("envy-lxd-").tempdir().expect("temp dir");
        // Unprivileged containers' root (a mapped uid) must traverse the daemon's dir.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
        let daemon = spawn_daemon(dir.path());
        let lxd = Lxd { dir, daemon };
        lxd.wait_ready();
        let mut init = lxd.command("lxd", &["init", "--preseed"]).stdin(Stdio::piped()).spawn().unwrap();
        init.stdin.take().unwrap().write_all(preseed.as_bytes()).unwrap();
        assert!(init.wait().unwrap().success(), "lxd init --preseed failed: {}", lxd.log());
        lxd
    }

    fn wait_ready(&self) {
        let ready = self.command("lxd", &["waitready", "--timeout", "60"]).status().unwrap();
        assert!(ready.success(), "lxd did not become ready: {}", self.log());
    }

    /// Kills the daemon at once, as a crash or a lost host would (its containers go on
    /// running: each has its own monitor process).
    pub fn kill(&mut self) {
        self.daemon.kill().unwrap();
        self.daemon.wait().unwrap();
    }

    /// Starts the daemon again on its dir after `kill`.
    pub fn restart(&mut self) {
        self.daemon = spawn_daemon(self.dir.path());
        self.wait_ready();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `tool ARGS` talking to this daemon.
    pub fn command(&self, tool: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(tool);
        cmd.args(args).env("LXD_DIR", self.dir.path());
        cmd
    }

    /// `lxc ARGS`, which must succeed; its stdout.
    pub fn lxc(&self, args: &[&str]) -> String {
        let out = self.command("lxc", args).output().unwrap();
        assert!(out.status.success(), "lxc {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Names of the daemon's instances.
    pub fn instances(&self) -> Vec<String> {
        self.lxc(&["list", "--format", "csv", "-c", "n"]).lines().map(str::to_string).collect()
    }

    /// Aliases of the daemon's images.
    pub fn image_aliases(&self) -> Vec<String> {
        let json: serde_json::Value = serde_json::from_str(&self.lxc(&["image", "list", "--format", "json"])).unwrap();
        json.as_array().unwrap().iter().flat_map(|i| i["aliases"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap().to_string())).collect()
    }

    /// Number of images the daemon holds.
    pub fn image_count(&self) -> usize {
        let json: serde_json::Value = serde_json::from_str(&self.lxc(&["image", "list", "--format", "json"])).unwrap();
        json.as_array().unwrap().len()
    }

    /// The daemon's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.out")).unwrap_or_default()
    }

    /// The socket envy's lxd provider reaches this daemon through.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("unix.socket")
    }
}

/// `/usr/bin/lxd` on `dir`, its output appended to `dir/daemon.out`.
fn spawn_daemon(dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("daemon.out")).unwrap();
    Command::new("/usr/bin/lxd")
        .args(["--group", "root", "--logfile"])
        .arg(dir.join("lxd.log"))
        .env("LXD_DIR", dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start /usr/bin/lxd")
}

impl Drop for Lxd {
    fn drop(&mut self) {
        // A clean shutdown stops the instances first; then whatever is left is killed.
        let _ = self.command("lxd", &["shutdown", "--timeout", "30"]).output();
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let mut mounts = mounts_below(self.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
