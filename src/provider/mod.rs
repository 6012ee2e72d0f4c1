//! The one interface every way of running a machine implements, and the registry
//! that maps a provider's name to it. Commands talk only to `Provider`; `container`
//! (runc) and `qemu` (QEMU/KVM) hide their differences. A new provider is a module
//! implementing the trait plus one line in `BUILT_IN` (docs/architecture.md, "Adding
//! a provider").

pub mod container;
mod error;
pub mod host;
pub mod lxd;
pub mod netlink;
pub mod network;
pub mod qemu;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use anyhow::Result;
use serde::Serialize;

use crate::boxes::StoredBox;
use crate::envfile::{Invalid, MachineSpec};
use crate::model::{BoxFormat, Forward, HostCheck, ProviderKind};
use crate::plan::MachinePlan;
use crate::ui::Ui;

pub use error::Error;

/// What the provider sees of a machine right now (from its processes, not a record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachineState {
    /// Nothing of the machine exists yet (or it was destroyed).
    NotCreated,
    /// Created but not running (halted, or its process died).
    Stopped,
    /// Running and accepting commands.
    Running,
}

impl std::fmt::Display for MachineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MachineState::NotCreated => "not created",
            MachineState::Stopped => "stopped",
            MachineState::Running => "running",
        })
    }
}

/// A command to run inside a machine.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub command: Vec<String>,
    /// Give the command a terminal (stdin/stdout are the user's terminal).
    pub tty: bool,
    /// Working directory inside the machine (default: an image box's WorkingDir, else
    /// the first sync folder, else /).
    pub workdir: Option<String>,
    /// Extra environment on top of the machine's own.
    pub env: Vec<(String, String)>,
    /// Run as root even when the box's image config names another user
    /// (provisioning is root's, as documented in docs/envfile.md).
    pub as_root: bool,
    /// A host file streamed to the command's stdin instead of the caller's (a tar that
    /// `tar -x` unpacks inside the machine: envy never writes into a guest's files from
    /// the host).
    pub stdin: Option<PathBuf>,
}

/// One saved snapshot of a machine.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    pub name: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Bytes the snapshot holds on disk.
    pub size: u64,
    /// Whether memory and device state are included (a running VM's snapshot).
    pub memory: bool,
}

/// Provider-specific facts for `envy status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MachineInfo {
    /// Address of the machine inside its project network, if it has one.
    pub ip: Option<String>,
    /// Host port of the machine's SSH server (qemu).
    pub ssh_port: Option<u16>,
    /// Main process id on the host (QEMU, or the container's init).
    pub pid: Option<u32>,
    /// Last lines of the machine's console or log, shown when it died.
    pub log_tail: Option<String>,
    /// How each sync folder reached the guest at the last start ("virtiofs" or "9p"),
    /// in Envfile order; empty for containers (bind mounts).
    pub sync_transport: Vec<String>,
    /// The cluster member an lxd machine runs on, with its state when it is not online
    /// ("node2 (evacuated)").
    pub location: Option<String>,
}

