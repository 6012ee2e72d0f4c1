//! Shared fixtures for envy's integration tests (one copy of each, for the one test
//! binary): a temp ENVY_HOME and project, the real `envy` binary, a small real HTTP/1.1
//! server on 127.0.0.1 that can inject faults, boxes built from busybox, and what a test
//! needs from the host (`need`, the two tiers).

pub mod container;
pub mod http;
pub mod lxd;
pub mod need;
pub mod qemu;
pub mod registry;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use envy::ui::Ui;
use sha2::{Digest, Sha256};

pub use http::{Fault, Server};
pub(crate) use need::require;
pub use need::Need;

/// A temp dir holding an ENVY_HOME and a project folder; removed on drop. `envy` runs
/// as root, or as the normal user of `as_normal_user`.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub project: PathBuf,
    pub user: Option<&'static Account>,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let dir = tempfile::Builder::new().prefix("envy-test-").tempdir().expect("temp dir");
        let home = dir.path().join("home");
        let project = dir.path().join("project");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&project).unwrap();
        TestEnv { dir, home, project, user: None }
    }

    /// A test env whose `envy` runs as `normal_user()` (the test itself stays root):
    /// the temp dir, ENVY_HOME and project are that user's. Tests that call it require
    /// `need::ROOTLESS`.
    pub fn as_normal_user() -> TestEnv {
        TestEnv::as_user(normal_user())
    }

    /// A test env whose `envy` runs as `user`.
    pub fn as_user(user: &'static Account) -> TestEnv {
        let mut env = TestEnv::new();
        env.user = Some(user);
        env.give(env.dir.path());
        env
    }

    /// Gives `path` (recursively) to this env's normal user, if it has one: files the
    /// test writes as root for envy to use.
    pub fn give(&self, path: &Path) {
        let user = self.user.unwrap_or_else(normal_user);
        let chown = StdCommand::new("chown").arg("-R").arg(format!("{}:{}", user.uid, user.gid)).arg(path).status().unwrap();
        assert!(chown.success(), "chown -R {} {}", user.name, path.display());
    }

    /// Mount points at or below `root` where this env's envy mounts: the host's mount
    /// table, or the normal user's namespace (its holder's).
    pub fn mounts_below(&self, root: &Path) -> Vec<String> {
        match envy::userns::holder(&envy::state::Home::at(&self.home).runtime_dir()) {
            Some(pid) => mounts_in(&format!("/proc/{pid}/mountinfo"), root),
            None => mounts_below(root),
        }
    }

    /// The uid that owns what envy writes on the host: the normal user's, or root's.
    pub fn uid(&self) -> u32 {
        self.user.map_or(0, |u| u.uid)
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
        if let Some(user) = self.user {
            use std::os::unix::process::CommandExt as _;
            // std drops root's supplementary groups when it switches uid.
            cmd.uid(user.uid).gid(user.gid).env("HOME", &user.home).env("USER", user.name).env_remove("XDG_RUNTIME_DIR");
        }
        cmd
    }

    /// stdout of an envy command that must succeed (its stderr in the panic otherwise).
    pub fn out(&self, args: &[&str]) -> String {
        let out = self.envy().args(args).output().unwrap();
        assert!(out.status.success(), "envy {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `envy status --json`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.out(&["status", "--json"])).unwrap()
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

impl Drop for TestEnv {
    /// A normal user's envy leaves its namespace holder running between commands; the
    /// test's ends with the test.
    fn drop(&mut self) {
        if let Some(pid) = envy::userns::holder(&envy::state::Home::at(&self.home).runtime_dir()) {
            // A normal user running the tests cannot remove what envy unpacked for it
            // as its subordinate ids; inside its namespace (its own) it can.
            if !nix::unistd::geteuid().is_root() {
                let _ = StdCommand::new("nsenter").args(["-U", "-t", &pid.to_string(), "--", "rm", "-rf"]).arg(self.dir.path()).status();
            }
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The normal user tests run envy as: `envy-rootless`, made once with `useradd -m`, which
/// gives it a home and a subordinate id range (Debian's login.defs).
pub struct Account {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

pub fn normal_user() -> &'static Account {
    static ACCOUNT: std::sync::OnceLock<Account> = std::sync::OnceLock::new();
    ACCOUNT.get_or_init(|| {
        let user = account("envy-rootless", &[]);
        // useradd gives a range only where /etc/subuid already exists: else one is added.
        if envy::userns::subordinate_ids(Path::new("/etc/subuid"), user.name, user.uid).unwrap().is_empty() {
            let range = "2000000000-2000065535";
            let out = StdCommand::new("usermod").args(["--add-subuids", range, "--add-subgids", range, user.name]).output().expect("run usermod");
            assert!(out.status.success(), "usermod --add-subuids {range} {}: {}", user.name, String::from_utf8_lossy(&out.stderr));
        }
        user
    })
}

/// A normal user with no subordinate id range: inside its namespace root is the only id.
pub fn user_without_subordinate_ids() -> &'static Account {
    static ACCOUNT: std::sync::OnceLock<Account> = std::sync::OnceLock::new();
    ACCOUNT.get_or_init(|| account("envy-nosubids", &["-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0"]))
}

/// User `name`, made with `useradd -m` and `options` unless it exists.
fn account(name: &'static str, options: &[&str]) -> Account {
    // Other test processes may make it at the same time: one at a time, by lock.
    let lock = std::fs::File::create("/tmp/envy-test-users.lock").unwrap();
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        let out = StdCommand::new("useradd").args(["-m", "-s", "/bin/sh"]).args(options).arg(name).output().expect("run useradd");
        assert!(out.status.success(), "useradd {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let user = nix::unistd::User::from_name(name).unwrap().expect("the user useradd made");
    Account { name, uid: user.uid.as_raw(), gid: user.gid.as_raw(), home: user.dir }
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
    mounts_in("/proc/self/mountinfo", root)
}

fn mounts_in(mountinfo: &str, root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    std::fs::read_to_string(mountinfo)
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&root))
        .map(str::to_string)
        .collect()
}

/// Container ids runc or envy's own runtime knows under the ENVY_HOME `home`.
pub fn container_ids(home: &Path) -> Vec<String> {
    let runtime = envy::state::Home::at(home).runtime_dir();
    let mut ids: Vec<String> = Vec::new();
    // runc list makes its root when missing: root's, which a normal user's envy could not read.
    if runtime.join("runc").exists() {
        let out = StdCommand::new("runc").arg("--root").arg(runtime.join("runc")).args(["list", "-q"]).output().expect("run runc list");
        ids.extend(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string));
    }
    ids.extend(list_dir(&runtime.join("containers")));
    ids
}

/// Names of the network namespaces envy keeps under the ENVY_HOME `home`.
pub fn netns_names(home: &Path) -> Vec<String> {
    list_dir(&envy::state::Home::at(home).runtime_dir().join("netns"))
}

/// A machine's entry in `envy status --json`.
pub fn machine<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["machines"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("no machine {name} in {status}"))
}

/// A UI that prints nothing and never asks, for calling envy's library directly.
pub fn quiet_ui() -> Ui {
    Ui { interactive: false, fancy: false, json: false, quiet: true }
}

/// What `envy up` does first for machine `name` of the project, through envy's library:
/// the box it resolves for `format` with `config`, honouring and updating
/// Envfile.lock (saved when it changed), without starting anything.
pub fn resolve_box(env: &TestEnv, config: envy::config::Config, name: &str, format: envy::model::BoxFormat) -> anyhow::Result<envy::boxes::StoredBox> {
    let ctx = envy::context::Context {
        home: envy::state::Home::at(&env.home),
        config,
        ui: quiet_ui(),
        cwd: env.project.clone(),
        no_wait: true,
    };
    let ws = envy::workspace::Workspace::load(&ctx)?;
    let spec = ws.envfile.machine(name).unwrap_or_else(|| panic!("no machine {name} in the Envfile"));
    let path = envy::envfile::lock::LockFile::path_for(&env.project);
    let mut lock = envy::envfile::lock::LockFile::load(&path)?;
    let before = lock.clone();
    let stored = envy::lifecycle::resolve_box(&ctx, spec, format, &env.project, &mut lock, false)?;
    if lock != before {
        lock.save(&path)?;
    }
    Ok(stored)
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One GET of `path` from 127.0.0.1:`port`: the body of a 200 answer, or why not.
pub fn http_try(port: u16, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).map_err(|e| e.to_string())?;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    match reply.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(format!("reply: {reply:?}")),
    }
}

