//! A container's place on the project network (see provider/network.rs): its own
//! network namespace, joined to the project bridge by a veth pair, with the address
//! its index in the Envfile gives it.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Result;
use sha2::{Digest as _, Sha256};

use crate::plan::MachinePlan;
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
        // `ip` opens a namespace given with a '/' as a path.
        let peer_netns = self.netns_path().to_string_lossy();
        project.netns().ip(&[
            &["link", "add", &self.veth, "mtu", MTU, "type", "veth", "peer", "name", "eth0", "netns", &peer_netns],
            &["link", "set", &self.veth, "master", BRIDGE, "up"],
        ])?;
        let address = format!("{}/24", self.ip);
        let gateway = GATEWAY.to_string();
        self.netns.ip(&[
            &["link", "set", "lo", "up"],
            &["address", "add", &address, "dev", "eth0"],
            &["link", "set", "eth0", "up"],
            &["route", "add", "default", "via", &gateway],
        ])?;
        Ok(())
    }

    /// Removes the veth pair and the namespace.
    pub fn remove(&self, project: &ProjectNet) -> Result<()> {
        if project.netns().exists()? && project.netns().has_link(&self.veth) {
            project.netns().ip(&[&["link", "delete", &self.veth]])?;
        }
        self.netns.delete()
    }
}
