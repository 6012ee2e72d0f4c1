//! The lxd provider: machines as system containers on an LXD or Incus daemon (the same
//! REST API), local through its unix socket or a remote cluster over TLS. Boxes become
//! images keyed by their digest; everything else is the daemon's own (docs/lxd.md).

mod checks;
mod client;
mod error;
mod exec;
mod http;
mod images;
mod instances;
pub mod remotes;
mod share;

use std::path::Path;

use anyhow::Result;
use serde_json::Value;

pub use client::Client;
pub use error::Error;
pub use remotes::Remotes;

use crate::boxes::StoredBox;
use crate::envfile::{Invalid, MachineSpec, SyncMode};
use crate::model::{BoxFormat, HostCheck, ProviderKind};
use crate::state::Home;
use crate::plan::MachinePlan;
use crate::provider::{ExecRequest, ExportPack, ImageExport, MachineInfo, MachineState, Provider, SnapshotInfo};
use crate::ui::Ui;

pub struct LxdProvider;

/// This provider's name in an Envfile (`provider = "lxd"`).
pub const KIND: ProviderKind = ProviderKind::new("lxd");

/// Its line in the provider registry.
pub const REGISTRATION: super::Registration = super::Registration {
    kind: KIND,
    summary: "an LXD or Incus daemon, local or a remote cluster",
    make: || Box::new(LxdProvider),
};


/// The daemon a machine lives on.
fn client(plan: &MachinePlan) -> Result<Client> {
    Client::for_placement(&plan.home, &plan.spec.placement)
}

/// The instance, which must exist (exec, snapshots).
fn existing(client: &Client, plan: &MachinePlan) -> Result<Value> {
    instances::get(client, plan)?.ok_or_else(|| crate::state::Error::NotCreated { machine: plan.name().into() }.into())
}

fn is_running(instance: &Value) -> bool {
    instance["status"] == "Running"
}

impl Provider for LxdProvider {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    /// Machines are made from container boxes, uploaded to the daemon as images.
    fn box_format(&self) -> BoxFormat {
        BoxFormat::Container
    }

    fn accepts_placement(&self) -> bool {
        true
    }

    fn remote_checks(&self, home: &Home) -> Vec<HostCheck> {
        checks::remotes(home)
    }

    /// Copied folders go in through exec (`tar -x` reading the exec websocket's stdin):
    /// one stream for the whole folder, modes and symlinks kept, where LXD's file API
    /// takes one request per file and directory.
    fn copies_sync(&self) -> bool {
        true
    }

    /// A machine on a remote can neither mount this host's folders nor take its
    /// forwards: said where the Envfile asks for them (`envy run --remote` places
    /// machines after loading, and checks them again then).
    fn validate(&self, spec: &MachineSpec) -> Result<(), Invalid> {
        let Some(remote) = &spec.placement.remote else { return Ok(()) };
        let server = format!("remote {remote}");
        if let Some(folder) = spec.sync.iter().find(|f| f.mode == SyncMode::Mount) {
            return Err(Invalid::new("sync", cannot_mount(&spec.name, &server, &folder.host)));
        }
        if !spec.forwards.is_empty() {
            return Err(Invalid::new("forward", cannot_forward(&spec.name, &server)));
        }
        if spec.forward_auto.is_some() {
            return Err(Invalid::new("forward_auto", cannot_forward(&spec.name, &server)));
        }
        Ok(())
    }

    fn up(&self, plan: &MachinePlan, stored: &StoredBox, ui: &Ui) -> Result<()> {
        let client = client(plan)?;
        let instance = instances::get(&client, plan)?;
        if instance.as_ref().is_some_and(is_running) {
            return Ok(());
        }
        let alias = images::ensure(&client, &plan.home, stored, ui)?;
        match instance {
            None => {
                // The folders stay open until the daemon has mounted them at start.
                let folders = plan.open_sync_folders()?;
                instances::create(&client, plan, &alias, &stored.digest, instances::attachments(&folders, &plan.forwards))?;
                instances::set_state(&client, plan, "start", false)?;
            }
            Some(instance) => start(&client, plan, instance)?,
        }
        Ok(())
    }

    fn state(&self, plan: &MachinePlan) -> Result<MachineState> {
        let client = client(plan)?;
        Ok(match instances::get(&client, plan)? {
            None => MachineState::NotCreated,
            Some(i) if is_running(&i) => MachineState::Running,
            Some(_) => MachineState::Stopped,
        })
    }

    fn info(&self, plan: &MachinePlan) -> Result<MachineInfo> {
        let client = client(plan)?;
        let instance = existing(&client, plan)?;
        let state = client.get(&format!("{}/state", instances::path(plan)), "reading the machine's state")?;
        let ip = state["network"].as_object().into_iter().flatten().filter(|(name, _)| *name != "lo").find_map(|(_, nic)| {
            nic["addresses"].as_array()?.iter().find(|a| a["family"] == "inet").and_then(|a| a["address"].as_str()).map(str::to_string)
        });
        let pid = state["pid"].as_u64().filter(|p| *p > 0).and_then(|p| u32::try_from(p).ok());
        Ok(MachineInfo { ip, pid, location: location(&client, &instance)?, ..MachineInfo::default() })
    }