/// The body of GET `path` from 127.0.0.1:`port`, retried while the server behind it
/// starts (bounded, generously); panics with the last failure when no 200 comes.
pub fn http_get(port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match http_try(port, path) {
            Ok(body) => return body,
            Err(why) => assert!(Instant::now() < deadline, "no 200 for GET {path} on 127.0.0.1:{port}: {why}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether process `pid` runs: it exists and has not ended. An ended process may stay in
/// /proc as a zombie until its parent reaps it, which for a process envy left behind
/// is the host's PID 1, at its own pace.
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

/// Polls `check` until it holds, for state that settles asynchronously; panics after a
/// minute (generous: a failing test is the only one that waits that long).
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Makes a minimal root filesystem in `dir` from /bin/busybox (busybox-static): every
/// applet linked, root in /etc/passwd, and /etc/box-release to recognise it by. Tests
/// that call it require `need::BUSYBOX`.
pub fn busybox_rootfs(dir: &Path) {
    let busybox = Path::new("/bin/busybox");
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

/// A project of one machine (`default`) on a busybox container box built for it.
pub fn busybox_project(env: &TestEnv) {
    let (box_path, _) = build_container_box(env, "busybox");
    std::fs::write(env.project.join("Envfile"), format!("[defaults]\nbox = {{ path = \"{}\" }}\n", box_path.display())).unwrap();
}

/// Builds a container box from a busybox rootfs with `envy box build`; returns the
/// box's path and sha256.
pub fn build_container_box(env: &TestEnv, name: &str) -> (PathBuf, String) {
    let rootfs = env.path(&format!("{name}-rootfs"));
    busybox_rootfs(&rootfs);
    if env.user.is_some() {
        // The user's files are root's inside their namespace, as a rootfs they made would be.
        env.give(&rootfs);
    }
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
/// `envy box build --kind qemu`. Cached under target/ by the recipe's content. Tests
/// that call it require `need::VMS`.
pub fn tiny_vm_box(env: &TestEnv) -> PathBuf {
    if env.user.is_some() {
        // Built and cached by root; the normal user gets a copy of their own.
        let built = tiny_vm_box(&TestEnv::new());
        let copy = env.path("tiny-vm.box");
        std::fs::copy(built, &copy).unwrap();
        env.give(&copy);
        return copy;
    }
    let rootfs = tiny_vm_rootfs();
    let built = rootfs.with_file_name("tiny-vm.box");
    // One build at a time in this process (its test threads share the box); other
    // processes may race, so it is built under a unique name and renamed.
    static BUILDING: Mutex<()> = Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if !built.exists() {
        let partial = rootfs.with_file_name(format!("tiny-vm.box.{}", std::process::id()));
        build_vm_box(env, &rootfs, &partial, None);
        std::fs::rename(&partial, &built).unwrap();
    }
    built
}

/// A copy of the tiny VM's root filesystem in the test's temp dir, changed by `edit`,
/// made a box by `envy box build --kind qemu` with `cmdline` added to the kernel's.
/// Tests that call it require `need::VMS`.
pub fn tiny_vm_box_variant(env: &TestEnv, cmdline: Option<&str>, edit: impl FnOnce(&Path)) -> PathBuf {
    let rootfs = tiny_vm_rootfs_copy(env, "tiny-vm-variant");
    edit(&rootfs);
    let out = env.path("tiny-vm-variant.box");
    build_vm_box(env, &rootfs, &out, cmdline);
    out
}

/// A copy of the tiny VM's root filesystem at `name` in the test's temp dir, to change.
pub fn tiny_vm_rootfs_copy(env: &TestEnv, name: &str) -> PathBuf {
    let rootfs = env.path(name);
    let copied = StdCommand::new("cp").arg("-a").arg(tiny_vm_rootfs()).arg(&rootfs).status().unwrap();
    assert!(copied.success());
    rootfs
}

/// The tiny VM's root filesystem, from boxes/recipes/tiny-vm.sh (which caches it).
pub fn tiny_vm_rootfs() -> PathBuf {
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("boxes/recipes/tiny-vm.sh");
    let out = StdCommand::new(&recipe).output().expect("run boxes/recipes/tiny-vm.sh");
    assert!(out.status.success(), "tiny-vm.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// `envy box build --kind qemu` of `rootfs` into `out`, with `cmdline` added to the
/// kernel's.
fn build_vm_box(env: &TestEnv, rootfs: &Path, out: &Path, cmdline: Option<&str>) {
    let mut build = env.envy();
    build.args(["box", "build", "--kind", "qemu", "--name", "tiny-vm", "--version", "1", "--rootfs"]).arg(rootfs).arg("-o").arg(out);
    if let Some(extra) = cmdline {
        build.args(["--cmdline", extra]);
    }
    build.assert().success();
}

/// What a provider's `export` hands `envy share`, written into `out` by name (a tree
/// packed as its tar), in the box's order: the files a test can look into.
pub fn export_files(
    provider: &dyn envy::provider::Provider,
    plan: &envy::plan::MachinePlan,
    stored: &envy::boxes::StoredBox,
    out: &Path,
    ui: &Ui,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    provider.export(plan, stored, out, ui, &mut |payloads| {
        for (name, payload) in payloads {
            let path = out.join(name);
            match payload {
                envy::boxes::Payload::File(file) => assert_eq!(file, &path, "a file payload is written in the export dir by its name"),
                envy::boxes::Payload::Tree(dir) => drop(envy::boxes::pack_rootfs_dir(dir, &path)?),
            }
            written.push(path);
        }
        Ok(())
    })?;
    Ok(written)
}
