//! `envy share`: pack a machine's current state into a verified box (manifest with
//! per-file digests) and, with `--serve`, serve it over HTTP so a teammate gets
//! exactly that state, digest-checked; or, with `--push`, push a container machine to
//! an OCI registry as its box's layers plus one layer of its own changes.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context as _, Result};
use serde_json::json;

use crate::boxes::{self, BoxServer, ContainerPayload, Manifest, QemuPayload, Store};
use crate::cli::ShareArgs;
use crate::context::Context;
use crate::model::{BoxFormat, BoxRef};
use crate::workspace::Workspace;
use crate::provider::{self, ImageExport};
use crate::signals;
use crate::state::record::MachineRecord;

pub fn run(ctx: &Context, args: ShareArgs) -> Result<i32> {
    let ws = Workspace::load(ctx)?;
    let spec = ws.select_one(args.machine.as_deref())?;
    let plan = ws.plan(&ctx.home, spec)?;
    let record = MachineRecord::load(&plan.dir)?
        .ok_or_else(|| crate::state::Error::NotCreated { machine: spec.name.clone() })?;
    if let Some(target) = &args.push {
        return push(ctx, &ws, &plan, &record, target);
    }
    let output = args.output.clone().unwrap_or_else(|| ws.project.dir.join(format!("{}.box", spec.name)));
    let (digest, size) = {
        // Held while packing: a halt or destroy must not pull the machine away mid-copy.
        let _lock = ws.lock(ctx)?;
        pack(ctx, &plan, &record, &output)?
    };
    let summary = json!({
        "version": 1,
        "machine": spec.name,
        "path": output,
        "sha256": digest,
        "size": size,
    });
    let Some(addr) = &args.serve else {
        if ctx.ui.json {
            super::print_json(&summary)?;
        } else {
            println!("{digest}  {}", output.display());
        }
        return Ok(0);
    };

    let server = BoxServer::bind(addr, &output)?;
    let url = server.url();
    if ctx.ui.json {
        let mut served = summary;
        served["url"] = json!(url);
        // One line, so a script can read it while the server keeps running.
        println!("{}", serde_json::to_string(&served)?);
    } else {
        println!("envy box add {url} --sha256 {digest}");
        println!("# or this machine's Envfile section, pinned to the shared box:");
        let box_value = toml::Value::Table(toml::Table::from_iter([
            ("url".to_string(), toml::Value::String(url.clone())),
            ("sha256".to_string(), toml::Value::String(digest.clone())),
        ]));
        print!("{}", spec.to_section(&ws.project.dir, box_value));
    }
    std::io::stdout().flush()?;
    if !server.addr().ip().is_loopback() {
        ctx.ui.warn(format!("serving on {}: anyone who can reach this address can download the box", server.addr()));
    }
    ctx.ui.step(format!("serving {} until Ctrl-C", output.display()));
    signals::catch_interrupts()?;
    server.serve_until(signals::interrupted)?;
    ctx.ui.step("share: stopped serving");
    Ok(0)
}

/// `--push`: a container's changes as one layer over its box's layers, or a halted
/// VM's disk as a containerDisk, pushed to a registry; prints the digest and the
/// Envfile line that pins it.
fn push(ctx: &Context, ws: &Workspace, plan: &crate::plan::MachinePlan, record: &MachineRecord, target: &str) -> Result<i32> {
    let mut image = match boxes::parse_box_ref(target, None, &ctx.cwd)? {
        BoxRef::Oci { image, .. } if image.digest.is_none() => image,
        _ => {
            return Err(boxes::Error::BadReference {
                reference: target.to_string(),
                reason: "--push takes a registry reference with a tag and no digest (the digest is what the push makes)".into(),
            }
            .into())
        }
    };
    let store = Store::open(&ctx.home, &ctx.config)?;
    let stored = store.get(&record.box_digest)?;
    let staging = tempfile::Builder::new()
        .prefix(".push-")
        .tempdir_in(&plan.project.state_dir)
        .context("cannot make a staging folder in the project's state dir")?;
    let digest = {
        // Held while packing: a halt or destroy must not pull the machine away mid-copy.
        let _lock = ws.lock(ctx)?;
        match provider::for_kind(plan.spec.provider)?.export_image(plan, &stored, staging.path(), &ctx.ui)? {
            ImageExport::Layer(delta) => {
                ctx.ui.step(format!("{}: pushing to {image}", plan.name()));
                boxes::push(&store, &stored, &delta, &image, staging.path(), &ctx.ui)?
            }
            ImageExport::Disk(disk) => {
                ctx.ui.step(format!("{}: pushing its disk to {image} as a containerDisk", plan.name()));
                boxes::push_disk(&store, &disk, &image, staging.path(), &ctx.ui)?
            }
        }
    };
    image.digest = Some(digest.clone());
    if ctx.ui.json {
        super::print_json(&json!({ "version": 1, "machine": plan.name(), "image": image.to_string(), "digest": format!("sha256:{digest}") }))?;
    } else {
        println!("sha256:{digest}  {image}");
        println!("box = {}", toml::Value::String(image.to_string()));
    }
    Ok(0)
}

/// Exports the machine's payload and packs it with a manifest into `output`.
fn pack(ctx: &Context, plan: &crate::plan::MachinePlan, record: &MachineRecord, output: &std::path::Path) -> Result<(String, u64)> {
    let store = Store::open(&ctx.home, &ctx.config)?;
    let stored = store.get(&record.box_digest)?;
    let staging = tempfile::Builder::new()
        .prefix(".share-")
        .tempdir_in(&plan.project.state_dir)
        .context("cannot make a staging folder in the project's state dir")?;
    let format = provider::for_kind(plan.spec.provider)?.box_format();
    let (container, qemu) = match format {
        BoxFormat::Container => (Some(ContainerPayload { rootfs: Some("rootfs.tar".into()) }), None),
        BoxFormat::Qemu => {
            let base = stored.manifest.qemu.clone().context("the machine's box has no qemu payload")?;
            (None, Some(QemuPayload { disk: "disk.qcow2".into(), ..base }))
        }
    };
    let project_name = plan.project.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "project".into());
    let name = format!("{project_name}-{}", plan.name());
    let manifest = Manifest {
        format: boxes::MANIFEST_FORMAT,
        name: name.clone(),
        version: format!("shared-{}", chrono_stamp()),
        arch: stored.manifest.arch.clone(),
        providers: vec![format],
        container,
        qemu,
        // pack_box writes the payloads' digests last, in box.sums.
        files: BTreeMap::new(),
        image: None,
        envfile: Some(plan.spec.to_section(&plan.project.dir, toml::Value::String(name))),
    };
    let partial = output.with_extension("box.part");
    let mut digest = None;
    let exported = provider::for_kind(plan.spec.provider)?.export(plan, &stored, staging.path(), &ctx.ui, &mut |payloads| {
        ctx.ui.step(format!("{}: packing {}", plan.name(), output.display()));
        digest = Some(boxes::pack_box(&partial, manifest.clone(), payloads, &output.display().to_string())?);
        Ok(())
    });
    let digest = match exported.and_then(|()| digest.context("the machine's export gave nothing to pack")) {
        Ok(digest) => digest,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, output).with_context(|| format!("cannot write {}", output.display()))?;
    crate::fsutil::give_to_invoking_user(output)?;
    let size = std::fs::metadata(output)?.len();
    Ok((digest, size))
}

/// Seconds since the epoch, as the shared box's version.
fn chrono_stamp() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
