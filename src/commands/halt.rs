//! `envy halt`: stop machines, keeping their disks and layers.

use anyhow::Result;

use crate::cli::HaltArgs;
use crate::context::Context;
use crate::lifecycle;
use crate::workspace::Workspace;
use crate::provider::{self, MachineState};

pub fn run(ctx: &Context, args: HaltArgs) -> Result<i32> {
    let ws = Workspace::load(ctx)?;
    let machines = ws.select(&args.machines)?;
    let _lock = ws.lock(ctx)?;
    let plans = machines.iter().map(|spec| ws.plan(&ctx.home, spec)).collect::<Result<Vec<_>>>()?;
    lifecycle::each_at_once(ctx, &plans, |plan| plan.name(), "halting", |plan| {
        let provider = provider::for_kind(plan.spec.provider)?;
        crate::autoforward::stop(plan);
        match provider.state(plan)? {
            MachineState::Running => {
                ctx.ui.step(format!("{}: halting", plan.name()));
                provider.halt(plan, args.force, &ctx.ui)?;
            }
            MachineState::Stopped => {
                // Dead rather than halted, it may still hold forwards or mounts: free them.
                provider.halt(plan, true, &ctx.ui)?;
                ctx.ui.step(format!("{}: already stopped", plan.name()));
            }
            MachineState::NotCreated => ctx.ui.step(format!("{}: already not created", plan.name())),
        }
        Ok(())
    })?;
    Ok(0)
}
