//! The project network, shared by every machine of a project whatever its provider,
//! leaving the host's own network untouched: one network namespace per project holds
//! a bridge `br0`; slirp4netns, attached to that namespace by its tap0 (enslaved to
//! br0), gives outbound access and the host-side port forwards of containers.
//! Containers join br0 by a veth pair (container/network.rs), VMs by a tap that envy
//! opens inside the namespace and hands to QEMU as a file descriptor (qemu/network.rs),
//! so QEMU itself stays in the host's namespace. Nothing outside the project can join
//! the segment: it exists only inside the project's namespace, which only its owner can
//! enter: root, or for a normal user's envy (userns.rs) that user's own processes. Each machine has a static address on slirp's 10.0.4.0/24 segment, derived
//! from its index in the Envfile; libslirp answers ARP and routes for its own
//! addresses, so one slirp4netns serves all machines of a project. The subnet is not
//! QEMU's user-mode 10.0.2.0/24, which a VM keeps on its first NIC for SSH and forwards.

use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::model::Forward;
use crate::plan::MachinePlan;
use crate::process::Process;
use crate::provider::netlink::Changes;
use crate::provider::Error;
use crate::state::PidFile;

/// The project segment, as slirp4netns's `--cidr`: not QEMU's user-mode 10.0.2.0/24,
/// which VMs keep on their first NIC.
const SUBNET: [u8; 3] = [10, 0, 4];
/// slirp's gateway: the containers' default route.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 2);
/// slirp's DNS forwarder, for the containers' resolv.conf.
pub const DNS: Ipv4Addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 3);
/// Ethernet's MTU on every link. slirp4netns's large-MTU mode (65520) works on its own
/// tap, but through veth + bridge the machines' outbound downloads stalled at 9000 and
/// 65520 (the first full-size segment never arrived); 1500 works.
pub const MTU: u32 = 1500;
/// First host number given to machines (below it: slirp's own addresses and DHCP range).
const FIRST_HOST: usize = 20;
pub const BRIDGE: &str = "br0";
const TAP: &str = "tap0";

/// A machine's address, derived from its position in the Envfile so it is stable,
/// and so every machine knows every other's address whatever its provider.
pub fn machine_ip(index: usize) -> Result<Ipv4Addr> {
    match u8::try_from(FIRST_HOST + index) {
        Ok(host) if host < 255 => Ok(Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], host)),
        _ => bail!(Error::TooManyMachines { limit: 255 - FIRST_HOST, number: index + 1 }),
    }
}

/// A network namespace envy made: its nsfs file bind-mounted on `path` (in the runtime
/// dir, which a normal user's envy can write, where /run/netns is root's) keeps it alive
/// with nothing running in it. `ip netns` does the same, but only under /run/netns.
#[derive(Debug, Clone)]
pub struct Netns {
    path: PathBuf,
}

impl Netns {
    /// The namespace `name` of envy's home (`envy-<project>`, or a machine's runtime id).
    pub fn named(home: &crate::state::Home, name: &str) -> Netns {
        Netns { path: home.runtime_dir().join("netns").join(name) }
    }

    /// The namespace file, which runc, slirp4netns and netlink sockets join.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// The namespace exists when its file is a mounted namespace (nsfs); a bare file
    /// is a leftover (a reboot, or an `up` killed between the two steps).
    pub fn exists(&self) -> Result<bool> {
        const NSFS_MAGIC: libc::c_long = 0x6e73_6673;
        match nix::sys::statfs::statfs(&self.path) {
            Ok(fs) => Ok(fs.filesystem_type().0 as libc::c_long == NSFS_MAGIC),
            Err(nix::errno::Errno::ENOENT) => Ok(false),
            Err(e) => Err(anyhow::anyhow!("cannot look at network namespace {}: {e}", self.path.display())),
        }
    }

    /// Makes the namespace unless it exists: a thread unshares a new one and mounts
    /// it on the file, then ends; the mount keeps it.
    pub fn ensure(&self) -> Result<()> {
        if self.exists()? {
            return Ok(());
        }
        let dir = self.path.parent().expect("a namespace file is in the netns dir");
        crate::fsutil::create_private_dir(dir)?;
        let _ = std::fs::remove_file(&self.path);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
            .with_context(|| format!("cannot create the network namespace file {}", self.path.display()))?;
        let made = std::thread::scope(|scope| {
            scope
                .spawn(|| -> nix::Result<()> {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
                    nix::mount::mount(Some("/proc/thread-self/ns/net"), &self.path, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
                })
                .join()
                .unwrap_or(Err(nix::errno::Errno::EINTR))
        });
        made.map_err(|cause| {
            let _ = std::fs::remove_file(&self.path);
            Error::Host { doing: format!("make network namespace {}", self.name()), cause: cause.into() }.into()
        })
    }

    /// Unmounts the namespace file (the namespace goes with its last user) and removes it.
    pub fn delete(&self) -> Result<()> {
        if self.exists()? {
            nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|cause| Error::Host { doing: format!("unmount network namespace {}", self.path.display()), cause: cause.into() })?;
        }
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove the network namespace file {}", self.path.display()))
            }
            _ => Ok(()),
        }
    }

    pub fn has_link(&self, link: &str) -> bool {
        super::netlink::links(&self.path).is_ok_and(|links| links.iter().any(|l| l.name == link))
    }
}

