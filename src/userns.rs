//! envy as a normal user. Root runs machines directly; a normal user's envy works
//! inside a user namespace of its own, where it is root over what it made and nothing
//! else: it can mount overlays, make network namespaces and run runc there, while on
//! the host every file it writes is the user's and every process runs as the user.
//!
//! One small process per envy home (`envy __userns-holder`, "the holder") keeps that
//! user namespace and a mount namespace alive between commands: each command that
//! touches machines or the box store joins both first (`enter`), so the overlays and
//! network namespaces one command mounts are there for the next. The namespace maps
//! root to the user and, through newuidmap and newgidmap, uids and gids 1..N to the
//! user's subordinate range in /etc/subuid and /etc/subgid; a user without a range
//! gets root alone, which is said.

use std::io::{Read as _, Write as _};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use anyhow::{bail, Context as _, Result};

use crate::process::Process;
use crate::state::PidFile;

/// The environment variable that tells a process envy started that it already runs
/// inside the namespace (its value: the holder's pid).
const INSIDE: &str = "ENVY_USERNS";

/// One range of subordinate ids: `start` on the host is `first` inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub start: u32,
    pub count: u32,
}

/// How this envy runs machines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The host's root: no user namespace.
    Root,
    /// A normal user's, inside the namespace its holder keeps.
    Rootless(Mapping),
}

/// What the namespace maps: the user's own uid and gid to root, then the subordinate
/// ranges (none: root is the only id inside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub uid: u32,
    pub gid: u32,
    pub subuids: Option<IdRange>,
    pub subgids: Option<IdRange>,
}

impl Mapping {
    /// The user's: their ids and the first range each file gives them.
    pub fn of_user(uid: u32, gid: u32) -> Mapping {
        let name = user_name(uid);
        let first = |file: &str| subordinate_ids(Path::new(file), &name, uid).ok().and_then(|r| r.into_iter().next());
        Mapping { uid, gid, subuids: first("/etc/subuid"), subgids: first("/etc/subgid") }
    }

    /// Whether ids other than root exist inside (a box's files owned by other users
    /// keep their owners only then).
    pub fn has_ranges(&self) -> bool {
        self.subuids.is_some() && self.subgids.is_some()
    }
}

/// The mode this process runs in: set by `enter`; before it (library use, the
/// hermetic tests), root is root and anyone else is rootless.
pub fn mode() -> Mode {
    MODE.get().cloned().unwrap_or_else(|| {
        let uid = nix::unistd::geteuid().as_raw();
        if uid == 0 {
            Mode::Root
        } else {
            Mode::Rootless(Mapping::of_user(uid, nix::unistd::getegid().as_raw()))
        }
    })
}

/// Whether this process works as a normal user's envy (asked per archive entry: it
/// reads no user database, as `mode` would before `enter`).
pub fn is_rootless() -> bool {
    match MODE.get() {
        Some(mode) => matches!(mode, Mode::Rootless(_)),
        None => !nix::unistd::geteuid().is_root(),
    }
}

/// Whether this process can give files no owner but its own: a normal user's envy
/// whose namespace holds root alone (no subordinate ids), or a normal user's process
/// outside envy's namespace (a program linking envy, a test). Files a box gives other
/// owners are then the process's own.
pub fn only_root_inside() -> bool {
    match MODE.get() {
        Some(Mode::Root) => false,
        Some(Mode::Rootless(m)) => !m.has_ranges(),
        None => !nix::unistd::geteuid().is_root(),
    }
}

static MODE: OnceLock<Mode> = OnceLock::new();

/// The ranges `/etc/subuid` or `/etc/subgid` (`file`) gives a user, by name or uid, in
/// the order written. A missing file gives none.
pub fn subordinate_ids(file: &Path, user: &str, uid: u32) -> Result<Vec<IdRange>> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    Ok(parse_subordinate(&text, user, uid))
}

fn parse_subordinate(text: &str, user: &str, uid: u32) -> Vec<IdRange> {
    let uid = uid.to_string();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().split(':');
            let (owner, start, count) = (fields.next()?, fields.next()?, fields.next()?);
            if fields.next().is_some() || (owner != user && owner != uid) || owner.is_empty() {
                return None;
            }
            let range = IdRange { start: start.parse().ok()?, count: count.parse().ok()? };
            (range.count > 0).then_some(range)
        })
        .collect()
}

