//! Pid files that cannot lie: each holds the pid, the host's boot id and the
//! process's start time, so a pid reused after a crash or a reboot is not mistaken
//! for the machine's process.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// The kernel's id for this boot; changes on every reboot.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A process's start time in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parens; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[derive(Debug, Serialize, Deserialize)]
struct Content {
    pid: u32,
    boot_id: String,
    start_time: u64,
}

/// A pid file at a path.
#[derive(Debug, Clone)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    pub fn at(path: impl Into<PathBuf>) -> PidFile {
        PidFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `pid` as the live process of this file.
    pub fn write(&self, pid: u32) -> Result<()> {
        let content = Content {
            pid,
            boot_id: boot_id(),
            start_time: start_time(pid).unwrap_or(0),
        };
        crate::fsutil::write_atomic(&self.path, serde_json::to_string(&content)?.as_bytes())
    }

    /// The pid, if the file exists and names a process of this boot that is still
    /// the same process (same start time). A stale file is removed.
    pub fn alive(&self) -> Option<u32> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let content = serde_json::from_str::<Content>(&text).ok();
        let live = content.filter(|c| {
            c.boot_id == boot_id() && start_time(c.pid).is_some_and(|t| t == c.start_time)
                && !is_zombie(c.pid)
        });
        match live {
            Some(c) => Some(c.pid),
            None => {
                let _ = std::fs::remove_file(&self.path);
                None
            }
        }
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().starts_with('Z')))
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_dead_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = PidFile::at(dir.path().join("pid"));
        file.write(std::process::id()).unwrap();
        assert_eq!(file.alive(), Some(std::process::id()));

        let mut child = crate::process::Process::new("true").spawn().unwrap();
        let pid = child.id();
        file.write(pid).unwrap();
        child.wait().unwrap();
        assert_eq!(file.alive(), None);
        assert!(!file.path().exists(), "a stale pid file is removed");
    }

    #[test]
    fn a_record_from_another_boot_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pid");
        let content = Content {
            pid: std::process::id(),
            boot_id: "00000000-0000-0000-0000-000000000000".into(),
            start_time: start_time(std::process::id()).unwrap(),
        };
        std::fs::write(&path, serde_json::to_string(&content).unwrap()).unwrap();
        assert_eq!(PidFile::at(&path).alive(), None);
    }
}
