//! `envy exec [MACHINE] -- CMD...`: run a command inside; its exit code is envy's.

use std::io::IsTerminal;

use anyhow::Result;

use crate::cli::ExecArgs;
use crate::context::Context;
use crate::provider::{self, ExecRequest};

pub fn run(ctx: &Context, args: ExecArgs) -> Result<i32> {
    let ws = crate::workspace::Workspace::load(ctx)?;
    let plan = super::machine_plan(ctx, &ws, args.machine.as_deref())?;
    let tty = args.tty || (!args.no_tty && std::io::stdin().is_terminal() && std::io::stdout().is_terminal());
    let request = ExecRequest { command: args.command, tty, workdir: args.workdir, env: Vec::new(), ..ExecRequest::default() };
    provider::for_kind(plan.spec.provider)?.exec(&plan, &request)
}