/// Joins the user namespace and mount namespace of `runtime_dir`'s holder, starting the
/// holder first when none runs. Must run while the process has one thread (the kernel
/// refuses `setns` into a user namespace otherwise): commands call it first. Root, and a
/// process envy started inside the namespace, stay where they are.
pub fn enter(runtime_dir: &Path, ui: &crate::ui::Ui) -> Result<()> {
    if MODE.get().is_some() {
        return Ok(());
    }
    let euid = nix::unistd::geteuid().as_raw();
    if euid == 0 {
        let mode = match std::env::var(INSIDE).ok().and_then(|pid| pid.parse::<u32>().ok()) {
            Some(holder) if is_ours(holder) => Mode::Rootless(read_mapping(holder)?),
            _ => Mode::Root,
        };
        let _ = MODE.set(mode);
        return Ok(());
    }
    let mapping = Mapping::of_user(euid, nix::unistd::getegid().as_raw());
    crate::fsutil::create_private_dir(runtime_dir)?;
    let lock = crate::fsutil::FileLock::acquire(&runtime_dir.join("userns.lock"), |_| {})?;
    let pid_file = PidFile::at(pid_file(runtime_dir));
    let holder = match pid_file.alive() {
        Some(pid) if is_holder(pid) => pid,
        _ => {
            let pid = start_holder(runtime_dir, &mapping, ui)?;
            pid_file.write(pid)?;
            pid
        }
    };
    drop(lock);
    // What the namespace maps is the kernel's word (a holder started without newuidmap
    // has root alone, whatever /etc/subuid says).
    let mapping = read_mapping(holder)?;
    join(holder)?;
    std::env::set_var(INSIDE, holder.to_string());
    let _ = MODE.set(Mode::Rootless(mapping));
    Ok(())
}

/// The holder of `runtime_dir`, if one runs (`envy doctor`, and tests that clean up).
pub fn holder(runtime_dir: &Path) -> Option<u32> {
    PidFile::at(pid_file(runtime_dir)).alive().filter(|pid| is_holder(*pid))
}

/// A pid file's process is a holder when it runs envy's holder command; a reused pid
/// of this boot with the same start time cannot be anything else, but the pid file
/// lives in a folder the user owns, so its word is checked.
fn is_holder(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == HOLDER_COMMAND.as_bytes()))
}

/// The hidden command the holder runs (cli.rs names it the same).
const HOLDER_COMMAND: &str = "__userns-holder";

/// Whether process `pid` is in this process's user namespace. A normal user's container
/// started under an earlier holder (killed since) is not: its mounts and network
/// namespaces went with that holder, and nothing can enter it from this one, so it
/// reads stopped and `envy up` starts it again.
pub fn is_ours(pid: u32) -> bool {
    let ino = |path: String| std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
    let ours = ino("/proc/self/ns/user".into());
    ours.is_some() && ours == ino(format!("/proc/{pid}/ns/user"))
}

/// The mapping a holder's namespace has, as the kernel shows it: read from inside, so
/// a process envy started knows whether other ids exist.
fn read_mapping(holder: u32) -> Result<Mapping> {
    let parse = |file: &str| -> Result<(u32, Option<IdRange>)> {
        let path = format!("/proc/{holder}/{file}");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let mut own = None;
        let mut range = None;
        for line in text.lines() {
            let fields: Vec<u32> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
            match fields[..] {
                [0, outside, 1] => own = Some(outside),
                [_, outside, count] => range = Some(IdRange { start: outside, count }),
                _ => {}
            }
        }
        Ok((own.with_context(|| format!("{path} maps no id to root"))?, range))
    };
    // Seen from inside, /proc/PID/uid_map shows ids inside first and the parent's second.
    let (uid, subuids) = parse("uid_map")?;
    let (gid, subgids) = parse("gid_map")?;
    Ok(Mapping { uid, gid, subuids, subgids })
}

