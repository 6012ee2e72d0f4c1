//! `envy run --box B -- CMD`: a throwaway machine. Up, run CMD with the project at
//! /project, destroy, exit with CMD's code. Each run has its own state folder and
//! project id, so parallel runs in one folder never meet.

use anyhow::{Context as _, Result};

use crate::cli::{ProviderArg, RunArgs};
use crate::context::Context;
use crate::envfile::lock::LockFile;
use crate::envfile::{self, BoxRef, ProviderKind};
use crate::lifecycle::{self, UpOptions};
use crate::plan::{MachinePlan, Project};

use crate::provider::{self, ExecRequest};
use crate::signals;

pub fn run(ctx: &Context, args: RunArgs) -> Result<i32> {
    let provider_kind = match args.provider {
        ProviderArg::Container => ProviderKind::Container,
        ProviderArg::Qemu => ProviderKind::Qemu,
    };
    crate::doctor::require(provider_kind)?;
    // --box reads exactly like `box =` in an Envfile in this folder.
    let here = envfile::parse_str(
        &ctx.cwd.join(envfile::FILE_NAME),
        &format!("[defaults]\nbox = {}\n", toml::Value::String(args.box_name.clone())),
        provider_kind,
    )?;
    let box_ref = here.machines[0].box_ref.clone();
    // The throwaway is a project of its own under ENVY_HOME, with this folder synced in,
    // so a machine kept with --keep-on-failure is reachable with `envy -C DIR ...`.
    let dir = ctx.home.root().join("throwaway").join(throwaway_id());
    let box_value = match &box_ref {
        BoxRef::Catalog { .. } | BoxRef::Oci { .. } => toml::Value::String(box_ref.to_string()),
        BoxRef::Url { url, sha256 } => table(&[("url", Some(url.clone())), ("sha256", sha256.clone())]),
        BoxRef::Path { path, sha256 } => table(&[("path", Some(path.display().to_string())), ("sha256", sha256.clone())]),
    };
    let text = format!(
        "# A throwaway machine of `envy run` in {}.\n[machine.run]\nbox = {box_value}\nprovider = \"{provider_kind}\"\nsync = [{{ host = {}, guest = \"/project\", allow_outside = true }}]\n",
        ctx.cwd.display(),
        toml::Value::String(ctx.cwd.display().to_string()),
    );
    crate::state::write_atomic(&dir.join(envfile::FILE_NAME), text.as_bytes())?;
    let envfile = envfile::load(&dir.join(envfile::FILE_NAME), provider_kind)?;
    let project = Project::new(&envfile);
    let mut plan = MachinePlan::new(&ctx.home, &project, &envfile, &envfile.machines[0]);

    // Ctrl-C reaches CMD through the terminal; envy itself only notes it and cleans up.
    signals::catch_interrupts()?;

    let mut lock = LockFile::default();
    let outcome = lifecycle::up(ctx, &mut plan, &mut lock, UpOptions::default()).and_then(|()| {
        if signals::interrupted() {
            return Ok(crate::error::code::INTERRUPTED);
        }
        let request = ExecRequest {
            command: args.command.clone(),
            tty: false,
            workdir: Some("/project".into()),
            env: Vec::new(),
            as_root: false,
        };
        provider::for_kind(provider_kind).exec(&plan, &request)
    });
    let code = match &outcome {
        _ if signals::interrupted() => crate::error::code::INTERRUPTED,
        Ok(code) => *code,
        Err(_) => crate::error::code::FAILURE,
    };
    if code != 0 && args.keep_on_failure {
        crate::state::registry::add(&ctx.home, &dir)?;
        ctx.ui.warn(format!(
            "kept the machine for a look: `envy -C {0} ssh` gets in, `envy -C {0} destroy --force` removes it",
            dir.display()
        ));
    } else {
        ctx.ui.step("run: removing the throwaway machine");
        lifecycle::destroy(ctx, &plan)?;
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    outcome.map(|_| code)
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
