//! `envy exec` in a running container without starting runc: envy joins the
//! container's namespaces and cgroups itself and starts the command the way `runc exec`
//! would, with the process settings of the bundle's config.json (user, environment,
//! working directory, capabilities, rlimits, no_new_privs). runc is a Go program whose
//! start is most of a `runc exec`; this is what lets an exec cost less than runc's.
//!
//! The process that enters is a child of envy's, run from a read-only view of envy's
//! binary (sealed_exe.rs, against CVE-2019-5736) as `envy __container-exec`, "the
//! stage". It makes itself non-dumpable first thing, before it is in any namespace of
//! the container, so nothing there can open its /proc entries. envy moves it into the
//! container's cgroups and only then hands it its instructions through a pipe. The
//! stage joins the namespaces through a pidfd of the container's init (one atomic
//! setns), and forks: the child, the first of the two in the container's pid
//! namespace, takes the command's credentials and execs it; the stage waits and ends
//! the way the command ended. Whatever goes wrong before the exec comes back on a
//! report pipe that the exec closes.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::error::code;
use super::console;
use super::runtime::Init;
use crate::provider::ExecRequest;

/// The hidden command the stage runs as (cli.rs names it the same).
pub const STAGE_COMMAND: &str = "__container-exec";

/// Linux capability names in the kernel's numbering (linux/capability.h).
const CAPABILITIES: [&str; 41] = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
];

/// Resource limit names in the kernel's numbering (asm-generic/resource.h).
const RLIMITS: [&str; 16] = [
    "CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE", "MEMLOCK", "AS", "LOCKS", "SIGPENDING",
    "MSGQUEUE", "NICE", "RTPRIO", "RTTIME",
];

/// The namespaces a container may have, joined where they differ from envy's own.
const NAMESPACES: [(&str, libc::c_int); 7] = [
    ("user", libc::CLONE_NEWUSER),
    ("mnt", libc::CLONE_NEWNS),
    ("net", libc::CLONE_NEWNET),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("pid", libc::CLONE_NEWPID),
];

/// The part of the bundle's config.json a command starts with (bundle.rs writes it;
/// any process setting it gains must be applied here too).
#[derive(Debug, Deserialize)]
struct BundleConfig {
    process: BundleProcess,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BundleProcess {
    /// The init's command line (an exec's comes from its request).
    #[serde(default)]
    args: Vec<String>,
    /// The init's terminal; an exec asks for its own.
    #[serde(default)]
    terminal: bool,
    user: BundleUser,
    #[serde(default)]
    env: Vec<String>,
    cwd: String,
    #[serde(default)]
    capabilities: BundleCapabilities,
    #[serde(default)]
    rlimits: Vec<BundleRlimit>,
    #[serde(default)]
    no_new_privileges: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BundleUser {
    uid: u32,
    gid: u32,
    #[serde(default)]
    additional_gids: Vec<u32>,
}

/// Each capability set by name, as the OCI spec has them.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BundleCapabilities {
    bounding: Vec<String>,
    effective: Vec<String>,
    permitted: Vec<String>,
    inheritable: Vec<String>,
    ambient: Vec<String>,
}

/// The same sets as capability numbers.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Capabilities {
    bounding: Vec<u32>,
    effective: Vec<u32>,
    permitted: Vec<u32>,
    inheritable: Vec<u32>,
    ambient: Vec<u32>,
}

impl Capabilities {
    fn of(sets: &BundleCapabilities) -> Result<Capabilities> {
        let numbers = |names: &[String]| -> Result<Vec<u32>> {
            names.iter()
                .map(|name| {
                    let bare = name.strip_prefix("CAP_").unwrap_or(name);
                    CAPABILITIES.iter().position(|c| *c == bare).map(|n| n as u32)
                        .with_context(|| format!("the machine's config.json names capability {name}, which envy does not know"))
                })
                .collect()
        };
        Ok(Capabilities {
            bounding: numbers(&sets.bounding)?,
            effective: numbers(&sets.effective)?,
            permitted: numbers(&sets.permitted)?,
            inheritable: numbers(&sets.inheritable)?,
            ambient: numbers(&sets.ambient)?,
        })
    }
}

