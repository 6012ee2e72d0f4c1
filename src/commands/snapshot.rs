//! `envy snapshot save|restore|list|delete`: points to roll a machine back to.

use anyhow::{bail, Result};
use serde_json::json;

use crate::cli::{MachineArg, SnapshotArgs, SnapshotCommand};
use crate::context::Context;
use crate::envfile::lock::LockFile;
use crate::lifecycle::{self, UpOptions};
use crate::plan::MachinePlan;
use crate::workspace::Workspace;
use crate::provider::{self, MachineState};

pub fn run(ctx: &Context, cmd: SnapshotCommand) -> Result<i32> {
    let ws = Workspace::load(ctx)?;
    match cmd {
        SnapshotCommand::List(MachineArg { machine }) => {
            let plan = created(ctx, &ws, machine.as_deref())?;
            let list = provider::for_kind(plan.spec.provider)?.snapshot_list(&plan)?;
            if ctx.ui.json {
                super::print_json(&json!({ "version": 1, "machine": plan.name(), "snapshots": list }))?;
            } else {
                println!("{:<24} {:<20} {:>10} MEMORY", "NAME", "CREATED", "SIZE");
                for s in &list {
                    println!("{:<24} {:<20} {:>10} {}", s.name, crate::model::human_age(s.created), indicatif::HumanBytes(s.size).to_string(), if s.memory { "yes" } else { "no" });
                }
            }
            Ok(0)
        }
        SnapshotCommand::Save(args) | SnapshotCommand::Restore(args) | SnapshotCommand::Delete(args)
            if args.words.is_empty() =>
        {
            bail!("name the snapshot")
        }
        SnapshotCommand::Save(args) => {
            let (machine, name) = words(&args)?;
            let _lock = ws.lock(ctx)?;
            let plan = created(ctx, &ws, machine)?;
            let provider = provider::for_kind(plan.spec.provider)?;
            // A name taken without --force, or a missing snapshot below, is the provider's
            // typed error: one message and one exit code whichever provider it is.
            let info = provider.snapshot_save(&plan, name, args.force, &ctx.ui)?;
            ctx.ui.step(format!("{}: saved snapshot {name} ({}{})", plan.name(), indicatif::HumanBytes(info.size), if info.memory { ", with memory" } else { "" }));
            Ok(0)
        }
        SnapshotCommand::Restore(args) => {
            let (machine, name) = words(&args)?;
            let _lock = ws.lock(ctx)?;
            let plan = created(ctx, &ws, machine)?;
            let provider = provider::for_kind(plan.spec.provider)?;
            let was_running = provider.state(&plan)? == MachineState::Running;
            provider.snapshot_restore(&plan, name, &ctx.ui)?;
            ctx.ui.step(format!("{}: restored snapshot {name}", plan.name()));
            // A snapshot without memory rewinds a stopped disk; the machine goes on running.
            if was_running && provider.state(&plan)? != MachineState::Running {
                let lock_path = LockFile::path_for(&ws.project.dir);
                let mut lock = LockFile::load(&lock_path)?;
                let mut plan = plan;
                lifecycle::up(ctx, &mut plan, &mut lock, Some(&lock_path), UpOptions::default())?;
            }
            Ok(0)
        }
        SnapshotCommand::Delete(args) => {
            let (machine, name) = words(&args)?;
            let _lock = ws.lock(ctx)?;
            let plan = created(ctx, &ws, machine)?;
            let provider = provider::for_kind(plan.spec.provider)?;
            provider.snapshot_delete(&plan, name)?;
            ctx.ui.step(format!("{}: deleted snapshot {name}", plan.name()));
            Ok(0)
        }
    }
}

/// `[MACHINE] NAME`, with the name checked.
fn words(args: &SnapshotArgs) -> Result<(Option<&str>, &str)> {
    let (machine, name) = match args.words.as_slice() {
        [name] => (None, name.as_str()),
        [machine, name] => (Some(machine.as_str()), name.as_str()),
        _ => bail!("give `[MACHINE] NAME`"),
    };
    provider::check_snapshot_name(name)?;
    Ok((machine, name))
}

/// The machine's plan, provided it exists.
fn created(ctx: &Context, ws: &Workspace, name: Option<&str>) -> Result<MachinePlan> {
    let spec = ws.select_one(name)?;
    let plan = ws.plan(&ctx.home, spec)?;
    if provider::for_kind(spec.provider)?.state(&plan)? == MachineState::NotCreated {
        return Err(crate::state::Error::NotCreated { machine: spec.name.clone() }.into());
    }
    Ok(plan)
}
