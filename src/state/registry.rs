//! The user's list of projects (`$ENVY_HOME/projects.json`), so `envy list` can
//! show every environment and `envy box prune` can find every lock file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::state::Home;

fn with_locked<T>(home: &Home, f: impl FnOnce(&mut BTreeSet<PathBuf>) -> T) -> Result<T> {
    // Held for a moment by whoever writes the list: no need to say whom we wait for.
    let _lock = crate::fsutil::FileLock::acquire(&home.locks_dir().join("projects.lock"), |_| ())?;
    let path = home.projects_file();
    // A registry that cannot be read is an error, never an empty list: `box prune`
    // keeps what the listed projects pin, so reading it as empty would delete their boxes.
    let mut set: BTreeSet<PathBuf> = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| super::Error::BadRecord {
            path: path.clone(),
            message: format!(
                "is damaged ({e}); fix it by hand (a JSON list of project folders), or delete it \
                 and run `envy up` in each of your projects to list them again"
            ),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let before = set.clone();
    let out = f(&mut set);
    if set != before {
        crate::fsutil::write_atomic(&path, &serde_json::to_vec_pretty(&set)?)?;
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

/// Every remembered project folder. A folder deleted while its machines exist stays
/// listed (its state lives in ENVY_HOME), until `envy destroy` forgets it.
pub fn projects(home: &Home) -> Result<Vec<PathBuf>> {
    with_locked(home, |set| set.iter().cloned().collect())
}
