//! Making a container, for envy's own runtime (native.rs): what `runc run -d` does
//! with envy's bundle, without starting a Go program twice per machine.
//!
//! envy makes the container's cgroups (cgroups.rs) and starts envy's binary again,
//! from its read-only view (sealed_exe.rs), as `envy __container-start` ("the
//! stage"), with the init's stdio as its own. It moves the stage into the cgroups and
//! only then hands it its orders through a pipe. The stage makes itself non-dumpable,
//! joins the machine's network namespace, unshares the others and forks the init,
//! the first process of the new pid namespace. The init lays out the root: the
//! bundle's mounts (proc, /dev, devpts, shm, mqueue, sysfs, cgroup, the sync folders,
//! hosts and resolv.conf), the device nodes, pivot_root, the read-only and masked
//! paths; then it takes the process settings and execs the bundle's command
//! (enter::become_command, as an exec does). The stage says the init's pid, or why
//! it could not start, and exits; the init lives on, as after `runc run -d`.
//!
//! Every mount point inside the root is resolved in the root (openat2 RESOLVE_IN_ROOT)
//! and mounted on through its descriptor: a box's or a guest's symlink (`/proc ->
//! /etc`, left in the upper layer by an earlier boot) cannot send a mount, a device
//! node or a read-only path outside the container's root. Nothing of the guest runs
//! before the init's exec, so nothing can swap a path between the check and the mount.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use super::cgroups::{self, Hierarchy, Resources};
use super::enter::{self, Instructions, Report};
use super::runtime::StateFile;

/// The hidden command the stage runs as (cli.rs names it the same).
pub const START_COMMAND: &str = "__container-start";

/// The device nodes of every container (runc's defaults): name, major, minor.
const DEVICES: [(&str, u32, u32); 6] = [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

/// The links in every container's /dev (runc's defaults).
const DEV_LINKS: [(&str, &str); 6] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
    ("core", "/proc/kcore"),
];

