//! The qemu provider: each machine is a QEMU process over a qcow2 overlay of the box's
//! disk, configured through a NoCloud seed, controlled over QMP and entered over SSH.
//! One concern per file: accel (KVM or TCG), cmdline, disk, seed, network, process,
//! qmp, snapshot, virtiofs (fast sync folders), ports (forward_auto), files (where
//! everything lives).

pub mod accel;
mod cmdline;
mod disk;
mod files;
mod network;
mod ports;
mod process;
mod proc_net;
mod qmp;
mod seed;
mod snapshot;
pub mod ssh;
mod vagrant;
pub mod virtiofs;

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::boxes::{BootMethod, FirstLogin, Payload, QemuPayload, StoredBox};
use crate::model::{BoxFormat, HostCheck, ProviderKind};
use ssh::SshTarget;
use crate::plan::{MachinePlan, OpenedFolder};
use crate::process::Process;
use crate::provider::{Error, ExecRequest, ExportPack, GuestPorts, ImageExport, MachineInfo, MachineState, Provider, SnapshotInfo};
use crate::ui::Ui;

use cmdline::QemuCommand;
use files::MachineFiles;
use network::Segment;
use virtiofs::Transport;

/// Seconds `up` waits for SSH; override with this environment variable.
pub const BOOT_TIMEOUT_ENV: &str = "ENVY_BOOT_TIMEOUT";
/// Default boot wait: generous, because a stock cloud image under TCG takes minutes.
const DEFAULT_BOOT_TIMEOUT: u64 = 300;
/// Lines of console log shown with errors and by `info` on a dead machine.
const LOG_TAIL_LINES: usize = 20;
/// The user envy logs in as (the seed authorizes the key for root).
const GUEST_USER: &str = "root";
/// Kernel command line for `boot = "kernel"` boxes that name none.
const DEFAULT_CMDLINE: &str = "root=/dev/vda rw";

/// Provider facts kept between commands, in `qemu.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RuntimeRecord {
    version: u32,
    /// The host port SSH was forwarded to at the last start.
    ssh_port: Option<u16>,
    /// envy stopped the machine on purpose (halt), so its console tail is no news.
    #[serde(default)]
    halted: bool,
    /// How each sync folder was shared at the last start, in Envfile order.
    #[serde(default)]
    sync: Vec<Transport>,
    /// A Vagrant box's machine that has its own key in place of Vagrant's insecure one.
    #[serde(default)]
    vagrant_keyed: bool,
}

impl crate::fsutil::Record for RuntimeRecord {
    const VERSION: u32 = 1;
    const REMEDY: &'static str = "stop the machine with `envy halt --force` and remove the file; `envy up` writes it again";
}

impl RuntimeRecord {
    /// The record, or a fresh one before the machine's first start.
    fn load(files: &MachineFiles) -> Result<RuntimeRecord> {
        use crate::fsutil::Record as _;
        Ok(crate::fsutil::read_record(&files.runtime_record)?
            .unwrap_or(RuntimeRecord { version: RuntimeRecord::VERSION, ..RuntimeRecord::default() }))
    }

    fn save(&self, files: &MachineFiles) -> Result<()> {
        crate::fsutil::write_record(&files.runtime_record, self)
    }
}

pub struct QemuProvider;

/// This provider's name in an Envfile (`provider = "qemu"`).
pub const KIND: ProviderKind = ProviderKind::new("qemu");

/// Its line in the provider registry.
pub const REGISTRATION: super::Registration = super::Registration {
    kind: KIND,
    summary: "a full virtual machine",
    make: || Box::new(QemuProvider),
};

/// Free space kept beyond a snapshot's memory when one replaces another.
const REPLACE_HEADROOM: u64 = 64 << 20;

impl QemuProvider {
    pub fn new() -> QemuProvider {
        QemuProvider
    }
}

impl Default for QemuProvider {
    fn default() -> Self {
        Self::new()
    }
}

