//! `envy up`: create, start and provision the Envfile's machines.

use anyhow::Result;

use crate::cli::UpArgs;
use crate::context::Context;
use crate::envfile::lock::LockFile;
use crate::lifecycle::{self, UpOptions};
use crate::workspace::Workspace;
use crate::state::registry;

pub fn run(ctx: &Context, args: UpArgs) -> Result<i32> {
    let ws = Workspace::load(ctx)?;
    let machines = ws.select(&args.machines)?;
    crate::doctor::require(&machines.iter().map(|m| m.provider).collect::<Vec<_>>())?;
    let _lock = ws.lock(ctx)?;
    registry::add(&ctx.home, &ws.project.dir)?;
    let lock_path = LockFile::path_for(&ws.project.dir);
    let mut lock = LockFile::load(&lock_path)?;
    let opts = UpOptions { no_provision: args.no_provision, insecure: args.insecure };
    let mut plans = machines.into_iter().map(|spec| ws.plan(&ctx.home, spec)).collect::<Result<Vec<_>>>()?;
    lifecycle::up_all(ctx, &mut plans, &mut lock, Some(&lock_path), opts)?;
    for plan in &plans {
        crate::autoforward::restart(ctx, plan)?;
    }
    Ok(0)
}