/// setns into the holder's user namespace, then its mount namespace. Joining a mount
/// namespace moves the working directory to its root, so it is restored.
fn join(holder: u32) -> Result<()> {
    let cwd = std::env::current_dir().ok();
    for (ns, flag) in [("user", nix::sched::CloneFlags::CLONE_NEWUSER), ("mnt", nix::sched::CloneFlags::CLONE_NEWNS)] {
        let path = format!("/proc/{holder}/ns/{ns}");
        let file = std::fs::File::open(&path).with_context(|| format!("cannot open envy's {ns} namespace {path}"))?;
        nix::sched::setns(file.as_fd(), flag).map_err(|e| Error::Join { ns, holder, cause: e })?;
    }
    if let Some(cwd) = cwd {
        std::env::set_current_dir(&cwd).with_context(|| format!("cannot return to {} inside envy's namespace", cwd.display()))?;
    }
    Ok(())
}

/// Starts `envy __userns-holder`, maps its new user namespace and waits until it holds
/// a mount namespace too. The child says each step on its stdout; its stdin tells it
/// the map is written.
fn start_holder(runtime_dir: &Path, mapping: &Mapping, ui: &crate::ui::Ui) -> Result<u32> {
    let exe = std::env::current_exe().context("cannot find envy's own executable to start its user namespace")?;
    let mut child = std::process::Command::new(exe)
        .arg(HOLDER_COMMAND)
        .arg(runtime_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start envy's user namespace holder")?;
    let pid = child.id();
    let mut to_child = child.stdin.take().expect("piped stdin");
    let mut from_child = child.stdout.take().expect("piped stdout");
    let mut expect = |step: u8| -> Result<()> {
        let mut byte = [0u8];
        if from_child.read_exact(&mut byte).is_ok() && byte[0] == step {
            return Ok(());
        }
        let _ = child.kill();
        let mut stderr = String::new();
        let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut stderr));
        let _ = child.wait();
        bail!(Error::Holder { detail: stderr.trim().to_string() })
    };
    expect(b'u')?;
    write_maps(pid, mapping, ui)?;
    to_child.write_all(b"m").context("cannot tell the user namespace holder its map is written")?;
    expect(b'n')?;
    Ok(pid)
}

/// Maps the holder's namespace: through newuidmap/newgidmap when the user has ranges
/// and those tools are here, otherwise root alone, written directly (and said).
fn write_maps(pid: u32, mapping: &Mapping, ui: &crate::ui::Ui) -> Result<()> {
    let user = user_name(mapping.uid);
    let (Some(subuids), Some(subgids)) = (mapping.subuids, mapping.subgids) else {
        ui.warn(format!(
            "user {user} has no subordinate id range in /etc/subuid and /etc/subgid: machines see one user only (root), and files a box gives other users become root's; add one with `sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}`"
        ));
        return write_single_maps(pid, mapping);
    };
    for (tool, own, range) in [("newuidmap", mapping.uid, subuids), ("newgidmap", mapping.gid, subgids)] {
        let mapped = Process::new(tool)
            .arg(pid.to_string())
            .args(["0", &own.to_string(), "1", "1", &range.start.to_string(), &range.count.to_string()])
            .doing(format!("mapping user {user}'s subordinate ids into envy's user namespace"))
            .run();
        match mapped {
            Ok(_) => {}
            // Both come from one package: the first missing means both are.
            Err(crate::process::ProcessError::Missing { advice, .. }) if tool == "newuidmap" => {
                ui.warn(format!(
                    "newuidmap is not installed ({advice}): machines of user {user} see one user only (root), and files a box gives other users become root's"
                ));
                return write_single_maps(pid, mapping);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn write_single_maps(pid: u32, mapping: &Mapping) -> Result<()> {
    let write = |file: &str, text: String| {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, text).with_context(|| format!("cannot write {path}"))
    };
    write("uid_map", format!("0 {} 1\n", mapping.uid))?;
    write("setgroups", "deny\n".into())?;
    write("gid_map", format!("0 {} 1\n", mapping.gid))
}

/// A user's name, or their uid as text when the user database has none.
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map_or_else(|| uid.to_string(), |u| u.name)
}

/// `envy __userns-holder RUNTIME_DIR`: unshares a user namespace, waits for its map,
/// unshares a mount namespace whose mounts stay private to it, then holds both until
/// killed, or until RUNTIME_DIR's pid file no longer names it (the envy home was
/// removed, or another holder replaced it): then nothing is left to hold for.
pub fn hold(runtime_dir: &Path) -> Result<i32> {
    use nix::sched::{unshare, CloneFlags};
    let mut stdout = std::io::stdout().lock();
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| Error::Unshare { ns: "user", cause: e })?;
    stdout.write_all(b"u")?;
    stdout.flush()?;
    let mut byte = [0u8];
    std::io::stdin().read_exact(&mut byte).context("the envy that started this holder went away before mapping it")?;
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| Error::Unshare { ns: "mount", cause: e })?;
    nix::mount::mount(None::<&str>, "/", None::<&str>, nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE, None::<&str>)
        .context("cannot make the mounts of envy's mount namespace private")?;
    stdout.write_all(b"n")?;
    stdout.flush()?;
    // Nothing more is said or read: the holder leaves its starter's pipes and terminal,
    // and runs in a session of its own so the terminal's signals do not reach it.
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    for fd in 0..3 {
        nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd)?;
    }
    let _ = nix::unistd::setsid();
    let me = std::process::id();
    let pid_file = PidFile::at(pid_file(runtime_dir));
    loop {
        std::thread::sleep(std::time::Duration::from_secs(5));
        if pid_file.alive() != Some(me) {
            return Ok(0);
        }
    }
}

