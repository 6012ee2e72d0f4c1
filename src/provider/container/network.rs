//! A container's place on the project network (see provider/network.rs): its own
//! network namespace, joined to the project bridge by a veth pair, with the address
//! its index in the Envfile gives it.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context as _, Result};
use sha2::{Digest as _, Sha256};

use crate::plan::MachinePlan;
use crate::provider::netlink::Changes;
use crate::provider::network::{Netns, ProjectNet, BRIDGE, GATEWAY, MTU};

pub use crate::provider::network::{machine_ip, DNS};

/// One machine's namespace and its link to the project bridge.
#[derive(Debug, Clone)]
pub struct MachineNet {
    netns: Netns,
    /// The bridge-side veth end; interface names are limited to 15 bytes, so it is
    /// named from a hash of the machine's runtime id.
    veth: String,
    pub ip: Ipv4Addr,
}

impl MachineNet {
    pub fn of(plan: &MachinePlan) -> Result<MachineNet> {
        let digest = Sha256::digest(plan.runtime_id.as_bytes());
        Ok(MachineNet {
            netns: Netns::named(&plan.home, &plan.runtime_id),
            veth: format!("ve{}", hex::encode(&digest[..4])),
            ip: machine_ip(plan.index)?,
        })
    }

    /// The namespace file the container joins.
    pub fn netns_path(&self) -> &Path {
        self.netns.path()
    }

    /// Whether the namespace, its veth on the bridge and its address are all there.
    pub fn is_intact(&self, project: &ProjectNet) -> Result<bool> {
        if !self.netns.exists()? || !project.netns().has_link(&self.veth) {
            return Ok(false);
        }
        let addresses = crate::provider::netlink::ipv4_addresses(self.netns_path(), "eth0").unwrap_or_default();
        Ok(addresses.contains(&(self.ip, 24)))
    }

    /// Builds the namespace and its link from scratch, replacing any partial leftover.
    pub fn rebuild(&self, project: &ProjectNet) -> Result<()> {
        self.remove(project)?;
        self.netns.ensure()?;
        let peer_netns = std::fs::File::open(self.netns_path())
            .with_context(|| format!("cannot open network namespace {}", self.netns_path().display()))?;
        let bridge = Changes::in_namespace(project.netns().path())?;
        bridge.add_veth(&self.veth, MTU, BRIDGE, "eth0", &peer_netns)?;
        let machine = Changes::in_namespace(self.netns_path())?;
        machine.set_up("lo")?;
        machine.add_ipv4("eth0", self.ip, 24)?;
        machine.set_up("eth0")?;
        machine.add_default_route(GATEWAY)
    }

    /// Removes the veth pair and the namespace.
    pub fn remove(&self, project: &ProjectNet) -> Result<()> {
        // A project namespace that cannot be entered holds no veth of this machine.
        if let Ok(bridge) = Changes::in_namespace(project.netns().path()) {
            bridge.delete_link(&self.veth)?;
        }
        self.netns.delete()
    }
}
