//! The container provider: each machine is an OCI bundle run by envy's own runtime
//! (native.rs) or runc (runtime.rs says which), its root an overlay of the box's
//! rootfs, its network a namespace on the project's bridge (see network.rs). Every
//! method reads the truth from the container's state file and init, the mount table
//! and the namespaces, so any partial state (a killed `envy up`, a reboot) is
//! repaired. As a normal user all of it happens inside envy's user namespace
//! (userns.rs): limits need a delegated cgroup (bundle::Limits), and a running
//! container without a cgroup is held still by signals (freeze.rs).

pub(crate) mod bundle;
mod cgroups;
mod console;
pub(crate) mod create;
pub(crate) mod enter;
mod freeze;
mod layers;
mod layout;
mod lookup;
mod native;
mod network;
mod overlay;
mod ports;
mod runc;
mod runtime;
mod sealed_exe;
mod snapshot;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use nix::sys::signal::Signal;

use crate::boxes::{ImageRun, StoredBox};
use crate::envfile::{Invalid, MachineSpec};
use crate::model::{BoxFormat, HostCheck, ProviderKind};
use crate::plan::MachinePlan;
use crate::provider::{Error, ExecRequest, ExportPack, GuestPorts, ImageExport, MachineInfo, MachineState, Provider, SnapshotInfo};
use crate::ui::Ui;
use layout::Layout;
use crate::provider::network::ProjectNet;
use network::MachineNet;
use runtime::{Runtime, Status};

/// How long a graceful halt waits for the init to exit before killing it.
const HALT_GRACE: Duration = Duration::from_secs(10);

pub struct ContainerProvider;

/// This provider's name in an Envfile (`provider = "container"`).
pub const KIND: ProviderKind = ProviderKind::new("container");

/// Its line in the provider registry.
pub const REGISTRATION: super::Registration = super::Registration {
    kind: KIND,
    summary: "OCI containers: start in milliseconds",
    make: || Box::new(ContainerProvider),
};

impl ContainerProvider {
    pub fn new() -> ContainerProvider {
        ContainerProvider
    }
}

impl Default for ContainerProvider {
    fn default() -> Self {
        Self::new()
    }
}

/// What a machine's root is mounted for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RootFor {
    /// The container's root, written by it.
    Running,
    /// A read-only view, for a halted machine's export.
    Reading,
}

/// One machine with everything this provider knows how to reach for it.
struct Machine<'a> {
    plan: &'a MachinePlan,
    layout: Layout,
    runtime: Runtime,
    project: ProjectNet,
    net: MachineNet,
}

