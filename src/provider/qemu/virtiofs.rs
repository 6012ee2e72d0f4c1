//! Sync folders over virtiofs: one virtiofsd per folder, started by envy before QEMU
//! and stopped after it, each serving the folder envy opened (never a path looked up
//! again) on a private vhost-user socket in the machine dir. When virtiofsd is missing
//! (or envy is not root, which its sandbox needs), or a folder is read-only (virtiofsd
//! cannot enforce that; QEMU's 9p can), the folder goes over 9p instead.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::files::MachineFiles;
use crate::plan::OpenedFolder;
use crate::process::Process;
use crate::provider::Error;
use crate::state::PidFile;

/// Names the virtiofsd to use, or `none` to share every folder over 9p.
pub const ENV: &str = "ENVY_VIRTIOFSD";
/// Where virtiofsd is looked for after PATH: the Rust virtiofsd's packaged place, and
/// Debian 12's QEMU 7.2 one (package qemu-system-common).
const KNOWN_PATHS: &[&str] = &["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"];
/// How long a virtiofsd gets to create its socket, and to exit when stopped.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a sync folder reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Virtiofs,
    #[serde(rename = "9p")]
    NineP,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Virtiofs => "virtiofs",
            Transport::NineP => "9p",
        }
    }
}

/// The virtiofsd envy would use, or why there is none.
pub fn find() -> Result<PathBuf, String> {
    match std::env::var_os(ENV) {
        Some(v) if v == "none" => return Err(format!("{ENV}=none")),
        Some(v) if !v.is_empty() => {
            let path = PathBuf::from(v);
            return if path.is_file() { Ok(path) } else { Err(format!("{ENV}={} is not a file", path.display())) };
        }
        _ => {}
    }
    crate::provider::host::which("virtiofsd")
        .or_else(|| KNOWN_PATHS.iter().map(PathBuf::from).find(|p| p.is_file()))
        .ok_or_else(|| {
            format!("virtiofsd is neither on PATH nor in {}", KNOWN_PATHS.join(" or "))
        })
}

/// The transport of each folder: virtiofs for writable folders when virtiofsd is here
/// and envy runs as root (virtiofsd's namespace sandbox and pid file under /run need
/// it; inside a normal user's namespace it cannot write them), 9p otherwise.
pub fn choose(folders: &[OpenedFolder]) -> (Option<PathBuf>, Vec<Transport>) {
    let binary = find().ok().filter(|_| !crate::userns::is_rootless());
    let transports = folders
        .iter()
        .map(|f| if binary.is_some() && !f.folder.readonly { Transport::Virtiofs } else { Transport::NineP })
        .collect();
    (binary, transports)
}

/// The vhost-user socket of the folder at `index`.
pub fn socket(files: &MachineFiles, index: usize) -> PathBuf {
    files.socket(&format!("virtiofs{index}.sock"))
}

fn pid_record(files: &MachineFiles, index: usize) -> PidFile {
    PidFile::at(files.dir.join(format!("virtiofsd{index}.json")))
}

/// The log of the folder's virtiofsd (its stderr), for errors.
fn log(files: &MachineFiles, index: usize) -> PathBuf {
    files.dir.join(format!("virtiofsd{index}.log"))
}

/// Indices of the folders whose virtiofsd left a pid record or a log in the machine dir.
fn recorded(files: &MachineFiles) -> Vec<usize> {
    let mut found: Vec<usize> = std::fs::read_dir(&files.dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let stem = name.strip_prefix("virtiofsd")?;
            stem.strip_suffix(".json").or_else(|| stem.strip_suffix(".log"))?.parse().ok()
        })
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// Every file the virtiofsds left (logs kept after a halt), for `destroy`.
pub fn all_files(files: &MachineFiles) -> Vec<PathBuf> {
    recorded(files)
        .into_iter()
        .flat_map(|i| [socket(files, i), pid_record(files, i).path().to_path_buf(), log(files, i)])
        .collect()
}

