//! Why a command did not start in a container, as a shell says it: 127 when there is
//! no such command, 126 when it exists but cannot be executed. `runc exec` (a
//! terminal's exec; enter.rs knows the errno itself) exits 255 for both, and for a
//! command that itself exits 255, so after its 255 the command is
//! looked up in the container's own root: through its init's `/proc/PID/root`, every
//! path resolved inside that root (openat2 with RESOLVE_IN_ROOT), so a guest's
//! symlink never leads the lookup onto the host's files.

use std::os::fd::{AsRawFd, OwnedFd};

/// What the container's root holds under a command's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A regular file with an execute bit: it did run, so 255 was its own code.
    Executable,
    /// Something by that name that cannot be executed (no execute bit, a folder).
    NotExecutable,
    Nothing,
}

/// Looks `command` up as execve and Go's LookPath (which runc uses) would: a name with
/// a `/` is a path (relative to `cwd`), any other name is searched in `path_var`.
pub fn find(init_pid: u32, command: &str, path_var: &str, cwd: &str) -> Found {
    let Some(root) = open_root(init_pid) else { return Found::Executable };
    if command.contains('/') {
        let path = if command.starts_with('/') { command.to_string() } else { format!("{cwd}/{command}") };
        return examine(&root, &path);
    }
    let mut found = Found::Nothing;
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        match examine(&root, &format!("{dir}/{command}")) {
            Found::Executable => return Found::Executable,
            Found::NotExecutable => found = Found::NotExecutable,
            Found::Nothing => {}
        }
    }
    found
}

/// The container's root directory as its init sees it (with its own mounts).
/// When it cannot be opened (the container just ended), `find` answers Executable,
/// so runc's 255 is passed on unchanged.
fn open_root(init_pid: u32) -> Option<OwnedFd> {
    std::fs::File::open(format!("/proc/{init_pid}/root")).ok().map(OwnedFd::from)
}

fn examine(root: &OwnedFd, path: &str) -> Found {
    let Ok(file) = crate::fsutil::open_in_root(root, std::path::Path::new(path)) else { return Found::Nothing };
    match nix::sys::stat::fstat(file.as_raw_fd()) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_mode & 0o111 != 0 => Found::Executable,
        Ok(_) => Found::NotExecutable,
        Err(_) => Found::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's own root stands in for a container's: the lookup rules are the same.
    #[test]
    fn commands_are_found_by_path_and_by_name() {
        let me = std::process::id();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        std::fs::write(dir.path().join("plain"), "echo\n").unwrap();
        std::os::unix::fs::symlink("/no/such/target", dir.path().join("dangling")).unwrap();
        assert_eq!(find(me, "sh", "/nonexistent:/bin:/usr/bin", "/"), Found::Executable);
        assert_eq!(find(me, "no-such-command-here", "/bin:/usr/bin", "/"), Found::Nothing);
        assert_eq!(find(me, "plain", &format!("/nonexistent:{d}"), "/"), Found::NotExecutable);
        assert_eq!(find(me, "./plain", "/bin", d), Found::NotExecutable);
        assert_eq!(find(me, d, "/bin", "/"), Found::NotExecutable, "a folder cannot be executed");
        assert_eq!(find(me, "dangling", d, "/"), Found::Nothing);
    }
}
