//! A container's side of `forward_auto` (autoforward.rs): its listening sockets, asked
//! of the kernel from the host (sock_diag in the machine's network namespace: no exec,
//! no agent), and forwards added through the project's slirp4netns.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::Result;

use crate::model::Forward;
use crate::provider::netlink;
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

/// A sock_diag netlink socket inside the machine's network namespace: the machine's
/// listening sockets are asked for from the host with no exec and no agent. sock_diag
/// is asked rather than /proc/PID/net/tcp read: the kernel makes that file by walking
/// every established-socket bucket of the host, about 10 ms of system time per read
/// here; a dump of listening sockets only walks the listening ones.
fn diag_socket(netns: &Path) -> Result<OwnedFd> {
    netlink::socket_in(netns, libc::NETLINK_SOCK_DIAG)
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_LISTEN: u32 = 10;

/// The TCP ports listening in the socket's namespace on an address a forward reaches.
fn listening_ports(sock: &OwnedFd) -> Result<BTreeSet<u16>> {
    let mut ports = BTreeSet::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        // inet_diag_req_v2: family, IPPROTO_TCP, ext, pad, states, sockid (48 bytes).
        let mut request = [0u8; 56];
        request[0] = family;
        request[1] = libc::IPPROTO_TCP as u8;
        request[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
        let request = netlink::dump_request(SOCK_DIAG_BY_FAMILY, &request);
        netlink::dump(sock, &request, MAX_DUMP, "the machine's listening sockets", |_, body| ports.extend(listening_port(body)))?;
    }
    Ok(ports)
}

/// The port of a listening socket on a reachable address, from one sock_diag message
/// (inet_diag_msg: family, state, timer, retrans, then sockid: sport, dport (big
/// endian), src (16 bytes)); None for anything else, or a message too short.
fn listening_port(body: &[u8]) -> Option<u16> {
    if body.len() < 24 || u32::from(body[1]) != TCP_LISTEN {
        return None;
    }
    let port = u16::from_be_bytes([body[4], body[5]]);
    (port > 0 && address(body[0], &body[8..24]).is_some_and(forwardable)).then_some(port)
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
        let mut msg = ((netlink::HEADER + body.len()) as u32).to_ne_bytes().to_vec();
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
        let mut msg = (netlink::HEADER as u32 + 4).to_ne_bytes().to_vec();
        msg.extend(netlink::NLMSG_DONE.to_ne_bytes());
        msg.extend([0u8; 14]);
        msg
    }

    /// The ports one datagram's messages name, and whether the dump is done.
    fn parse(buf: &[u8]) -> (Vec<u16>, bool) {
        let mut ports = Vec::new();
        let done = netlink::messages(buf, &mut |_, body| ports.extend(listening_port(body))).unwrap();
        (ports, done)
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
        assert_eq!(parse(&buf), (vec![5173, 80, 8081, 8084], false));
        buf.extend(done());
        assert_eq!(parse(&buf), (vec![5173, 80, 8081, 8084], true));
    }

    #[test]
    fn short_or_malformed_answers_yield_nothing() {
        let whole = message(libc::AF_INET, TCP_LISTEN as u8, v4([0; 4]), 5173);
        for buf in [&[][..], &whole[..10], &whole[..whole.len() - 1], &[0xff; 64][..], &[0; 64][..]] {
            assert_eq!(parse(buf), (vec![], false), "{buf:?}");
        }
    }
}
