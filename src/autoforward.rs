//! `forward_auto`: a watcher process per machine, started detached by `envy up`, that
//! forwards each TCP port starting to listen in the machine to the same port on the
//! host's 127.0.0.1 (or the next free one), and releases it when the port closes. It
//! asks the kernel for the machine's listening sockets from the host (sock_diag in the
//! container's network namespace: no exec, no agent) and adds forwards through the
//! project's slirp4netns. What it holds is written to a record status reads.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::envfile::{Forward, Protocol};
use crate::plan::{MachinePlan, Workspace};
use crate::process::Process;
use crate::provider::network::{machine_ip, stop_process, ProjectNet};
use crate::state::PidFile;

/// How often the machine's sockets are read.
const POLL: Duration = Duration::from_secs(1);
/// The most of one sock_diag dump read: the kernel writes it, but its length is the
/// guest's doing (one message per socket it listens on).
const MAX_DUMP: u64 = 4 << 20;
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
    let info = crate::provider::for_kind(plan.spec.provider).info(&plan)?;
    let Some(init) = info.pid else {
        say(machine, "is not running; nothing to watch");
        return Ok(0);
    };
    let init_start = crate::state::start_time(init);
    let sock = diag_socket(init)?;
    let net = ProjectNet::of(&plan);
    let ip = machine_ip(plan.index)?;
    let mut held: BTreeMap<u16, Forward> = BTreeMap::new();
    let mut written = None;
    loop {
        let alive = init_start.is_some() && crate::state::start_time(init) == init_start;
        if crate::signals::interrupted() || !alive {
            break;
        }
        let listening = match listening_ports(&sock) {
            Ok(ports) => ports,
            Err(e) => {
                say(machine, &format!("{e:#}; stopping"));
                break;
            }
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

/// A sock_diag netlink socket inside the network namespace of process `pid`: made by a
/// thread that entered it, it stays bound to that namespace, so the machine's listening
/// sockets can be asked for from the host with no exec and no agent. sock_diag is asked
/// rather than /proc/PID/net/tcp read: the kernel makes that file by walking every
/// established-socket bucket of the host, about 10 ms of system time per read here;
/// a dump of listening sockets only walks the listening ones.
fn diag_socket(pid: u32) -> Result<OwnedFd> {
    let ns_path = format!("/proc/{pid}/ns/net");
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<OwnedFd> {
                let ns = std::fs::File::open(&ns_path).with_context(|| format!("cannot open {ns_path}"))?;
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).with_context(|| format!("cannot enter {ns_path}"))?;
                // SAFETY: a plain socket(2) call; the fd is owned at once.
                let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
                if fd < 0 {
                    bail!("cannot open a sock_diag socket in {ns_path}: {}", std::io::Error::last_os_error());
                }
                // SAFETY: fd was just returned by socket(2) and nothing else owns it.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread entering {ns_path} panicked"))?
    })
}

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_LISTEN: u32 = 10;
const HEADER: usize = 16;

