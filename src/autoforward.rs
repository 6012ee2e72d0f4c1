//! `forward_auto`: a watcher process per machine, started detached by `envy up`, that
//! forwards each TCP port starting to listen in the machine to the same port on the
//! host's 127.0.0.1 (or the next free one), and releases it when the port closes.
//! This loop is the same for every provider; how a machine's listening ports are read
//! and how a host forward is made are the provider's (`Provider::guest_ports`: sock_diag
//! and slirp4netns for containers, /proc/net/tcp over SSH and QEMU's hostfwd for VMs).
//! What it holds is written to a record status reads.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::model::{Forward, Protocol};
use crate::plan::MachinePlan;
use crate::provider::GuestPorts;
use crate::workspace::Workspace;
use crate::process::Process;
use crate::state::PidFile;

/// How often the machine's sockets are read.
const POLL: Duration = Duration::from_secs(1);
/// The most ports forwarded for one machine at once.
const MAX_FORWARDS: usize = 256;
/// How far past a taken host port the next free one is looked for.
const NEXT_FREE_TRIES: u16 = 100;

/// One live automatic forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoForwarded {
    pub guest_port: u16,
    pub host_ip: IpAddr,
    pub host_port: u16,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    version: u32,
    forwards: Vec<AutoForwarded>,
}

fn pid_file(plan: &MachinePlan) -> PidFile {
    PidFile::at(plan.dir.join("forward-auto.pid"))
}

fn record_path(plan: &MachinePlan) -> PathBuf {
    plan.dir.join("forward-auto.json")
}

/// The record of a watcher that ended without releasing its forwards (killed): the
/// next watcher of the machine releases them.
fn left_path(plan: &MachinePlan) -> PathBuf {
    plan.dir.join("forward-auto.left.json")
}

/// The watcher's log: every forward made and released, one line each.
pub fn log_path(plan: &MachinePlan) -> PathBuf {
    plan.dir.join("forward-auto.log")
}

/// The live automatic forwards of a machine: empty unless its watcher runs.
pub fn live(plan: &MachinePlan) -> Vec<AutoForwarded> {
    if pid_file(plan).alive().is_none() {
        return Vec::new();
    }
    crate::fsutil::read_private(&record_path(plan))
        .ok()
        .flatten()
        .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
        .map(|r| r.forwards)
        .unwrap_or_default()
}

/// Stops the machine's watcher (it releases its forwards) and forgets its record.
pub fn stop(plan: &MachinePlan) {
    if let Some(pid) = pid_file(plan).alive() {
        crate::process::stop(pid);
    }
    pid_file(plan).remove();
    // A watcher that exits releases its forwards and removes its record; one that had
    // to be killed leaves them (a VM's QEMU keeps them while it runs): its successor
    // releases them.
    let _ = std::fs::rename(record_path(plan), left_path(plan));
}

