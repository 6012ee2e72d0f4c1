//! Running QEMU's host tools (qemu-img, qemu-system) with their failures framed:
//! a missing binary says which package to install, a failed run shows its stderr.

use std::process::{Command, Output};

use crate::provider::Error;

/// The Debian package that ships each tool, for install advice.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "qemu-img" => "qemu-utils",
        "qemu-system-x86_64" => "qemu-system-x86",
        _ => "the package that provides it",
    }
}

/// The error for a tool that is not installed.
fn missing(tool: &str) -> Error {
    Error::MissingTool {
        tool: tool.to_string(),
        advice: format!("install it with `apt-get install {}`", package_of(tool)),
    }
}

/// Runs `command` to completion; a non-zero exit becomes `Error::ToolFailed` with
/// the last lines of stderr, saying what envy was `doing`.
pub fn run(command: &mut Command, doing: &str) -> Result<Output, Error> {
    let tool = command.get_program().to_string_lossy().into_owned();
    tracing::debug!("running {:?}", command);
    let output = command.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => missing(&tool),
        _ => Error::Other(format!("cannot run {tool} while {doing}: {e}")),
    })?;
    if output.status.success() {
        return Ok(output);
    }
    Err(Error::ToolFailed {
        tool,
        doing: doing.to_string(),
        status: output.status.to_string(),
        stderr: last_lines(&String::from_utf8_lossy(&output.stderr), 20),
    })
}

/// The last `n` lines of `text`, each indented for framing inside an error.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].iter().map(|l| format!("    | {l}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_says_what_to_install_and_a_failure_shows_stderr() {
        let err = run(&mut Command::new("qemu-img-not-installed"), "testing").unwrap_err().to_string();
        assert!(err.starts_with("qemu-img-not-installed is not installed or not on PATH"), "{err}");
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"]), "testing").unwrap_err().to_string();
        assert!(err.contains("sh failed (exit status: 3) while testing:\n    | boom"), "{err}");
    }
}