fn boot_timeout() -> Result<Duration, Error> {
    match std::env::var(BOOT_TIMEOUT_ENV) {
        Ok(v) if !v.is_empty() => v
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| Error::BadEnvVar { name: BOOT_TIMEOUT_ENV, value: v, expected: "a number of seconds" }),
        _ => Ok(Duration::from_secs(DEFAULT_BOOT_TIMEOUT)),
    }
}

fn ssh_target(files: &MachineFiles, port: u16) -> SshTarget {
    SshTarget {
        port,
        user: GUEST_USER.to_string(),
        keys: vec![files.ssh_key.clone()],
        known_hosts: files.known_hosts.clone(),
        control: files.ssh_control.clone(),
        log: files.ssh_log.clone(),
    }
}

/// The box's VM payload; a box without one is the wrong box for a qemu machine.
fn qemu_payload<'a>(plan: &MachinePlan, stored: &'a StoredBox) -> Result<&'a QemuPayload, crate::boxes::Error> {
    stored.manifest.qemu.as_ref().ok_or_else(|| crate::boxes::Error::WrongProvider {
        name: stored.manifest.name.clone(),
        digest: stored.digest.clone(),
        providers: stored.manifest.providers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
        wanted: KIND.to_string(),
        machine: plan.name().to_string(),
    })
}

/// The SSH port of a running machine, from its runtime record.
fn recorded_ssh_port(plan: &MachinePlan, files: &MachineFiles) -> Result<u16> {
    RuntimeRecord::load(files)?.ssh_port.with_context(|| {
        format!(
            "machine {} runs but its SSH port is not recorded in {}; run `envy halt {0}` and `envy up {0}`",
            plan.name(),
            files.runtime_record.display()
        )
    })
}

/// What the machine's QEMU is doing, from the process and QMP.
fn live_state(files: &MachineFiles) -> Option<u32> {
    let pid = process::running_pid(files)?;
    // A QEMU whose guest panicked or shut down (but did not exit) is not a usable machine.
    match qmp::Qmp::connect(&files.qmp_socket, qmp::QUICK).and_then(|mut q| q.status()) {
        Ok(qapi::qmp::RunState::guest_panicked | qapi::qmp::RunState::shutdown | qapi::qmp::RunState::internal_error) => None,
        _ => Some(pid),
    }
}

/// Removes every file of the machine (not its folder); returns those that stayed.
fn remove_files(files: &MachineFiles) -> Vec<PathBuf> {
    files
        .all()
        .into_iter()
        .chain(virtiofs::all_files(files))
        .chain(vagrant::key_files(files))
        .filter(|path| match std::fs::remove_file(path) {
            Ok(()) => false,
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        })
        .collect()
}

/// After a VM's QEMU ended (and with it its tap): the project network goes once no
/// machine is on it.
fn leave_project_net(plan: &MachinePlan) -> Result<()> {
    if Segment::of(plan)?.is_some() {
        crate::provider::network::ProjectNet::of(plan).release()?;
    }
    Ok(())
}

/// `leave_project_net` on a failure path: the first error is the one to report.
fn leave_project_net_after_failure(plan: &MachinePlan, ui: &Ui) {
    if let Err(e) = leave_project_net(plan) {
        ui.warn(format!("cleaning up the project network after machine {} failed to start failed too: {e:#}", plan.name()));
    }
}

