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

/// What /proc/PID/stat says of a process that envy asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Its state letter (field 3): R, S, D, T (stopped), Z (zombie), X (dead), ...
    pub state: char,
    /// Its start time in clock ticks since boot (field 22).
    pub start_time: u64,
}

impl ProcStat {
    /// A zombie or a dead process: gone, whatever its pid still shows.
    pub fn is_gone(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// /proc/PID/stat of `pid`, if it exists.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parens; fields resume after the last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some(ProcStat { state, start_time: fields.nth(18)?.parse().ok()? })
}

/// A process's start time in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|s| s.start_time)
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
            c.boot_id == boot_id() && proc_stat(c.pid).is_some_and(|s| s.start_time == c.start_time && !s.is_gone())
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
