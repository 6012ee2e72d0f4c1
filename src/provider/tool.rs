//! Running the host tools envy drives (runc, ip, slirp4netns, qemu-img, qemu-system,
//! ssh, mkfs.ext4): a missing tool names the Debian package that installs it, a
//! failed one shows the tail of its stderr, framed.

use std::io::{ErrorKind, Write};
use std::process::{Command, Output, Stdio};

use super::Error;

/// The Debian package that ships `tool`, for install advice.
pub fn package_of(tool: &str) -> &'static str {
    match tool {
        "runc" => "runc",
        "ip" => "iproute2",
        "slirp4netns" => "slirp4netns",
        "qemu-img" => "qemu-utils",
        "qemu-system-x86_64" => "qemu-system-x86",
        "ssh" => "openssh-client",
        "mkfs.ext4" => "e2fsprogs",
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

/// The error for a tool that ran and failed; the last 20 lines of its stderr are framed.
pub fn failed(tool: &str, doing: &str, status: &str, stderr: &str) -> Error {
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    let tail = &lines[lines.len().saturating_sub(20)..];
    Error::ToolFailed {
        tool: tool.to_string(),
        doing: doing.to_string(),
        status: status.to_string(),
        stderr: tail.iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n"),
    }
}

fn program(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

fn start_error(tool: &str, doing: &str, e: std::io::Error) -> Error {
    if e.kind() == ErrorKind::NotFound {
        missing(tool)
    } else {
        Error::Other(format!("cannot start {tool} while {doing}: {e}"))
    }
}

/// Runs `cmd` to completion, capturing its output, whatever its exit status;
/// `doing` completes "failed while ...".
pub fn output(cmd: &mut Command, doing: &str) -> Result<Output, Error> {
    let tool = program(cmd);
    tracing::debug!(?cmd, "running");
    cmd.output().map_err(|e| start_error(&tool, doing, e))
}

/// Runs `cmd` and returns its stdout; a non-zero exit is a framed `ToolFailed`.
pub fn run(cmd: &mut Command, doing: &str) -> Result<String, Error> {
    let tool = program(cmd);
    checked(&tool, doing, output(cmd, doing)?)
}

/// Like `run`, with `input` written to the tool's stdin.
pub fn run_with_input(cmd: &mut Command, input: &str, doing: &str) -> Result<String, Error> {
    let tool = program(cmd);
    tracing::debug!(?cmd, input, "running");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| start_error(&tool, doing, e))?;
    let io = |e: std::io::Error| Error::Other(format!("talking to {tool} while {doing}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(io)?;
    }
    checked(&tool, doing, child.wait_with_output().map_err(io)?)
}

fn checked(tool: &str, doing: &str, out: Output) -> Result<String, Error> {
    if !out.status.success() {
        return Err(failed(tool, doing, &out.status.to_string(), &String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
