//! One file per command; `dispatch` routes the parsed command line to it.

use anyhow::Result;

use crate::cli::{Cli, Command};

/// Runs the command and returns the exit code.
pub fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        _ => anyhow::bail!("not built yet"),
    }
}
