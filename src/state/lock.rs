//! One lock per project serializes the commands that change its machines. A second
//! command waits (the caller says for whom) or, with `--no-wait`, fails at once.

use std::path::Path;

use anyhow::Result;

use crate::fsutil::FileLock;

/// Held for as long as the value lives; the kernel drops it if the process dies.
pub struct ProjectLock {
    _lock: FileLock,
}

impl ProjectLock {
    /// Takes `lock` in `state_dir`, the state of the project in `project_dir`;
    /// `waiting` hears the holder's pid before a wait.
    pub fn acquire(state_dir: &Path, project_dir: &Path, no_wait: bool, waiting: impl FnOnce(&str)) -> Result<ProjectLock> {
        crate::fsutil::create_private_dir(state_dir)?;
        let path = state_dir.join("lock");
        let lock = if no_wait {
            FileLock::try_acquire(&path)?
                .map_err(|holder| super::Error::Busy { project: project_dir.to_path_buf(), holder })?
        } else {
            FileLock::acquire(&path, waiting)?
        };
        Ok(ProjectLock { _lock: lock })
    }
}
