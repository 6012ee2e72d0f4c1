//! Running the host tools the container provider drives (runc, ip, slirp4netns, tar):
//! a missing tool says which package installs it, a failed one shows its stderr framed.

use std::io::{ErrorKind, Write as _};
use std::process::{Command, Output, Stdio};

use anyhow::Result;

use crate::provider::Error;

/// The Debian package that ships `tool`, for install advice.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "runc" => "runc",
        "ip" => "iproute2",
        "slirp4netns" => "slirp4netns",
        "tar" => "tar",
        _ => "the package that provides it",
    }
}

/// The error for a tool that could not be started.
pub fn missing(tool: &str) -> Error {
    Error::MissingTool {
        tool: tool.to_string(),
        advice: format!("install it with `apt-get install {}` and try again", package_of(tool)),
    }
}

/// The error for a tool that ran and failed; the tail of its stderr is framed.
pub fn failed(tool: &str, doing: &str, status: &str, stderr: &str) -> Error {
    let tail: Vec<&str> = stderr.trim_end().lines().rev().take(20).collect();
    let framed: String = tail.iter().rev().map(|l| format!("  | {l}\n")).collect();
    Error::ToolFailed {
        tool: tool.to_string(),
        doing: doing.to_string(),
        status: status.to_string(),
        stderr: framed.trim_end().to_string(),
    }
}

/// Runs `cmd` to completion, capturing its output; `doing` completes "failed while ...".
pub fn output(cmd: &mut Command, doing: &str) -> Result<Output> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    tracing::debug!(?cmd, "running");
    match cmd.output() {
        Ok(out) => Ok(out),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(missing(&tool).into()),
        Err(e) => Err(Error::Other(format!("cannot start {tool} while {doing}: {e}")).into()),
    }
}

/// Runs `cmd` and returns its stdout; a non-zero exit is a framed `ToolFailed`.
pub fn run(cmd: &mut Command, doing: &str) -> Result<String> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = output(cmd, doing)?;
    if !out.status.success() {
        return Err(failed(&tool, doing, &out.status.to_string(), &String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like `run`, with `input` written to the tool's stdin.
pub fn run_with_input(cmd: &mut Command, input: &str, doing: &str) -> Result<String> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    tracing::debug!(?cmd, input, "running");
    let mut child = match cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(missing(&tool).into()),
        Err(e) => return Err(Error::Other(format!("cannot start {tool} while {doing}: {e}")).into()),
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(failed(&tool, doing, &out.status.to_string(), &String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