/// The part of the bundle's config.json that makes the container (bundle.rs writes
/// it; the process part is enter.rs's). A setting this runtime does not apply is
/// refused by name, never dropped.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Bundle {
    #[serde(default)]
    oci_version: Option<String>,
    /// enter.rs reads the process.
    #[serde(default, skip_serializing, rename = "process")]
    _process: serde::de::IgnoredAny,
    root: BundleRoot,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    mounts: Vec<BundleMount>,
    linux: BundleLinux,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleRoot {
    path: PathBuf,
    #[serde(default)]
    readonly: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleMount {
    destination: PathBuf,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    source: Option<PathBuf>,
    #[serde(default)]
    options: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BundleLinux {
    #[serde(default)]
    namespaces: Vec<BundleNamespace>,
    #[serde(default)]
    masked_paths: Vec<PathBuf>,
    #[serde(default)]
    readonly_paths: Vec<PathBuf>,
    #[serde(default)]
    cgroups_path: Option<String>,
    #[serde(default)]
    resources: Resources,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleNamespace {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: Option<PathBuf>,
}

/// What the stage does, sent to it through a pipe.
#[derive(Debug, Serialize, Deserialize)]
struct Orders {
    bundle: Bundle,
    init: Instructions,
    /// The host's cgroup hierarchies to mount again inside the container.
    hierarchies: Vec<Hierarchy>,
    /// A normal user's envy: device nodes and a cgroup tree are bind-mounted from the
    /// host, as a user namespace cannot make them.
    rootless: bool,
}

/// What the stage says.
#[derive(Debug, Serialize, Deserialize)]
enum Outcome {
    Started { pid: i32 },
    Failed { message: String },
}

/// Makes the container of the bundle in `bundle_dir` and starts its init from envy's
/// sealed binary `exe`, its stdout and stderr appended to `log`. Returns what the
/// state file records.
pub(super) fn start(bundle_dir: &Path, log: &Path, exe: &OwnedFd) -> Result<StateFile> {
    let config = bundle_dir.join("config.json");
    let text = crate::fsutil::read_private(&config)?
        .with_context(|| format!("the machine's runtime config {} is missing; run `envy up` to write it again", config.display()))?;
    let bundle: Bundle = serde_json::from_slice(&text)
        .with_context(|| format!("envy's runtime cannot apply the settings in {}", config.display()))?;
    let init = enter::init_instructions(&config, &text)?;
    if bundle.root.readonly {
        bail!("{} asks for a read-only root, which envy's runtime does not make", config.display());
    }
    let rootless = crate::userns::is_rootless();
    let all = cgroups::hierarchies();
    let cgroup_paths = match (&bundle.linux.cgroups_path, rootless) {
        (Some(path), false) => cgroups::create(all, path, &bundle.linux.resources)?,
        (Some(_), true) => bail!("{} asks for cgroups, which envy's runtime makes only as root", config.display()),
        (None, _) => Default::default(),
    };
    // As runc: the v1 hierarchies where there are any (not a hybrid host's v2 beside them).
    let v1: Vec<Hierarchy> = all.iter().filter(|h| !h.is_v2()).cloned().collect();
    let hierarchies = if v1.is_empty() { all.to_vec() } else { v1 };
    let orders = Orders { bundle, init, hierarchies, rootless };
    let started = run_stage(&orders, log, exe, &cgroup_paths).and_then(|pid| {
        let stat = crate::state::proc_stat(pid as u32).with_context(|| format!("the container's init (pid {pid}) ended right after starting"))?;
        Ok(StateFile { init_process_pid: pid as u32, init_process_start: stat.start_time, cgroup_paths: cgroup_paths.clone() })
    });
    if started.is_err() {
        let _ = cgroups::remove(&cgroup_paths);
    }
    started
}

/// Starts the stage, moves it into the cgroups, instructs it, and returns the pid of
/// the init it started.
fn run_stage(orders: &Orders, log: &Path, exe: &OwnedFd, cgroup_paths: &std::collections::BTreeMap<String, PathBuf>) -> Result<i32> {
    let output = File::options().create(true).append(true).open(log)
        .with_context(|| format!("cannot open the container log {}", log.display()))?;
    let nothing = File::open("/dev/null").context("cannot open /dev/null for the container's input")?;
    let (orders_in, orders_out) = pipe()?;
    let (report_in, report_out) = pipe()?;
    let keep = [orders_in.as_raw_fd(), report_out.as_raw_fd()];
    let args = [START_COMMAND.to_string(), keep[0].to_string(), keep[1].to_string()];
    let said = br#"{"Failed":{"message":"cannot start envy's own binary to make the container"}}"#;
    let stage = super::sealed_exe::spawn(exe, &args, &keep, Some(nothing.as_raw_fd()), Some(output.as_raw_fd()), report_out.as_raw_fd(), said)
        .context("cannot start a process to make the container")?;
    drop((orders_in, report_out));
    let handed = cgroups::join(cgroup_paths, stage).and_then(|()| {
        let mut pipe = File::from(orders_out);
        pipe.write_all(&serde_json::to_vec(orders)?).context("cannot instruct the process making the container")
    });
    if handed.is_err() {
        unsafe { libc::kill(stage, libc::SIGKILL) };
    }
    let mut said = Vec::new();
    let read = File::from(report_in).read_to_end(&mut said);
    let mut status = 0;
    while unsafe { libc::waitpid(stage, &mut status, 0) } < 0 && Errno::last() == Errno::EINTR {}
    handed?;
    read.context("cannot read what the process making the container said")?;
    match serde_json::from_slice::<Outcome>(&said) {
        Ok(Outcome::Started { pid }) => Ok(pid),
        Ok(Outcome::Failed { message }) => bail!(message),
        Err(_) => bail!("the process making the container ended without saying why (wait status {status}): {}", String::from_utf8_lossy(&said)),
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot make a pipe to the process making the container")
}

/// `envy __container-start ORDERS REPORT`: the stage. Starts the init and says its
/// pid on REPORT, or why it could not.
pub fn stage(orders: RawFd, report: RawFd) -> i32 {
    // SAFETY: first, before anything of the container exists.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // SAFETY: both descriptors were handed to this process by its parent, for it alone.
    let (orders, mut report) = unsafe { (File::from_raw_fd(orders), File::from_raw_fd(report)) };
    let outcome = match enter::read_orders::<Orders>(orders) {
        Ok(orders) => start_init(&orders),
        Err(e) => Outcome::Failed { message: format!("{e:#}") },
    };
    let _ = report.write_all(&serde_json::to_vec(&outcome).unwrap_or_default());
    i32::from(!matches!(outcome, Outcome::Started { .. }))
}

/// Joins or makes the namespaces, and forks the init.
fn start_init(orders: &Orders) -> Outcome {
    let failed = |message: String| Outcome::Failed { message };
    let mut unshare = CloneFlags::empty();
    for ns in &orders.bundle.linux.namespaces {
        let flag = match ns.kind.as_str() {
            "pid" => CloneFlags::CLONE_NEWPID,
            "network" => CloneFlags::CLONE_NEWNET,
            "mount" => CloneFlags::CLONE_NEWNS,
            "ipc" => CloneFlags::CLONE_NEWIPC,
            "uts" => CloneFlags::CLONE_NEWUTS,
            "cgroup" => CloneFlags::CLONE_NEWCGROUP,
            other => return failed(format!("the bundle asks for a {other} namespace, which envy's runtime does not make")),
        };
        match &ns.path {
            Some(path) => {
                let joined = File::open(path).map_err(|e| e.to_string()).and_then(|f| nix::sched::setns(f, flag).map_err(|e| e.to_string()));
                if let Err(e) = joined {
                    return failed(format!("cannot join the {} namespace {}: {e}", ns.kind, path.display()));
                }
            }
            None => unshare |= flag,
        }
    }
    if let Err(e) = nix::sched::unshare(unshare) {
        return failed(format!("cannot make the container's namespaces: {e}"));
    }
    let (said_in, said_out) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pair) => pair,
        Err(e) => return failed(format!("cannot make a pipe to the container's init: {e}")),
    };
    // SAFETY: this process is single-threaded (a fresh envy that started no thread).
    let init = unsafe { libc::fork() };
    if init < 0 {
        return failed(format!("cannot start the container's init: {}", std::io::Error::last_os_error()));
    }
    if init == 0 {
        drop(said_in);
        let report = become_init(orders);
        let _ = File::from(said_out).write_all(&serde_json::to_vec(&report).unwrap_or_default());
        unsafe { libc::_exit(1) };
    }
    drop(said_out);
    // The pipe closes at the init's exec: nothing read means it runs the bundle's command.
    let mut said = Vec::new();
    let _ = File::from(said_in).read_to_end(&mut said);
    if said.is_empty() {
        return Outcome::Started { pid: init };
    }
    let mut status = 0;
    unsafe { libc::waitpid(init, &mut status, 0) };
    match serde_json::from_slice::<Report>(&said) {
        Ok(report) => failed(report.message),
        Err(_) => failed(String::from_utf8_lossy(&said).into_owned()),
    }
}

/// The init: lays out the root, then becomes the bundle's command. Returns only on failure.
fn become_init(orders: &Orders) -> Report {
    let setgroups = std::fs::read_to_string("/proc/self/setgroups").map_or(true, |s| s.trim() == "allow");
    if let Err(e) = lay_out_root(orders) {
        return Report { code: None, message: format!("{e:#}") };
    }
    if let Some(name) = &orders.bundle.hostname {
        if let Err(e) = nix::unistd::sethostname(name) {
            return Report { code: None, message: format!("cannot set the hostname {name}: {e}") };
        }
    }
    enter::become_command(&orders.init, None, setgroups)
}

fn lay_out_root(orders: &Orders) -> Result<()> {
    // Nothing mounted for the container propagates back to the host.
    mount(None, Path::new("/"), None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None).context("cannot make the mounts private")?;
    let rootfs = &orders.bundle.root.path;
    // pivot_root needs the root to be a mount of its own.
    mount(Some(rootfs), rootfs, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
        .with_context(|| format!("cannot bind the machine's root {}", rootfs.display()))?;
    let root = open_dir(rootfs)?;
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    for m in &orders.bundle.mounts {
        mount_entry(&root, m, orders).with_context(|| format!("cannot mount {} in the container", m.destination.display()))?;
    }
    make_devices(&root, orders.rootless)?;
    // As runc: the init's directory (an image's WorkingDir) is made when the root lacks it.
    ensure(&root, Path::new(&orders.init.cwd), true)?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    pivot_root(&root)?;
    let slash = open_dir(Path::new("/"))?;
    for path in &orders.bundle.linux.readonly_paths {
        let Some(target) = existing(&slash, path)? else { continue };
        let point = crate::fsutil::fd_path(&target);
        mount(Some(&point), &point, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
            .with_context(|| format!("cannot bind {} to make it read-only", path.display()))?;
        remount_read_only(&slash, path)?;
    }
    for path in &orders.bundle.linux.masked_paths {
        let Some(target) = existing(&slash, path)? else { continue };
        let point = crate::fsutil::fd_path(&target);
        let is_dir = nix::sys::stat::fstat(target.as_raw_fd()).is_ok_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR);
        let masked = if is_dir {
            mount(Some(Path::new("tmpfs")), &point, Some("tmpfs"), MsFlags::MS_RDONLY, None)
        } else {
            mount(Some(Path::new("/dev/null")), &point, None, MsFlags::MS_BIND, None)
        };
        masked.with_context(|| format!("cannot mask {}", path.display()))?;
    }
    Ok(())
}

/// Mounts one of the bundle's mounts at its destination in the root.
fn mount_entry(root: &OwnedFd, m: &BundleMount, orders: &Orders) -> Result<()> {
    let options = Options::parse(&m.options);
    let kind = m.kind.as_deref().unwrap_or(if options.flags.contains(MsFlags::MS_BIND) { "bind" } else { "" });
    if kind == "cgroup" {
        return mount_cgroups(root, m, &options, orders);
    }
    let bind = options.flags.contains(MsFlags::MS_BIND) || kind == "bind";
    let source = m.source.clone().unwrap_or_else(|| PathBuf::from(kind));
    let is_dir = !bind || source.is_dir();
    let target = ensure(root, &m.destination, is_dir)?;
    let point = crate::fsutil::fd_path(&target);
    let mut read_only = options.flags.contains(MsFlags::MS_RDONLY);
    let mounted = if bind {
        mount(Some(&source), &point, None, options.flags | MsFlags::MS_BIND, None).map(|_| bind)
    } else {
        match mount(Some(&source), &point, Some(kind), options.flags, options.data.as_deref()) {
            // A normal user's namespace may not mount sysfs afresh; the host's, read-only, serves.
            Err(Errno::EPERM) if orders.rootless && kind == "sysfs" => {
                read_only = true;
                mount(Some(Path::new("/sys")), &point, None, MsFlags::MS_BIND | MsFlags::MS_REC, None).map(|_| true)
            }
            other => other.map(|_| false),
        }
    };
    let is_bind = mounted.with_context(|| format!("cannot mount {} there", source.display()))?;
    if is_bind && read_only {
        remount_read_only(root, &m.destination)?;
    }
    if !options.propagation.is_empty() {
        let target = ensure(root, &m.destination, is_dir)?;
        mount(None, &crate::fsutil::fd_path(&target), None, options.propagation, None).context("cannot set the mount's propagation")?;
    }
    Ok(())
}

/// /sys/fs/cgroup: each of the host's hierarchies mounted again, read-only, inside the
/// container's cgroup namespace (so the container's own cgroup is its root); a normal
/// user's envy, which may not mount cgroup v1, binds the host's tree read-only.
fn mount_cgroups(root: &OwnedFd, m: &BundleMount, options: &Options, orders: &Orders) -> Result<()> {
    let target = ensure(root, &m.destination, true)?;
    let point = crate::fsutil::fd_path(&target);
    let flags = options.flags;
    if orders.rootless {
        mount(Some(Path::new("/sys/fs/cgroup")), &point, None, MsFlags::MS_BIND | MsFlags::MS_REC, None).context("cannot bind the host's cgroups")?;
        return remount_read_only(root, &m.destination);
    }
    if let [v2] = orders.hierarchies.as_slice() {
        if v2.is_v2() {
            return Ok(mount(Some(Path::new("cgroup2")), &point, Some("cgroup2"), flags, None)?);
        }
    }
    let tmpfs_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some(Path::new("tmpfs")), &point, Some("tmpfs"), tmpfs_flags, Some("mode=755")).context("cannot mount a tmpfs for the cgroups")?;
    for hierarchy in &orders.hierarchies {
        let name = hierarchy.mount.file_name().context("a cgroup hierarchy is mounted in a folder of its own")?;
        let inside = m.destination.join(name);
        let dir = ensure(root, &inside, true)?;
        mount(Some(Path::new("cgroup")), &crate::fsutil::fd_path(&dir), Some("cgroup"), flags, Some(&hierarchy.options))
            .with_context(|| format!("cannot mount the {} cgroup hierarchy", hierarchy.options))?;
    }
    Ok(())
}

/// The default device nodes in the container's /dev (a tmpfs of its own by now):
/// made by root, bind-mounted from the host's by a normal user (whose namespace
/// cannot make usable nodes); then the usual links.
fn make_devices(root: &OwnedFd, rootless: bool) -> Result<()> {
    let dev = existing(root, Path::new("/dev"))?.context("the container has no /dev")?;
    for (name, major, minor) in DEVICES {
        let c_name = CString::new(name).expect("no NUL in device names");
        if rootless {
            let node = ensure(root, &Path::new("/dev").join(name), false)?;
            mount(Some(&Path::new("/dev").join(name)), &crate::fsutil::fd_path(&node), None, MsFlags::MS_BIND, None)
                .with_context(|| format!("cannot bind the host's /dev/{name}"))?;
        } else {
            let mode = libc::S_IFCHR | 0o666;
            if unsafe { libc::mknodat(dev.as_raw_fd(), c_name.as_ptr(), mode, libc::makedev(major, minor)) } != 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot make /dev/{name}"));
            }
        }
    }
    for (name, target) in DEV_LINKS {
        let (c_name, c_target) = (CString::new(name).expect("no NUL"), CString::new(target).expect("no NUL"));
        if unsafe { libc::symlinkat(c_target.as_ptr(), dev.as_raw_fd(), c_name.as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot link /dev/{name}"));
        }
    }
    Ok(())
}

/// Makes the laid-out root this mount namespace's root, and lets go of the host's.
fn pivot_root(root: &OwnedFd) -> Result<()> {
    nix::unistd::fchdir(root.as_raw_fd()).context("cannot enter the machine's root")?;
    // With both "." the old root ends up stacked under the new one, then unmounted.
    nix::unistd::pivot_root(".", ".").context("cannot pivot to the machine's root")?;
    mount(None, Path::new("."), None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None).context("cannot detach the host's mounts")?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH).context("cannot unmount the host's root")?;
    nix::unistd::chdir("/").context("cannot enter the new root")?;
    Ok(())
}

/// `path` inside the root, resolved in it; `None` when it does not exist.
fn existing(root: &OwnedFd, path: &Path) -> Result<Option<OwnedFd>> {
    match crate::fsutil::open_in_root(root, path) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot open {} in the machine's root", path.display())),
    }
}

