//! Shared fixtures for envy's integration tests: a temp ENVY_HOME and project, the
//! real `envy` binary, a small real HTTP/1.1 server on 127.0.0.1 that can inject
//! faults, and boxes built from busybox.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code, unused_imports)]

pub mod http;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use sha2::{Digest, Sha256};

pub use http::{Fault, Server};

/// A temp dir holding an ENVY_HOME and a project folder; removed on drop.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub project: PathBuf,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let dir = tempfile::Builder::new().prefix("envy-test-").tempdir().expect("temp dir");
        let home = dir.path().join("home");
        let project = dir.path().join("project");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&project).unwrap();
        TestEnv { dir, home, project }
    }

    /// A path inside the temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `envy` with this ENVY_HOME, CI=1 (no prompts, plain progress), run in the project.
    pub fn envy(&self) -> assert_cmd::Command {
        assert_cmd::Command::from_std(self.envy_std())
    }

    /// The same as `envy()`, as a std Command (to run several at once).
    pub fn envy_std(&self) -> StdCommand {
        let mut cmd = StdCommand::new(assert_cmd::cargo::cargo_bin("envy"));
        cmd.env("ENVY_HOME", &self.home)
            .env("CI", "1")
            // Settings from the developer's shell must not change what a test sees.
            .env_remove("ENVY_CATALOG")
            .env("NO_PROXY", "127.0.0.1,localhost")
            // A KVM boot crawls on hosts whose /dev/kvm is kvm-pvm; tests run VMs under TCG.
            .env("ENVY_ACCEL", "tcg")
            .current_dir(&self.project);
        cmd
    }

    /// envy's state for the project (under ENVY_HOME, out of every machine's reach).
    pub fn state_dir(&self) -> PathBuf {
        envy::plan::Project::state_dir_for(&envy::state::Home::at(&self.home), &self.project)
    }

    /// A machine's dir in the project's state.
    pub fn machine_dir(&self, name: &str) -> PathBuf {
        self.state_dir().join("machines").join(name)
    }

    /// What `envy run` may have left in ENVY_HOME: throwaway project folders, and the
    /// state of any project other than this one (each run has a state dir of its own).
    pub fn run_leftovers(&self) -> Vec<String> {
        let own = self.state_dir().file_name().unwrap().to_string_lossy().into_owned();
        let mut left: Vec<String> = list_dir(&self.home.join("throwaway")).into_iter().map(|n| format!("throwaway/{n}")).collect();
        left.extend(list_dir(&self.home.join("projects")).into_iter().filter(|n| *n != own).map(|n| format!("projects/{n}")));
        left
    }

    /// Directory names in `$ENVY_HOME/boxes` (stored boxes and any leftovers).
    pub fn store_entries(&self) -> Vec<String> {
        list_dir(&self.home.join("boxes"))
    }

    /// File names in `$ENVY_HOME/downloads`.
    pub fn download_entries(&self) -> Vec<String> {
        list_dir(&self.home.join("downloads"))
    }
}

/// Destroys the project's machines when the test ends, passed or not.
pub struct DestroyOnDrop<'a>(pub &'a TestEnv);

impl Drop for DestroyOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.envy().args(["destroy", "--force"]).output();
    }
}

pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Mount points at or below `root` in this process's mount table.
pub fn mounts_below(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&root))
        .map(str::to_string)
        .collect()
}

/// Root, runc, slirp4netns and ip: what every test that starts a container needs;
/// panics with install advice when one is missing (tests never skip silently).
pub fn require_container_host() {
    assert!(nix::unistd::geteuid().is_root(), "this test starts containers and network namespaces: run it as root");
    for (tool, package) in [("runc", "runc"), ("slirp4netns", "slirp4netns"), ("ip", "iproute2")] {
        require_tool(tool, package);
    }
}

/// Panics with install advice when a host tool is missing (tests never skip silently).
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "this test needs `{tool}`; install it with `apt-get install {package}`");
}

/// Makes a minimal root filesystem in `dir` from /bin/busybox (busybox-static): every
/// applet linked, root in /etc/passwd, and /etc/box-release to recognise it by.
pub fn busybox_rootfs(dir: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(busybox.is_file(), "this test needs /bin/busybox; install it with `apt-get install busybox-static`");
    for sub in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp", "proc", "sys", "dev", "var/www"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    // The host's busybox lists the applets: running the fresh copy could meet ETXTBSY
    // while another test thread's fork still holds its write descriptor.
    let list = StdCommand::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines().filter(|a| *a != "busybox") {
        let link = dir.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n").unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    std::fs::write(dir.join("etc/box-release"), "busybox test box\n").unwrap();
}

/// Builds a container box from a busybox rootfs with `envy box build`; returns the
/// box's path and sha256.
pub fn build_container_box(env: &TestEnv, name: &str) -> (PathBuf, String) {
    let rootfs = env.path(&format!("{name}-rootfs"));
    busybox_rootfs(&rootfs);
    let out = env.path(&format!("{name}.box"));
    env.envy()
        .args(["box", "build", "--rootfs"])
        .arg(&rootfs)
        .args(["--name", name, "--version", "1", "-o"])
        .arg(&out)
        .assert()
        .success();
    let digest = sha256_hex(&std::fs::read(&out).unwrap());
    (out, digest)
}

/// The tiny VM box (busybox + dropbear + a Debian kernel, boots to SSH in seconds under
/// TCG): its root filesystem from boxes/recipes/tiny-vm.sh, made into a box by
/// `envy box build --kind qemu`. Cached under target/ by the recipe's content.
pub fn tiny_vm_box(env: &TestEnv) -> PathBuf {
    for (tool, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("mkfs.ext4", "e2fsprogs"),
        ("dropbear", "dropbear-bin"),
        ("ssh", "openssh-client"),
    ] {
        require_tool(tool, package);
    }
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("boxes/recipes/tiny-vm.sh");
    let out = StdCommand::new(&recipe).output().expect("run boxes/recipes/tiny-vm.sh");
    assert!(out.status.success(), "tiny-vm.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    let rootfs = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let built = rootfs.with_file_name("tiny-vm.box");
    if !built.exists() {
        // Built beside the rootfs under a unique name, then renamed: parallel tests may race.
        let partial = rootfs.with_file_name(format!("tiny-vm.box.{}", std::process::id()));
        env.envy()
            .args(["box", "build", "--kind", "qemu", "--name", "tiny-vm", "--version", "1", "--rootfs"])
            .arg(&rootfs)
            .arg("-o")
            .arg(&partial)
            .assert()
            .success();
        std::fs::rename(&partial, &built).unwrap();
    }
    built
}
