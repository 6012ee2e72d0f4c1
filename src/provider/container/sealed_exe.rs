//! envy's own binary, reachable only read-only, for the process that enters a
//! container (enter.rs). That process becomes the guest's command by execve, and until
//! then its `/proc/self/exe` is the binary it runs: a guest that replaced the command
//! with `#!/proc/self/exe` (CVE-2019-5736) would have the kernel run that binary inside
//! the container, where root can reopen it for writing once envy exits. So the
//! entering process is started from a private overlayfs with two lower layers and no
//! upper one (the binary's folder over an empty one): a mount that exists in no
//! namespace, read-only by construction, which, unlike a read-only bind mount, cannot
//! be made writable again. runc (1.2) protects its own binary the same way. Creating
//! it needs CAP_SYS_ADMIN over the mount namespace: root, or a normal user's envy
//! inside its own namespace (Linux 5.11 lets overlayfs mount there).

use std::ffi::CString;
use std::os::fd::{AsRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// fsconfig(2) commands (linux/mount.h; the libc crate has the syscall numbers only).
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("envy's own binary {path} was replaced or removed while envy ran; run the command again")]
    Replaced { path: PathBuf },
    #[error("{path} is not envy's binary (a program built on envy's library): it cannot enter a container itself")]
    NotEnvy { path: PathBuf },
    #[error("cannot make a read-only view of envy's binary ({step}): {source}")]
    Mount { step: &'static str, source: std::io::Error },
}

/// An `O_PATH` descriptor of envy's binary through a fresh read-only overlay, for
/// `execveat(fd, "", AT_EMPTY_PATH)`. `empty_dir` is a folder of envy's own, the lower
/// layer overlayfs needs beneath the binary's folder.
pub fn open(empty_dir: &Path) -> Result<OwnedFd, Error> {
    let exe = std::fs::read_link("/proc/self/exe").map_err(|e| Error::Mount { step: "reading /proc/self/exe", source: e })?;
    let (Some(dir), Some(name)) = (exe.parent(), exe.file_name()) else {
        return Err(Error::Replaced { path: exe });
    };
    if !exe.is_absolute() || exe.as_os_str().as_bytes().ends_with(b" (deleted)") {
        return Err(Error::Replaced { path: exe });
    }
    // Only envy's own binary serves `envy __container-exec`.
    if name != "envy" {
        return Err(Error::NotEnvy { path: exe });
    }
    let context = check("fsopen overlay", unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), libc::FSOPEN_CLOEXEC) })?;
    let lower = CString::new([escape(dir), b":".to_vec(), escape(empty_dir)].concat())
        .map_err(|e| Error::Mount { step: "naming the lower layers", source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e) })?;
    let set = |key: &std::ffi::CStr, value: &std::ffi::CStr| unsafe {
        libc::syscall(libc::SYS_fsconfig, context.as_raw_fd(), FSCONFIG_SET_STRING, key.as_ptr(), value.as_ptr(), 0)
    };
    succeeded("fsconfig lowerdir", set(c"lowerdir", &lower))?;
    // xino only adds kernel log lines when the layers are on different filesystems.
    let _ = set(c"xino", c"off");
    succeeded("fsconfig create", unsafe {
        libc::syscall(libc::SYS_fsconfig, context.as_raw_fd(), FSCONFIG_CMD_CREATE, std::ptr::null::<libc::c_char>(), std::ptr::null::<libc::c_void>(), 0)
    })?;
    let attrs = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    let mount = check("fsmount", unsafe { libc::syscall(libc::SYS_fsmount, context.as_raw_fd(), libc::FSMOUNT_CLOEXEC, attrs) })?;
    let name = CString::new(name.as_bytes()).map_err(|e| Error::Mount { step: "naming the binary", source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e) })?;
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    check("opening the binary", unsafe { libc::openat(mount.as_raw_fd(), name.as_ptr(), flags) } as libc::c_long)
}

/// Starts `exe` (from `open`) as `envy ARGS` in a child of this process, and returns
/// its pid. The child keeps envy's descriptors `keep` (ARGS names their numbers) and
/// no other, and takes `stdin` and `output` (for stdout and stderr) where given. If
/// the binary cannot be started, the child writes `said` to `report` and exits 1.
pub fn spawn(exe: &OwnedFd, args: &[String], keep: &[RawFd], stdin: Option<RawFd>, output: Option<RawFd>, report: RawFd, said: &[u8]) -> std::io::Result<libc::pid_t> {
    let argv: Vec<CString> = std::iter::once("envy")
        .chain(args.iter().map(String::as_str))
        .map(|a| CString::new(a).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))
        .collect::<std::io::Result<_>>()?;
    let argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: between fork and exec the child calls only async-signal-safe functions
    // (dup2, fcntl, execveat, write, _exit) on values prepared above.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if child == 0 {
        unsafe {
            if let Some(fd) = stdin {
                libc::dup2(fd, 0);
            }
            if let Some(fd) = output {
                libc::dup2(fd, 1);
                libc::dup2(fd, 2);
            }
            for &fd in keep {
                libc::fcntl(fd, libc::F_SETFD, 0);
            }
            libc::syscall(libc::SYS_execveat, exe.as_raw_fd(), c"".as_ptr(), argv_ptrs.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH);
            libc::write(report, said.as_ptr().cast(), said.len());
            libc::_exit(1);
        }
    }
    Ok(child)
}

/// A syscall's result as an owned descriptor, or its errno named by step.
fn check(step: &'static str, ret: libc::c_long) -> Result<OwnedFd, Error> {
    crate::fsutil::fd_from_syscall(ret).map_err(|source| Error::Mount { step, source })
}

/// A syscall that returns 0 or -1, or its errno named by step.
fn succeeded(step: &'static str, ret: libc::c_long) -> Result<(), Error> {
    if ret != 0 {
        return Err(Error::Mount { step, source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// overlayfs splits lowerdir at `:` and reads `\` as an escape.
fn escape(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for &byte in path.as_os_str().as_bytes() {
        if byte == b':' || byte == b'\\' {
            out.push(b'\\');
        }
        out.push(byte);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_dirs_are_escaped_for_overlayfs() {
        assert_eq!(escape(Path::new("/opt/a:b\\c")), b"/opt/a\\:b\\\\c".to_vec());
        assert_eq!(escape(Path::new("/usr/bin")), b"/usr/bin".to_vec());
    }
}