impl<'a> Machine<'a> {
    fn of(plan: &'a MachinePlan) -> Result<Machine<'a>> {
        Ok(Machine {
            plan,
            layout: Layout::new(&plan.dir),
            runtime: Runtime::of(&plan.home.runtime_dir()),
            project: ProjectNet::of(plan),
            net: MachineNet::of(plan)?,
        })
    }

    fn id(&self) -> &str {
        &self.plan.runtime_id
    }

    fn name(&self) -> &str {
        self.plan.name()
    }

    /// Running is the container running, as its state file and init say (every
    /// command asks). A broken network (slirp4netns killed) does not stop the machine: commands
    /// still work in it, and `envy up` repairs the network without restarting it.
    fn state(&self) -> Result<MachineState> {
        let container = self.runtime.state(self.id())?;
        if container.as_ref().is_some_and(|c| c.status == Status::Running && crate::userns::is_ours(c.pid)) {
            return Ok(MachineState::Running);
        }
        if container.is_some() || self.layout.exists() {
            return Ok(MachineState::Stopped);
        }
        Ok(MachineState::NotCreated)
    }

    /// For exec: the container must run (its network may be down; commands still work).
    /// Fails with the state errors commands map to exit code 7.
    fn require_container(&self) -> Result<runtime::ContainerState> {
        match self.runtime.state(self.id())? {
            Some(c) if c.status == Status::Running && crate::userns::is_ours(c.pid) => Ok(c),
            None if !self.layout.exists() => Err(crate::state::Error::NotCreated { machine: self.name().into() }.into()),
            _ => Err(crate::state::Error::NotRunning { machine: self.name().into(), state: MachineState::Stopped.to_string() }.into()),
        }
    }

    /// The box the machine was created on, found in the store by the digest recorded
    /// at `up` (never from a path a file could name), for restore.
    fn recorded_box(&self) -> Result<StoredBox> {
        let path = self.layout.box_record();
        let digest = crate::fsutil::read_private(&path)?
            .ok_or_else(|| crate::state::Error::NotCreated { machine: self.name().into() })?;
        let digest = crate::boxes::parse_sha256(String::from_utf8_lossy(&digest).trim())
            .map_err(|e| crate::state::Error::BadRecord { path, message: format!("{e}; run `envy up {}` to write it again", self.name()) })?;
        // Only reads a stored box: no fetch, so no proxy or catalog settings.
        crate::boxes::Store::open(&self.plan.home, &Default::default())?.get(&digest)
    }

    /// Mounts the overlay (unless mounted) and the sync folders, writes the bundle
    /// (with an image box's Env, WorkingDir and User) and runs the container.
    fn start_container(&self, stored: &StoredBox) -> Result<()> {
        // rootfs() checks the box's unpacked root is there before anything is made for it.
        let lower = stored.rootfs()?;
        if !overlay::is_mounted(&self.layout.rootfs())? {
            self.mount_root(&lower, RootFor::Running)?;
        }
        let sources = self.stage_sync_folders()?;
        bundle::write(self.plan, &self.layout, &self.net, &sources, ImageRun::of(stored)?.as_ref())?;
        self.runtime.start(self.id(), self.layout.dir(), &self.layout.log())?;
        match self.runtime.state(self.id())? {
            Some(c) if c.status == Status::Running => Ok(()),
            _ => Err(Error::NotReady {
                machine: self.name().into(),
                seconds: 0,
                detail: format!("its init exited right after starting; last lines of {}:\n{}", self.layout.log().display(), self.log_tail()),
            }
            .into()),
        }
    }

    /// Mounts the machine's root: its upper layer over its frozen layers (layers.rs) over
    /// the box's rootfs, made first for a new machine. To be read, the upper layer is
    /// the top lower one and the mount is read-only: unmounting a writable overlay
    /// syncs the whole filesystem under it (overlayfs's sync_fs), whatever else was
    /// just written there, such as the box an export packs.
    fn mount_root(&self, box_rootfs: &Path, purpose: RootFor) -> Result<()> {
        let layers = layers::Layers::of(&self.layout);
        let chain = layers.repair()?;
        for dir in [self.layout.work(), self.layout.rootfs()] {
            crate::fsutil::create_private_dir(&dir)?;
        }
        let lowers = layers.lowers(&chain, box_rootfs)?;
        match purpose {
            RootFor::Running => overlay::mount_overlay(&lowers, Some((&self.layout.upper(), &self.layout.work())), &self.layout.rootfs()),
            RootFor::Reading => {
                let lowers: Vec<PathBuf> = std::iter::once(self.layout.upper()).chain(lowers).collect();
                overlay::mount_overlay(&lowers, None, &self.layout.rootfs())
            }
        }
    }

    /// Bind-mounts each sync folder, opened by fd (see `MachinePlan::open_sync_folders`),
    /// onto a mount point in the machine dir, and the project's Envfile and
    /// Envfile.lock read-only over their place in a writable sync: the runtime then mounts
    /// these, which no guest can swap, and a guest cannot rewrite the Envfile that
    /// decides what the host shares with it. Returns the bundle's mount sources.
    fn stage_sync_folders(&self) -> Result<bundle::SyncSources> {
        let staging = self.layout.sync_stage();
        // Only a dir that is there can hold mounts (a new machine's is not).
        if staging.exists() {
            overlay::unmount_all(&staging)?;
            std::fs::remove_dir_all(&staging).with_context(|| format!("cannot clear {}", staging.display()))?;
        }
        crate::fsutil::create_private_dir(&staging)?;
        let mut sources = bundle::SyncSources::default();
        for (i, opened) in self.plan.open_sync_folders()?.iter().enumerate() {
            let point = staging.join(i.to_string());
            overlay::bind_mount(&opened.proc_path(), &point, opened.is_dir)?;
            sources.folders.push((point, opened.folder.clone()));
        }
        let project = &self.plan.project;
        let guarded = [project.envfile.clone(), crate::envfile::lock::LockFile::path_for(&project.dir)];
        for (i, file) in guarded.iter().enumerate() {
            let Some((folder, rel)) = sources.folders.iter().find_map(|(_, f)| {
                (!f.readonly).then(|| file.strip_prefix(&f.host).ok().map(|rel| (f, rel))).flatten()
            }) else { continue };
            let opened = match crate::fsutil::open_below(&project.dir, file, crate::fsutil::Follow::Never) {
                Ok(fd) => fd,
                Err(nix::errno::Errno::ENOENT) => continue,
                Err(e) => bail!(self.plan.project_path_error(
                    file,
                    "project file",
                    format!("cannot be opened without following a symlink ({e}); put the real file back"),
                )),
            };
            let point = staging.join(format!("guard-{i}"));
            overlay::bind_mount(&crate::fsutil::fd_path(&opened), &point, false)?;
            sources.guarded.push((point, format!("{}/{}", folder.guest.trim_end_matches('/'), rel.display())));
        }
        Ok(sources)
    }

    /// Stops and deletes the container (if any), then unmounts its root filesystem.
    fn stop_container(&self, force: bool, ui: &Ui) -> Result<()> {
        if let Some(container) = self.runtime.state(self.id())? {
            if container.status == Status::Paused {
                self.runtime.resume(self.id())?;
            }
            if container.status == Status::Running || container.status == Status::Paused {
                if !force {
                    ui.step(format!("{}: stopping", self.name()));
                    self.runtime.kill(self.id(), Signal::SIGTERM)?;
                }
                if force || !self.runtime.wait_stopped(self.id(), HALT_GRACE)? {
                    if !force {
                        ui.warn(format!("machine {} did not stop within {} s; killing it", self.name(), HALT_GRACE.as_secs()));
                    }
                    // The init may exit between the check and the signal; delete --force covers it.
                    let _ = self.runtime.kill(self.id(), Signal::SIGKILL);
                    self.runtime.wait_stopped(self.id(), HALT_GRACE)?;
                }
            }
            self.runtime.delete(self.id())?;
        }
        overlay::unmount_all(self.layout.dir())
    }

    /// Removes the machine's forwards and namespace; the project network goes with
    /// its last machine (container or VM).
    fn detach_network(&self) -> Result<()> {
        self.project.remove_forwards(self.net.ip)?;
        self.net.remove(&self.project)?;
        self.project.release()
    }

    /// Removes every file this provider made in the machine dir. Only after
    /// `stop_container`: it leaves no mount below the dir, so removal cannot reach the
    /// box store or the project's files through one.
    fn remove_files(&self) -> Result<()> {
        self.layout.owned().iter().try_for_each(|path| crate::fsutil::remove_path(path))
    }

    fn log_tail(&self) -> String {
        crate::fsutil::tail_lines(&self.layout.log(), 20).unwrap_or_default()
    }
}

impl Provider for ContainerProvider {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn box_format(&self) -> BoxFormat {
        BoxFormat::Container
    }

