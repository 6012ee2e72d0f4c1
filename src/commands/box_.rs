//! `envy box add|list|remove|prune|build|verify`: the box store from the command line
//! (`outdated` and `update`, which work on a project's pins, are in `box_update`).

use std::collections::BTreeSet;

use anyhow::Result;
use serde_json::json;

use crate::boxes::{self, BoxSource, BuildRequest, Record, Store, StoredBox};
use crate::cli::{
    BoxAddArgs, BoxBuildArgs, BoxCommand, BoxKindArg, BoxPruneArgs, BoxRemoveArgs, BoxVerifyArgs,
};
use crate::context::Context;
use crate::envfile::lock::LockFile;
use crate::model::{BoxFormat, BoxRef};

pub fn run(ctx: &Context, cmd: BoxCommand) -> Result<i32> {
    let store = Store::open(&ctx.home, &ctx.config)?;
    match cmd {
        BoxCommand::Add(args) => add(ctx, &store, args),
        BoxCommand::List => list(ctx, &store),
        BoxCommand::Remove(args) => remove(ctx, &store, args),
        BoxCommand::Prune(args) => prune(ctx, &store, args),
        BoxCommand::Build(args) => build(ctx, &store, args),
        BoxCommand::Verify(args) => verify(ctx, &store, args),
        BoxCommand::Outdated(args) => super::box_update::outdated(ctx, &store, args),
        BoxCommand::Update(args) => super::box_update::update(ctx, &store, args),
    }
}

fn add(ctx: &Context, store: &Store, args: BoxAddArgs) -> Result<i32> {
    let reference = boxes::parse_box_ref(&args.source, args.sha256.as_deref(), &ctx.cwd)?;
    let source = BoxSource {
        reference,
        insecure: args.insecure,
        catalog: args.catalog,
        name: args.name,
        format: None,
    };
    let stored = store.ensure(&source, &ctx.ui)?.stored;
    let record = stored.record()?;
    if ctx.ui.json {
        let mut out = describe(&stored, &record);
        out["version"] = json!(1);
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}  {}@{}", stored.digest, record.name, stored.manifest.version);
    }
    Ok(0)
}

/// A stored box as JSON (docs/json.md).
fn describe(b: &StoredBox, r: &Record) -> serde_json::Value {
    json!({
        "name": r.name,
        "box_version": b.manifest.version,
        "providers": b.manifest.providers,
        "size": r.size(),
        "digest": b.digest,
        "added": r.added,
        "source": r.source,
        "dir": b.dir,
    })
}

fn list(ctx: &Context, store: &Store) -> Result<i32> {
    let boxes = store.list()?;
    if ctx.ui.json {
        let out = json!({ "version": 1, "boxes": boxes.iter().map(|(b, r)| describe(b, r)).collect::<Vec<_>>() });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    if boxes.is_empty() {
        ctx.ui.step("no boxes stored; `envy box add NAME|URL|FILE` adds one");
        return Ok(0);
    }
    println!("{:<24} {:<20} {:<16} {:>10}  {:<12}  ADDED", "NAME", "VERSION", "PROVIDERS", "SIZE", "DIGEST");
    for (b, r) in &boxes {
        let providers: Vec<String> = b.manifest.providers.iter().map(|p| p.to_string()).collect();
        println!(
            "{:<24} {:<20} {:<16} {:>10}  {:<12}  {}",
            r.name,
            b.manifest.version,
            providers.join(","),
            indicatif::HumanBytes(r.size()).to_string(),
            &b.digest[..12],
            ago(r.added)
        );
    }
    Ok(0)
}

fn remove(ctx: &Context, store: &Store, args: BoxRemoveArgs) -> Result<i32> {
    if args.boxes.is_empty() {
        anyhow::bail!(
            "name the boxes to remove (a name, name@version or digest prefix); `envy box list` shows them"
        );
    }
    // Resolve every name first, so a typo removes nothing.
    let found = find_all(store, &args.boxes)?;
    for (b, r) in &found {
        store.remove(&b.digest)?;
        ctx.ui.step(format!("removed {}@{} ({})", r.name, b.manifest.version, &b.digest[..12]));
    }
    if ctx.ui.json {
        println!(
            "{}",
            json!({ "version": 1, "removed": found.iter().map(|(b, _)| &b.digest).collect::<Vec<_>>() })
        );
    }
    Ok(0)
}

fn prune(ctx: &Context, store: &Store, args: BoxPruneArgs) -> Result<i32> {
    let mut pinned = BTreeSet::new();
    for project in crate::state::registry::projects(&ctx.home)? {
        let lock = LockFile::load(&LockFile::path_for(&project))?;
        pinned.extend(lock.digests().map(str::to_string));
    }
    if !args.dry_run {
        for leftover in store.remove_leftovers()? {
            ctx.ui.step(format!("removed leftover {}", leftover.display()));
        }
    }
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    for (b, r) in store.list()? {
        if pinned.contains(&b.digest) {
            kept.push(b.digest.clone());
            continue;
        }
        if !args.dry_run {
            store.remove(&b.digest)?;
        }
        let verb = if args.dry_run { "would remove" } else { "removed" };
        ctx.ui.step(format!(
            "{verb} {}@{} ({}, {})",
            r.name,
            b.manifest.version,
            &b.digest[..12],
            indicatif::HumanBytes(r.size())
        ));
        removed.push(b.digest.clone());
    }
    if ctx.ui.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "version": 1, "dry_run": args.dry_run, "removed": removed, "kept": kept })
            )?
        );
    } else if removed.is_empty() {
        ctx.ui.step(format!("nothing to prune; {} boxes are pinned by projects' Envfile.lock", kept.len()));
    }
    Ok(0)
}