/// Starts a fresh watcher for a running machine whose Envfile asks for one (an old one
/// is stopped first: `up` has just reset the machine's forwards to the declared ones),
/// waits for its first look, and prints what it forwarded.
pub fn restart(ctx: &Context, plan: &MachinePlan) -> Result<()> {
    stop(plan);
    if plan.spec.forward_auto.is_none() {
        return Ok(());
    }
    let log_path = log_path(plan);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&log_path)
        .with_context(|| format!("cannot open the forward_auto log {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find envy's own executable to start the forward_auto watcher")?;
    let watcher = Process::new(exe)
        .arg("-C")
        .arg(&plan.project.dir)
        .args(["__forward-watch", plan.name()])
        .doing(format!("watching machine {} for ports to forward", plan.name()))
        .output_to(&log)?;
    // SAFETY: setsid is async-signal-safe; the watcher outlives this command and its terminal.
    let watcher = unsafe {
        watcher.pre_exec(|| {
            libc::setsid();
            Ok(())
        })
    };
    let child = watcher.spawn()?;
    pid_file(plan).write(child.id())?;
    // The first look is quick; a watcher that never writes its record is reported.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !record_path(plan).exists() {
        if Instant::now() >= deadline || pid_file(plan).alive().is_none() {
            ctx.ui.warn(format!(
                "the forward_auto watcher of machine {} did not start; its log is {}",
                plan.name(),
                log_path.display()
            ));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for f in live(plan) {
        ctx.ui.step(format!("{}: guest {} -> {}:{}", plan.name(), f.guest_port, f.host_ip, f.host_port));
    }
    Ok(())
}

/// `envy __forward-watch MACHINE`: the watcher itself. Returns when the machine stops
/// or on SIGTERM, having released every forward it made.
pub fn watch(ctx: &Context, machine: &str) -> Result<i32> {
    crate::signals::catch_interrupts()?;
    let ws = Workspace::load(ctx)?;
    let spec = ws.select_one(Some(machine))?;
    let plan = ws.plan(&ctx.home, spec)?;
    let Some(auto) = plan.spec.forward_auto else { return Ok(0) };
    let declared = declared_ports(&ws, &plan)?;
    let provider = crate::provider::for_kind(plan.spec.provider)?;
    let Some(main) = provider.info(&plan)?.pid else {
        say(machine, "is not running; nothing to watch");
        return Ok(0);
    };
    let main_start = crate::state::start_time(main);
    let mut ports = provider.guest_ports(&plan)?;
    release_left(&plan, ports.as_mut());
    let mut held: BTreeMap<u16, Forward> = BTreeMap::new();
    // The last failure said for each guest port, so a failing port is not logged every look.
    let mut failed: BTreeMap<u16, String> = BTreeMap::new();
    let mut written = None;
    let mut look_failed: Option<String> = None;
    loop {
        let alive = main_start.is_some() && crate::state::start_time(main) == main_start;
        if crate::signals::interrupted() || !alive {
            break;
        }
        // A look can fail for a while (a VM too busy to answer over SSH in time): the
        // forwards held stay, the failure is said once, and the next look tries again.
        let listening = match ports.listening() {
            Ok(ports) => {
                if look_failed.take().is_some() {
                    say(machine, "its ports can be read again");
                }
                ports
            }
            Err(e) => {
                let why = format!("{e:#}");
                if look_failed.as_ref() != Some(&why) {
                    say(machine, &format!("cannot read its listening ports: {why}; trying again"));
                }
                look_failed = Some(why);
                pause();
                continue;
            }
        };
        let wanted: BTreeSet<u16> = listening
            .into_iter()
            .filter(|p| *p >= auto.min_port && !declared.guest.contains(p))
            .take(MAX_FORWARDS)
            .collect();
        failed.retain(|port, _| wanted.contains(port));
        for port in held.keys().copied().filter(|p| !wanted.contains(p)).collect::<Vec<_>>() {
            let forward = held.remove(&port).expect("held port");
            match ports.remove_forward(&forward) {
                Ok(()) => say(machine, &format!("guest {port} closed; released {}:{}", forward.host_ip, forward.host_port)),
                Err(e) => say(machine, &format!("cannot release {}:{}: {e:#}", forward.host_ip, forward.host_port)),
            }
        }
        for port in wanted.iter().copied().filter(|p| !held.contains_key(p)).collect::<Vec<_>>() {
            match forward_for(ports.as_mut(), port, &declared.host, &held) {
                Ok(forward) => {
                    let moved = if forward.host_port != port { format!(" (host port {port} is taken)") } else { String::new() };
                    say(machine, &format!("guest {port} -> {}:{}{moved}", forward.host_ip, forward.host_port));
                    failed.remove(&port);
                    held.insert(port, forward);
                }
                Err(why) => {
                    if failed.get(&port) != Some(&why) {
                        say(machine, &why);
                    }
                    failed.insert(port, why);
                }
            }
        }
        let now: Vec<AutoForwarded> = held
            .iter()
            .map(|(port, f)| AutoForwarded { guest_port: *port, host_ip: f.host_ip, host_port: f.host_port })
            .collect();
        if written.as_ref() != Some(&now) {
            write_record(&plan, &now)?;
            written = Some(now);
        }
        pause();
    }
    for forward in held.values() {
        // The machine's network may be gone with it: then so is the forward.
        let _ = ports.remove_forward(forward);
    }
    let _ = std::fs::remove_file(record_path(&plan));
    Ok(0)
}

/// Forwards guest `port` to the same host port on 127.0.0.1, or the next free one
/// (never one the Envfile declares); the error says why none could be had. A host port
/// taken between the check and the provider's bind moves on to the next one; any other
/// failure is the answer for this look (the next look tries again).
fn forward_for(ports: &mut dyn GuestPorts, port: u16, reserved: &BTreeSet<u16>, held: &BTreeMap<u16, Forward>) -> Result<Forward, String> {
    let host_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let taken = |p: u16| reserved.contains(&p) || held.values().any(|f| f.host_port == p);
    for host_port in (0..NEXT_FREE_TRIES).filter_map(|i| port.checked_add(i)) {
        let forward = Forward { host_ip, host_port, guest_port: port, protocol: Protocol::Tcp, auto: true };
        if taken(host_port) || !forward.host_port_free(host_port) {
            continue;
        }
        match ports.add_forward(&forward) {
            Ok(()) => return Ok(forward),
            Err(e) if forward.host_port_free(host_port) => {
                return Err(format!("guest {port} is not forwarded: {e:#}"));
            }
            Err(e) => tracing::debug!("{e:#}"),
        }
    }
    Err(format!("guest {port} is not forwarded: host ports {port} to {} are all taken", port.saturating_add(NEXT_FREE_TRIES - 1)))
}

/// Releases what a killed predecessor held (see `stop`); whatever is gone already
/// (the machine restarted since) is no error.
fn release_left(plan: &MachinePlan, ports: &mut dyn GuestPorts) {
    let path = left_path(plan);
    let left = crate::fsutil::read_private(&path).ok().flatten().and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok());
    for f in left.map(|r| r.forwards).unwrap_or_default() {
        let forward = Forward { host_ip: f.host_ip, host_port: f.host_port, guest_port: f.guest_port, protocol: Protocol::Tcp, auto: true };
        if let Err(e) = ports.remove_forward(&forward) {
            say(plan.name(), &format!("cannot release {}:{}, left by a watcher that was killed: {e:#}", f.host_ip, f.host_port));
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Waits for the next look (SIGTERM ends the wait).
fn pause() {
    let next = Instant::now() + POLL;
    while Instant::now() < next && !crate::signals::interrupted() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One line of the watcher's log (its stderr is the log file).
fn say(machine: &str, what: &str) {
    eprintln!("==> {machine}: {what}");
}

/// Ports the Envfile gives to declared forwards: their host ports (of every machine)
/// are never taken by an automatic forward, and this machine's declared guest ports
/// are forwarded already.
struct Declared {
    host: BTreeSet<u16>,
    guest: BTreeSet<u16>,
}

fn declared_ports(ws: &Workspace, plan: &MachinePlan) -> Result<Declared> {
    let record = crate::state::record::MachineRecord::load(&plan.dir)?;
    let actual = record.map(|r| r.forwards).unwrap_or_default();
    let tcp = |f: &&Forward| f.protocol == Protocol::Tcp;
    let host = ws.envfile.machines.iter().flat_map(|m| m.forwards.iter()).chain(actual.iter()).filter(tcp).map(|f| f.host_port).collect();
    let guest = plan.spec.forwards.iter().filter(tcp).map(|f| f.guest_port).collect();
    Ok(Declared { host, guest })
}

fn write_record(plan: &MachinePlan, forwards: &[AutoForwarded]) -> Result<()> {
    let record = Record { version: 1, forwards: forwards.to_vec() };
    crate::fsutil::write_atomic(&record_path(plan), &serde_json::to_vec(&record)?)
}