/// The cgroup v2 subtree this process may write, with the memory and cpu controllers:
/// where a normal user's container limits can go (a systemd user session gives one,
/// with Delegate=yes). Otherwise why not (cgroup v1 or hybrid hosts bind those
/// controllers to v1, where a normal user writes nothing): then the limits are not
/// applied, `up` says so and doctor says why.
pub fn delegated_cgroup() -> Result<PathBuf, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|t| t.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string)));
    let own = own.ok_or("this process is in no cgroup v2 (/proc/self/cgroup has no 0:: line)")?;
    let mount = cgroup2_mount().ok_or("no cgroup2 filesystem is mounted")?;
    if mount != Path::new("/sys/fs/cgroup") {
        return Err(format!("cgroup2 is mounted at {} beside cgroup v1 (a hybrid host), whose controllers hold the limits", mount.display()));
    }
    let dir = match own.trim_start_matches('/') {
        "" => mount,
        below => mount.join(below),
    };
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let missing: Vec<&str> = ["memory", "cpu"].into_iter().filter(|c| !controllers.split_whitespace().any(|have| have == *c)).collect();
    if !missing.is_empty() {
        return Err(format!("{} has no {} controller (cgroup.controllers: {:?})", dir.display(), missing.join(" or "), controllers.trim()));
    }
    let writable = |p: &Path| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok();
    if !writable(&dir) || !writable(&dir.join("cgroup.subtree_control")) {
        return Err(format!("this user may not write {} (not delegated)", dir.join("cgroup.subtree_control").display()));
    }
    Ok(dir)
}

/// Where the cgroup2 filesystem is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified
/// on a hybrid host), from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next() == Some("cgroup2")).then(|| before.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot make envy's {ns} namespace: {cause}; run `envy doctor` to see what this host allows a normal user")]
    Unshare { ns: &'static str, cause: nix::errno::Errno },
    #[error("envy's user namespace holder did not start{}; run `envy doctor`", if detail.is_empty() { String::new() } else { format!(": {detail}") })]
    Holder { detail: String },
    #[error("cannot join envy's {ns} namespace (holder pid {holder}): {cause}")]
    Join { ns: &'static str, holder: u32, cause: nix::errno::Errno },
}

/// The holder's pid file.
fn pid_file(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("userns.pid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_are_found_by_name_or_uid_in_order() {
        let text = "alice:100000:65536\n1001:300000:1000\nbob:200000:65536\n# comment\nalice:bad:1\nalice:5:0\n";
        assert_eq!(parse_subordinate(text, "alice", 1001), vec![IdRange { start: 100000, count: 65536 }, IdRange { start: 300000, count: 1000 }]);
        assert_eq!(parse_subordinate(text, "bob", 1002), vec![IdRange { start: 200000, count: 65536 }]);
        assert_eq!(parse_subordinate(text, "carol", 1003), vec![]);
        assert_eq!(parse_subordinate("alice:1:2:3\n", "alice", 1), vec![], "a line with more fields is not a range");
    }
}
