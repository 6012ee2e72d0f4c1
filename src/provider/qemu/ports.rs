//! A VM's side of `forward_auto` (autoforward.rs): its listening ports, read from the
//! guest's /proc/net/tcp{,6} over the machine's SSH ControlMaster (no agent in the
//! guest, a local socket round trip per look), and host forwards added and removed
//! live on the user-mode NIC with QEMU's `hostfwd_add`/`hostfwd_remove`, beside the
//! SSH forward and the Envfile's, bound where the forward says (127.0.0.1).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::envfile::{Forward, Protocol};
use crate::guest::proc_net;
use crate::guest::ssh::SshTarget;
use crate::provider::{forwardable, Error, GuestPorts};

use super::network::USER_NETDEV;
use super::qmp::{Qmp, QUICK};

/// Both tables in one round trip; a guest without IPv6 has no tcp6.
const READ_TABLES: &str = "cat /proc/net/tcp && { cat /proc/net/tcp6 2>/dev/null || true; }";
/// How long one look may take: generous, a guest under TCG can be slow to answer.
const LOOK_LIMIT: Duration = Duration::from_secs(10);

/// One running VM's ports: its SSH target and its QMP socket.
pub struct QemuPorts {
    target: SshTarget,
    qmp_socket: PathBuf,
    machine: String,
}

impl QemuPorts {
    pub fn new(target: SshTarget, qmp_socket: PathBuf, machine: &str) -> QemuPorts {
        QemuPorts { target, qmp_socket, machine: machine.to_string() }
    }

    /// One HMP command on a fresh QMP connection: QEMU serves one QMP client at a
    /// time, so the watcher never holds it between looks (status and halt need it).
    fn hmp(&self, command_line: &str) -> Result<String, Error> {
        Qmp::connect(&self.qmp_socket, QUICK)?.hmp(command_line)
    }
}

/// The rule as hostfwd writes it: `tcp:127.0.0.1:8080`.
fn host_side(forward: &Forward) -> String {
    let proto = match forward.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    format!("{proto}:{}:{}", forward.host_ip, forward.host_port)
}

impl GuestPorts for QemuPorts {
    fn listening(&mut self) -> Result<BTreeSet<u16>> {
        let text = self.target.output(READ_TABLES, proc_net::MAX_TEXT, LOOK_LIMIT)?;
        let sockets = proc_net::listening(&text).map_err(|e| Error::Other(format!("machine {}: {e}", self.machine)))?;
        Ok(sockets.into_iter().filter(|(ip, _)| forwardable(*ip)).map(|(_, port)| port).collect())
    }

    fn add_forward(&mut self, forward: &Forward) -> Result<()> {
        // No guest address: QEMU's default, the address its DHCP gave the guest.
        let rule = format!("{}-:{}", host_side(forward), forward.guest_port);
        let reply = self.hmp(&format!("hostfwd_add {USER_NETDEV} {rule}"))?;
        // HMP says nothing when it worked; its errors are text.
        if !reply.trim().is_empty() {
            return Err(Error::Other(format!(
                "QEMU could not forward {}:{} to port {} of machine {}: {}",
                forward.host_ip,
                forward.host_port,
                forward.guest_port,
                self.machine,
                reply.trim()
            ))
            .into());
        }
        Ok(())
    }

    fn remove_forward(&mut self, forward: &Forward) -> Result<()> {
        let rule = host_side(forward);
        let reply = self.hmp(&format!("hostfwd_remove {USER_NETDEV} {rule}"))?;
        // QEMU answers "host forwarding rule for RULE removed" (or "not found": none
        // left is no error); anything else is its error.
        let said = reply.trim();
        match said.strip_prefix(&format!("host forwarding rule for {rule} ")) {
            Some("removed" | "not found") => Ok(()),
            _ => Err(Error::Other(format!("QEMU could not remove its forward of {} for machine {}: {said}", rule, self.machine)).into()),
        }
    }
}
