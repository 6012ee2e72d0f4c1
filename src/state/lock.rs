//! One lock per project serializes the commands that change its machines. A second
//! command waits (saying for whom) or, with `--no-wait`, fails at once.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context as _, Result};
use nix::fcntl::{Flock, FlockArg};

use crate::ui::Ui;

/// Held for as long as the value lives; the kernel drops it if the process dies.
pub struct ProjectLock {
    _lock: Flock<File>,
}

impl ProjectLock {
    /// Takes `lock` in `state_dir`, the state of the project in `project_dir`.
    pub fn acquire(state_dir: &Path, project_dir: &Path, no_wait: bool, ui: &Ui) -> Result<ProjectLock> {
        super::create_private_dir(state_dir)?;
        let path = state_dir.join("lock");
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))
        };
        let mut lock = match Flock::lock(open()?, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((file, _)) => {
                let holder = read_holder(file);
                let project = project_dir.to_path_buf();
                if no_wait {
                    return Err(super::Error::Busy { project, holder }.into());
                }
                ui.step(format!("waiting for another envy command (pid {holder}) to finish"));
                Flock::lock(open()?, FlockArg::LockExclusive)
                    .map_err(|(_, e)| e)
                    .with_context(|| format!("cannot lock {}", path.display()))?
            }
        };
        lock.set_len(0)?;
        lock.rewind()?;
        write!(lock, "{}", std::process::id())?;
        Ok(ProjectLock { _lock: lock })
    }
}

fn read_holder(mut file: File) -> String {
    let mut s = String::new();
    let _ = file.read_to_string(&mut s);
    if s.trim().is_empty() { "unknown".into() } else { s.trim().to_string() }
}
