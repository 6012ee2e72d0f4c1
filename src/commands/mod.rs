//! One file per command; `dispatch` routes the parsed command line to it.

mod box_;
mod box_update;
mod completions;
mod destroy;
mod doctor;
mod exec;
mod halt;
mod init;
mod list;
mod man;
mod provision;
mod reload;
mod remote;
mod run;
mod share;
mod snapshot;
mod ssh;
mod status;
mod up;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::context::Context;

/// Runs the command and returns the exit code.
pub fn dispatch(cli: Cli) -> Result<i32> {
    // Commands that need no context first: they must work even with a broken config.
    match &cli.command {
        Command::Completions(args) => return completions::run(args),
        Command::Man => return man::run(),
        Command::UsernsHolder(args) => return crate::userns::hold(&args.runtime_dir),
        Command::ContainerExec(args) => return Ok(crate::provider::container::enter::stage(args.pidfd, args.orders, args.report, args.console)),
        Command::ContainerStart(args) => return Ok(crate::provider::container::create::stage(args.orders, args.report)),
        _ => {}
    }
    let ctx = Context::new(&cli.global)?;
    // A normal user's envy touches machines and the store from inside its namespace
    // (userns.rs). Commands that touch neither work without one: doctor reports what
    // this user may do, so it looks from outside.
    if !matches!(cli.command, Command::Doctor | Command::Init(_) | Command::List | Command::Remote(_)) {
        crate::userns::enter(&ctx.home.runtime_dir(), &ctx.ui)?;
    }
    match cli.command {
        Command::Init(args) => init::run(&ctx, args),
        Command::Up(args) => up::run(&ctx, args),
        Command::Status(args) => status::run(&ctx, args),
        Command::List => list::run(&ctx),
        Command::Ssh(args) => ssh::run(&ctx, args),
        Command::Exec(args) => exec::run(&ctx, args),
        Command::Halt(args) => halt::run(&ctx, args),
        Command::Reload(args) => reload::run(&ctx, args),
        Command::Provision(args) => provision::run(&ctx, args),
        Command::Destroy(args) => destroy::run(&ctx, args),
        Command::Snapshot(cmd) => snapshot::run(&ctx, cmd),
        Command::Run(args) => run::run(&ctx, args),
        Command::Completions(_) | Command::Man | Command::UsernsHolder(_) | Command::ContainerExec(_) | Command::ContainerStart(_) => unreachable!("handled above"),
        Command::Box(cmd) => box_::run(&ctx, cmd),
        Command::Remote(cmd) => remote::run(&ctx, cmd),
        Command::Share(args) => share::run(&ctx, args),
        Command::Doctor => doctor::run(&ctx),
        Command::ForwardWatch(args) => crate::autoforward::watch(&ctx, args.machine.as_deref().unwrap_or_default()),
    }
}

/// Writes a JSON document to stdout.
fn print_json(value: &serde_json::Value) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// The plan of machine `name` (the only one when None), with the forwards its record
/// holds. exec and ssh take it as it is: the provider's exec tells a machine that is
/// not running (exit 7) from the same reads it needs anyway (one QMP query for a VM).
fn machine_plan(ctx: &Context, ws: &crate::workspace::Workspace, name: Option<&str>) -> Result<crate::plan::MachinePlan> {
    let spec = ws.select_one(name)?;
    let mut plan = ws.plan(&ctx.home, spec)?;
    if let Some(record) = crate::state::record::MachineRecord::load(&plan.dir)? {
        plan.forwards = record.forwards;
    }
    Ok(plan)
}

/// `machine_plan`, for a machine that must be running (exit 7 otherwise).
fn running_machine(ctx: &Context, ws: &crate::workspace::Workspace, name: Option<&str>) -> Result<crate::plan::MachinePlan> {
    use crate::provider::MachineState;
    let plan = machine_plan(ctx, ws, name)?;
    match crate::provider::for_kind(plan.spec.provider)?.state(&plan)? {
        MachineState::Running => Ok(plan),
        MachineState::NotCreated => Err(crate::state::Error::NotCreated { machine: plan.name().to_string() }.into()),
        state => Err(crate::state::Error::NotRunning { machine: plan.name().to_string(), state: state.to_string() }.into()),
    }
}