/// One forward as slirp4netns lists it.
#[derive(Debug, Deserialize)]
struct HostForward {
    id: u64,
    proto: String,
    host_addr: String,
    host_port: u16,
    guest_addr: String,
    guest_port: u16,
}

#[derive(Debug, Serialize, Deserialize)]
struct ForwardsRecord {
    machine: String,
    forwards: Vec<Forward>,
}

/// The project's shared network: its namespace, bridge and slirp4netns.
#[derive(Debug, Clone)]
pub struct ProjectNet {
    netns: Netns,
    /// Runtime files: slirp's pid file, API socket and log.
    dir: PathBuf,
}

/// Held while a project network is made or torn down: machines of one command start
/// and stop at once, and only one of them may do either.
static CHANGING: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl ProjectNet {
    pub fn of(plan: &MachinePlan) -> ProjectNet {
        ProjectNet {
            netns: Netns::named(&plan.home, &format!("envy-{}", plan.project.id)),
            dir: plan.home.runtime_dir().join("net").join(&plan.project.id),
        }
    }

    fn slirp(&self) -> PidFile {
        PidFile::at(self.dir.join("slirp.pid"))
    }

    fn api_socket(&self) -> PathBuf {
        self.dir.join("slirp.sock")
    }

    /// The project's namespace, which machines' links join.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn slirp_pid(&self) -> Option<u32> {
        self.slirp().alive()
    }

    /// Creates whatever is missing: the namespace, the bridge, a live slirp4netns.
    /// One machine at a time: `up` starts machines concurrently, and two making the
    /// bridge or slirp4netns at once would both make it. (Other commands are kept
    /// out by the project lock.)
    pub fn ensure(&self) -> Result<()> {
        let _one_at_a_time = CHANGING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.netns.ensure()?;
        // One read of the namespace's links (a netlink dump of every machine's link)
        // answers what follows.
        let changes = Changes::in_namespace(self.netns.path())?;
        let links = changes.links()?;
        let bridge = links.iter().find(|l| l.name == BRIDGE).map(|l| l.index);
        let tap = links.iter().find(|l| l.name == TAP);
        if bridge.is_none() {
            changes.set_up("lo")?;
            changes.add_bridge(BRIDGE, MTU)?;
        }
        // A slirp4netns whose tap is not in the namespace serves one that is gone (its
        // holder, userns.rs, was killed, and the namespace file with it): replaced.
        if let Some(stale) = self.slirp_pid().filter(|_| tap.is_none()) {
            crate::process::stop(stale);
            self.slirp().remove();
        }
        let restarted = self.slirp_pid().is_none();
        if restarted {
            self.start_slirp()?;
        }
        // An `up` killed right after starting slirp4netns left tap0 loose: it is put on
        // the bridge unless it is there (master and up are set by one request).
        if restarted || bridge.is_none() || tap.and_then(|t| t.master) != bridge {
            changes.join_bridge(TAP, MTU, BRIDGE)?;
        }
        if restarted {
            self.replay_forwards()?;
        }
        Ok(())
    }

    /// The forwards last set for a machine, kept so a restarted slirp4netns gets the
    /// forwards of every machine still running, not only the one being brought up.
    fn forwards_record(&self, ip: Ipv4Addr) -> PathBuf {
        self.dir.join("forwards").join(format!("{ip}.json"))
    }

    fn replay_forwards(&self) -> Result<()> {
        for entry in std::fs::read_dir(self.dir.join("forwards")).into_iter().flatten() {
            let path = entry?.path();
            let Some(ip) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<Ipv4Addr>().ok()) else { continue };
            let record: ForwardsRecord = serde_json::from_slice(&std::fs::read(&path)?)
                .with_context(|| format!("cannot read the forwards record {}", path.display()))?;
            // One machine's port now taken elsewhere must not block another machine's up.
            if let Err(e) = self.sync_forwards(&record.machine, ip, &record.forwards) {
                tracing::warn!("{e:#}");
            }
        }
        Ok(())
    }

    /// Starts slirp4netns in its own session (it outlives this command) and waits
    /// until it reports its tap device ready.
    fn start_slirp(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        let socket = self.api_socket();
        let _ = std::fs::remove_file(&socket);
        let log_path = self.dir.join("slirp.log");
        let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
        let (ready_read, ready_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::Host { doing: "create a pipe for slirp4netns".into(), cause: e.into() })?;
        let write_fd = ready_write.as_raw_fd();
        // --enable-seccomp narrows slirp4netns's syscalls; --enable-sandbox is left out:
        // with it, the namespaces could no longer be entered on this host (EINVAL, seen
        // when they were `ip netns`'s).
        let cidr = format!("{}/24", Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 0));
        let slirp = Process::new("slirp4netns")
            .args([&format!("--mtu={MTU}"), "--disable-host-loopback", "--enable-seccomp", "--ready-fd=3", "--cidr", &cidr, "--api-socket"])
            .arg(&socket)
            .arg("--netns-type=path")
            .arg(self.netns.path())
            .arg(TAP)
            .doing(format!("attaching to network namespace {}", self.netns.path().display()))
            .output_to(&log)?;
        // SAFETY: only async-signal-safe calls between fork and exec.
        let slirp = unsafe {
            slirp.pre_exec(move || {
                libc::setsid();
                // fd 3 becomes the ready pipe, inherited across exec (dup2 clears CLOEXEC).
                let ok = if write_fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(write_fd, 3) };
                if ok < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let child = slirp.spawn()?;
        drop(ready_write);
        // Recorded at once, so an `up` killed while waiting leaves no unknown slirp4netns.
        self.slirp().write(child.id())?;
        let ready = crate::process::wait_readable(ready_read.as_raw_fd(), Duration::from_secs(10)) && {
            let mut byte = [0u8; 1];
            std::fs::File::from(ready_read).read(&mut byte).is_ok_and(|n| n == 1)
        };
        if !ready {
            crate::process::stop(child.id());
            self.slirp().remove();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(Error::SlirpNotReady { netns: self.netns.path().display().to_string(), log: crate::process::frame(&log) }.into());
        }
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict the slirp4netns API socket {}", socket.display()))?;
        Ok(())
    }

    /// Whether any machine is on the bridge (a container's veth or a VM's tap; slirp's
    /// own tap0 does not count).
    fn in_use(&self) -> Result<bool> {
        if !self.netns.exists()? {
            return Ok(false);
        }
        // One read of the links answers both; a namespace that cannot be read is unused.
        let Ok(links) = super::netlink::links(self.netns.path()) else { return Ok(false) };
        let Some(bridge) = links.iter().find(|l| l.name == BRIDGE) else { return Ok(false) };
        Ok(links.iter().any(|l| l.master == Some(bridge.index) && l.name != TAP))
    }

    /// Tears the project network down once no machine is on it.
    pub fn release(&self) -> Result<()> {
        let _one_at_a_time = CHANGING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !self.in_use()? {
            self.teardown()?;
        }
        Ok(())
    }

    /// Opens tap device `name` inside the project's namespace and puts it on the
    /// bridge; the returned descriptor is the tap's only holder, so the device goes
    /// away when its last holder (the VM's QEMU) exits. Opened from a thread that
    /// entered the namespace: /dev/net/tun makes the device in the opener's namespace.
    pub fn open_tap(&self, name: &str) -> Result<OwnedFd> {
        let netns = self.netns.path();
        let tap = std::thread::scope(|scope| {
            scope.spawn(|| -> Result<OwnedFd> {
                let ns = std::fs::File::open(netns).with_context(|| format!("cannot open network namespace {}", netns.display()))?;
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("cannot enter network namespace {}", netns.display()))?;
                tun_open(name)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread opening tap {name} panicked"))?
        })?;
        let changes = Changes::in_namespace(netns)?;
        changes.join_bridge(name, MTU, BRIDGE)?;
        Ok(tap)
    }

    /// Stops slirp4netns and removes the namespace (and with it the bridge).
    fn teardown(&self) -> Result<()> {
        if let Some(pid) = self.slirp_pid() {
            crate::process::stop(pid);
        }
        self.slirp().remove();
        self.netns.delete()?;
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).with_context(|| format!("cannot remove {}", self.dir.display()))?;
        }
        Ok(())
    }

    /// One request to slirp4netns's JSON API; its `return` value (list_hostfwd answers
    /// without one: then the whole reply), or its error as ours.
    fn api(&self, request: serde_json::Value) -> Result<serde_json::Value> {
        let socket = self.api_socket();
        let mut stream = UnixStream::connect(&socket)
            .with_context(|| format!("cannot reach slirp4netns at {}; run `envy up` to restart the project network", socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request.to_string().as_bytes())?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        let value: serde_json::Value =
            serde_json::from_str(&reply).with_context(|| format!("slirp4netns sent a reply envy cannot read: {reply}"))?;
        if let Some(error) = value.get("error") {
            bail!("slirp4netns refused {}: {error}", request["execute"]);
        }
        Ok(value.get("return").cloned().unwrap_or(value))
    }

    fn forwards(&self) -> Result<Vec<HostForward>> {
        let ret = self.api(json!({"execute": "list_hostfwd"}))?;
        Ok(serde_json::from_value(ret.get("entries").cloned().unwrap_or_else(|| json!([])))?)
    }

    /// Makes slirp's forwards to `ip` exactly `wanted`.
    pub fn sync_forwards(&self, machine: &str, ip: Ipv4Addr, wanted: &[Forward]) -> Result<()> {
        let guest = ip.to_string();
        let current: Vec<HostForward> = self.forwards()?.into_iter().filter(|f| f.guest_addr == guest).collect();
        let same = |f: &HostForward, w: &Forward| {
            f.proto == w.protocol.as_str() && f.host_addr == w.host_ip.to_string() && f.host_port == w.host_port && f.guest_port == w.guest_port
        };
        for stale in current.iter().filter(|f| !wanted.iter().any(|w| same(f, w))) {
            self.api(json!({"execute": "remove_hostfwd", "arguments": {"id": stale.id}}))?;
        }
        for forward in wanted.iter().filter(|w| !current.iter().any(|f| same(f, w))) {
            self.add_forward(machine, ip, forward)?;
        }
        let record = ForwardsRecord { machine: machine.to_string(), forwards: wanted.to_vec() };
        crate::fsutil::write_atomic(&self.forwards_record(ip), &serde_json::to_vec(&record)?)
    }

    /// Adds one forward to `ip` beside the others (`forward_auto`'s watcher). Not kept in
    /// the forwards record: the watcher that added it owns it.
    pub fn add_forward(&self, machine: &str, ip: Ipv4Addr, forward: &Forward) -> Result<()> {
        let request = json!({"execute": "add_hostfwd", "arguments": {
            "proto": forward.protocol.as_str(),
            "host_addr": forward.host_ip.to_string(),
            "host_port": forward.host_port,
            "guest_addr": ip.to_string(),
            "guest_port": forward.guest_port,
        }});
        self.api(request).map(drop).map_err(|e| {
            Error::ForwardFailed {
                host_ip: forward.host_ip,
                host_port: forward.host_port,
                machine: machine.to_string(),
                guest_port: forward.guest_port,
                protocol: forward.protocol.as_str(),
                cause: format!("{e:#}"),
            }
            .into()
        })
    }

    /// Removes the one forward to `ip` that `add_forward` made (none left is no error).
    pub fn remove_forward(&self, ip: Ipv4Addr, forward: &Forward) -> Result<()> {
        let guest = ip.to_string();
        let matching = self.forwards()?.into_iter().filter(|f| {
            f.guest_addr == guest && f.proto == forward.protocol.as_str() && f.host_port == forward.host_port && f.guest_port == forward.guest_port
        });
        for f in matching {
            self.api(json!({"execute": "remove_hostfwd", "arguments": {"id": f.id}}))?;
        }
        Ok(())
    }

    /// Removes every forward to `ip` (nothing to do when slirp is gone).
    pub fn remove_forwards(&self, ip: Ipv4Addr) -> Result<()> {
        let _ = std::fs::remove_file(self.forwards_record(ip));
        if self.slirp_pid().is_none() {
            return Ok(());
        }
        let guest = ip.to_string();
        for forward in self.forwards()?.into_iter().filter(|f| f.guest_addr == guest) {
            self.api(json!({"execute": "remove_hostfwd", "arguments": {"id": forward.id}}))?;
        }
        Ok(())
    }
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (40 bytes in all).
#[repr(C)]
struct TunRequest {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens (creating) tap device `name` in the calling thread's network namespace.
fn tun_open(name: &str) -> Result<OwnedFd> {
    let tun = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open("/dev/net/tun")
        .context("cannot open /dev/net/tun to make the VM's tap device; load the tun module (`modprobe tun`)")?;
    let mut request = TunRequest { name: [0; libc::IFNAMSIZ], flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short, _pad: [0; 22] };
    if name.len() >= libc::IFNAMSIZ {
        bail!("tap name {name} is longer than {} bytes", libc::IFNAMSIZ - 1);
    }
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads one ifreq-sized struct that lives for the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &request as *const TunRequest) } < 0 {
        bail!(Error::TapDevice { name: name.to_string(), cause: std::io::Error::last_os_error() });
    }
    Ok(OwnedFd::from(tun))
}