#[derive(Debug, Deserialize)]
struct BundleRlimit {
    #[serde(rename = "type")]
    kind: String,
    hard: u64,
    soft: u64,
}

/// What the stage does, sent to it through a pipe.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Instructions {
    argv: Vec<String>,
    env: Vec<String>,
    pub cwd: String,
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
    capabilities: Capabilities,
    /// (resource, soft, hard)
    rlimits: Vec<(u32, u64, u64)>,
    no_new_privileges: bool,
    /// CLONE_NEW* flags of the namespaces to join through the init's pidfd.
    namespaces: libc::c_int,
    /// A terminal of this size (columns, rows), from the container's devpts.
    terminal: Option<(u16, u16)>,
}

/// What the stage says when it did not exec the command: a shell's exit code with its
/// message (127, 126), or an error without one.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Report {
    pub code: Option<i32>,
    pub message: String,
}

impl Instructions {
    fn new(config: BundleProcess, request: &ExecRequest, namespaces: libc::c_int) -> Result<Instructions> {
        let mut env = config.env;
        for (key, value) in &request.env {
            env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key.as_str());
            env.push(format!("{key}={value}"));
        }
        let capabilities = Capabilities::of(&config.capabilities)?;
        let rlimits = config.rlimits.iter()
            .map(|r| {
                let bare = r.kind.strip_prefix("RLIMIT_").unwrap_or(&r.kind);
                RLIMITS.iter().position(|l| *l == bare).map(|n| (n as u32, r.soft, r.hard))
                    .with_context(|| format!("the machine's config.json names resource limit {}, which envy does not know", r.kind))
            })
            .collect::<Result<_>>()?;
        let (uid, gid) = if request.as_root { (0, 0) } else { (config.user.uid, config.user.gid) };
        Ok(Instructions {
            argv: request.command.clone(),
            env,
            cwd: request.workdir.clone().unwrap_or(config.cwd),
            uid,
            gid,
            additional_gids: config.user.additional_gids,
            capabilities,
            rlimits,
            no_new_privileges: config.no_new_privileges,
            namespaces,
            terminal: request.tty.then(crate::terminal::size),
        })
    }
}

/// The instructions for a container's init: the bundle's process as it stands, from
/// the text of its config.json.
pub(super) fn init_instructions(config: &Path, text: &[u8]) -> Result<Instructions> {
    let bundle: BundleConfig = serde_json::from_slice(text)
        .with_context(|| format!("cannot read the process settings in {}", config.display()))?;
    let request = ExecRequest { command: bundle.process.args.clone(), ..ExecRequest::default() };
    if request.command.is_empty() {
        bail!("{} names no command for the container's init (process.args)", config.display());
    }
    if bundle.process.terminal {
        bail!("{} asks for a terminal for the container's init, which envy's runtime does not give", config.display());
    }
    Instructions::new(bundle.process, &request, 0)
}

