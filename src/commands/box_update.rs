//! `envy box outdated` and `envy box update`: a project's Envfile.lock pins against
//! what the boxes' sources offer now. Moving a pin is always this explicit step; `up`
//! never does it by itself.

use anyhow::Result;
use serde_json::json;

use crate::boxes::{BoxSource, Build, Store};
use crate::cli::{BoxOutdatedArgs, BoxUpdateArgs};
use crate::context::Context;
use crate::envfile::lock::{LockFile, LockedBox};
use crate::envfile::MachineSpec;
use crate::lifecycle;
use crate::model::{BoxFormat, BoxRef};
use crate::state::record::MachineRecord;
use crate::workspace::Workspace;

/// A machine's pin beside the newest build, as `outdated` reports it.
struct Row<'a> {
    spec: &'a MachineSpec,
    pinned: Option<&'a LockedBox>,
    /// The pinned box's version, when it is stored here.
    pinned_version: Option<String>,
    newest: Option<Build>,
}

impl Row<'_> {
    /// `current`, `outdated`, `unpinned` (no lock entry yet) or `fixed` (a URL, file or
    /// image: the Envfile itself names what it is).
    fn status(&self) -> &'static str {
        match (&self.newest, self.pinned) {
            (None, _) => "fixed",
            (Some(_), None) => "unpinned",
            (Some(n), Some(p)) if is_current(n, p) => "current",
            (Some(_), Some(_)) => "outdated",
        }
    }
}

/// Whether the pin is the newest build: the same upstream digest (or envy's own
/// sha256), or, for a box that publishes no digest, the same URL.
fn is_current(newest: &Build, pinned: &LockedBox) -> bool {
    match newest.pin.as_ref().map(|p| p.to_string()) {
        Some(pin) => pinned.upstream.as_ref() == Some(&pin) || pin == format!("sha256:{}", pinned.sha256),
        None => pinned.url.as_ref() == Some(&newest.url),
    }
}

fn box_format(spec: &MachineSpec) -> Result<BoxFormat> {
    Ok(crate::provider::for_kind(spec.provider)?.box_format())
}

pub fn outdated(ctx: &Context, store: &Store, args: BoxOutdatedArgs) -> Result<i32> {
    let ws = Workspace::load(ctx)?;
    let lock = LockFile::load(&LockFile::path_for(&ws.project.dir))?;
    let mut rows = Vec::new();
    for spec in ws.select(&args.machines)? {
        let pinned = lock.machines.get(&spec.name).filter(|l| l.source == lifecycle::source_key(&spec.box_ref));
        let newest = match &spec.box_ref {
            BoxRef::Catalog { .. } | BoxRef::Vagrant { .. } => {
                Some(store.newest(&BoxSource::from_ref(&spec.box_ref, None, Some(box_format(spec)?)))?)
            }
            _ => None,
        };
        let pinned_version = pinned.and_then(|p| store.get(&p.sha256).ok()).map(|b| b.manifest.version);
        rows.push(Row { spec, pinned, pinned_version, newest });
    }
    if ctx.ui.json {
        let machines: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "machine": r.spec.name,
                    "box": r.spec.box_ref.to_string(),
                    "provider": r.spec.provider.to_string(),
                    "pinned": r.pinned.map(|p| json!({
                        "sha256": p.sha256,
                        "version": r.pinned_version,
                        "url": p.url,
                        "upstream": p.upstream,
                    })),
                    "newest": r.newest.as_ref().map(|n| json!({ "version": n.version, "url": n.url, "digest": n.pin.as_ref().map(|p| p.to_string()) })),
                    "status": r.status(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "version": 1, "machines": machines }))?);
        return Ok(0);
    }
    println!("{:<16} {:<20} {:<32} {:<32} STATUS", "MACHINE", "BOX", "PINNED", "NEWEST");
    for r in &rows {
        let pinned = match r.pinned {
            Some(p) => format!("{} {}", &p.sha256[..12], r.pinned_version.as_deref().unwrap_or("")),
            None => "-".into(),
        };
        let newest = match &r.newest {
            Some(n) => format!("{} {}", n.pin.as_ref().map_or("-".into(), |p| short_pin(&p.to_string())), n.version),
            None => "-".into(),
        };
        println!("{:<16} {:<20} {:<32} {:<32} {}", r.spec.name, r.spec.box_ref.to_string(), pinned.trim_end(), newest, r.status());
    }
    if rows.iter().any(|r| r.status() == "outdated") {
        ctx.ui.step("`envy box update [MACHINE]` moves the pins to the newest builds");
    }
    Ok(0)
}

/// `sha512:0123456789ab` from a full `ALGORITHM:HEX` pin.
fn short_pin(pin: &str) -> String {
    let (algorithm, hex) = pin.split_once(':').unwrap_or(("", pin));
    format!("{algorithm}:{}", &hex[..hex.len().min(12)])
}

pub fn update(ctx: &Context, store: &Store, args: BoxUpdateArgs) -> Result<i32> {
    let ws = Workspace::load(ctx)?;
    let machines = ws.select(&args.machines)?;
    let _lock = ws.lock(ctx)?;
    let lock_path = LockFile::path_for(&ws.project.dir);
    let mut lock = LockFile::load(&lock_path)?;
    let mut report = Vec::new();
    for spec in machines {
        let format = box_format(spec)?;
        let fetched = lifecycle::fetch_box(ctx, store, &spec.box_ref, format, args.insecure, None)?;
        fetched.stored.check_serves(format, &spec.name)?;
        let entry = lifecycle::lock_entry(&spec.box_ref, &fetched);
        let stored = fetched.stored;
        let old = lock
            .machines
            .get(&spec.name)
            .filter(|l| l.source == entry.source)
            .map(|l| l.sha256.clone());
        let changed = old.as_deref() != Some(stored.digest.as_str());
        lock.machines.insert(spec.name.clone(), entry);
        // Saved machine by machine: what was verified stays pinned if a later one fails.
        lock.save(&lock_path)?;
        let label = format!("{} (version {})", spec.box_ref, stored.manifest.version);
        if !ctx.ui.json {
            match (&old, changed) {
                (_, false) => println!("{}: {label} is current ({})", spec.name, stored.digest),
                (Some(old), true) => println!("{}: {label} {old} -> {}", spec.name, stored.digest),
                (None, true) => println!("{}: {label} pinned to {}", spec.name, stored.digest),
            }
        }
        let plan = ws.plan(&ctx.home, spec)?;
        if let Some(record) = MachineRecord::load(&plan.dir)?.filter(|r| changed && r.box_digest != stored.digest) {
            ctx.ui.warn(format!(
                "machine {} keeps its base {} until `envy destroy {}`; `envy up` then makes it from the new box",
                spec.name,
                &record.box_digest[..12],
                spec.name
            ));
        }
        report.push(json!({ "machine": spec.name, "box": spec.box_ref.to_string(), "old": old, "new": stored.digest, "changed": changed }));
    }
    if ctx.ui.json {
        println!("{}", serde_json::to_string_pretty(&json!({ "version": 1, "machines": report }))?);
    }
    Ok(0)
}
