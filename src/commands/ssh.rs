//! `envy ssh [MACHINE]`: an interactive shell (SSH for VMs, runc exec for containers).

use anyhow::Result;

use crate::cli::MachineArg;
use crate::context::Context;
use crate::provider;

pub fn run(ctx: &Context, args: MachineArg) -> Result<i32> {
    let ws = crate::workspace::Workspace::load(ctx)?;
    let plan = super::machine_plan(ctx, &ws, args.machine.as_deref())?;
    provider::for_kind(plan.spec.provider)?.shell(&plan)
}
