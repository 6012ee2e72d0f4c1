//! A machine's network: user-mode NAT with host forwards bound to 127.0.0.1 (SSH on a
//! free port, plus the Envfile's forwards), and, when the project has several
//! machines, a second NIC on a loopback multicast segment shared by the project's VMs
//! with static addresses derived from each machine's index.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use crate::envfile::{Forward, Protocol};
use crate::plan::MachinePlan;
use crate::provider::Error;

/// The project segment's prefix: machine N gets 192.168.76.(10+N).
const PROJECT_SUBNET: [u8; 3] = [192, 168, 76];
const FIRST_HOST: usize = 10;
/// Multicast group the project's VMs meet on (only over loopback).
const MCAST_GROUP: &str = "230.0.0.1";

/// Whether `port` on `ip` can be bound right now.
pub fn port_is_free(ip: IpAddr, port: u16, protocol: Protocol) -> bool {
    let addr = SocketAddr::new(ip, port);
    match protocol {
        Protocol::Tcp => TcpListener::bind(addr).is_ok(),
        Protocol::Udp => UdpSocket::bind(addr).is_ok(),
    }
}

/// A TCP port on 127.0.0.1 that nobody uses now (the kernel picks it).
pub fn free_local_port() -> Result<u16, Error> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::Other(format!("cannot find a free port on 127.0.0.1: {e}")))
}

/// The SSH port for this boot: the recorded one when still free, else a new one.
pub fn pick_ssh_port(recorded: Option<u16>) -> Result<u16, Error> {
    match recorded {
        Some(port) if port_is_free(IpAddr::V4(Ipv4Addr::LOCALHOST), port, Protocol::Tcp) => Ok(port),
        Some(port) => {
            let new = free_local_port()?;
            tracing::debug!("recorded SSH port {port} is taken; using {new}");
            Ok(new)
        }
        None => free_local_port(),
    }
}

/// Fails with a clear sentence when a forward's host port is taken, before QEMU
/// would fail with a terse one.
pub fn check_forwards(plan: &MachinePlan) -> Result<(), Error> {
    for fwd in &plan.forwards {
        if !port_is_free(fwd.host_ip, fwd.host_port, fwd.protocol) {
            return Err(Error::Other(format!(
                "host port {}:{} (forward to port {} of machine {}) is in use; free it, \
                 pick another host port in the Envfile, or mark the forward auto",
                fwd.host_ip,
                fwd.host_port,
                fwd.guest_port,
                plan.name()
            )));
        }
    }
    Ok(())
}

/// The `-netdev user` option string: NAT plus every host forward.
pub fn user_netdev(id: &str, ssh_port: u16, forwards: &[Forward]) -> String {
    let mut netdev = format!("user,id={id},hostfwd=tcp:127.0.0.1:{ssh_port}-:22");
    for fwd in forwards {
        let proto = match fwd.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        netdev += &format!(",hostfwd={proto}:{}:{}-:{}", fwd.host_ip, fwd.host_port, fwd.guest_port);
    }
    netdev
}

/// The project segment as one machine sees it.
#[derive(Debug, Clone)]
pub struct ProjectNet {
    /// UDP port of the multicast group, derived from the project id.
    pub mcast_port: u16,
    pub mac: String,
    pub address: Ipv4Addr,
    /// Peers' names and addresses, for /etc/hosts.
    pub peers: Vec<(String, Ipv4Addr)>,
}

/// Address of the machine at `index` on the project segment.
fn address_of(index: usize) -> Ipv4Addr {
    let [a, b, c] = PROJECT_SUBNET;
    Ipv4Addr::new(a, b, c, (FIRST_HOST + index).min(254) as u8)
}

impl ProjectNet {
    /// The segment for a machine, or None when it has no peers to talk to.
    pub fn of(plan: &MachinePlan) -> Option<ProjectNet> {
        if plan.peers.is_empty() {
            return None;
        }
        let id = u32::from_str_radix(&plan.project.id, 16).unwrap_or(0);
        Some(ProjectNet {
            mcast_port: 20000 + (id % 20000) as u16,
            mac: format!("52:54:00:76:{:02x}:{:02x}", (plan.index >> 8) & 0xff, plan.index & 0xff),
            address: address_of(plan.index),
            peers: plan.peers.iter().map(|(name, i)| (name.clone(), address_of(*i))).collect(),
        })
    }

    /// The `-netdev socket` option string.
    pub fn netdev(&self, id: &str) -> String {
        format!("socket,id={id},mcast={MCAST_GROUP}:{},localaddr=127.0.0.1", self.mcast_port)
    }

    /// Shell run by the guest at every boot: address the NIC found by its MAC and
    /// name the peers in /etc/hosts (once).
    pub fn guest_script(&self) -> String {
        let mut script = format!(
            "nic=$(grep -l '{mac}' /sys/class/net/*/address | cut -d/ -f5)\n\
             if [ -n \"$nic\" ]; then ip link set \"$nic\" up; ip addr add {addr}/24 dev \"$nic\" 2>/dev/null || true; fi\n",
            mac = self.mac,
            addr = self.address
        );
        for (name, addr) in &self.peers {
            script += &format!("grep -q ' {name}$' /etc/hosts || echo '{addr} {name}' >> /etc/hosts\n");
        }
        script
    }
}
