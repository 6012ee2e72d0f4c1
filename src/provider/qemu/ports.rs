//! A VM's side of `forward_auto` (autoforward.rs): its listening ports, read from the
//! guest's /proc/net/tcp{,6} over the machine's SSH ControlMaster (no agent in the
//! guest, a local socket round trip per look), and host forwards added and removed
//! live on the user-mode NIC with QEMU's `hostfwd_add`/`hostfwd_remove`, beside the
//! SSH forward and the Envfile's, bound where the forward says (127.0.0.1).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::model::{Forward, Protocol};
use super::proc_net;
use super::ssh::SshTarget;
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
        let text = self.target.output(READ_TABLES, None, proc_net::MAX_TEXT, LOOK_LIMIT)?;
        let sockets = proc_net::listening(&text).map_err(|e| Error::GuestPorts { machine: self.machine.clone(), problem: e.to_string() })?;
        Ok(sockets.into_iter().filter(|(ip, _)| forwardable(*ip)).map(|(_, port)| port).collect())
    }

    fn add_forward(&mut self, forward: &Forward) -> Result<()> {
        // No guest address: QEMU's default, the address its DHCP gave the guest.
        let rule = format!("{}-:{}", host_side(forward), forward.guest_port);
        let reply = self.hmp(&format!("hostfwd_add {USER_NETDEV} {rule}"))?;
        // HMP says nothing when it worked; its errors are text.
        if !reply.trim().is_empty() {
            return Err(Error::HostForward {
                machine: self.machine.clone(),
                doing: format!("forward {}:{} to port {}", forward.host_ip, forward.host_port, forward.guest_port),
                said: reply.trim().to_string(),
            }
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
            _ => Err(Error::HostForward { machine: self.machine.clone(), doing: format!("remove its forward of {rule}"), said: said.to_string() }.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, TcpListener};

    /// A paused QEMU with nothing but the user-mode NIC and QMP: enough for hostfwd.
    struct PausedQemu {
        child: std::process::Child,
        _dir: tempfile::TempDir,
        ports: QemuPorts,
    }

    impl PausedQemu {
        fn start() -> PausedQemu {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("qmp.sock");
            let child = std::process::Command::new(super::super::cmdline::QEMU_BINARY)
                .args(["-nodefaults", "-no-user-config", "-display", "none", "-S", "-netdev"])
                .arg(format!("user,id={USER_NETDEV}"))
                .args(["-device", &format!("virtio-net-pci,netdev={USER_NETDEV}"), "-qmp"])
                .arg(format!("unix:{},server=on,wait=off", socket.display()))
                .spawn()
                .expect("qemu-system-x86_64 is needed by this test: apt-get install qemu-system-x86");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while Qmp::connect(&socket, QUICK).is_err() {
                assert!(std::time::Instant::now() < deadline, "QEMU's QMP socket never answered");
                std::thread::sleep(Duration::from_millis(20));
            }
            let target = SshTarget {
                port: 1,
                user: "root".into(),
                keys: vec![dir.path().join("key")],
                known_hosts: dir.path().join("known_hosts"),
                control: dir.path().join("ssh.ctl"),
                log: dir.path().join("ssh.log"),
            };
            PausedQemu { child, ports: QemuPorts::new(target, socket, "web"), _dir: dir }
        }
    }

    impl Drop for PausedQemu {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn forward(host_port: u16) -> Forward {
        Forward { host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST), host_port, guest_port: 80, protocol: Protocol::Tcp, auto: true }
    }

    fn free_port() -> u16 {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
    }

    #[test]
    fn hostfwd_is_added_and_removed_live_and_its_text_errors_are_errors() {
        // QEMU is the full tier's (docs/testing.md): a plain `cargo test` says it skips.
        if std::env::var_os("ENVY_TEST_FULL").is_none_or(|v| v != "1") {
            eprintln!("skipped provider::qemu::ports::tests::hostfwd_is_added_and_removed_live_and_its_text_errors_are_errors: needs QEMU (the full tier, ENVY_TEST_FULL=1)");
            return;
        }
        let mut qemu = PausedQemu::start();
        let port = free_port();
        qemu.ports.add_forward(&forward(port)).unwrap();
        assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err(), "QEMU holds 127.0.0.1:{port}");
        qemu.ports.remove_forward(&forward(port)).unwrap();
        assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok(), "QEMU released 127.0.0.1:{port}");
        qemu.ports.remove_forward(&forward(port)).unwrap();

        let holder = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let taken = holder.local_addr().unwrap().port();
        let err = qemu.ports.add_forward(&forward(taken)).unwrap_err().to_string();
        assert!(
            err.contains(&format!("QEMU could not forward 127.0.0.1:{taken} to port 80 for machine web: Could not set up host forwarding rule")),
            "{err}"
        );
    }
}