/// Builds the full QEMU command line for a machine.
fn qemu_command(
    plan: &MachinePlan,
    stored: &StoredBox,
    files: &MachineFiles,
    accel: accel::Chosen,
    ssh_port: u16,
    net: Option<(&Segment, &OwnedFd)>,
    sync: &[(&OpenedFolder, Transport)],
) -> Result<Process> {
    let payload = qemu_payload(plan, stored)?;
    let mut qemu = QemuCommand::new(&plan.runtime_id);
    qemu.machine(accel).cpus(plan.spec.cpus).memory(plan.spec.memory, sync.iter().any(|(_, t)| *t == Transport::Virtiofs));
    if payload.boot == BootMethod::Kernel {
        let kernel = payload.kernel.as_deref().ok_or_else(|| crate::boxes::Error::BadManifest {
            archive: format!("box {}", stored.manifest.name),
            reason: "it boots by kernel but names no kernel file; rebuild the box".into(),
        })?;
        let initrd = payload.initrd.as_deref().map(|f| stored.file(f));
        qemu.kernel(
            &stored.file(kernel),
            initrd.as_deref(),
            payload.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE),
        );
    }
    qemu.disk(&files.overlay, snapshot::OVERLAY_DEVICE, "qcow2", false, payload.boot == BootMethod::Firmware);
    qemu.disk(&files.seed, "seed", "raw", true, false);
    qemu.nic(&network::user_netdev(network::USER_NETDEV, ssh_port, &plan.forwards), network::USER_NETDEV, "52:54:00:12:34:56");
    if let Some((net, tap)) = net {
        qemu.nic(&Segment::netdev("net1", tap), "net1", &net.mac);
    }
    for (i, (opened, transport)) in sync.iter().enumerate() {
        match transport {
            Transport::Virtiofs => qemu.virtiofs(&virtiofs::socket(files, i), &seed::mount_tag(i)),
            Transport::NineP => qemu.shared_folder(&opened.proc_path(), &seed::mount_tag(i), opened.folder.readonly),
        };
    }
    qemu.console_log(&files.console_log).qmp(&files.qmp_socket).daemonize(&files.qemu_pidfile);
    Ok(qemu.build())
}

impl QemuProvider {
    /// Everything a boot needs on disk: the overlay (created or grown), the key pair,
    /// the seed, the SSH port. Returns the port and the project segment.
    fn prepare(
        &self,
        plan: &MachinePlan,
        stored: &StoredBox,
        files: &MachineFiles,
        transports: &[Transport],
        ui: &Ui,
    ) -> Result<(u16, Option<Segment>)> {
        let payload = qemu_payload(plan, stored)?;
        for dir in files.dirs() {
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        if !files.overlay.exists() {
            ui.step(format!("{}: creating its disk over box {}", plan.name(), stored.manifest.name));
            disk::create_overlay(&stored.file(&payload.disk), &files.overlay, plan.spec.disk)?;
        } else if let Some(size) = plan.spec.disk {
            disk::grow(&files.overlay, size)?;
        }
        ssh::ensure_key(&files.ssh_key, &format!("envy {}", plan.runtime_id))?;
        ssh::ensure_known_hosts(&files.known_hosts)?;

        let net = Segment::of(plan)?;
        let public_key = std::fs::read_to_string(files.ssh_public_key())
            .with_context(|| format!("cannot read {}", files.ssh_public_key().display()))?;
        let user = plan.user_cloud_config()?.unwrap_or_default();
        let user_data = crate::envfile::cloud_config::merge(&seed::user_data(plan, &public_key, net.as_ref(), transports), &user);
        seed::write(&files.seed, &seed::meta_data(plan), &user_data)?;

        let mut record = RuntimeRecord::load(files)?;
        let ssh_port = network::pick_ssh_port(record.ssh_port)?;
        network::check_forwards(plan)?;
        record.ssh_port = Some(ssh_port);
        record.halted = false;
        record.sync = transports.to_vec();
        record.save(files)?;
        Ok((ssh_port, net))
    }

    /// Waits for SSH; on failure returns `NotReady` with the console tail, and stops QEMU
    /// when `booting` (a machine that was already up is left as it is, for inspection).
    fn wait_ready(&self, plan: &MachinePlan, files: &MachineFiles, target: &SshTarget, booting: bool) -> Result<()> {
        let timeout = boot_timeout()?;
        let started = std::time::Instant::now();
        let waited = target.wait_ready(timeout, || match process::running_pid(files) {
            _ if crate::signals::interrupted() => Err("interrupted".to_string()),
            None => Err("QEMU exited during boot".to_string()),
            // A boot that cannot reach SSH fails now, not after the whole timeout.
            Some(_) => match files.console_dead_end().filter(|_| booting) {
                Some(dead_end) => Err(format!("its console shows a boot that cannot go on: {dead_end}")),
                None => Ok(()),
            },
        });
        let Err(why) = waited else { return Ok(()) };
        target.close_master();
        let outcome = if booting {
            let _ = process::stop_now(files);
            "the machine was stopped"
        } else {
            "the machine is left running; `envy halt` stops it"
        };
        crate::signals::check(|| format!("machine {} was booting; {outcome}", plan.name()))?;
        Err(Error::NotReady {
            machine: plan.name().to_string(),
            seconds: started.elapsed().as_secs().max(1),
            detail: format!(
                "{why}; {outcome}. Last lines of its console ({}):\n{}\n\
                 (raise {BOOT_TIMEOUT_ENV} for slow boxes)",
                files.console_log.display(),
                files.console_tail(LOG_TAIL_LINES)
            ),
        }
        .into())
    }

    /// A Vagrant box's boot (vagrant.rs): the first one logs in as `vagrant` with
    /// Vagrant's insecure key and has envy's agent give root and `vagrant` the machine's
    /// own key; every boot runs the agent as root for hostname, mounts and the NIC. A
    /// guest that does not keep the contract is stopped.
    fn enter_vagrant_box(&self, plan: &MachinePlan, files: &MachineFiles, machine: &SshTarget, ui: &Ui) -> Result<()> {
        let mut record = RuntimeRecord::load(files)?;
        let first = if record.vagrant_keyed { None } else { Some(vagrant::first_login(files, machine)?) };
        let target = first.as_ref().unwrap_or(machine);
        self.wait_ready(plan, files, target, true)?;
        let ran = vagrant::run_agent(target, plan.name(), &files.dir);
        if first.is_some() {
            target.close_master();
        }
        let said = match ran {
            Ok(said) => said,
            Err(e) => {
                machine.close_master();
                let _ = process::stop_now(files);
                return Err(e);
            }
        };
        for line in said.lines() {
            tracing::debug!(machine = plan.name(), "{line}");
        }
        if first.is_some() {
            ui.step(format!("{}: Vagrant's insecure key replaced by the machine's own", plan.name()));
            record.vagrant_keyed = true;
            record.save(files)?;
            vagrant::forget_insecure_keys(files);
            self.wait_ready(plan, files, machine, true)?;
        }
        Ok(())
    }

    fn running_target(&self, plan: &MachinePlan) -> Result<(MachineFiles, SshTarget)> {
        let files = MachineFiles::of(plan);
        if live_state(&files).is_none() {
            let state = self.state(plan)?;
            return Err(match state {
                MachineState::NotCreated => crate::state::Error::NotCreated { machine: plan.name().into() },
                _ => crate::state::Error::NotRunning { machine: plan.name().into(), state: state.to_string() },
            }
            .into());
        }
        let port = recorded_ssh_port(plan, &files)?;
        let target = ssh_target(&files, port);
        Ok((files, target))
    }
}

impl Provider for QemuProvider {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn box_format(&self) -> BoxFormat {
        BoxFormat::Qemu
    }