    fn exec(&self, plan: &MachinePlan, request: &ExecRequest) -> Result<i32> {
        let client = client(plan)?;
        let instance = existing(&client, plan)?;
        if !is_running(&instance) {
            return Err(crate::state::Error::NotRunning { machine: plan.name().into(), state: MachineState::Stopped.to_string() }.into());
        }
        // An image box's Env, WorkingDir and User, as the container provider runs them.
        let image = image_run(plan)?;
        let bundle = crate::provider::container::bundle::environment(plan, image.as_ref());
        let mut env: Vec<(String, String)> =
            bundle.iter().filter_map(|e| e.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        for (key, value) in &request.env {
            env.retain(|(k, _)| k != key);
            env.push((key.clone(), value.clone()));
        }
        let user = match image.as_ref().and_then(|i| i.user.as_ref()) {
            Some(u) if !request.as_root => (u.uid, u.gid),
            _ => (0, 0),
        };
        let command = exec::Command {
            argv: request.command.clone(),
            env,
            cwd: request.workdir.clone().unwrap_or_else(|| crate::provider::container::bundle::default_dir(plan, image.as_ref())),
            user,
            tty: request.tty,
        };
        let stdin: Box<dyn std::io::Read + Send> = match &request.stdin {
            Some(path) => Box::new(std::fs::File::open(path).map_err(|cause| Error::Io { doing: "cannot read", path: path.clone(), cause })?),
            None => Box::new(std::io::stdin()),
        };
        Ok(exec::run(&client, &instances::path(plan), &command, stdin)?)
    }

    fn shell(&self, plan: &MachinePlan) -> Result<i32> {
        // The machine's files are not read from the host: the shell is picked inside it.
        let pick = "if [ -x /bin/bash ]; then exec /bin/bash -l; else exec /bin/sh -l; fi";
        let request = ExecRequest { command: vec!["/bin/sh".into(), "-c".into(), pick.into()], tty: true, ..ExecRequest::default() };
        self.exec(plan, &request)
    }

    fn halt(&self, plan: &MachinePlan, force: bool, ui: &Ui) -> Result<()> {
        let client = client(plan)?;
        if instances::get(&client, plan)?.as_ref().is_some_and(is_running) {
            ui.step(format!("{}: stopping its instance", plan.name()));
            instances::set_state(&client, plan, "stop", force)?;
        }
        Ok(())
    }

    fn destroy(&self, plan: &MachinePlan, ui: &Ui) -> Result<()> {
        let client = client(plan)?;
        let Some(instance) = instances::get(&client, plan)? else { return Ok(()) };
        if is_running(&instance) {
            instances::set_state(&client, plan, "stop", true)?;
        }
        ui.step(format!("{}: deleting its instance {}", plan.name(), plan.runtime_id));
        instances::delete(&client, plan)?;
        Ok(())
    }

    fn snapshot_save(&self, plan: &MachinePlan, name: &str, replace: bool, ui: &Ui) -> Result<SnapshotInfo> {
        crate::provider::check_snapshot_name(name)?;
        let client = client(plan)?;
        existing(&client, plan)?;
        let exists = instances::snapshots(&client, plan)?.iter().any(|s| s.name == name);
        if exists && !replace {
            return Err(crate::provider::Error::SnapshotExists { machine: plan.name().to_string(), name: name.to_string() }.into());
        }
        ui.step(format!("{}: saving snapshot {name}", plan.name()));
        if exists {
            // The old one goes only once the new one is whole.
            let fresh = format!("{name}.envy-new");
            instances::snapshot_create(&client, plan, &fresh)?;
            instances::snapshot_delete(&client, plan, name)?;
            instances::snapshot_rename(&client, plan, &fresh, name)?;
        } else {
            instances::snapshot_create(&client, plan, name)?;
        }
        let saved = instances::snapshots(&client, plan)?.into_iter().find(|s| s.name == name);
        saved.ok_or_else(|| Error::Unsupported(format!("snapshot {name} of machine {} was saved but is not listed", plan.name())).into())
    }

    fn snapshot_restore(&self, plan: &MachinePlan, name: &str, ui: &Ui) -> Result<()> {
        let client = client(plan)?;
        require_snapshot(&client, plan, name)?;
        ui.step(format!("{}: restoring snapshot {name}", plan.name()));
        // Stopped first, and started by envy: the snapshot's sync devices name folders
        // envy opened in an earlier process, which the daemon could not mount again.
        let running = is_running(&existing(&client, plan)?);
        if running {
            instances::set_state(&client, plan, "stop", false)?;
        }
        instances::snapshot_restore(&client, plan, name)?;
        if running {
            start(&client, plan, existing(&client, plan)?)?;
        }
        Ok(())
    }

    fn snapshot_list(&self, plan: &MachinePlan) -> Result<Vec<SnapshotInfo>> {
        let client = client(plan)?;
        existing(&client, plan)?;
        Ok(instances::snapshots(&client, plan)?)
    }

    fn snapshot_delete(&self, plan: &MachinePlan, name: &str) -> Result<()> {
        let client = client(plan)?;
        require_snapshot(&client, plan, name)?;
        Ok(instances::snapshot_delete(&client, plan, name)?)
    }

    fn export(&self, plan: &MachinePlan, _stored: &StoredBox, dir: &Path, ui: &Ui, pack: &mut ExportPack<'_>) -> Result<()> {
        let client = client(plan)?;
        existing(&client, plan)?;
        let rootfs = share::export(&client, plan, dir, ui)?;
        pack(&std::collections::BTreeMap::from([("rootfs.tar".to_string(), crate::boxes::Payload::File(rootfs))]))
    }

    fn export_image(&self, plan: &MachinePlan, _stored: &StoredBox, _dir: &Path, _ui: &Ui) -> Result<ImageExport> {
        Err(not_shared(plan).into())
    }
}

/// Starts a stopped instance with envy's devices made afresh: sync folders opened by
/// this process (held open until the daemon has mounted them), this start's forwards.
fn start(client: &Client, plan: &MachinePlan, instance: Value) -> Result<()> {
    let folders = plan.open_sync_folders()?;
    instances::replace_devices(client, plan, instance, instances::attachments(&folders, &plan.forwards))?;
    instances::set_state(client, plan, "start", false)?;
    Ok(())
}

/// Why a machine on `server` cannot have a mounted sync folder, and the way out.
fn cannot_mount(machine: &str, server: &str, folder: &Path) -> String {
    format!(
        "machine {machine} runs on {server}, which cannot mount this host's folders ({}): set sync_mode = \"copy\" \
         to push them into it one way at up, `envy provision` and `envy reload`, or run it on the local LXD",
        folder.display()
    )
}

/// Why a machine on `server` takes no forwards (docs/lxd.md: a proxy device would
/// listen on the member's host, not on this one's 127.0.0.1).
fn cannot_forward(machine: &str, server: &str) -> String {
    format!(
        "machine {machine} runs on {server}, which cannot listen on this host's ports: remove its `forward` and \
         `forward_auto` and reach its services through the cluster's own network (or `envy exec`), or run it on the local LXD"
    )
}

fn not_shared(plan: &MachinePlan) -> Error {
    Error::Unsupported(format!(
        "envy share --push does not push lxd machines (machine {}): `envy share` writes a box of it, \
         or publish it on the daemon with `lxc publish {}`",
        plan.name(),
        plan.runtime_id
    ))
}

/// The snapshot must exist; the error lists the ones that do.
fn require_snapshot(client: &Client, plan: &MachinePlan, name: &str) -> Result<()> {
    crate::provider::check_snapshot_name(name)?;
    existing(client, plan)?;
    let known: Vec<String> = instances::snapshots(client, plan)?.into_iter().map(|s| s.name).collect();
    if known.iter().any(|k| k == name) {
        return Ok(());
    }
    Err(crate::provider::Error::NoSnapshot { machine: plan.name().to_string(), name: name.to_string(), known }.into())
}

/// The cluster member the instance is on, with its state when it is not online
/// ("node2 (evacuated)"); None on a daemon that is not clustered.
fn location(client: &Client, instance: &Value) -> Result<Option<String>, Error> {
    let Some(member) = instance["location"].as_str().filter(|l| !l.is_empty() && *l != "none") else { return Ok(None) };
    let info = client.get(&format!("/1.0/cluster/members/{}", client::url_escape(member)), "reading the machine's cluster member")?;
    Ok(Some(match info["status"].as_str() {
        Some("Online") | None => member.to_string(),
        Some(status) => format!("{member} ({})", status.to_lowercase()),
    }))
}

/// The run settings of the machine's box when it is an image (None for a rootfs box),
/// found in the local store by the digest in the machine's record: never from the
/// instance's config, which the server holds.
fn image_run(plan: &MachinePlan) -> Result<Option<crate::boxes::ImageRun>> {
    let Some(record) = crate::state::record::MachineRecord::load(&plan.dir)? else { return Ok(None) };
    // Only reads a stored box: no fetch, so no proxy or catalog settings.
    let store = crate::boxes::Store::open(&plan.home, &Default::default())?;
    match store.get(&record.box_digest) {
        Ok(stored) => Ok(crate::boxes::ImageRun::of(&stored)?),
        // A machine made from a box this store no longer has runs as root, as a rootfs
        // box does; a damaged box is said, not run around.
        Err(e) if matches!(e.downcast_ref(), Some(crate::boxes::Error::Missing { .. })) => Ok(None),
        Err(e) => Err(e),
    }
}