/// Runs `request` in the container whose init is `init`, with the process settings of
/// `config` (its bundle's config.json), started from `exe` (sealed_exe::open). Returns
/// the command's exit code: 128 + the signal that killed it, 127 and 126 as a shell
/// says them when it could not be started.
pub fn exec(config: &Path, init: &Init, request: &ExecRequest, exe: &OwnedFd) -> Result<i32> {
    let text = crate::fsutil::read_private(config)?
        .with_context(|| format!("the machine's runtime config {} is missing; run `envy up` to write it again", config.display()))?;
    let bundle: BundleConfig = serde_json::from_slice(&text)
        .with_context(|| format!("cannot read the process settings in {}", config.display()))?;

    let pidfd = super::runtime::open_pidfd(init.pid, init.start_time)
        .with_context(|| format!("the container's init (pid {}) stopped while envy entered it", init.pid))?;
    let mut namespaces = 0;
    for (name, flag) in NAMESPACES {
        let id = |pid: &str| std::fs::metadata(format!("/proc/{pid}/ns/{name}")).map(|m| (m.dev(), m.ino()));
        let theirs = id(&init.pid.to_string()).with_context(|| format!("cannot read the {name} namespace of pid {}", init.pid))?;
        if id("self").ok() != Some(theirs) {
            namespaces |= flag;
        }
    }
    let instructions = Instructions::new(bundle.process, request, namespaces)?;
    let stdin = match &request.stdin {
        Some(path) => Some(File::open(path).with_context(|| format!("cannot open {} to send it into the machine", path.display()))?),
        None => None,
    };

    let (orders_in, orders_out) = pipe()?;
    let (report_in, report_out) = pipe()?;
    // The terminal's master comes back on this socket.
    let console = if request.tty {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        Some(socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC).context("cannot make a socket for the terminal")?)
    } else {
        None
    };
    let mut inherited = vec![pidfd.as_raw_fd(), orders_in.as_raw_fd(), report_out.as_raw_fd()];
    inherited.extend(console.as_ref().map(|(_, theirs)| theirs.as_raw_fd()));
    let args: Vec<String> = [STAGE_COMMAND.to_string()].into_iter().chain(inherited.iter().map(|fd| fd.to_string())).collect();
    let said = br#"{"code":null,"message":"cannot start envy's own binary to enter the container"}"#;
    let child = super::sealed_exe::spawn(exe, &args, &inherited, stdin.as_ref().map(|f| f.as_raw_fd()), None, report_out.as_raw_fd(), said)
        .context("cannot start a process to enter the container")?;
    let console = console.map(|(ours, theirs)| {
        drop(theirs);
        ours
    });
    drop((orders_in, report_out, pidfd, stdin));
    let handed = join_cgroups(child, &init.cgroups).and_then(|()| {
        let mut orders = File::from(orders_out);
        orders.write_all(&serde_json::to_vec(&instructions)?).context("cannot instruct the process entering the container")
    });
    let mut said = Vec::new();
    let mut terminal = None;
    if handed.is_err() {
        unsafe { libc::kill(child, libc::SIGKILL) };
    } else {
        if let Some(socket) = &console {
            terminal = console::receive(socket)?;
        }
        File::from(report_in).read_to_end(&mut said).context("cannot read what the process entering the container said")?;
    }
    if let (Some(master), true) = (terminal, said.is_empty()) {
        console::relay(master)?;
    }
    let status = wait(child)?;
    handed?;
    if said.is_empty() {
        return Ok(status);
    }
    let report: Report = serde_json::from_slice(&said)
        .with_context(|| format!("the process entering the container said something envy cannot read: {}", String::from_utf8_lossy(&said)))?;
    match report.code {
        Some(code) => {
            eprintln!("{}", report.message);
            Ok(code)
        }
        None => bail!(report.message),
    }
}

/// Moves `pid` into the container's cgroups, as `runc exec` does. A normal user's
/// container may have none envy can write (runc, rootless, then made none).
fn join_cgroups(pid: libc::pid_t, cgroups: &[PathBuf]) -> Result<()> {
    let mut done: Vec<&PathBuf> = Vec::new();
    for dir in cgroups.iter().filter(|d| !d.as_os_str().is_empty()) {
        if done.contains(&dir) {
            continue;
        }
        done.push(dir);
        let procs = dir.join("cgroup.procs");
        match std::fs::write(&procs, pid.to_string()) {
            Ok(()) => {}
            Err(e) if crate::userns::is_rootless() && matches!(e.kind(), std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound) => {}
            Err(e) => return Err(e).with_context(|| format!("cannot move the command into the container's cgroup {}", procs.display())),
        }
    }
    Ok(())
}

/// Waits for the child and gives its exit code, or 128 + the signal that ended it.
fn wait(child: libc::pid_t) -> Result<i32> {
    let mut status = 0;
    loop {
        if unsafe { libc::waitpid(child, &mut status, 0) } >= 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            bail!("cannot wait for the command in the container: {err}");
        }
    }
    Ok(crate::process::exit_code(std::os::unix::process::ExitStatusExt::from_raw(status)))
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot make a pipe to the process entering the container")
}

