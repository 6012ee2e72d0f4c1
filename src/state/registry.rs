//! The user's list of projects (`$ENVY_HOME/projects.json`), so `envy list` can
//! show every environment and `envy box prune` can find every lock file.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use nix::fcntl::{Flock, FlockArg};

use crate::context::Home;

fn with_locked<T>(home: &Home, f: impl FnOnce(&mut BTreeSet<PathBuf>) -> T) -> Result<T> {
    std::fs::create_dir_all(home.locks_dir())?;
    let lock_path = home.locks_dir().join("projects.lock");
    let file = File::create(&lock_path).with_context(|| format!("cannot open {}", lock_path.display()))?;
    let _lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e)?;
    let path = home.projects_file();
    let mut set: BTreeSet<PathBuf> = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(_) => BTreeSet::new(),
    };
    let before = set.clone();
    let out = f(&mut set);
    if set != before {
        super::write_atomic(&path, &serde_json::to_vec_pretty(&set)?)?;
    }
    Ok(out)
}

/// Remembers a project folder.
pub fn add(home: &Home, project_dir: &Path) -> Result<()> {
    with_locked(home, |set| {
        set.insert(project_dir.to_path_buf());
    })
}

/// Forgets a project folder.
pub fn remove(home: &Home, project_dir: &Path) -> Result<()> {
    with_locked(home, |set| {
        set.remove(project_dir);
    })
}

/// Every remembered project folder that still exists.
pub fn projects(home: &Home) -> Result<Vec<PathBuf>> {
    with_locked(home, |set| {
        set.retain(|p| p.join(".envy").is_dir());
        set.iter().cloned().collect()
    })
}
