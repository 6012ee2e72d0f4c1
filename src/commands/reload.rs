//! `envy reload`: halt and start machines again, picking up Envfile changes.

use anyhow::Result;

use crate::cli::MachinesArgs;
use crate::context::Context;
use crate::envfile::lock::LockFile;
use crate::lifecycle::{self, UpOptions};
use crate::workspace::Workspace;
use crate::provider::{self, MachineState};

pub fn run(ctx: &Context, args: MachinesArgs) -> Result<i32> {
    let ws = Workspace::load(ctx)?;
    let machines = ws.select(&args.machines)?;
    crate::doctor::require(&machines.iter().map(|m| m.provider).collect::<Vec<_>>())?;
    let _lock = ws.lock(ctx)?;
    let lock_path = LockFile::path_for(&ws.project.dir);
    let mut lock = LockFile::load(&lock_path)?;
    for spec in machines {
        let mut plan = ws.plan(&ctx.home, spec)?;
        let provider = provider::for_kind(spec.provider)?;
        crate::autoforward::stop(&plan);
        if provider.state(&plan)? == MachineState::Running {
            ctx.ui.step(format!("{}: halting", spec.name));
            provider.halt(&plan, false, &ctx.ui)?;
        }
        lifecycle::up(ctx, &mut plan, &mut lock, Some(&lock_path), UpOptions::default())?;
        crate::autoforward::restart(ctx, &plan)?;
    }
    Ok(0)
}