/// `envy __container-exec PIDFD ORDERS REPORT [CONSOLE]`: the stage. Joins the
/// namespaces, takes the command's credentials and execs it; returns only when it
/// could not, after saying why on REPORT. CONSOLE is the socket for a terminal's master.
pub fn stage(pidfd: RawFd, orders: RawFd, report: RawFd, console: Option<RawFd>) -> i32 {
    // SAFETY: first, before anything of the container can see this process.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // SAFETY: the three descriptors were handed to this process by its parent, for it alone.
    let (pidfd, orders, mut report) = unsafe { (OwnedFd::from_raw_fd(pidfd), File::from_raw_fd(orders), File::from_raw_fd(report)) };
    let outcome = match read_orders(orders) {
        Ok(instructions) => enter_and_exec(pidfd, &instructions, console),
        Err(e) => Report { code: None, message: format!("{e:#}") },
    };
    let _ = report.write_all(&serde_json::to_vec(&outcome).unwrap_or_default());
    1
}

/// What a stage's parent sent it through the pipe `orders`.
pub(super) fn read_orders<T: serde::de::DeserializeOwned>(mut orders: File) -> Result<T> {
    let mut text = Vec::new();
    orders.read_to_end(&mut text).context("cannot read envy's instructions")?;
    serde_json::from_slice(&text).context("cannot read envy's instructions")
}

fn failed(what: String) -> Report {
    Report { code: None, message: format!("{what}: {}", std::io::Error::last_os_error()) }
}

/// Everything the stage does once instructed; returns only on failure.
fn enter_and_exec(pidfd: OwnedFd, i: &Instructions, console: Option<RawFd>) -> Report {
    // Read before joining: whether this user namespace lets setgroups be called.
    let setgroups = std::fs::read_to_string("/proc/self/setgroups").map_or(true, |s| s.trim() == "allow");
    if i.namespaces != 0 && unsafe { libc::setns(pidfd.as_raw_fd(), i.namespaces) } != 0 {
        return failed("cannot join the container's namespaces".into());
    }
    drop(pidfd);
    // Only a child is in the container's pid namespace: it becomes the command, and
    // this process waits for it and ends the same way.
    let command = unsafe { libc::fork() };
    if command < 0 {
        return failed("cannot start the command's process".into());
    }
    if command > 0 {
        mirror(command);
    }
    become_command(i, console, setgroups)
}

/// Takes the command's directory, terminal, limits and credentials, then execs it:
/// the last steps of a process entering a container or starting its init. Returns
/// only on failure. `setgroups`: whether this user namespace lets setgroups be called.
pub(super) fn become_command(i: &Instructions, console: Option<RawFd>, setgroups: bool) -> Report {
    let Ok(cwd) = CString::new(i.cwd.as_str()) else { return Report { code: None, message: format!("bad working directory {:?}", i.cwd) } };
    if unsafe { libc::chdir(cwd.as_ptr()) } != 0 {
        return failed(format!("cannot enter the working directory {} in the machine", i.cwd));
    }
    if let (Some(socket), Some(size)) = (console, i.terminal) {
        if let Err(message) = console::attach_in_container(socket, size, i.uid) {
            return Report { code: None, message };
        }
    }
    for &(resource, soft, hard) in &i.rlimits {
        let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
        if unsafe { libc::setrlimit(resource as _, &limit) } != 0 {
            return failed(format!("cannot set resource limit {}", RLIMITS[resource as usize]));
        }
    }
    // The bounding set bounds what any later exec can gain, file capabilities included.
    for cap in 0..64 {
        if !i.capabilities.bounding.contains(&cap) && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break; // past the kernel's last capability
            }
            return failed(format!("cannot drop capability {cap} from the bounding set"));
        }
    }
    if i.no_new_privileges && unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return failed("cannot set no_new_privs".into());
    }
    // As runc: the permitted set outlives the change of user, then each set is the config's.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return failed("cannot keep capabilities across the change of user".into());
    }
    if setgroups && unsafe { libc::setgroups(i.additional_gids.len(), i.additional_gids.as_ptr()) } != 0 {
        return failed("cannot set the command's groups".into());
    }
    if unsafe { libc::setresgid(i.gid, i.gid, i.gid) } != 0 {
        return failed(format!("cannot become group {}", i.gid));
    }
    if unsafe { libc::setresuid(i.uid, i.uid, i.uid) } != 0 {
        return failed(format!("cannot become user {}", i.uid));
    }
    if let Err(report) = set_capabilities(&i.capabilities) {
        return report;
    }
    // Rust's runtime ignores SIGPIPE, and an ignored signal stays ignored across exec.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // Nothing of envy's reaches the command: every descriptor but stdio closes at exec.
        libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int);
    }
    exec_command(i)
}