/// Runs machines of one kind. Every method re-reads the truth from the host first.
/// What a provider cannot do has a default that says so (`Error::Unsupported`).
pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// The box payload this provider boots.
    fn box_format(&self) -> BoxFormat;

    /// Checks a machine's Envfile settings against what this provider can do, when
    /// the Envfile loads (not when the setting is first used). The error names the
    /// key, which the caller turns into file:line:column.
    fn validate(&self, _spec: &MachineSpec) -> Result<(), Invalid> {
        Ok(())
    }

    /// What the host must have for this provider (tools, kernel features), for
    /// `envy doctor`; `envy up` stops at the first failed one.
    fn host_checks(&self) -> Vec<HostCheck> {
        Vec::new()
    }

    /// Checks of what the provider reaches beyond this host (an LXD remote: reachable,
    /// trusted, its API, its cluster members), for `envy doctor` only: they take the
    /// network, so `envy up` does not run them.
    fn remote_checks(&self, _home: &crate::state::Home) -> Vec<HostCheck> {
        Vec::new()
    }

    /// Whether a machine may name where it runs (`remote`, `target`): a provider that
    /// reaches other hosts (an LXD/Incus cluster) says yes; one that runs machines on
    /// this host is refused them when the Envfile loads.
    fn accepts_placement(&self) -> bool {
        false
    }

    /// Whether its machines take `sync_mode = "copy"` folders (pushed in through `exec`
    /// at each start and `envy provision`, by lifecycle) beside mounted ones; a
    /// provider that mounts every sync folder is refused them when the Envfile loads.
    fn copies_sync(&self) -> bool {
        false
    }

    /// Whether the machine's forwards listen on this host, so `envy up` checks their
    /// ports first and moves an `auto` one (a remote provider's do not).
    fn forwards_on_host(&self) -> bool {
        true
    }

    /// Creates the machine if it does not exist and starts it; returns once it accepts
    /// `exec`. Safe to call in any state, including after a crash or a killed `envy up`.
    fn up(&self, machine: &MachinePlan, stored: &StoredBox, ui: &Ui) -> Result<()>;

    /// The machine's state, from its processes.
    fn state(&self, machine: &MachinePlan) -> Result<MachineState>;

    /// Extra facts for status output.
    fn info(&self, _machine: &MachinePlan) -> Result<MachineInfo> {
        Ok(MachineInfo::default())
    }

    /// Runs a command and returns its exit code; stdio is passed through.
    fn exec(&self, machine: &MachinePlan, request: &ExecRequest) -> Result<i32>;

    /// An interactive login shell; returns its exit code.
    fn shell(&self, machine: &MachinePlan) -> Result<i32> {
        let request = ExecRequest { command: vec!["/bin/sh".into(), "-l".into()], tty: true, ..ExecRequest::default() };
        self.exec(machine, &request)
    }

    /// Stops the machine, keeping its disk or layer. Graceful unless `force`.
    fn halt(&self, machine: &MachinePlan, force: bool, ui: &Ui) -> Result<()>;

    /// Removes every trace of the machine on the host (processes, mounts, network,
    /// disks, keys) except its record dir, which the caller removes.
    fn destroy(&self, machine: &MachinePlan, ui: &Ui) -> Result<()>;

    /// Saves a snapshot; with `replace` one of the same name is replaced.
    fn snapshot_save(&self, _machine: &MachinePlan, _name: &str, _replace: bool, _ui: &Ui) -> Result<SnapshotInfo> {
        Err(self.unsupported("take snapshots"))
    }
    fn snapshot_restore(&self, _machine: &MachinePlan, _name: &str, _ui: &Ui) -> Result<()> {
        Err(self.unsupported("restore snapshots"))
    }
    fn snapshot_list(&self, _machine: &MachinePlan) -> Result<Vec<SnapshotInfo>> {
        Err(self.unsupported("list snapshots"))
    }
    fn snapshot_delete(&self, _machine: &MachinePlan, _name: &str) -> Result<()> {
        Err(self.unsupported("delete snapshots"))
    }

    /// Hands `pack` the machine's current state as box payloads, by their names in the
    /// box (`envy share`): files written into `dir` (a flattened disk, a rootfs tarball)
    /// or its root filesystem as a tree. The machine is held as it is (halted or frozen)
    /// while `pack` runs, which reads each payload once (boxes::pack_box).
    fn export(&self, _machine: &MachinePlan, _stored: &StoredBox, _dir: &Path, _ui: &Ui, _pack: &mut ExportPack<'_>) -> Result<()> {
        Err(self.unsupported("export a machine as a box"))
    }

    /// Writes what `envy share --push` makes an OCI image of into `dir`.
    fn export_image(&self, _machine: &MachinePlan, _stored: &StoredBox, _dir: &Path, _ui: &Ui) -> Result<ImageExport> {
        Err(self.unsupported("export a machine as an OCI image"))
    }

    /// What `forward_auto`'s watcher (autoforward.rs) needs of a running machine: its
    /// listening ports, and host forwards to them. Made once per watcher, so whatever
    /// finding the machine costs is paid once, not at every look.
    fn guest_ports(&self, _machine: &MachinePlan) -> Result<Box<dyn GuestPorts>> {
        Err(self.unsupported("forward ports automatically (forward_auto); declare the machine's ports with `forward`"))
    }

    /// The error for something this provider does not do.
    fn unsupported(&self, what: &'static str) -> anyhow::Error {
        Error::Unsupported { provider: self.kind(), what }.into()
    }
}

/// A running machine's ports as `forward_auto` sees them. Everything read from the
/// machine is the guest's doing: bounded, parsed strictly, an error rather than a panic.
pub trait GuestPorts {
    /// The TCP ports listening in the machine on an address a host forward reaches
    /// (see `forwardable`).
    fn listening(&mut self) -> Result<BTreeSet<u16>>;

    /// Forwards `forward.host_ip:host_port` on the host to `guest_port` in the machine,
    /// beside the declared forwards.
    fn add_forward(&mut self, forward: &Forward) -> Result<()>;

    /// Removes a forward `add_forward` made.
    fn remove_forward(&mut self, forward: &Forward) -> Result<()>;
}

/// Whether a socket listening on `addr` in a machine takes connections a host forward
/// brings: forwards arrive on the machine's own IPv4 address (slirp4netns and QEMU's
/// user-mode network alike), so a wildcard or a non-loopback IPv4 address (or its
/// IPv4-mapped form) does, and 127.0.0.1, ::1 and other IPv6 addresses do not.
pub fn forwardable(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => !v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.to_ipv4_mapped().is_some_and(|v4| !v4.is_loopback()),
    }
}