    fn validate(&self, spec: &MachineSpec) -> Result<(), Invalid> {
        if spec.user_data.is_some() {
            return Err(Invalid::new(
                "user_data",
                "user_data is cloud-init's, which reads it from a VM's NoCloud seed; a container machine has no \
                 cloud-init: use provision steps (shell, script, file) instead, or set provider = \"qemu\"",
            ));
        }
        Ok(())
    }

    fn host_checks(&self) -> Vec<HostCheck> {
        vec![
            super::host::tool("runc", "runc", Some("--version")),
            super::host::tool("slirp4netns", "slirp4netns", Some("--version")),
            super::host::filesystem("overlayfs", "overlay"),
        ]
    }

    fn up(&self, plan: &MachinePlan, stored: &StoredBox, ui: &Ui) -> Result<()> {
        let m = Machine::of(plan)?;
        // rootfs() checks the box's unpacked root is there before anything is made for it.
        stored.rootfs()?;
        crate::fsutil::create_private_dir(m.layout.dir())?;
        // Written (and fsynced) only when it changes: every `up` of a running machine passes here.
        if crate::fsutil::read_private(&m.layout.box_record())?.as_deref() != Some(stored.digest.as_bytes()) {
            crate::fsutil::write_atomic(&m.layout.box_record(), stored.digest.as_bytes())?;
        }
        let container = m.runtime.state(m.id())?;
        m.project.ensure()?;
        let intact = m.net.is_intact(&m.project)?;
        let running = match container.map(|c| c.status) {
            Some(Status::Running) if intact => true,
            Some(Status::Paused) if intact => {
                m.runtime.resume(m.id())?;
                true
            }
            Some(Status::Running | Status::Paused) => {
                ui.step(format!("{}: its network is gone; restarting it", m.name()));
                m.runtime.delete(m.id())?;
                false
            }
            Some(_) => {
                ui.step(format!("{}: removing the stopped container", m.name()));
                m.runtime.delete(m.id())?;
                false
            }
            None => false,
        };
        if !running {
            ui.step(format!("{}: starting container", m.name()));
            if matches!(bundle::Limits::for_this_user(), bundle::Limits::NotApplied) && (plan.spec.cpus > 0 || plan.spec.memory > 0) {
                ui.warn(format!(
                    "{}: its cpus and memory limits are not applied: this user has no cgroup v2 subtree of its own \
                     (cgroup v1 or hybrid, or no delegation); `envy doctor` says what would give it one",
                    m.name()
                ));
            }
            let created = m.layout.exists();
            let started = if intact { Ok(()) } else { m.net.rebuild(&m.project) }.and_then(|_| m.start_container(stored));
            if let Err(e) = started {
                // Leave the machine as before: stopped, or not created at all.
                let undone = m.stop_container(true, ui).and_then(|_| m.detach_network());
                let removed = if created { Ok(()) } else { m.remove_files() };
                if let Err(cleanup) = undone.and(removed) {
                    ui.warn(format!("cleaning up after the failed start of {} failed too: {cleanup:#}", m.name()));
                }
                return Err(e);
            }
        }
        m.project.sync_forwards(m.name(), m.net.ip, &plan.forwards)
    }

