//! A machine's network: user-mode NAT with host forwards bound to 127.0.0.1 (SSH on a
//! free port, plus the Envfile's forwards), and, when the project has several
//! machines, a second NIC on the project network (provider/network.rs): a tap on the
//! project's bridge, opened by envy inside the project's namespace and inherited by
//! QEMU as a file descriptor. Containers and VMs of a project share that segment.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::Result;
use sha2::{Digest as _, Sha256};

use crate::model::{Forward, Protocol};
use crate::plan::MachinePlan;
use crate::provider::network::{machine_ip, ProjectNet};
use crate::provider::Error;

/// The id of the user-mode NIC's netdev: its host forwards (SSH, the Envfile's, and
/// `forward_auto`'s, added live) belong to it.
pub const USER_NETDEV: &str = "net0";

/// A TCP port on 127.0.0.1 that nobody uses now (the kernel picks it).
pub fn free_local_port() -> Result<u16, Error> {
    Protocol::Tcp
        .free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .map_err(|cause| Error::Host { doing: "find a free port on 127.0.0.1".into(), cause })
}

/// The SSH port for this boot: the recorded one when still free, else a new one.
pub fn pick_ssh_port(recorded: Option<u16>) -> Result<u16, Error> {
    match recorded {
        Some(port) if Protocol::Tcp.is_free(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)) => Ok(port),
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
        if !fwd.host_port_free(fwd.host_port) {
            return Err(Error::PortTaken {
                host_ip: fwd.host_ip,
                host_port: fwd.host_port,
                protocol: fwd.protocol.as_str(),
                machine: plan.name().to_string(),
                holder: None,
            });
        }
    }
    Ok(())
}

/// The `-netdev user` option string: NAT plus every host forward.
pub fn user_netdev(id: &str, ssh_port: u16, forwards: &[Forward]) -> String {
    let mut netdev = format!("user,id={id},hostfwd=tcp:127.0.0.1:{ssh_port}-:22");
    for fwd in forwards {
        netdev += &format!(",hostfwd={}:{}:{}-:{}", fwd.protocol, fwd.host_ip, fwd.host_port, fwd.guest_port);
    }
    netdev
}

/// The project segment as one VM sees it.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The tap's name in the project namespace (15 bytes at most: from a hash).
    pub tap: String,
    pub mac: String,
    pub address: Ipv4Addr,
    /// Every other machine's name and address, for /etc/hosts.
    pub peers: Vec<(String, Ipv4Addr)>,
}

impl Segment {
    /// The segment for a machine, or None when it has no peers to talk to.
    pub fn of(plan: &MachinePlan) -> Result<Option<Segment>> {
        if plan.peers.is_empty() {
            return Ok(None);
        }
        let digest = Sha256::digest(plan.runtime_id.as_bytes());
        Ok(Some(Segment {
            tap: format!("vt{}", hex::encode(&digest[..4])),
            mac: format!("52:54:00:76:{:02x}:{:02x}", (plan.index >> 8) & 0xff, plan.index & 0xff),
            address: machine_ip(plan.index)?,
            peers: plan.peers.iter().map(|(name, i)| Ok((name.clone(), machine_ip(*i)?))).collect::<Result<_>>()?,
        }))
    }

    /// Brings the project network up and opens this VM's tap on it, for QEMU to inherit.
    pub fn attach(&self, plan: &MachinePlan) -> Result<OwnedFd> {
        let project = ProjectNet::of(plan);
        project.ensure()?;
        project.open_tap(&self.tap)
    }

    /// The `-netdev tap` option string for the tap `attach` opened (QEMU inherits it).
    pub fn netdev(id: &str, tap: &OwnedFd) -> String {
        format!("tap,id={id},fd={}", tap.as_raw_fd())
    }

    /// Shell run by the guest at every boot: address the NIC found by its MAC and
    /// name the peers in /etc/hosts (once). No route goes through it: the first NIC
    /// keeps the default route.
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