/// Waits for the command and ends as it did: with its exit code, or killed by its
/// signal. The terminal's Ctrl-C reaches the command itself; this process outlives it
/// to say how it ended.
fn mirror(command: libc::pid_t) -> ! {
    // SAFETY: plain libc calls; this process does nothing else any more.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
        libc::close_range(3, u32::MAX, 0);
        let mut status = 0;
        while libc::waitpid(command, &mut status, 0) < 0 {
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                libc::_exit(super::runc::EXEC_FAILED);
            }
        }
        if libc::WIFSIGNALED(status) {
            let signal = libc::WTERMSIG(status);
            libc::signal(signal, libc::SIG_DFL);
            libc::kill(libc::getpid(), signal);
        }
        libc::_exit(libc::WEXITSTATUS(status))
    }
}

/// Sets the effective, permitted, inheritable and ambient sets to the config's.
fn set_capabilities(caps: &Capabilities) -> Result<(), Report> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut data = [Data::default(); 2];
    let mut set = |list: &[u32], field: fn(&mut Data) -> &mut u32| {
        for &cap in list {
            *field(&mut data[(cap / 32) as usize]) |= 1 << (cap % 32);
        }
    };
    set(&caps.effective, |d| &mut d.effective);
    set(&caps.permitted, |d| &mut d.permitted);
    set(&caps.inheritable, |d| &mut d.inheritable);
    let header = Header { version: VERSION_3, pid: 0 };
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) } != 0
        || unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0
    {
        return Err(failed("cannot set the command's capabilities".into()));
    }
    if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) } != 0 {
        return Err(failed("cannot clear the ambient capabilities".into()));
    }
    for &cap in &caps.ambient {
        if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap as libc::c_ulong, 0, 0) } != 0 {
            return Err(failed(format!("cannot raise the ambient capability {}", CAPABILITIES[cap as usize])));
        }
    }
    Ok(())
}

