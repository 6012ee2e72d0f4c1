//! The QEMU process of a machine: started detached (it outlives the envy command),
//! recorded in a pid file tied to the boot id, and stopped gracefully or at once.

use std::os::fd::RawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::files::MachineFiles;
use super::qmp::{self, Qmp};
use crate::process::Process;
use crate::provider::Error;
use crate::state::PidFile;

/// How long a graceful halt waits for the guest to power itself off.
pub const HALT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long QEMU gets to exit after `quit` or SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The machine's QEMU pid, when that very process is alive.
pub fn running_pid(files: &MachineFiles) -> Option<u32> {
    PidFile::at(&files.pid_record).alive()
}

/// Starts QEMU (which daemonizes once set up) and records its pid. Files QEMU creates
/// (QMP socket, console log) are private to the user. QEMU inherits the fds in
/// `inherit` at their own numbers, which its command line names (sync folders it
/// opens as /proc/self/fd/N, the project tap).
pub fn start(qemu: Process, files: &MachineFiles, inherit: &[RawFd]) -> Result<u32, Error> {
    let _ = std::fs::remove_file(&files.qmp_socket);
    let _ = std::fs::remove_file(&files.qemu_pidfile);
    let inherit = inherit.to_vec();
    // SAFETY: umask and fcntl are async-signal-safe and touch only the child's own state.
    let qemu = unsafe {
        qemu.pre_exec(move || {
            libc::umask(0o077);
            for &fd in &inherit {
                // Only close-on-exec is cleared, in the child.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
    qemu.doing("starting the machine").run()?;
    let pid = std::fs::read_to_string(&files.qemu_pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .ok_or_else(|| Error::QemuNoPid { pidfile: files.qemu_pidfile.clone(), log: files.console_log.clone() })?;
    PidFile::at(&files.pid_record)
        .write(pid)
        .map_err(|e| Error::RecordPid { program: "QEMU", pid, cause: format!("{e:#}") })?;
    private(&files.qmp_socket);
    Ok(pid)
}

/// Makes a file QEMU created readable by its owner only (the umask covers most).
fn private(path: &Path) {
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

/// Waits until `pid` has exited, at most `timeout`; true when it did.
pub fn wait_exit(files: &MachineFiles, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while running_pid(files).is_some() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// Asks the guest to power off (ACPI power button); returns once QEMU exited, or false
/// if it did not within `timeout`.
pub fn power_down(files: &MachineFiles, timeout: Duration) -> Result<bool, Error> {
    Qmp::connect(&files.qmp_socket, qmp::QUICK)?.powerdown()?;
    Ok(wait_exit(files, timeout))
}

/// Ends QEMU now: QMP `quit`, then SIGKILL if it does not go.
pub fn stop_now(files: &MachineFiles) -> Result<(), Error> {
    let Some(pid) = running_pid(files) else { return Ok(()) };
    if let Ok(mut qmp) = Qmp::connect(&files.qmp_socket, qmp::QUICK) {
        let _ = qmp.quit();
        if wait_exit(files, EXIT_TIMEOUT) {
            return finish(files);
        }
    }
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    if !wait_exit(files, EXIT_TIMEOUT) {
        return Err(Error::Unkillable { pid });
    }
    finish(files)
}

/// Clears what a stopped QEMU leaves behind, and stops its virtiofsds.
pub fn finish(files: &MachineFiles) -> Result<(), Error> {
    super::virtiofs::stop_all(files);
    PidFile::at(&files.pid_record).remove();
    let _ = std::fs::remove_file(&files.qmp_socket);
    let _ = std::fs::remove_file(&files.qemu_pidfile);
    Ok(())
}
