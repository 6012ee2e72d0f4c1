//! A real LXD daemon for the lxd tests: Debian's `lxd`, started in a temp dir of its
//! own (`LXD_DIR`) with a `dir` storage pool and no managed network, shut down and
//! unmounted when the test ends.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::{mounts_below, require_tool};

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

impl Lxd {
    /// Starts a daemon and initialises it; panics with install advice when lxd is missing.
    pub fn start() -> Lxd {
        assert!(nix::unistd::geteuid().is_root(), "the lxd tests start an LXD daemon: run them as root");
        require_tool("lxd", "lxd");
        require_tool("lxc", "lxd-client");
        require_tool("nft", "nftables");
        let dir = tempfile::Builder::new().prefix("envy-lxd-").tempdir().expect("temp dir");
        // Unprivileged containers' root (a mapped uid) must traverse the daemon's dir.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
        let log = std::fs::File::create(dir.path().join("daemon.out")).unwrap();
        let daemon = Command::new("/usr/bin/lxd")
            .args(["--group", "root", "--logfile"])
            .arg(dir.path().join("lxd.log"))
            .env("LXD_DIR", dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start /usr/bin/lxd");
        let lxd = Lxd { dir, daemon };
        let ready = lxd.command("lxd", &["waitready", "--timeout", "60"]).status().unwrap();
        assert!(ready.success(), "lxd did not become ready: {}", lxd.log());
        let mut init = lxd.command("lxd", &["init", "--preseed"]).stdin(Stdio::piped()).spawn().unwrap();
        init.stdin.take().unwrap().write_all(PRESEED.as_bytes()).unwrap();
        assert!(init.wait().unwrap().success(), "lxd init --preseed failed: {}", lxd.log());
        lxd
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