    fn host_checks(&self) -> Vec<HostCheck> {
        vec![
            super::host::tool("qemu", "qemu-system-x86_64", Some("--version")),
            super::host::tool("qemu-img", "qemu-img", Some("--version")),
            super::host::tool("ssh", "ssh", Some("-V")),
            accel::host_check(),
            virtiofs::host_check(),
        ]
    }

    fn up(&self, plan: &MachinePlan, stored: &StoredBox, ui: &Ui) -> Result<()> {
        let files = MachineFiles::of(plan);
        qemu_payload(plan, stored)?;
        if live_state(&files).is_some() {
            let port = recorded_ssh_port(plan, &files)?;
            return self.wait_ready(plan, &files, &ssh_target(&files, port), false);
        }
        // A QEMU that is alive but unusable (guest panicked) holds the disk: end it.
        process::stop_now(&files)?;
        // Resolved and opened now; QEMU inherits the fds and shares what they hold.
        let folders = plan.open_sync_folders()?;
        if let Some(opened) = folders.iter().find(|f| !f.is_dir) {
            return Err(plan
                .project_path_error(&opened.folder.host, "sync folder", "is a file; a VM shares folders only (virtiofs or 9p): sync its folder instead".into())
                .into());
        }
        let accel = accel::choose(plan.spec.accel, ui)?;
        let (virtiofsd, transports) = virtiofs::choose(&folders);

        // A machine created by this call that fails before QEMU runs leaves nothing.
        let creating = !files.overlay.exists();
        let started = self.prepare(plan, stored, &files, &transports, ui).and_then(|(ssh_port, net)| {
            let target = ssh_target(&files, ssh_port);
            target.close_master();
            // Console and SSH logs hold the current boot only.
            crate::fsutil::create_private(&files.console_log)?;
            let _ = std::fs::remove_file(&files.ssh_log);
            // envy's copy of the tap closes after the start; QEMU's keeps it alive.
            let tap = net.as_ref().map(|n| n.attach(plan)).transpose()?;
            let command = qemu_command(plan, stored, &files, accel, ssh_port, net.as_ref().zip(tap.as_ref()), &folders.iter().zip(transports.iter().copied()).collect::<Vec<_>>())?;
            for (i, opened) in folders.iter().enumerate().filter(|(i, _)| transports[*i] == Transport::Virtiofs) {
                let binary = virtiofsd.as_deref().context("virtiofs was chosen without a virtiofsd")?;
                virtiofs::start(binary, &files, i, opened)?;
            }
            ui.step(format!("{}: booting ({}, SSH on 127.0.0.1:{ssh_port})", plan.name(), accel.name()));
            let inherited: Vec<RawFd> = folders.iter().map(|f| f.fd.as_raw_fd()).chain(tap.as_ref().map(|t| t.as_raw_fd())).collect();
            process::start(command, &files, &inherited)?;
            for (i, opened) in folders.iter().enumerate().filter(|(i, _)| transports[*i] == Transport::Virtiofs) {
                if let Err(e) = virtiofs::verify(&files, i, opened) {
                    let _ = process::stop_now(&files);
                    return Err(e.into());
                }
            }
            Ok(target)
        });
        let target = match started {
            Ok(target) => target,
            Err(e) => {
                virtiofs::stop_all(&files);
                if creating {
                    remove_files(&files);
                }
                leave_project_net_after_failure(plan, ui);
                return Err(e);
            }
        };
        let entered = match qemu_payload(plan, stored)?.first_login {
            FirstLogin::Seed => self.wait_ready(plan, &files, &target, true),
            FirstLogin::Vagrant => self.enter_vagrant_box(plan, &files, &target, ui),
        };
        if let Err(e) = entered {
            leave_project_net_after_failure(plan, ui);
            return Err(e);
        }
        Ok(())
    }

