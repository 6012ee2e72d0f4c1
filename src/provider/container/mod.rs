//! The container provider: each machine is an OCI bundle run by runc, its root an
//! overlay of the box's rootfs, its network a namespace on the project's bridge
//! (see network.rs). Every method reads the truth from runc, the mount table and
//! the namespaces, so any partial state (a killed `envy up`, a reboot) is repaired.
//! No user namespace: envy runs containers as root, like the rest of this provider.

mod bundle;
mod layout;
mod network;
mod overlay;
mod runc;
mod snapshot;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::boxes::{ImageRun, StoredBox};
use crate::envfile::ProviderKind;
use crate::plan::MachinePlan;
use crate::provider::{Error, ExecRequest, ImageExport, MachineInfo, MachineState, Provider, SnapshotInfo};
use crate::ui::Ui;
use layout::Layout;
use network::{MachineNet, ProjectNet};
use runc::{Runc, Status};

/// How long a graceful halt waits for the init to exit before killing it.
const HALT_GRACE: Duration = Duration::from_secs(10);

pub struct ContainerProvider;

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

/// One machine with everything this provider knows how to reach for it.
struct Machine<'a> {
    plan: &'a MachinePlan,
    layout: Layout,
    runc: Runc,
    project: ProjectNet,
    net: MachineNet,
}

