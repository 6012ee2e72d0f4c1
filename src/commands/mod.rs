//! One file per command; `dispatch` routes the parsed command line to it.

mod box_;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::context::Context;

/// Runs the command and returns the exit code.
pub fn dispatch(cli: Cli) -> Result<i32> {
    let ctx = Context::new(&cli.global)?;
    match cli.command {
        Command::Box(cmd) => box_::run(&ctx, cmd),
        _ => anyhow::bail!("not built yet"),
    }
}