fn build(ctx: &Context, store: &Store, args: BoxBuildArgs) -> Result<i32> {
    let kind = match args.kind {
        BoxKindArg::Container => BoxFormat::Container,
        BoxKindArg::Qemu => BoxFormat::Qemu,
    };
    // Sizes read exactly as the Envfile's `memory` and `disk` do.
    let disk_size = match args.disk_size.as_deref() {
        Some(text) => match crate::model::parse_size(text) {
            None => anyhow::bail!("--disk-size {text:?} is not a size: write a number and a unit, e.g. \"2GiB\""),
            Some(bytes) if bytes < crate::envfile::MIN_DISK => {
                anyhow::bail!("--disk-size {text:?} is too small: at least {} MiB", crate::envfile::MIN_DISK >> 20)
            }
            Some(bytes) => Some(bytes),
        },
        None => None,
    };
    let output = args.output.clone().unwrap_or_else(|| format!("{}.box", args.name).into());
    let request = BuildRequest {
        rootfs: args.rootfs.clone(),
        name: args.name.clone(),
        version: args.version.clone(),
        kind,
        disk_size,
        cmdline: args.cmdline.clone(),
        output: output.clone(),
    };
    let digest = boxes::build(&request, &ctx.ui)?;
    if args.add {
        let path = std::path::absolute(&output)?;
        let source = BoxSource::from_ref(&BoxRef::Path { path, sha256: Some(digest.clone()) }, None, None);
        store.ensure(&source, &ctx.ui)?;
    }
    if ctx.ui.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "version": 1, "digest": digest, "path": output, "added": args.add })
            )?
        );
    } else {
        println!("{digest}  {}", output.display());
    }
    Ok(0)
}

fn verify(ctx: &Context, store: &Store, args: BoxVerifyArgs) -> Result<i32> {
    let targets = if args.boxes.is_empty() { store.list()? } else { find_all(store, &args.boxes)? };
    let mut reports = Vec::new();
    let mut corrupt = 0;
    for (b, r) in &targets {
        let problems = store.verify(&b.digest)?;
        if problems.is_empty() {
            ctx.ui.step(format!("ok {}@{} ({})", r.name, b.manifest.version, &b.digest[..12]));
        } else {
            corrupt += 1;
            for p in &problems {
                eprintln!(
                    "error: box {}@{} ({}) is corrupt: {} should have sha256 {} but has {}",
                    r.name,
                    b.manifest.version,
                    &b.digest[..12],
                    p.file,
                    p.expected,
                    p.got
                );
            }
        }
        reports.push(
            json!({ "digest": b.digest, "name": r.name, "ok": problems.is_empty(), "corrupt": problems }),
        );
    }
    if ctx.ui.json {
        println!("{}", serde_json::to_string_pretty(&json!({ "version": 1, "boxes": reports }))?);
    }
    if corrupt > 0 {
        eprintln!(
            "{corrupt} of {} boxes are corrupt; run `envy box remove DIGEST` and add them again",
            targets.len()
        );
        return Ok(crate::error::code::BOX);
    }
    Ok(0)
}

/// Each query's box with its record; a query that matches nothing fails them all.
fn find_all(store: &Store, queries: &[String]) -> Result<Vec<(StoredBox, Record)>> {
    queries
        .iter()
        .map(|q| {
            let b = store.find(q)?;
            let r = b.record()?;
            Ok((b, r))
        })
        .collect()
}

fn ago(added: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match now.saturating_sub(added) {
        s if s < 120 => "just now".into(),
        s if s < 7200 => format!("{} minutes ago", s / 60),
        s if s < 172800 => format!("{} hours ago", s / 3600),
        s => format!("{} days ago", s / 86400),
    }
}