    fn state(&self, plan: &MachinePlan) -> Result<MachineState> {
        Machine::of(plan)?.state()
    }

    fn info(&self, plan: &MachinePlan) -> Result<MachineInfo> {
        let m = Machine::of(plan)?;
        let state = m.state()?;
        let pid = match state {
            MachineState::Running => m.runtime.state(m.id())?.map(|c| c.pid),
            _ => None,
        };
        Ok(MachineInfo {
            ip: (state != MachineState::NotCreated).then(|| m.net.ip.to_string()),
            ssh_port: None,
            pid,
            log_tail: Some(m.log_tail()).filter(|t| !t.is_empty()),
            sync_transport: Vec::new(),
            location: None,
        })
    }

    fn exec(&self, plan: &MachinePlan, request: &ExecRequest) -> Result<i32> {
        let m = Machine::of(plan)?;
        let container = m.require_container()?;
        if request.command.is_empty() {
            bail!(Error::NoCommand);
        }
        // envy enters the container itself (enter.rs); runc serves a container of its
        // own where envy cannot seal its binary, or cannot read runc's state file.
        if let Some(init) = &container.init {
            match m.runtime.sealed_exe() {
                Ok(exe) => return enter::exec(&m.layout.config(), init, request, &exe),
                Err(e) if m.runtime.is_native(m.id()) => return Err(e.context("envy cannot enter its own container")),
                Err(e) => tracing::debug!("running the command through runc exec: {e:#}"),
            }
        }
        let code = m.runtime.runc_exec(m.id(), request)?;
        if code != runc::EXEC_FAILED {
            return Ok(code);
        }
        // runc's 255 covers a command it could not start; tell those apart as a shell does,
        // with the directory and PATH the command ran with.
        let Some(init) = m.runtime.state(m.id())? else { return Ok(code) };
        let image = m.recorded_box().ok().and_then(|b| ImageRun::of(&b).ok().flatten());
        let cwd = request.workdir.clone().unwrap_or_else(|| bundle::default_dir(plan, image.as_ref()));
        let environment = bundle::environment(plan, image.as_ref());
        let path_var = request.env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str())
            .or_else(|| environment.iter().find_map(|e| e.strip_prefix("PATH=")))
            .unwrap_or_default();
        Ok(match lookup::find(init.pid, &request.command[0], path_var, &cwd) {
            lookup::Found::Nothing => crate::error::code::COMMAND_NOT_FOUND,
            lookup::Found::NotExecutable => crate::error::code::COMMAND_NOT_EXECUTABLE,
            lookup::Found::Executable => code,
        })
    }