/// `path` inside the root, resolved in it, made (a folder, or an empty file) with the
/// folders above it when missing.
fn ensure(root: &OwnedFd, path: &Path, dir: bool) -> Result<OwnedFd> {
    if let Some(fd) = existing(root, path)? {
        return Ok(fd);
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else { bail!("{} cannot be made", path.display()) };
    let parent_fd = ensure(root, parent, true)?;
    let c_name = CString::new(name.as_bytes()).with_context(|| format!("{} has a NUL byte", path.display()))?;
    let made = if dir {
        unsafe { libc::mkdirat(parent_fd.as_raw_fd(), c_name.as_ptr(), 0o755) }
    } else {
        let fd = unsafe { libc::openat(parent_fd.as_raw_fd(), c_name.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0o644) };
        if fd >= 0 {
            unsafe { libc::close(fd) };
        }
        fd.min(0)
    };
    if made != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot make the mount point {} in the machine's root", path.display()));
    }
    existing(root, path)?.with_context(|| format!("the mount point {} vanished once made", path.display()))
}

/// Remounts the mount at `path` read-only, keeping the flags a user namespace may not
/// drop (nosuid, nodev, noexec, the atime ones).
fn remount_read_only(root: &OwnedFd, path: &Path) -> Result<()> {
    let target = existing(root, path)?.with_context(|| format!("{} is gone", path.display()))?;
    let point = crate::fsutil::fd_path(&target);
    let kept = nix::sys::statvfs::statvfs(&point).with_context(|| format!("cannot read the mount flags of {}", path.display()))?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    use nix::sys::statvfs::FsFlags;
    for (has, keep) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if kept.contains(has) {
            flags |= keep;
        }
    }
    mount(None, &point, None, flags, None).with_context(|| format!("cannot make {} read-only", path.display()))
}