    fn state(&self, plan: &MachinePlan) -> Result<MachineState> {
        let files = MachineFiles::of(plan);
        Ok(if live_state(&files).is_some() {
            MachineState::Running
        } else if files.overlay.exists() {
            MachineState::Stopped
        } else {
            MachineState::NotCreated
        })
    }

    fn info(&self, plan: &MachinePlan) -> Result<MachineInfo> {
        let files = MachineFiles::of(plan);
        let pid = live_state(&files);
        let record = RuntimeRecord::load(&files)?;
        let died = pid.is_none() && !record.halted && files.console_log.exists();
        Ok(MachineInfo {
            ip: Segment::of(plan)?.map(|n| n.address.to_string()),
            ssh_port: record.ssh_port,
            pid,
            log_tail: died.then(|| files.console_tail(LOG_TAIL_LINES)),
            sync_transport: record.sync.iter().map(|t| t.name().to_string()).collect(),
            location: None,
        })
    }

    fn exec(&self, plan: &MachinePlan, request: &ExecRequest) -> Result<i32> {
        let (_, target) = self.running_target(plan)?;
        let default_workdir = plan.spec.sync.first().map(|s| s.guest.as_str()).unwrap_or("/");
        let env: Vec<(String, String)> = plan.spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        target.run(&ssh::remote_command(request, default_workdir, &env)?, request.tty, request.stdin.as_deref())
    }

    fn shell(&self, plan: &MachinePlan) -> Result<i32> {
        self.exec(plan, &ExecRequest { tty: true, ..Default::default() })
    }

