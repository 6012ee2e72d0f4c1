//! A machine's container, whichever runtime runs it: envy's own (native.rs) where it
//! can make containers on this host, else runc. Both keep a state file of one form
//! (the part of runc's state.json envy reads), so one reader says what either's
//! container is doing, and each command goes to the runtime that made the container.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::native::Native;
use super::runc::Runc;
use super::sealed_exe;
use crate::process::Pidfd;
use crate::provider::ExecRequest;

/// A container's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Pausing,
    Paused,
    Stopped,
}

/// What envy knows of a container.
#[derive(Debug, Clone, Deserialize)]
pub struct ContainerState {
    pub pid: u32,
    pub status: Status,
    /// The init as the state file records it; `None` when it was asked of `runc
    /// state` (a state file of a format envy does not know).
    #[serde(skip)]
    pub init: Option<Init>,
}

/// A container's init as its state file records it: what envy needs to enter the
/// container (enter.rs), signal it and find its cgroups.
#[derive(Debug, Clone)]
pub struct Init {
    pub pid: u32,
    /// Its start time in clock ticks since boot, as /proc/PID/stat has it.
    pub start_time: u64,
    /// The container's cgroup folders (one per v1 controller, or the v2 one).
    pub cgroups: Vec<PathBuf>,
}

/// The state file (`<root>/<id>/state.json`): the part of runc's envy reads, and all
/// of envy's own runtime writes.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StateFile {
    pub init_process_pid: u32,
    /// The init's start time in clock ticks since boot, as /proc/PID/stat has it.
    pub init_process_start: u64,
    /// Each cgroup controller's folder; "freezer" on cgroup v1, "" for v2.
    #[serde(default)]
    pub cgroup_paths: BTreeMap<String, PathBuf>,
}

/// What a state folder says.
pub(super) enum Recorded {
    Absent,
    /// A state file of a format envy does not know (another runc's).
    Unknown,
    Known(ContainerState),
}

/// Reads the state file in `dir` (written by rename once the container is made),
/// then the init it names: alive with the start time recorded, running; gone, a
/// zombie, or another process since, stopped. runc's exec fifo still there means
/// created, not started; a frozen cgroup, paused.
pub(super) fn read_state(dir: &Path) -> Result<Recorded> {
    let Some(text) = crate::fsutil::read_private(&dir.join("state.json"))? else { return Ok(Recorded::Absent) };
    let Ok(recorded) = serde_json::from_slice::<StateFile>(&text) else { return Ok(Recorded::Unknown) };
    let pid = recorded.init_process_pid;
    let status = match crate::state::proc_stat(pid) {
        Some(stat) if stat.start_time == recorded.init_process_start && !stat.is_gone() => {
            if dir.join("exec.fifo").exists() {
                Status::Created
            } else if super::cgroups::is_frozen(&recorded.cgroup_paths) {
                Status::Paused
            } else {
                Status::Running
            }
        }
        _ => Status::Stopped,
    };
    let init = Init { pid, start_time: recorded.init_process_start, cgroups: recorded.cgroup_paths.into_values().collect() };
    Ok(Recorded::Known(ContainerState { pid, status, init: Some(init) }))
}

/// A pidfd of the process `pid` if it is still the one that started at `start_time`
/// (checked after opening, so the descriptor can never name a reused pid), and alive.
pub(super) fn open_pidfd(pid: u32, start_time: u64) -> Option<Pidfd> {
    let pidfd = Pidfd::open(pid)?;
    crate::state::proc_stat(pid).is_some_and(|s| s.start_time == start_time && !s.is_gone()).then_some(pidfd)
}

/// The runtimes of one envy home.
pub struct Runtime {
    native: Native,
    runc: Runc,
    runtime_dir: PathBuf,
}

impl Runtime {
    pub fn of(runtime_dir: &Path) -> Runtime {
        Runtime {
            native: Native::with_root(runtime_dir.join("containers")),
            runc: Runc::with_root(runtime_dir.join("runc")),
            runtime_dir: runtime_dir.to_path_buf(),
        }
    }

    /// The container's state, or `None` when neither runtime has it.
    pub fn state(&self, id: &str) -> Result<Option<ContainerState>> {
        match self.native.state(id)? {
            Some(state) => Ok(Some(state)),
            None => self.runc.state(id),
        }
    }

    /// A read-only view of envy's own binary, which enters and makes containers
    /// (sealed_exe.rs); an error says why there is none, and runc serves.
    pub fn sealed_exe(&self) -> Result<OwnedFd> {
        let empty = self.runtime_dir.join("empty");
        crate::fsutil::create_private_dir(&empty)?;
        Ok(sealed_exe::open(&empty)?)
    }

    /// Starts the container of the bundle in `bundle` (stdio and messages to `log`):
    /// envy's own runtime where this host allows it, else `runc run -d`.
    pub fn start(&self, id: &str, bundle: &Path, log: &Path) -> Result<()> {
        if Native::serves_this_host() {
            match self.sealed_exe() {
                Ok(exe) => {
                    return self.native.start(id, bundle, log, &exe)
                        .map_err(|e| crate::provider::Error::ContainerStart { id: id.to_string(), reason: format!("{e:#}") }.into());
                }
                Err(e) => tracing::debug!("starting the container with runc: {e:#}"),
            }
        }
        self.runc.run_detached(id, bundle, log)
    }

    pub fn is_native(&self, id: &str) -> bool {
        self.native.has(id)
    }

    /// Sends `signal` to the container's init.
    pub fn kill(&self, id: &str, signal: Signal) -> Result<()> {
        if self.native.has(id) { self.native.kill(id, signal) } else { self.runc.kill(id, signal) }
    }

    /// Waits up to `limit` for the container to stop; whether it has. Its init's pidfd
    /// says when it ends; without one (a state file that names no init, or an init that
    /// ended between the read and the open) the state is asked again every 50 ms.
    pub fn wait_stopped(&self, id: &str, limit: Duration) -> Result<bool> {
        let deadline = Instant::now() + limit;
        loop {
            let state = match self.state(id)? {
                Some(state) if state.status != Status::Stopped => state,
                _ => return Ok(true),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match state.init.as_ref().and_then(|init| open_pidfd(init.pid, init.start_time)) {
                Some(init) => return Ok(init.wait_for_end(left)),
                None if left.is_zero() => return Ok(false),
                None => std::thread::sleep(Duration::from_millis(50).min(left)),
            }
        }
    }

    /// Removes the container, killing it first if it still runs.
    pub fn delete(&self, id: &str) -> Result<()> {
        if self.native.has(id) { self.native.delete(id) } else { self.runc.delete(id) }
    }

    /// Freezes every process of the container.
    pub fn pause(&self, id: &str) -> Result<()> {
        if self.native.has(id) { self.native.pause(id) } else { self.runc.pause(id) }
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        if self.native.has(id) { self.native.resume(id) } else { self.runc.resume(id) }
    }

    /// `runc exec`, for a container runc made that envy cannot enter itself.
    pub fn runc_exec(&self, id: &str, request: &ExecRequest) -> Result<i32> {
        self.runc.exec(id, request)
    }
}