/// A provider's entry in the registry: its name and how to make one.
#[derive(Clone, Copy)]
pub struct Registration {
    pub kind: ProviderKind,
    /// A few words for `envy init`'s choice ("OCI containers: start in milliseconds").
    pub summary: &'static str,
    pub make: fn() -> Box<dyn Provider>,
}

/// The providers envy ships, the first being the default for machines that name
/// none (and that the user's config does not set).
const BUILT_IN: &[Registration] = &[container::REGISTRATION, qemu::REGISTRATION, lxd::REGISTRATION];

/// Providers registered at run time by code that links envy as a library (the test
/// suite's own provider).
static REGISTERED: RwLock<Vec<Registration>> = RwLock::new(Vec::new());

/// Adds a provider; a later registration of a name replaces an earlier one.
pub fn register(registration: Registration) {
    let mut added = REGISTERED.write().unwrap_or_else(|e| e.into_inner());
    added.retain(|r| r.kind != registration.kind);
    added.push(registration);
}

/// Every provider this envy has, built-in ones first.
pub fn registered() -> Vec<Registration> {
    let added = REGISTERED.read().unwrap_or_else(|e| e.into_inner());
    BUILT_IN.iter().filter(|b| !added.iter().any(|a| a.kind == b.kind)).chain(added.iter()).copied().collect()
}

/// `--provider NAME` on the command line: one of the registered names.
pub fn name_parser() -> impl clap::builder::TypedValueParser<Value = ProviderKind> {
    use clap::builder::TypedValueParser as _;
    let names: Vec<&'static str> = registered().iter().map(|r| r.kind.as_str()).collect();
    clap::builder::PossibleValuesParser::new(names).map(|name| ProviderKind::named(&name))
}

/// The provider for machines whose Envfile and config name none.
pub fn default_kind() -> ProviderKind {
    BUILT_IN[0].kind
}

/// The provider for a kind.
pub fn for_kind(kind: ProviderKind) -> Result<Box<dyn Provider>, Error> {
    match registered().into_iter().find(|r| r.kind == kind) {
        Some(r) => Ok((r.make)()),
        None => Err(Error::UnknownProvider {
            name: kind.to_string(),
            known: registered().iter().map(|r| r.kind.as_str()).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// Checks every machine of an Envfile against its provider, as Lima's validate
/// does at load: an unknown provider or a setting the provider cannot honour is an
/// error at the key that asks for it.
pub fn validate(envfile: &crate::envfile::Envfile) -> Result<(), crate::envfile::Error> {
    for spec in &envfile.machines {
        let provider = for_kind(spec.provider).map_err(|e| envfile.invalid(&spec.name, Invalid::new("provider", e.to_string())))?;
        if !provider.accepts_placement() {
            for (key, value) in [("remote", &spec.placement.remote), ("target", &spec.placement.target)] {
                if let Some(name) = value {
                    let message = format!(
                        "{key} = {name:?} places a machine on another host, but the {} provider runs machines on this one; \
                         set a provider that places machines (lxd) or remove `{key}`",
                        spec.provider
                    );
                    return Err(envfile.invalid(&spec.name, Invalid::new(key, message)));
                }
            }
        }
        if !provider.copies_sync() && spec.sync.iter().any(|f| f.mode == crate::envfile::SyncMode::Copy) {
            let message = format!(
                "sync_mode = \"copy\" pushes folders into a machine on another host; the {} provider mounts this host's folders: \
                 remove `sync_mode` (or the folder's `mode`)",
                spec.provider
            );
            return Err(envfile.invalid(&spec.name, Invalid::new("sync_mode", message)));
        }
        provider.validate(spec).map_err(|invalid| envfile.invalid(&spec.name, invalid))?;
    }
    Ok(())
}

/// What `Provider::export` hands the payloads to (`envy share`'s box writer).
pub type ExportPack<'a> = dyn FnMut(&BTreeMap<String, crate::boxes::Payload>) -> Result<()> + 'a;

/// A machine's state as an OCI image's content.
#[derive(Debug)]
pub enum ImageExport {
    /// The machine's own changes over its box, as one uncompressed layer tar.
    Layer(PathBuf),
    /// The machine's whole disk (qcow2), for a KubeVirt containerDisk.
    Disk(PathBuf),
}

/// Snapshot names become file names, QMP job ids and qemu-img arguments: 1-64 of
/// letters, digits, `.`, `_`, `-`, not starting with `.`, and not only digits (QEMU
/// reads those as snapshot ids).
pub fn check_snapshot_name(name: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !name.bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidSnapshotName { name: name.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::check_snapshot_name;

    #[test]
    fn snapshot_names_are_checked() {
        for good in ["a", "before-upgrade", "v1.2_x", "1a", &"a".repeat(64)] {
            assert!(check_snapshot_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "..", "123", &"a".repeat(65), "é"] {
            let err = check_snapshot_name(bad).unwrap_err().to_string();
            assert!(err.contains("is not valid"), "{bad}: {err}");
        }
    }
}