    fn halt(&self, plan: &MachinePlan, force: bool, ui: &Ui) -> Result<()> {
        self.power_off(plan, force, ui)?;
        leave_project_net(plan)
    }

    fn destroy(&self, plan: &MachinePlan, _ui: &Ui) -> Result<()> {
        let files = MachineFiles::of(plan);
        if let Some(port) = RuntimeRecord::load(&files)?.ssh_port {
            ssh_target(&files, port).close_master();
        }
        process::stop_now(&files)?;
        leave_project_net(plan)?;
        let left = remove_files(&files);
        if let Some(path) = left.first() {
            return Err(anyhow::anyhow!("cannot remove {}; remove it by hand", path.display()));
        }
        Ok(())
    }

    fn snapshot_save(&self, plan: &MachinePlan, name: &str, replace: bool, ui: &Ui) -> Result<SnapshotInfo> {
        let files = self.created(plan)?;
        let running = live_state(&files).is_some();
        let exists = snapshot::get(&files, plan.name(), name).is_ok();
        if exists && !replace {
            return Err(Error::SnapshotExists { machine: plan.name().to_string(), name: name.to_string() }.into());
        }
        if exists {
            // qcow2 cannot rename a snapshot, so the old one goes first: only when the
            // disk can hold the new one (its memory, when running, is the most of it).
            let need = if running { plan.spec.memory } else { 0 } + REPLACE_HEADROOM;
            let free = nix::sys::statvfs::statvfs(&files.dir).map(|v| v.blocks_available() * v.fragment_size())
                .with_context(|| format!("cannot read the free space of {}", files.dir.display()))?;
            if free < need {
                return Err(Error::NoRoomToReplace { machine: plan.name().to_string(), name: name.to_string(), dir: files.dir.clone(), need, free }.into());
            }
            snapshot::delete(&files, plan.name(), name, running)?;
        }
        ui.step(format!("{}: saving snapshot {name}", plan.name()));
        if running {
            // Flush the guest's page cache so even a disk-only snapshot is complete.
            let _ = self.exec(plan, &ExecRequest { command: vec!["sync".into()], ..Default::default() });
        }
        // Sync folders attached at the last start block saving memory (9p and vhost-user-fs alike).
        let with_memory = RuntimeRecord::load(&files)?.sync.is_empty();
        let info = snapshot::save(&files, plan.name(), name, running, with_memory)?;
        if running && !info.memory {
            ui.warn(format!(
                "snapshot {name} of machine {} holds its disk only: QEMU cannot save memory while \
                 sync folders (9p or virtiofs) are attached; restoring it halts the machine",
                plan.name()
            ));
        }
        Ok(info)
    }

    fn snapshot_restore(&self, plan: &MachinePlan, name: &str, ui: &Ui) -> Result<()> {
        let files = self.created(plan)?;
        let snapshot = snapshot::get(&files, plan.name(), name)?;
        let mut running = live_state(&files).is_some();
        if let Some(port) = RuntimeRecord::load(&files)?.ssh_port {
            // The guest's side of the shared connection is about to be rewound or stopped.
            ssh_target(&files, port).close_master();
        }
        if running && !snapshot.memory {
            ui.step(format!("{}: snapshot {name} holds no memory; stopping the machine to rewind its disk", plan.name()));
            self.halt(plan, true, ui)?;
            running = false;
        }
        snapshot::restore(&files, plan.name(), &snapshot, running)?;
        Ok(())
    }

    fn snapshot_list(&self, plan: &MachinePlan) -> Result<Vec<SnapshotInfo>> {
        Ok(snapshot::list(&self.created(plan)?)?)
    }

    fn snapshot_delete(&self, plan: &MachinePlan, name: &str) -> Result<()> {
        let files = self.created(plan)?;
        let running = live_state(&files).is_some();
        Ok(snapshot::delete(&files, plan.name(), name, running)?)
    }

    fn export(&self, plan: &MachinePlan, stored: &StoredBox, dir: &Path, ui: &Ui, pack: &mut ExportPack<'_>) -> Result<()> {
        pack(&self.export_files(plan, stored, dir, ui)?)
    }