/// Execs the command, looked up in the command's PATH when its name has no `/` (as
/// execvp does, and runc's Go lookup). Returns only when nothing could be run.
fn exec_command(i: &Instructions) -> Report {
    let name = &i.argv[0];
    let cstrings = |list: &[String]| list.iter().filter_map(|s| CString::new(s.as_str()).ok()).collect::<Vec<_>>();
    let (argv, env) = (cstrings(&i.argv), cstrings(&i.env));
    let argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
    let env_ptrs: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
    let candidates: Vec<String> = if name.is_empty() {
        Vec::new()
    } else if name.contains('/') {
        vec![name.clone()]
    } else {
        let path = i.env.iter().rev().find_map(|e| e.strip_prefix("PATH=")).unwrap_or_default();
        path.split(':').map(|dir| if dir.is_empty() { format!("./{name}") } else { format!("{dir}/{name}") }).collect()
    };
    let mut denied = false;
    for candidate in candidates {
        let Ok(path) = CString::new(candidate) else { continue };
        unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR) => {}
            Some(libc::EACCES | libc::ENOEXEC | libc::EISDIR) => denied = true,
            _ => return failed(format!("cannot run {name} in the machine")),
        }
    }
    if denied {
        Report { code: Some(code::COMMAND_NOT_EXECUTABLE), message: format!("envy: {name}: cannot be executed (not an executable file, or no permission)") }
    } else {
        Report { code: Some(code::COMMAND_NOT_FOUND), message: format!("envy: {name}: command not found") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(json: &str) -> BundleProcess {
        serde_json::from_str::<BundleConfig>(json).unwrap().process
    }

    #[test]
    fn instructions_take_the_bundles_process_and_the_requests_overrides() {
        let config = process(r#"{"process":{"user":{"uid":1000,"gid":100},"env":["PATH=/bin","HOME=/home/u"],"cwd":"/project",
            "capabilities":{"bounding":["CAP_CHOWN","CAP_KILL","CAP_SETFCAP"],"ambient":["CAP_KILL"]},"rlimits":[{"type":"RLIMIT_NOFILE","hard":1024,"soft":512}]}}"#);
        let request = ExecRequest { command: vec!["ls".into()], env: vec![("PATH".into(), "/usr/bin".into())], ..ExecRequest::default() };
        let i = Instructions::new(config, &request, libc::CLONE_NEWNS).unwrap();
        assert_eq!(i.env, ["HOME=/home/u", "PATH=/usr/bin"]);
        assert_eq!((i.uid, i.gid, i.cwd.as_str()), (1000, 100, "/project"));
        assert_eq!(i.capabilities, Capabilities { bounding: vec![0, 5, 31], ambient: vec![5], ..Capabilities::default() });
        assert_eq!(i.rlimits, [(7, 512, 1024)]);

        let config = process(r#"{"process":{"user":{"uid":1000,"gid":100},"cwd":"/"}}"#);
        let request = ExecRequest { command: vec!["id".into()], as_root: true, workdir: Some("/tmp".into()), ..ExecRequest::default() };
        let i = Instructions::new(config, &request, 0).unwrap();
        assert_eq!((i.uid, i.gid, i.cwd.as_str()), (0, 0, "/tmp"));
    }

    #[test]
    fn an_unknown_capability_or_limit_is_refused_not_dropped() {
        let request = ExecRequest { command: vec!["true".into()], ..ExecRequest::default() };
        let config = process(r#"{"process":{"user":{"uid":0,"gid":0},"cwd":"/","capabilities":{"bounding":["CAP_TELEPORT"]}}}"#);
        let err = Instructions::new(config, &request, 0).unwrap_err().to_string();
        assert!(err.contains("capability CAP_TELEPORT"), "{err}");
        let config = process(r#"{"process":{"user":{"uid":0,"gid":0},"cwd":"/","rlimits":[{"type":"RLIMIT_WARP","hard":1,"soft":1}]}}"#);
        let err = Instructions::new(config, &request, 0).unwrap_err().to_string();
        assert!(err.contains("RLIMIT_WARP"), "{err}");
        let config = r#"{"process":{"user":{"uid":0,"gid":0},"cwd":"/","apparmorProfile":"unconfined"}}"#;
        let err = serde_json::from_str::<BundleConfig>(config).unwrap_err().to_string();
        assert!(err.contains("apparmorProfile"), "a process setting envy does not apply is refused: {err}");
    }

    #[test]
    fn the_capability_table_is_the_kernels() {
        // Spot checks against linux/capability.h.
        let number = |name: &str| CAPABILITIES.iter().position(|c| *c == name).unwrap();
        assert_eq!(number("SYS_ADMIN"), 21);
        assert_eq!(number("AUDIT_WRITE"), 29);
        assert_eq!(number("SETFCAP"), 31);
        assert_eq!(number("CHECKPOINT_RESTORE"), 40);
        assert_eq!(RLIMITS.iter().position(|l| *l == "NOFILE"), Some(libc::RLIMIT_NOFILE as usize));
        assert_eq!(RLIMITS.iter().position(|l| *l == "RTTIME"), Some(libc::RLIMIT_RTTIME as usize));
    }
}
