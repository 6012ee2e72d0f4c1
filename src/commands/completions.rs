//! `envy completions SHELL`: generated from the clap definitions, never by hand.

use anyhow::Result;
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};

pub fn run(args: &CompletionsArgs) -> Result<i32> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "envy", &mut std::io::stdout());
    Ok(0)
}