fn open_dir(path: &Path) -> Result<OwnedFd> {
    let fd = nix::fcntl::open(path, nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: `open` just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn mount(source: Option<&Path>, target: &Path, kind: Option<&str>, flags: MsFlags, data: Option<&str>) -> Result<(), Errno> {
    nix::mount::mount(source, target, kind, flags, data)
}

/// A mount's options as mount(2) takes them: flags, propagation, and the rest as data.
#[derive(Debug, PartialEq)]
struct Options {
    flags: MsFlags,
    propagation: MsFlags,
    data: Option<String>,
}

impl Options {
    fn parse(list: &[String]) -> Options {
        let mut options = Options { flags: MsFlags::empty(), propagation: MsFlags::empty(), data: None };
        let mut data = Vec::new();
        for option in list {
            let (set, clear, propagation) = match option.as_str() {
                "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
                "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
                "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
                "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
                "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
                "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
                "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
                "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
                "bind" => (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty()),
                "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty(), MsFlags::empty()),
                "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
                "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), MsFlags::empty()),
                "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
                "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
                "rprivate" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE | MsFlags::MS_REC),
                "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
                "rslave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE | MsFlags::MS_REC),
                _ => {
                    data.push(option.as_str());
                    continue;
                }
            };
            options.flags = (options.flags | set) & !clear;
            options.propagation |= propagation;
        }
        options.data = (!data.is_empty()).then(|| data.join(","));
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_become_flags_propagation_and_data() {
        let list = |s: &[&str]| s.iter().map(|o| o.to_string()).collect::<Vec<_>>();
        let devpts = Options::parse(&list(&["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]));
        assert_eq!(devpts.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
        assert_eq!(devpts.data.as_deref(), Some("newinstance,ptmxmode=0666,mode=0620"));
        let bind = Options::parse(&list(&["rbind", "rprivate", "ro"]));
        assert_eq!(bind.flags, MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY);
        assert_eq!(bind.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(bind.data, None);
        assert_eq!(Options::parse(&list(&["ro", "rw"])).flags, MsFlags::empty());
    }

    #[test]
    fn a_bundle_setting_envys_runtime_does_not_apply_is_refused() {
        let config = r#"{"root":{"path":"/r"},"linux":{"namespaces":[],"seccomp":{"defaultAction":"SCMP_ACT_ALLOW"}}}"#;
        let err = serde_json::from_str::<Bundle>(config).unwrap_err().to_string();
        assert!(err.contains("seccomp"), "{err}");
        let config = r#"{"root":{"path":"/r"},"linux":{"resources":{"pids":{"limit":10}}}}"#;
        let err = serde_json::from_str::<Bundle>(config).unwrap_err().to_string();
        assert!(err.contains("pids"), "{err}");
        let config = r#"{"ociVersion":"1.0.2","process":{"args":["sh"]},"root":{"path":"/r"},"linux":{},"hooks":{}}"#;
        let err = serde_json::from_str::<Bundle>(config).unwrap_err().to_string();
        assert!(err.contains("hooks"), "{err}");
    }
}
