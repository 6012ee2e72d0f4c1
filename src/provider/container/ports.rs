//! A container's side of `forward_auto` (autoforward.rs): its listening sockets, asked
//! of the kernel from the host (sock_diag in the machine's network namespace: no exec,
//! no agent), and forwards added through the project's slirp4netns.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context as _, Result};

use crate::model::Forward;
use crate::provider::network::ProjectNet;
use crate::provider::{forwardable, GuestPorts};

/// The most of one sock_diag dump read: the kernel writes it, but its length is the
/// guest's doing (one message per socket it listens on).
const MAX_DUMP: u64 = 4 << 20;

/// One running container's ports: a sock_diag socket in its namespace and its place
/// on the project network.
pub struct ContainerPorts {
    sock: OwnedFd,
    net: ProjectNet,
    ip: Ipv4Addr,
    machine: String,
}

impl ContainerPorts {
    /// `netns` is the machine's network namespace file.
    pub fn open(netns: &Path, net: ProjectNet, ip: Ipv4Addr, machine: &str) -> Result<ContainerPorts> {
        Ok(ContainerPorts { sock: diag_socket(netns)?, net, ip, machine: machine.to_string() })
    }
}

impl GuestPorts for ContainerPorts {
    fn listening(&mut self) -> Result<BTreeSet<u16>> {
        listening_ports(&self.sock)
    }

    fn add_forward(&mut self, forward: &Forward) -> Result<()> {
        self.net.add_forward(&self.machine, self.ip, forward)
    }

    fn remove_forward(&mut self, forward: &Forward) -> Result<()> {
        self.net.remove_forward(self.ip, forward)
    }
}

/// A sock_diag netlink socket inside the network namespace `netns`: made by a thread
/// that entered it, it stays bound to that namespace, so the machine's listening
/// sockets can be asked for from the host with no exec and no agent. sock_diag is asked
/// rather than /proc/PID/net/tcp read: the kernel makes that file by walking every
/// established-socket bucket of the host, about 10 ms of system time per read here;
/// a dump of listening sockets only walks the listening ones.
fn diag_socket(netns: &Path) -> Result<OwnedFd> {
    let ns_path = netns.display().to_string();
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<OwnedFd> {
                let ns = std::fs::File::open(netns).with_context(|| format!("cannot open {ns_path}"))?;
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

/// The TCP ports listening in the socket's namespace on an address a forward reaches.
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
                if port > 0 && address(body[0], &body[8..24]).is_some_and(forwardable) {
                    ports.push(port);
                }
            }
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Ok((ports, false))
}

/// The address of an inet_diag socket id: 4 bytes for AF_INET, 16 for AF_INET6.
fn address(family: u8, addr: &[u8]) -> Option<IpAddr> {
    match i32::from(family) {
        libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))),
        libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(addr).ok()?))),
        _ => None,
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