impl<'a> Machine<'a> {
    fn of(plan: &'a MachinePlan) -> Result<Machine<'a>> {
        Ok(Machine {
            plan,
            layout: Layout::new(&plan.dir),
            runc: Runc::with_root(plan.home.runtime_dir().join("runc")),
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

    /// Running needs the container running, slirp4netns alive and the machine's
    /// namespace present; cheap checks only (one runc call), as every command asks.
    fn state(&self) -> Result<MachineState> {
        let container = self.runc.state(self.id())?;
        let running = container.as_ref().is_some_and(|c| c.status == Status::Running);
        if running && self.project.is_up()? && self.net.exists()? {
            return Ok(MachineState::Running);
        }
        if container.is_some() || self.layout.exists() {
            return Ok(MachineState::Stopped);
        }
        Ok(MachineState::NotCreated)
    }

    /// For exec: the container must run (its network may be down; commands still work).
    /// Fails with the state errors commands map to exit code 7.
    fn require_container(&self) -> Result<()> {
        match self.runc.state(self.id())? {
            Some(c) if c.status == Status::Running => Ok(()),
            None if !self.layout.exists() => Err(crate::state::Error::NotCreated { machine: self.name().into() }.into()),
            _ => Err(crate::state::Error::NotRunning { machine: self.name().into(), state: MachineState::Stopped.to_string() }.into()),
        }
    }

    /// The lower layer recorded at the last `up`.
    fn recorded_lower(&self) -> Result<PathBuf> {
        let path = self.layout.lower_record();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}; run `envy up {}` to recreate it", path.display(), self.name()))?;
        Ok(PathBuf::from(text.trim_end_matches('\n')))
    }

    /// Mounts the overlay (unless mounted), writes the bundle (with an image box's
    /// Env, WorkingDir and User) and runs the container.
    fn start_container(&self, lower: &Path, image: Option<&ImageRun>) -> Result<()> {
        self.mount_rootfs(lower)?;
        bundle::write(self.plan, &self.layout, &self.net, image)?;
        self.run_container()
    }

    /// Starts the container again with the bundle of its last start (same box, same
    /// settings), after its upper layer was swapped for a snapshot's.
    fn restart_container(&self, lower: &Path) -> Result<()> {
        self.mount_rootfs(lower)?;
        self.run_container()
    }

    fn mount_rootfs(&self, lower: &Path) -> Result<()> {
        check_lower(lower)?;
        for dir in [self.layout.upper(), self.layout.work(), self.layout.rootfs()] {
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        crate::state::write_atomic(&self.layout.lower_record(), format!("{}\n", lower.display()).as_bytes())?;
        if !overlay::is_mounted(&self.layout.rootfs())? {
            overlay::mount_overlay(lower, &self.layout.upper(), &self.layout.work(), &self.layout.rootfs())?;
        }
        Ok(())
    }

    fn run_container(&self) -> Result<()> {
        self.runc.run_detached(self.id(), self.layout.dir(), &self.layout.log())?;
        match self.runc.state(self.id())? {
            Some(c) if c.status == Status::Running => Ok(()),
            _ => Err(Error::NotReady {
                machine: self.name().into(),
                seconds: 0,
                detail: format!("its init exited right after starting; last lines of {}:\n{}", self.layout.log().display(), self.log_tail()),
            }
            .into()),
        }
    }

    /// Stops and deletes the container (if any), then unmounts its root filesystem.
    fn stop_container(&self, force: bool, ui: &Ui) -> Result<()> {
        if let Some(container) = self.runc.state(self.id())? {
            if container.status == Status::Paused {
                self.runc.resume(self.id())?;
            }
            if container.status == Status::Running || container.status == Status::Paused {
                if !force {
                    ui.step(format!("{}: stopping", self.name()));
                    self.runc.kill(self.id(), "TERM")?;
                }
                if force || !self.wait_stopped(HALT_GRACE)? {
                    if !force {
                        ui.warn(format!("machine {} did not stop within {} s; killing it", self.name(), HALT_GRACE.as_secs()));
                    }
                    // The init may exit between the check and the signal; delete --force covers it.
                    let _ = self.runc.kill(self.id(), "KILL");
                    self.wait_stopped(HALT_GRACE)?;
                }
            }
            self.runc.delete(self.id())?;
        }
        overlay::unmount_all(self.layout.dir())
    }

    fn wait_stopped(&self, limit: Duration) -> Result<bool> {
        let deadline = Instant::now() + limit;
        loop {
            match self.runc.state(self.id())? {
                Some(c) if c.status != Status::Stopped => {}
                _ => return Ok(true),
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Removes the machine's forwards and namespace; the project network goes with
    /// its last machine.
    fn detach_network(&self) -> Result<()> {
        self.project.remove_forwards(self.net.ip)?;
        self.net.remove(&self.project)?;
        if self.project.machine_namespaces()?.is_empty() {
            self.project.teardown()?;
        }
        Ok(())
    }

    /// Removes every file this provider made in the machine dir. Only after
    /// `stop_container`: it leaves no mount below the dir, so removal cannot reach the
    /// box store or the project's files through one.
    fn remove_files(&self) -> Result<()> {
        for path in self.layout.owned() {
            let removed = match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path),
                Ok(_) => std::fs::remove_file(&path),
                Err(_) => Ok(()),
            };
            removed.with_context(|| format!("cannot remove {}", path.display()))?;
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.layout.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// The box's unpacked rootfs must be there before anything is created for it.
fn check_lower(lower: &Path) -> Result<()> {
    if !lower.is_dir() {
        bail!(Error::Other(format!(
            "the box's root filesystem {} is missing; run `envy box verify` to repair the box store, then `envy up` again",
            lower.display()
        )));
    }
    Ok(())
}

impl Provider for ContainerProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Container
    }

    fn up(&self, plan: &MachinePlan, stored: &StoredBox, ui: &Ui) -> Result<()> {
        let m = Machine::of(plan)?;
        let lower = stored.rootfs()?;
        check_lower(&lower)?;
        let image = ImageRun::of(stored)?;
        let container = m.runc.state(m.id())?;
        m.project.ensure()?;
        let intact = m.net.is_intact(&m.project)?;
        let running = match container.map(|c| c.status) {
            Some(Status::Running) if intact => true,
            Some(Status::Paused) if intact => {
                m.runc.resume(m.id())?;
                true
            }
            Some(Status::Running | Status::Paused) => {
                ui.step(format!("{}: its network is gone; restarting it", m.name()));
                m.runc.delete(m.id())?;
                false
            }
            Some(_) => {
                ui.step(format!("{}: removing the stopped container", m.name()));
                m.runc.delete(m.id())?;
                false
            }
            None => false,
        };
        if !running {
            ui.step(format!("{}: starting container", m.name()));
            let created = m.layout.exists();
            let started = if intact { Ok(()) } else { m.net.rebuild(&m.project) }.and_then(|_| m.start_container(&lower, image.as_ref()));
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
            MachineState::Running => m.runc.state(m.id())?.map(|c| c.pid),
            _ => None,
        };
        Ok(MachineInfo {
            ip: (state != MachineState::NotCreated).then(|| m.net.ip.to_string()),
            ssh_port: None,
            pid,
            log_tail: Some(m.log_tail()).filter(|t| !t.is_empty()),
        })
    }

    fn exec(&self, plan: &MachinePlan, request: &ExecRequest) -> Result<i32> {
        let m = Machine::of(plan)?;
        m.require_container()?;
        if request.command.is_empty() {
            bail!(Error::Other("no command given to run in the machine; put it after `--`".into()));
        }
        m.runc.exec(m.id(), request)
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

    fn snapshot_save(&self, plan: &MachinePlan, name: &str, ui: &Ui) -> Result<SnapshotInfo> {
        snapshot::save(&Machine::of(plan)?, name, ui)
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

    fn export(&self, plan: &MachinePlan, stored: &StoredBox, dir: &Path, ui: &Ui) -> Result<Vec<PathBuf>> {
        snapshot::export(&Machine::of(plan)?, &stored.rootfs()?, dir, ui)
    }

    fn export_image(&self, plan: &MachinePlan, _stored: &StoredBox, dir: &Path, ui: &Ui) -> Result<ImageExport> {
        snapshot::export_layer(&Machine::of(plan)?, dir, ui).map(ImageExport::Layer)
    }
}
