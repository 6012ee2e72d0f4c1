//! runc, driven by its command line: one state root per envy home, typed `runc state`,
//! and every failure reported with runc's own stderr framed.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Deserialize;

use crate::process::{Process, ProcessError};
use crate::provider::ExecRequest;

/// What `runc exec` exits with when it could not start the command (and what a
/// command that exits 255 itself returns).
pub const EXEC_FAILED: i32 = 255;

/// A container's status as runc reports it.
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

/// The part of `runc state` envy reads.
#[derive(Debug, Clone, Deserialize)]
pub struct ContainerState {
    pub pid: u32,
    pub status: Status,
    /// The init as runc's state file records it; `None` when it was asked of `runc
    /// state` (a state file of a format envy does not know).
    #[serde(skip)]
    pub init: Option<Init>,
}

/// A container's init as runc's state file records it: what envy needs to enter the
/// container without runc (enter.rs).
#[derive(Debug, Clone)]
pub struct Init {
    pub pid: u32,
    /// Its start time in clock ticks since boot, as /proc/PID/stat has it.
    pub start_time: u64,
    /// The container's cgroup folders (one per v1 controller, or the v2 one).
    pub cgroups: Vec<PathBuf>,
}

/// The part of runc's own state file (`<root>/<id>/state.json`) envy reads.
#[derive(Debug, Deserialize)]
struct StateFile {
    init_process_pid: u32,
    /// The init's start time in clock ticks since boot, as /proc/PID/stat has it.
    init_process_start: u64,
    /// Each cgroup controller's path; "freezer" on cgroup v1, "" on v2.
    #[serde(default)]
    cgroup_paths: std::collections::BTreeMap<String, PathBuf>,
}

impl StateFile {
    /// Whether the container's cgroup is frozen (`runc pause`), as runc tells it.
    fn is_frozen(&self) -> bool {
        if let Some(v1) = self.cgroup_paths.get("freezer") {
            return std::fs::read_to_string(v1.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN");
        }
        self.cgroup_paths.get("").is_some_and(|v2| std::fs::read_to_string(v2.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1"))
    }
}

/// runc with envy's state root.
#[derive(Debug, Clone)]
pub struct Runc {
    root: PathBuf,
}

impl Runc {
    pub fn with_root(root: PathBuf) -> Runc {
        Runc { root }
    }

    fn command(&self) -> Process {
        Process::new("runc").arg("--root").arg(&self.root)
    }

    /// The container's state, or `None` when runc knows no container by that id. Read
    /// the way runc reads it, without starting runc (a Go binary's start is most of a
    /// `runc state`, and every command asks): runc's state file under envy's runc root,
    /// written (by rename) once the container is made, then the init process it names
    /// (alive, with the start time recorded: running; gone, a zombie, or another
    /// process since: stopped), runc's exec fifo (still there: created, not started),
    /// and the freezer of its cgroup (frozen: paused). A state file envy cannot read (a
    /// runc of another format) is asked of `runc state` instead.
    pub fn state(&self, id: &str) -> Result<Option<ContainerState>> {
        let dir = self.root.join(id);
        let text = match crate::fsutil::read_private(&dir.join("state.json"))? {
            Some(text) => text,
            None => return Ok(None),
        };
        let Ok(recorded) = serde_json::from_slice::<StateFile>(&text) else {
            return self.state_from_runc(id);
        };
        let pid = recorded.init_process_pid;
        let status = match crate::state::proc_stat(pid) {
            Some(stat) if stat.start_time == recorded.init_process_start && !stat.is_gone() => {
                if dir.join("exec.fifo").exists() {
                    Status::Created
                } else if recorded.is_frozen() {
                    Status::Paused
                } else {
                    Status::Running
                }
            }
            _ => Status::Stopped,
        };
        let init = Init { pid, start_time: recorded.init_process_start, cgroups: recorded.cgroup_paths.into_values().collect() };
        Ok(Some(ContainerState { pid, status, init: Some(init) }))
    }

    /// `runc state`, for a state file of a format envy does not know.
    fn state_from_runc(&self, id: &str) -> Result<Option<ContainerState>> {
        let out = match self.command().args(["state", id]).doing(format!("reading the state of container {id}")).run() {
            Ok(out) => out,
            // runc exits 1 for every error; a container gone meanwhile has no state file.
            Err(ProcessError::Failed { .. }) if !self.root.join(id).join("state.json").exists() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let state = serde_json::from_str(&out)
            .with_context(|| format!("runc printed a state for container {id} that envy cannot read"))?;
        Ok(Some(state))
    }

    /// `runc run -d`: starts the container detached; its stdio (and runc's own
    /// messages) go to `log`, whose new part is framed in the error if runc fails.
    pub fn run_detached(&self, id: &str, bundle: &Path, log: &Path) -> Result<()> {
        std::fs::create_dir_all(&self.root).with_context(|| format!("cannot create runc's state root {}", self.root.display()))?;
        let file = File::options().create(true).read(true).append(true).open(log)
            .with_context(|| format!("cannot open the container log {}", log.display()))?;
        self.command()
            .args(["run", "--detach", "--bundle"])
            .arg(bundle)
            .arg(id)
            .doing(format!("starting container {id}"))
            .output_to(&file)?
            .run()?;
        Ok(())
    }

    /// Sends `signal` (a name such as TERM or KILL) to the container's init.
    pub fn kill(&self, id: &str, signal: &str) -> Result<()> {
        self.command().args(["kill", id, signal]).doing(format!("sending SIG{signal} to container {id}")).run()?;
        Ok(())
    }

    /// Removes the container, killing it first if it still runs.
    pub fn delete(&self, id: &str) -> Result<()> {
        self.command().args(["delete", "--force", id]).doing(format!("deleting container {id}")).run()?;
        Ok(())
    }

    /// Freezes every process of the container (for a consistent copy of its layer).
    pub fn pause(&self, id: &str) -> Result<()> {
        self.command().args(["pause", id]).doing(format!("pausing container {id}")).run()?;
        Ok(())
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        self.command().args(["resume", id]).doing(format!("resuming container {id}")).run()?;
        Ok(())
    }

    /// `runc exec` with the caller's stdio, for when envy cannot enter the container
    /// itself (enter.rs); returns the command's exit code. The
    /// command runs as the init's user (unless the request asks for root) and in the
    /// init's directory (unless the request names one).
    pub fn exec(&self, id: &str, request: &ExecRequest) -> Result<i32> {
        let mut runc = self.command().arg("exec");
        if let Some(dir) = &request.workdir {
            runc = runc.arg("--cwd").arg(dir);
        }
        if request.as_root {
            runc = runc.args(["--user", "0:0"]);
        }
        for (key, value) in &request.env {
            runc = runc.arg("--env").arg(format!("{key}={value}"));
        }
        if request.tty {
            runc = runc.arg("--tty");
        }
        runc = runc.arg(id).args(&request.command).doing(format!("running a command in container {id}"));
        if let Some(path) = &request.stdin {
            runc = runc.stdin_file(File::open(path).with_context(|| format!("cannot open {} to send it into container {id}", path.display()))?);
        }
        let status = runc.status()?;
        Ok(crate::process::exit_code(status))
    }
}
