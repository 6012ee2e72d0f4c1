//! `forward_auto`: a watcher process per machine, started detached by `envy up`, that
//! forwards each TCP port starting to listen in the machine to the same port on the
//! host's 127.0.0.1 (or the next free one), and releases it when the port closes. It
//! reads the machine's listening sockets from the host (/proc/<init>/net/tcp{,6} is the
//! container's network namespace: no exec, no agent) and adds forwards through the
//! project's slirp4netns. What it holds is written to a record status reads.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::envfile::{Forward, Protocol};
use crate::plan::{MachinePlan, Workspace};
use crate::provider::network::{machine_ip, stop_process, ProjectNet};
use crate::state::PidFile;

/// How often the machine's sockets are read.
const POLL: Duration = Duration::from_secs(1);
/// The most of a /proc/net/tcp file read: the file is made by the kernel but its
/// length is the guest's doing (one line per socket it opens).
const MAX_TABLE: u64 = 4 << 20;
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

/// The watcher's log: every forward made and released, one line each.
pub fn log_path(plan: &MachinePlan) -> PathBuf {
    plan.dir.join("forward-auto.log")
}

/// The live automatic forwards of a machine: empty unless its watcher runs.
pub fn live(plan: &MachinePlan) -> Vec<AutoForwarded> {
    if pid_file(plan).alive().is_none() {
        return Vec::new();
    }
    crate::state::read_private(&record_path(plan))
        .ok()
        .flatten()
        .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
        .map(|r| r.forwards)
        .unwrap_or_default()
}

