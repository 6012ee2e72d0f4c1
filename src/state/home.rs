//! Where envy keeps its data (`ENVY_HOME`): the box store, downloads, each project's
//! state, the user's project list and config.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// envy's global data directory (`ENVY_HOME`, or the platform data dir).
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `ENVY_HOME` when set, otherwise the platform's data dir for envy.
    pub fn locate() -> Result<Home> {
        let root = match std::env::var_os("ENVY_HOME") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => directories::ProjectDirs::from("dev", "envy", "envy")
                .map(|d| d.data_dir().to_path_buf())
                .context("cannot find a home directory for envy's data; set ENVY_HOME")?,
        };
        Ok(Home { root })
    }

    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Content-addressed box store: `boxes/<sha256>/`.
    pub fn boxes_dir(&self) -> PathBuf {
        self.root.join("boxes")
    }
    /// Partial downloads, kept across interruptions so they can resume.
    pub fn downloads_dir(&self) -> PathBuf {
        self.root.join("downloads")
    }
    /// Lock files for store operations (one per digest or URL).
    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }
    /// Each project's state (`projects/<key>/`): machine records, layers, disks, keys.
    pub fn projects_dir(&self) -> PathBuf {
        self.root.join("projects")
    }
    /// Every project this user has brought up, for `envy list`.
    pub fn projects_file(&self) -> PathBuf {
        self.root.join("projects.json")
    }
    /// The global config file. With ENVY_HOME set it lives there; otherwise in the
    /// platform config dir.
    pub fn config_file(&self) -> PathBuf {
        if std::env::var_os("ENVY_HOME").is_some_and(|d| !d.is_empty()) {
            return self.root.join("config.toml");
        }
        directories::ProjectDirs::from("dev", "envy", "envy")
            .map(|d| d.config_dir().join("config.toml"))
            .unwrap_or_else(|| self.root.join("config.toml"))
    }
    /// Runtime state that must not survive a reboot (runc's state, sockets).
    pub fn runtime_dir(&self) -> PathBuf {
        self.root.join("run")
    }
}
