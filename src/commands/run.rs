//! `envy run -- CMD`: throwaway copies of the Envfile's machines (a staging replica for
//! one CI job), or with `--box B` one bare machine. Up, wait until ready, run CMD,
//! destroy, exit with CMD's code. Each run has its own state folder and project id, so
//! the developer's machines and parallel runs in one folder never meet.

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::json;

use crate::cli::RunArgs;
use crate::context::Context;
use crate::envfile::lock::LockFile;
use crate::envfile::{self, SyncMode};
use crate::model::BoxRef;
use crate::lifecycle::{self, UpOptions};
use crate::plan::{MachinePlan, Project};
use crate::workspace::Workspace;
use crate::provider::{self, ExecRequest};
use crate::signals;

pub fn run(ctx: &Context, args: RunArgs) -> Result<i32> {
    match &args.box_name {
        Some(box_name) => bare(ctx, box_name, &args),
        None => replica(ctx, &args),
    }
}

/// The Envfile's machines as throwaway copies; CMD runs in `--machine`.
fn replica(ctx: &Context, args: &RunArgs) -> Result<i32> {
    let ws = Workspace::load(ctx)?;
    let target = match &args.machine {
        Some(name) => ws.select_one(Some(name))?.name.clone(),
        None => ws.envfile.machines[0].name.clone(),
    };
    crate::doctor::require(&ws.envfile.machines.iter().map(|m| m.provider).collect::<Vec<_>>())?;
    // The pins are honoured; a pin the run adds stays with the run (the file is not written).
    let mut lock = LockFile::load(&LockFile::path_for(&ws.project.dir))?;
    let project = ws.project.throwaway(&ctx.home, &throwaway_id());
    let mut envfile = ws.envfile.clone();
    for machine in &mut envfile.machines {
        machine.accel = machine.accel.or(ctx.config.accel);
        if let Some(remote) = &args.remote {
            place_on(machine.provider, remote)?;
            machine.placement.remote = Some(remote.clone());
            // A remote cannot mount this host's folders; a throwaway needs only a copy.
            for folder in &mut machine.sync {
                folder.mode = SyncMode::Copy;
            }
        }
        // A copy never takes the Envfile's host ports: the developer's machines or another
        // run may hold them, or check them at the same moment. The kernel picks each one.
        for forward in &mut machine.forwards {
            forward.host_port = forward.protocol.free_port(forward.host_ip)?;
            forward.auto = true;
        }
    }
    if args.remote.is_some() {
        // Placed now, checked now: what the provider refuses for a remote is said at the
        // Envfile's key before a box is fetched, as when the Envfile names the remote.
        provider::validate(&envfile)?;
    }
    let mut plans: Vec<MachinePlan> = envfile.machines.iter().map(|spec| MachinePlan::new(&ctx.home, &project, &envfile, spec)).collect();
    let events = Events { json: ctx.ui.json };

    // Ctrl-C and SIGTERM (a CI cancel) are only noted: the run stops at the next step and cleans up.
    signals::catch_interrupts()?;
    let mut created = 0;
    let outcome = (|| -> Result<i32> {
        if signals::interrupted() {
            return Ok(crate::error::code::INTERRUPTED);
        }
        created = plans.len();
        // Started together, provisioned and waited for ready in the Envfile's order (as `envy up`).
        lifecycle::up_all(ctx, &mut plans, &mut lock, None, UpOptions::default())?;
        for plan in &plans {
            events.emit(json!({ "event": "up", "machine": plan.name(), "forwards": plan.forwards }));
            events.emit(json!({ "event": "ready", "machine": plan.name() }));
        }
        let plan = plans.iter().find(|p| p.name() == target).expect("the target machine is one of the Envfile's");
        let request = ExecRequest { command: args.command.clone(), ..ExecRequest::default() };
        let code = exec_until_interrupted(ctx, plan, &request)?;
        events.emit(json!({ "event": "exit", "machine": plan.name(), "code": code }));
        Ok(code)
    })();
    ctx.ui.step("run: removing the throwaway machines");
    let mut cleanup = Ok(());
    for plan in plans[..created].iter().rev() {
        match lifecycle::destroy(ctx, plan) {
            Ok(()) => events.emit(json!({ "event": "destroyed", "machine": plan.name() })),
            Err(e) if cleanup.is_ok() => cleanup = Err(e),
            Err(e) => ctx.ui.warn(format!("{e:#}")),
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&project.state_dir) {
        if e.kind() != std::io::ErrorKind::NotFound && cleanup.is_ok() {
            cleanup = Err(e).with_context(|| format!("cannot remove {}", project.state_dir.display()));
        }
    }
    finish(ctx, outcome, cleanup)
}

/// The run's result from the command's and the teardown's. After Ctrl-C it is 130
/// (with the step it stopped, when one says so).
/// A clean success needs a clean teardown, so then the teardown's failure is the
/// result; otherwise the command's own result is what CI reads, and the teardown's
/// failure is said beside it, never instead of it.
fn finish(ctx: &Context, outcome: Result<i32>, cleanup: Result<()>) -> Result<i32> {
    let result = match outcome {
        Err(e) if crate::error::exit_code(&e) == crate::error::code::INTERRUPTED => Err(e),
        _ if signals::interrupted() => Ok(crate::error::code::INTERRUPTED),
        outcome => outcome,
    };
    match (result, cleanup) {
        (result, Ok(())) => result,
        (Ok(0), Err(e)) => Err(e),
        (result, Err(e)) => {
            ctx.ui.warn(format!("run: the throwaway machines were not all removed: {e:#}"));
            result
        }
    }
}

/// `--remote NAME` for a machine of `provider`, which must place machines on other hosts.
fn place_on(provider: crate::model::ProviderKind, remote: &str) -> Result<()> {
    if provider::for_kind(provider)?.accepts_placement() {
        return Ok(());
    }
    Err(provider::Error::Unsupported { provider, what: "run machines on a remote (`--remote` places lxd machines only)" })
        .with_context(|| format!("cannot run on remote {remote}"))
}

/// Runs CMD in the machine. A SIGTERM goes to envy alone, not to CMD, and a Ctrl-C
/// does not reach a CMD on another host: the machine is then stopped under CMD, which
/// ends it, so a cancelled run does not wait for CMD.
fn exec_until_interrupted(ctx: &Context, plan: &MachinePlan, request: &ExecRequest) -> Result<i32> {
    std::thread::scope(|scope| {
        let running = scope.spawn(|| provider::for_kind(plan.spec.provider)?.exec(plan, request));
        let mut stopped = false;
        while !running.is_finished() {
            if signals::interrupted() && !stopped {
                stopped = true;
                ctx.ui.step(format!("run: interrupted; stopping {}", plan.name()));
                provider::for_kind(plan.spec.provider)?.halt(plan, true, &ctx.ui)?;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        running.join().map_err(|_| anyhow::anyhow!("the thread running the command in {} panicked", plan.name()))?
    })
}

/// `--json`: one event a line on stdout, as it happens, for CI logs.
struct Events {
    json: bool,
}

impl Events {
    fn emit(&self, mut event: serde_json::Value) {
        if self.json {
            event["version"] = json!(1);
            println!("{event}");
        }
    }
}

/// `envy run --box B -- CMD`: one bare machine with this folder at /project.
fn bare(ctx: &Context, box_name: &str, args: &RunArgs) -> Result<i32> {
    let default = if args.remote.is_some() { crate::provider::lxd::KIND } else { crate::provider::default_kind() };
    let provider_kind = args.provider.unwrap_or(default);
    if let Some(remote) = &args.remote {
        place_on(provider_kind, remote)?;
    }
    crate::doctor::require(&[provider_kind])?;
    // --box reads exactly like `box =` in an Envfile in this folder.
    let here = envfile::parse_str(
        &ctx.cwd.join(envfile::FILE_NAME),
        &format!("[defaults]\nbox = {}\n", toml::Value::String(box_name.to_string())),
        provider_kind,
    )?;
    let box_ref = here.machines[0].box_ref.clone();
    // The throwaway is a project of its own under ENVY_HOME, with this folder synced in,
    // so a machine kept with --keep-on-failure is reachable with `envy -C DIR ...`.
    let dir = ctx.home.root().join("throwaway").join(throwaway_id());
    let box_value = match &box_ref {
        BoxRef::Catalog { .. } | BoxRef::Oci { .. } | BoxRef::Vagrant { .. } => toml::Value::String(box_ref.to_string()),
        BoxRef::Url { url, sha256 } => table(&[("url", Some(url.clone())), ("sha256", sha256.clone())]),
        BoxRef::Path { path, sha256 } => table(&[("path", Some(path.display().to_string())), ("sha256", sha256.clone())]),
    };
    // On a remote, this folder is copied in (a remote cannot mount it).
    let remote = args.remote.as_ref().map(|r| format!("remote = {}\nsync_mode = \"copy\"\n", toml::Value::String(r.clone()))).unwrap_or_default();
    let text = format!(
        "# A throwaway machine of `envy run` in {}.\n[machine.run]\nbox = {box_value}\nprovider = \"{provider_kind}\"\n{remote}sync = [{{ host = {}, guest = \"/project\", allow_outside = true }}]\n",
        ctx.cwd.display(),
        toml::Value::String(ctx.cwd.display().to_string()),
    );
    crate::fsutil::write_atomic(&dir.join(envfile::FILE_NAME), text.as_bytes())?;
    let envfile = envfile::load(&dir.join(envfile::FILE_NAME), provider_kind)?;
    let project = Project::new(&ctx.home, &envfile);
    let mut plan = MachinePlan::new(&ctx.home, &project, &envfile, &envfile.machines[0]);

    // Ctrl-C and SIGTERM are only noted: CMD is stopped with its machine, then cleaned up.
    signals::catch_interrupts()?;

    let mut lock = LockFile::default();
    let outcome = lifecycle::up(ctx, &mut plan, &mut lock, None, UpOptions::default()).and_then(|()| {
        if signals::interrupted() {
            return Ok(crate::error::code::INTERRUPTED);
        }
        let request = ExecRequest { command: args.command.clone(), workdir: Some("/project".into()), ..ExecRequest::default() };
        exec_until_interrupted(ctx, &plan, &request)
    });
    let failed = !matches!(outcome, Ok(0)) || signals::interrupted();
    if failed && args.keep_on_failure {
        crate::state::registry::add(&ctx.home, &dir)?;
        ctx.ui.warn(format!(
            "kept the machine for a look: `envy -C {0} ssh` gets in, `envy -C {0} destroy --force` removes it",
            dir.display()
        ));
        return finish(ctx, outcome, Ok(()));
    }
    ctx.ui.step("run: removing the throwaway machine");
    let cleanup = lifecycle::destroy(ctx, &plan).and_then(|()| {
        [&dir, &project.state_dir]
            .into_iter()
            .try_for_each(|made| std::fs::remove_dir_all(made).with_context(|| format!("cannot remove {}", made.display())))
    });
    finish(ctx, outcome, cleanup)
}

/// A short id unique to this run: pid and time, hashed.
fn throwaway_id() -> String {
    use sha2::{Digest, Sha256};
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seed = format!("{}-{}", std::process::id(), now.as_nanos());
    hex::encode(&Sha256::digest(seed.as_bytes())[..4])
}

/// An inline TOML table of the given string keys (None values left out).
fn table(entries: &[(&str, Option<String>)]) -> toml::Value {
    let map = entries
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), toml::Value::String(v))))
        .collect();
    toml::Value::Table(map)
}