/// Stops the machine's watcher (it releases its forwards) and forgets its record.
pub fn stop(plan: &MachinePlan) {
    if let Some(pid) = pid_file(plan).alive() {
        stop_process(pid);
    }
    pid_file(plan).remove();
    let _ = std::fs::remove_file(record_path(plan));
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
        .open(&log_path)
        .with_context(|| format!("cannot open the forward_auto log {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find envy's own executable to start the forward_auto watcher")?;
    let mut cmd = Command::new(exe);
    cmd.arg("-C").arg(&plan.project.dir).args(["__forward-watch", plan.name()]);
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // SAFETY: setsid is async-signal-safe; the watcher outlives this command and its terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().context("cannot start the forward_auto watcher")?;
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
    let info = crate::provider::for_kind(plan.spec.provider).info(&plan)?;
    let Some(init) = info.pid else {
        say(machine, "is not running; nothing to watch");
        return Ok(0);
    };
    let init_start = crate::state::start_time(init);
    let net = ProjectNet::of(&plan);
    let ip = machine_ip(plan.index)?;
    let mut held: BTreeMap<u16, Forward> = BTreeMap::new();
    let mut written = None;
    loop {
        let alive = init_start.is_some() && crate::state::start_time(init) == init_start;
        if crate::signals::interrupted() || !alive {
            break;
        }
        let listening = match listening_ports(init) {
            Ok(ports) => ports,
            // The machine stopped between the check and the read.
            Err(_) => break,
        };
        let wanted: BTreeSet<u16> = listening
            .into_iter()
            .filter(|p| *p >= auto.min_port && !declared.guest.contains(p))
            .take(MAX_FORWARDS)
            .collect();
        for port in held.keys().copied().filter(|p| !wanted.contains(p)).collect::<Vec<_>>() {
            let forward = held.remove(&port).expect("held port");
            match net.remove_forward(ip, &forward) {
                Ok(()) => say(machine, &format!("guest {port} closed; released {}:{}", forward.host_ip, forward.host_port)),
                Err(e) => say(machine, &format!("cannot release {}:{}: {e:#}", forward.host_ip, forward.host_port)),
            }
        }
        for port in wanted.iter().copied().filter(|p| !held.contains_key(p)).collect::<Vec<_>>() {
            if let Some(forward) = forward_for(&net, machine, ip, port, &declared.host, &held) {
                held.insert(port, forward);
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
        let next = Instant::now() + POLL;
        while Instant::now() < next && !crate::signals::interrupted() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for forward in held.values() {
        // slirp4netns may be gone with the machine's network: then so is the forward.
        let _ = net.remove_forward(ip, forward);
    }
    let _ = std::fs::remove_file(record_path(&plan));
    Ok(0)
}

/// Forwards guest `port` to the same host port on 127.0.0.1, or the next free one
/// (never one the Envfile declares): None, said in the log, when none could be had.
fn forward_for(net: &ProjectNet, machine: &str, ip: Ipv4Addr, port: u16, reserved: &BTreeSet<u16>, held: &BTreeMap<u16, Forward>) -> Option<Forward> {
    let host_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let taken = |p: u16| reserved.contains(&p) || held.values().any(|f| f.host_port == p);
    for host_port in (0..NEXT_FREE_TRIES).filter_map(|i| port.checked_add(i)) {
        let forward = Forward { host_ip, host_port, guest_port: port, protocol: Protocol::Tcp, auto: true };
        if taken(host_port) || !crate::lifecycle::port_free(&forward, host_port) {
            continue;
        }
        match net.add_forward(machine, ip, &forward) {
            Ok(()) => {
                let moved = if host_port != port { format!(" (host port {port} is taken)") } else { String::new() };
                say(machine, &format!("guest {port} -> {host_ip}:{host_port}{moved}"));
                return Some(forward);
            }
            // Taken between the check and slirp's bind: try the next one.
            Err(e) => tracing::debug!("{e:#}"),
        }
    }
    say(machine, &format!("guest {port} is not forwarded: host ports {port} to {} are all taken", port.saturating_add(NEXT_FREE_TRIES - 1)));
    None
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
    crate::state::write_atomic(&record_path(plan), &serde_json::to_vec(&record)?)
}

/// The TCP ports listening in the network namespace of process `pid`, on any address
/// or the machine's own (a socket bound to loopback only cannot be reached by a forward).
fn listening_ports(pid: u32) -> Result<BTreeSet<u16>> {
    let mut ports = BTreeSet::new();
    for file in ["tcp", "tcp6"] {
        let path = Path::new("/proc").join(pid.to_string()).join("net").join(file);
        let mut text = String::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_TABLE).read_to_string(&mut text))
            .with_context(|| format!("cannot read {}", path.display()))?;
        ports.extend(parse_listening(&text));
    }
    Ok(ports)
}

/// Listening ports from /proc/net/tcp{,6} text, bound to a wildcard address (0.0.0.0 or
/// ::) or to a non-loopback one. Lines that do not parse are skipped.
fn parse_listening(text: &str) -> impl Iterator<Item = u16> + '_ {
    const LISTEN: &str = "0A";
    text.lines().skip(1).filter_map(|line| {
        let mut cols = line.split_whitespace();
        let local = cols.nth(1)?;
        let state = cols.nth(1)?;
        if state != LISTEN {
            return None;
        }
        let (addr, port) = local.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok().filter(|p| *p > 0)?;
        reachable(addr).then_some(port)
    })
}

/// Whether a socket bound to this hex address (as /proc/net/tcp writes it) takes
/// connections arriving on the machine's network address.
fn reachable(addr: &str) -> bool {
    match addr.len() {
        // IPv4, the u32 in host (little-endian) order: 127.x.x.x has 7F as its last byte.
        8 => u32::from_str_radix(addr, 16).is_ok_and(|a| a.to_le_bytes()[0] != 127),
        // IPv6: the wildcard, or an IPv4-mapped non-loopback; ::1 and other v6 addresses
        // are not how a forward arrives (slirp forwards to the machine's IPv4 address).
        32 if addr.bytes().all(|b| b.is_ascii_hexdigit()) => {
            addr == "00000000000000000000000000000000"
                || (addr.starts_with("0000000000000000FFFF0000") && !addr[24..].ends_with("7F"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1435 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 1404000A:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
   3: 1404000A:C350 0204000A:0050 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
   4: garbage
   5: 00000000:ZZZZ 00000000:0000 0A
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000
   1: 00000000000000000000000001000000:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000
   2: 0000000000000000FFFF00000100007F:1F93 00000000000000000000000000000000:0000 0A 00000000:00000000
";

    #[test]
    fn wildcard_and_own_address_listeners_count_and_loopback_does_not() {
        let v4: Vec<u16> = parse_listening(TCP).collect();
        // 5173 on 0.0.0.0 and 80 on 10.0.4.20; 8080 on 127.0.0.1, a connected socket and junk are not.
        assert_eq!(v4, vec![5173, 80]);
        let v6: Vec<u16> = parse_listening(TCP6).collect();
        // 8081 on ::; 8082 on ::1 and 8083 on ::ffff:127.0.0.1 are not.
        assert_eq!(v6, vec![8081]);
    }

    #[test]
    fn hostile_text_yields_nothing() {
        for text in ["", "\n\n", "header\n0: :\n", "h\n0: 00000000:0000 x 0A\n", &"h\n".repeat(1000)] {
            assert_eq!(parse_listening(text).count(), 0, "{text:?}");
        }
    }
}
