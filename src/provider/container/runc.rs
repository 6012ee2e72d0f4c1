//! runc, driven by its command line: one state root per envy home, typed `runc state`,
//! and every failure reported with runc's own stderr framed.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use nix::sys::signal::Signal;

use super::runtime::{read_state, ContainerState, Recorded};
use crate::process::{Process, ProcessError};
use crate::provider::ExecRequest;

/// What `runc exec` exits with when it could not start the command (and what a
/// command that exits 255 itself returns).
pub const EXEC_FAILED: i32 = 255;

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
    /// from runc's state file without starting runc (a Go binary's start is most of a
    /// `runc state`, and every command asks; runtime::read_state). A state file envy
    /// cannot read (a runc of another format) is asked of `runc state` instead.
    pub fn state(&self, id: &str) -> Result<Option<ContainerState>> {
        match read_state(&self.root.join(id))? {
            Recorded::Absent => Ok(None),
            Recorded::Known(state) => Ok(Some(state)),
            Recorded::Unknown => self.state_from_runc(id),
        }
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

    /// Sends `signal` to the container's init.
    pub fn kill(&self, id: &str, signal: Signal) -> Result<()> {
        self.command().args(["kill", id, signal.as_str()]).doing(format!("sending {signal} to container {id}")).run()?;
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
