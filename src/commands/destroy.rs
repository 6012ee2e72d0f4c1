//! `envy destroy`: remove machines and every trace of them; never the box store,
//! the Envfile.lock or the project's files.

use anyhow::Result;

use crate::cli::DestroyArgs;
use crate::context::Context;
use crate::lifecycle;
use crate::workspace::Workspace;
use crate::provider::{self, MachineState};
use crate::state::registry;

pub fn run(ctx: &Context, args: DestroyArgs) -> Result<i32> {
    let ws = Workspace::load(ctx)?;
    let machines = ws.select(&args.machines)?;
    let names: Vec<&str> = machines.iter().map(|m| m.name.as_str()).collect();
    if !args.force {
        let question = format!(
            "Destroy {} of {}? Their disks, layers and snapshots are deleted.",
            names.join(", "),
            ws.project.dir.display()
        );
        if !ctx.ui.confirm(&question, "--force")? {
            return Ok(crate::error::code::FAILURE);
        }
    }
    let _lock = ws.lock(ctx)?;
    let plans = machines.iter().map(|spec| ws.plan(&ctx.home, spec)).collect::<Result<Vec<_>>>()?;
    let destroyed = lifecycle::each_at_once(ctx, &plans, |plan| plan.name(), "destroying", |plan| {
        if provider::for_kind(plan.spec.provider)?.state(plan)? == MachineState::NotCreated && !plan.dir.exists() {
            ctx.ui.step(format!("{}: not created", plan.name()));
            return Ok(());
        }
        ctx.ui.step(format!("{}: destroying", plan.name()));
        lifecycle::destroy(ctx, plan)
    });
    if let Some(warning) = ws.orphan_warning() {
        ctx.ui.warn(warning);
    }
    // With no machine left the project's state folder goes too (the lock file inside
    // it is ours and held, so remove everything else first).
    let machines_dir = ws.project.state_dir.join("machines");
    if std::fs::read_dir(&machines_dir).map(|mut d| d.next().is_none()).unwrap_or(true) {
        let _ = std::fs::remove_dir(&machines_dir);
        registry::remove(&ctx.home, &ws.project.dir)?;
    }
    destroyed?;
    Ok(0)
}