/// Starts virtiofsd for the folder at `index` and waits for its socket. virtiofsd
/// closes inherited fds and moves to `/` before it opens its source, so neither
/// /proc/self/fd/N nor a cwd can name the opened folder: it gets the path the fd
/// resolves to now, and `verify` checks, once QEMU connected and virtiofsd sandboxed
/// itself there, that its root is that very folder (a guest could otherwise swap a
/// folder synced inside another for a symlink in between).
pub fn start(binary: &Path, files: &MachineFiles, index: usize, opened: &OpenedFolder) -> anyhow::Result<u32> {
    let socket = socket(files, index);
    let _ = std::fs::remove_file(&socket);
    if let Some(dir) = socket.parent() {
        crate::fsutil::create_private_dir(dir)?;
    }
    let log_path = log(files, index);
    let log = crate::fsutil::create_private(&log_path)?;
    let source = std::fs::read_link(opened.proc_path())
        .map_err(|cause| Error::Host { doing: format!("resolve sync folder {}", opened.folder.host.display()), cause })?;
    let virtiofsd = Process::new(binary)
        .arg(format!("--socket-path={}", socket.display()))
        .arg("-o")
        .arg(format!("source={}", source.display()))
        // cache=auto: the guest caches for a second, like 9p's default, so host edits show quickly.
        .args(["-o", "cache=auto"])
        .doing(format!("serving sync folder {}", opened.folder.host.display()))
        .stderr_to(log);
    // SAFETY: setsid and umask are async-signal-safe and touch only the child.
    let virtiofsd = unsafe {
        virtiofsd.pre_exec(|| {
            // Its own session: it outlives this envy command, like QEMU.
            libc::setsid();
            libc::umask(0o077);
            Ok(())
        })
    };
    let pid = virtiofsd.spawn()?.id();
    pid_record(files, index)
        .write(pid)
        .map_err(|e| Error::RecordPid { program: "virtiofsd", pid, cause: format!("{e:#}") })?;
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    while !socket.exists() {
        if pid_record(files, index).alive().is_none() || Instant::now() >= deadline {
            stop(files, index);
            return Err(Error::VirtiofsdNotStarted {
                folder: opened.folder.host.clone(),
                socket,
                seconds: SOCKET_TIMEOUT.as_secs(),
                log: log_path,
            }
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(pid)
}

/// Waits until the folder's virtiofsd has its sandbox root (after QEMU connected) and
/// checks it is the folder envy opened, by device and inode.
pub fn verify(files: &MachineFiles, index: usize, opened: &OpenedFolder) -> Result<(), Error> {
    let want = nix::sys::stat::fstat(opened.fd.as_raw_fd()).map(|m| (m.st_dev, m.st_ino));
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    loop {
        let root = pid_record(files, index)
            .alive()
            .and_then(|pid| nix::sys::stat::stat(format!("/proc/{pid}/root").as_str()).ok())
            .map(|m| (m.st_dev, m.st_ino));
        if root.is_some() && root == want.ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::VirtiofsdWrongRoot { folder: opened.folder.host.clone(), log: log(files, index) });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the folder's virtiofsd, if it runs (it also exits by itself when QEMU goes).
fn stop(files: &MachineFiles, index: usize) {
    let record = pid_record(files, index);
    if let Some(pid) = record.alive() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while record.alive().is_some() {
            if Instant::now() >= deadline {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    record.remove();
    let _ = std::fs::remove_file(socket(files, index));
}

/// Stops every virtiofsd of the machine.
pub fn stop_all(files: &MachineFiles) {
    recorded(files).into_iter().for_each(|i| stop(files, i));
}

/// For `envy doctor`: virtiofsd makes VM sync folders fast; without it they use 9p,
/// which works.
pub fn host_check() -> crate::model::HostCheck {
    use crate::model::{CheckStatus, HostCheck};
    let root = !crate::userns::is_rootless();
    let (status, detail, advice) = match find() {
        Ok(path) if root => (CheckStatus::Ok, format!("VM sync folders use virtiofs ({})", path.display()), None),
        Ok(path) => (
            CheckStatus::Warn,
            format!("{} is here, but virtiofsd's sandbox needs root, so VM sync folders use 9p", path.display()),
            Some("run envy as root for virtiofs sync folders".to_string()),
        ),
        Err(why) => (
            CheckStatus::Warn,
            format!("{why}, so VM sync folders use 9p (about half as fast)"),
            Some(format!(
                "install it: apt-get install qemu-system-common (Debian 12 ships it as /usr/lib/qemu/virtiofsd), \
                 or `cargo install --locked virtiofsd` (needs libcap-ng-dev and libseccomp-dev); \
                 {ENV} names another one, or none for 9p"
            )),
        ),
    };
    HostCheck { name: "virtiofsd".into(), status, detail, advice, version_from: None }
}