    fn shell(&self, plan: &MachinePlan) -> Result<i32> {
        let m = Machine::of(plan)?;
        let shell = if m.layout.rootfs().join("bin/bash").exists() { "/bin/bash" } else { "/bin/sh" };
        let request = ExecRequest { command: vec![shell.into(), "-l".into()], tty: true, ..ExecRequest::default() };
        self.exec(plan, &request)
    }

    fn halt(&self, plan: &MachinePlan, force: bool, ui: &Ui) -> Result<()> {
        let m = Machine::of(plan)?;
        m.stop_container(force, ui)?;
        m.detach_network()
    }

    fn destroy(&self, plan: &MachinePlan, ui: &Ui) -> Result<()> {
        let m = Machine::of(plan)?;
        m.stop_container(true, ui)?;
        m.detach_network()?;
        m.remove_files()
    }

    fn snapshot_save(&self, plan: &MachinePlan, name: &str, replace: bool, ui: &Ui) -> Result<SnapshotInfo> {
        snapshot::save(&Machine::of(plan)?, name, replace, ui)
    }

    fn snapshot_restore(&self, plan: &MachinePlan, name: &str, ui: &Ui) -> Result<()> {
        snapshot::restore(&Machine::of(plan)?, name, ui)
    }

    fn snapshot_list(&self, plan: &MachinePlan) -> Result<Vec<SnapshotInfo>> {
        snapshot::list(&Layout::new(&plan.dir))
    }

    fn snapshot_delete(&self, plan: &MachinePlan, name: &str) -> Result<()> {
        snapshot::delete(&Layout::new(&plan.dir), name)
    }

    fn export(&self, plan: &MachinePlan, stored: &StoredBox, _dir: &Path, ui: &Ui, pack: &mut ExportPack<'_>) -> Result<()> {
        snapshot::export(&Machine::of(plan)?, &stored.rootfs()?, ui, pack)
    }

    fn export_image(&self, plan: &MachinePlan, _stored: &StoredBox, dir: &Path, ui: &Ui) -> Result<ImageExport> {
        snapshot::export_layer(&Machine::of(plan)?, dir, ui).map(ImageExport::Layer)
    }

    fn guest_ports(&self, plan: &MachinePlan) -> Result<Box<dyn GuestPorts>> {
        let m = Machine::of(plan)?;
        m.require_container()?;
        Ok(Box::new(ports::ContainerPorts::open(m.net.netns_path(), m.project.clone(), m.net.ip, plan.name())?))
    }
}
