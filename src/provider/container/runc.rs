//! runc, driven by its command line: one state root per envy home, typed `runc state`,
//! and every failure reported with runc's own stderr framed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};
use serde::Deserialize;

use crate::provider::tool;
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

    fn command(&self) -> Command {
        let mut cmd = Command::new("runc");
        cmd.arg("--root").arg(&self.root);
        cmd
    }

    /// The container's state, or `None` when runc knows no container by that id.
    pub fn state(&self, id: &str) -> Result<Option<ContainerState>> {
        let out = tool::output(self.command().args(["state", id]), &format!("reading the state of container {id}"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("does not exist") {
                return Ok(None);
            }
            return Err(tool::failed("runc", &format!("reading the state of container {id}"), &out.status.to_string(), &stderr).into());
        }
        let state = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("runc printed a state for container {id} that envy cannot read"))?;
        Ok(Some(state))
    }

    /// `runc run -d`: starts the container detached; its stdio (and runc's own
    /// messages) go to `log`, whose new part is framed in the error if runc fails.
    pub fn run_detached(&self, id: &str, bundle: &Path, log: &Path) -> Result<()> {
        std::fs::create_dir_all(&self.root).with_context(|| format!("cannot create runc's state root {}", self.root.display()))?;
        let file = File::options().create(true).append(true).open(log)
            .with_context(|| format!("cannot open the container log {}", log.display()))?;
        let start = file.metadata().map(|m| m.len()).unwrap_or(0);
        let doing = format!("starting container {id}");
        let out = tool::output(
            self.command()
                .args(["run", "--detach", "--bundle"])
                .arg(bundle)
                .arg(id)
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file),
            &doing,
        )?;
        if !out.status.success() {
            let text = std::fs::read(log).unwrap_or_default();
            let new = String::from_utf8_lossy(text.get(start as usize..).unwrap_or_default());
            return Err(tool::failed("runc", &doing, &out.status.to_string(), &new).into());
        }
        Ok(())
    }

    /// Sends `signal` (a name such as TERM or KILL) to the container's init.
    pub fn kill(&self, id: &str, signal: &str) -> Result<()> {
        tool::run(self.command().args(["kill", id, signal]), &format!("sending SIG{signal} to container {id}"))?;
        Ok(())
    }

    /// Removes the container, killing it first if it still runs.
    pub fn delete(&self, id: &str) -> Result<()> {
        tool::run(self.command().args(["delete", "--force", id]), &format!("deleting container {id}"))?;
        Ok(())
    }

    /// Freezes every process of the container (for a consistent copy of its layer).
    pub fn pause(&self, id: &str) -> Result<()> {
        tool::run(self.command().args(["pause", id]), &format!("pausing container {id}"))?;
        Ok(())
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        tool::run(self.command().args(["resume", id]), &format!("resuming container {id}"))?;
        Ok(())
    }

    /// `runc exec` with the caller's stdio; returns the command's exit code. The
    /// command runs as the init's user (unless the request asks for root) and in the
    /// init's directory (unless the request names one).
    pub fn exec(&self, id: &str, request: &ExecRequest) -> Result<i32> {
        let mut cmd = self.command();
        cmd.arg("exec");
        if let Some(dir) = &request.workdir {
            cmd.arg("--cwd").arg(dir);
        }
        if request.as_root {
            cmd.args(["--user", "0:0"]);
        }
        for (key, value) in &request.env {
            cmd.arg("--env").arg(format!("{key}={value}"));
        }
        if request.tty {
            cmd.arg("--tty");
        }
        cmd.arg(id).args(&request.command);
        if let Some(path) = &request.stdin {
            cmd.stdin(File::open(path).with_context(|| format!("cannot open {} to send it into container {id}", path.display()))?);
        }
        tracing::debug!(?cmd, "running");
        let status = cmd.status().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::Error::from(tool::missing("runc")),
            _ => anyhow::anyhow!("cannot start runc to run a command in container {id}: {e}"),
        })?;
        // A command killed by a signal reports 128 + signal, as shells do.
        Ok(status.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
    }
}
