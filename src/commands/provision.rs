//! `envy provision`: run the machines' provisioners again.

use anyhow::Result;

use crate::cli::MachinesArgs;
use crate::context::Context;
use crate::lifecycle;
use crate::workspace::Workspace;
use crate::state::record::MachineRecord;

pub fn run(ctx: &Context, args: MachinesArgs) -> Result<i32> {
    let ws = Workspace::load(ctx)?;
    let machines = ws.select(&args.machines)?;
    let _lock = ws.lock(ctx)?;
    for spec in machines {
        let plan = super::running_machine(ctx, &ws, Some(&spec.name))?;
        lifecycle::provision(ctx, &plan)?;
        if let Some(mut record) = MachineRecord::load(&plan.dir)? {
            record.provisioned = true;
            record.save(&plan.dir)?;
        }
    }
    Ok(0)
}