    fn export_image(&self, plan: &MachinePlan, stored: &StoredBox, dir: &Path, ui: &Ui) -> Result<ImageExport> {
        // A containerDisk boots by firmware: a kernel beside the disk has no place in it.
        if qemu_payload(plan, stored)?.boot != BootMethod::Firmware {
            return Err(Error::KernelBootImage { machine: plan.name().to_string(), box_name: stored.manifest.name.clone() }.into());
        }
        match self.export_files(plan, stored, dir, ui)?.remove(DISK) {
            Some(Payload::File(disk)) => Ok(ImageExport::Disk(disk)),
            _ => anyhow::bail!("the machine's export gave no disk"),
        }
    }

    fn guest_ports(&self, plan: &MachinePlan) -> Result<Box<dyn GuestPorts>> {
        let (files, target) = self.running_target(plan)?;
        Ok(Box::new(ports::QemuPorts::new(target, files.qmp_socket, plan.name())))
    }
}

/// The name of a VM box's disk in the box.
const DISK: &str = "disk.qcow2";

impl QemuProvider {
    /// The halted machine's disk flattened into `dir`, and its kernel and initrd: the
    /// payloads of the box `envy share` makes of it, by their names in the box.
    fn export_files(&self, plan: &MachinePlan, stored: &StoredBox, dir: &Path, ui: &Ui) -> Result<BTreeMap<String, Payload>> {
        let payload = qemu_payload(plan, stored)?;
        if payload.first_login == FirstLogin::Vagrant {
            return Err(Error::VagrantBoxShare { machine: plan.name().to_string(), box_name: stored.manifest.name.clone() }.into());
        }
        let files = self.created(plan)?;
        if live_state(&files).is_some() {
            return Err(Error::MustBeHalted {
                machine: plan.name().to_string(),
                reason: format!("machine {} is running; its disk is exported only halted, so the copy is consistent", plan.name()),
            }
            .into());
        }
        ui.step(format!("{}: flattening its disk", plan.name()));
        disk::flatten(&files.overlay, &dir.join(DISK))?;
        let mut names = BTreeMap::from([(DISK.to_string(), Payload::File(dir.join(DISK)))]);
        for file in [&payload.kernel, &payload.initrd].into_iter().flatten() {
            std::fs::copy(stored.file(file), dir.join(file))
                .with_context(|| format!("cannot copy {} into {}", stored.file(file).display(), dir.display()))?;
            names.insert(file.clone(), Payload::File(dir.join(file)));
        }
        Ok(names)
    }

    /// Stops QEMU: a graceful power-off unless `force`, QEMU's end if that fails.
    fn power_off(&self, plan: &MachinePlan, force: bool, ui: &Ui) -> Result<()> {
        let files = MachineFiles::of(plan);
        let mut record = RuntimeRecord::load(&files)?;
        if let Some(port) = record.ssh_port {
            ssh_target(&files, port).close_master();
        }
        if process::running_pid(&files).is_none() {
            return Ok(process::finish(&files)?);
        }
        record.halted = true;
        record.save(&files)?;
        if force {
            return Ok(process::stop_now(&files)?);
        }
        ui.step(format!("{}: powering off", plan.name()));
        match process::power_down(&files, process::HALT_TIMEOUT) {
            Ok(true) => Ok(process::finish(&files)?),
            Ok(false) => {
                ui.warn(format!(
                    "machine {} did not power off within {} s; stopping QEMU",
                    plan.name(),
                    process::HALT_TIMEOUT.as_secs()
                ));
                Ok(process::stop_now(&files)?)
            }
            Err(e) => {
                ui.warn(format!("cannot ask machine {} to power off ({e}); stopping QEMU", plan.name()));
                Ok(process::stop_now(&files)?)
            }
        }
    }

    /// The machine's files, or the not-created error.
    fn created(&self, plan: &MachinePlan) -> Result<MachineFiles> {
        let files = MachineFiles::of(plan);
        if !files.overlay.exists() {
            return Err(crate::state::Error::NotCreated { machine: plan.name().into() }.into());
        }
        Ok(files)
    }
}