/// The TCP ports listening in the socket's namespace on any address or the machine's
/// own (a socket bound to loopback only cannot be reached by a forward).
fn listening_ports(sock: &OwnedFd) -> Result<BTreeSet<u16>> {
    let mut ports = BTreeSet::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        // nlmsghdr, then inet_diag_req_v2: family, IPPROTO_TCP, ext, pad, states, sockid (48 bytes).
        let mut request = [0u8; HEADER + 56];
        request[0..4].copy_from_slice(&((HEADER + 56) as u32).to_ne_bytes());
        request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        request[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
        request[HEADER] = family;
        request[HEADER + 1] = libc::IPPROTO_TCP as u8;
        request[HEADER + 4..HEADER + 8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
        // SAFETY: the buffer lives for the call; an unaddressed netlink send goes to the kernel.
        if unsafe { libc::send(sock.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) } < 0 {
            bail!("cannot ask sock_diag for listening sockets: {}", std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 64 << 10];
        let mut read = 0u64;
        loop {
            // SAFETY: recv writes at most buf.len() bytes into buf.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                bail!("cannot read sock_diag's answer: {}", std::io::Error::last_os_error());
            }
            read += n as u64;
            if read > MAX_DUMP {
                bail!("sock_diag's answer is over {MAX_DUMP} bytes; the machine listens on too many sockets");
            }
            let (found, done) = parse_diag(&buf[..n as usize])?;
            ports.extend(found);
            if done || n == 0 {
                break;
            }
        }
    }
    Ok(ports)
}

/// The ports of the reachable listening sockets in one sock_diag datagram, and whether
/// the dump is done. Anything short or malformed ends the datagram.
fn parse_diag(buf: &[u8]) -> Result<(Vec<u16>, bool)> {
    let mut ports = Vec::new();
    let mut at = 0;
    while at + HEADER <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2 bytes"));
        if len < HEADER || at + len > buf.len() {
            break;
        }
        let body = &buf[at + HEADER..at + len];
        match kind {
            NLMSG_DONE => return Ok((ports, true)),
            NLMSG_ERROR => {
                let code = body.get(..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                bail!("sock_diag refused the dump: {}", std::io::Error::from_raw_os_error(-code));
            }
            // inet_diag_msg: family, state, timer, retrans, then sockid: sport, dport (big
            // endian), src (16 bytes).
            _ if body.len() >= 24 && u32::from(body[1]) == TCP_LISTEN => {
                let port = u16::from_be_bytes([body[4], body[5]]);
                if port > 0 && reachable(body[0], &body[8..24]) {
                    ports.push(port);
                }
            }
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Ok((ports, false))
}

/// Whether a socket bound to `addr` takes connections arriving on the machine's own
/// address: a wildcard or a non-loopback address, IPv4 or IPv4-mapped; ::1 and other
/// IPv6 addresses are not how a forward arrives (slirp forwards to the IPv4 address).
fn reachable(family: u8, addr: &[u8]) -> bool {
    match i32::from(family) {
        libc::AF_INET => addr[0] != 127,
        libc::AF_INET6 => {
            addr.iter().all(|b| *b == 0) || (addr[..10].iter().all(|b| *b == 0) && addr[10..12] == [0xff, 0xff] && addr[12] != 127)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One sock_diag message: a socket of `family` in `state` on `addr`:`port`.
    fn message(family: i32, state: u8, addr: [u8; 16], port: u16) -> Vec<u8> {
        let mut body = vec![family as u8, state, 0, 0];
        body.extend(port.to_be_bytes());
        body.extend([0, 0]);
        body.extend(addr);
        body.extend([0u8; 16 + 4 + 8 + 20]);
        let mut msg = ((HEADER + body.len()) as u32).to_ne_bytes().to_vec();
        msg.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg.extend([0u8; 10]);
        msg.extend(body);
        msg
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    fn mapped(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[10..12].copy_from_slice(&[0xff, 0xff]);
        out[12..].copy_from_slice(&a);
        out
    }

    fn done() -> Vec<u8> {
        let mut msg = (HEADER as u32 + 4).to_ne_bytes().to_vec();
        msg.extend(NLMSG_DONE.to_ne_bytes());
        msg.extend([0u8; 14]);
        msg
    }

    #[test]
    fn wildcard_and_own_address_listeners_count_and_loopback_does_not() {
        let listen = TCP_LISTEN as u8;
        let mut buf = Vec::new();
        for (family, state, addr, port) in [
            (libc::AF_INET, listen, v4([0, 0, 0, 0]), 5173),
            (libc::AF_INET, listen, v4([127, 0, 0, 1]), 8080),
            (libc::AF_INET, listen, v4([10, 0, 4, 20]), 80),
            (libc::AF_INET, 1, v4([10, 0, 4, 20]), 50000),
            (libc::AF_INET6, listen, [0; 16], 8081),
            (libc::AF_INET6, listen, { let mut a = [0; 16]; a[15] = 1; a }, 8082),
            (libc::AF_INET6, listen, mapped([127, 0, 0, 1]), 8083),
            (libc::AF_INET6, listen, mapped([10, 0, 4, 20]), 8084),
        ] {
            buf.extend(message(family, state, addr, port));
        }
        assert_eq!(parse_diag(&buf).unwrap(), (vec![5173, 80, 8081, 8084], false));
        buf.extend(done());
        assert_eq!(parse_diag(&buf).unwrap(), (vec![5173, 80, 8081, 8084], true));
    }

    #[test]
    fn short_or_malformed_answers_yield_nothing() {
        let whole = message(libc::AF_INET, TCP_LISTEN as u8, v4([0; 4]), 5173);
        for buf in [&[][..], &whole[..10], &whole[..whole.len() - 1], &[0xff; 64][..], &[0; 64][..]] {
            assert_eq!(parse_diag(buf).unwrap(), (vec![], false), "{buf:?}");
        }
        let mut error = (HEADER as u32 + 4).to_ne_bytes().to_vec();
        error.extend(NLMSG_ERROR.to_ne_bytes());
        error.extend([0u8; 10]);
        error.extend((-libc::EPERM).to_ne_bytes());
        assert!(parse_diag(&error).unwrap_err().to_string().contains("refused"));
    }
}
