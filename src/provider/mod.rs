//! The one interface every way of running a machine implements. Commands talk only
//! to `Provider`; `container` (runc) and `qemu` (QEMU/KVM) hide their differences.

pub mod container;
pub mod lxd;
pub mod network;
pub mod qemu;
pub mod tool;

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use crate::boxes::StoredBox;
use crate::envfile::ProviderKind;
use crate::plan::MachinePlan;
use crate::ui::Ui;

/// A provider failed, or the host lacks something it needs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host tool is missing; `advice` says how to install it.
    #[error("{tool} is not installed or not on PATH: {advice}")]
    MissingTool { tool: String, advice: String },
    /// A host tool ran and failed; its stderr tail is framed in the message.
    #[error("{tool} failed ({status}) while {doing}:\n{stderr}")]
    ToolFailed { tool: String, doing: String, status: String, stderr: String },
    /// The machine did not become ready in time; `detail` holds what was seen (console tail).
    #[error("machine {machine} did not become ready within {seconds} s: {detail}")]
    NotReady { machine: String, seconds: u64, detail: String },
    /// Anything else, as a full sentence saying what to do.
    #[error("{0}")]
    Other(String),
}

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
pub trait Provider {
    fn kind(&self) -> ProviderKind;

    /// Creates the machine if it does not exist and starts it; returns once it accepts
    /// `exec`. Safe to call in any state, including after a crash or a killed `envy up`.
    fn up(&self, machine: &MachinePlan, stored: &StoredBox, ui: &Ui) -> Result<()>;

    /// The machine's state, from its processes.
    fn state(&self, machine: &MachinePlan) -> Result<MachineState>;

    /// Extra facts for status output.
    fn info(&self, machine: &MachinePlan) -> Result<MachineInfo>;

    /// Runs a command and returns its exit code; stdio is passed through.
    fn exec(&self, machine: &MachinePlan, request: &ExecRequest) -> Result<i32>;

    /// An interactive login shell; returns its exit code.
    fn shell(&self, machine: &MachinePlan) -> Result<i32>;

    /// Stops the machine, keeping its disk or layer. Graceful unless `force`.
    fn halt(&self, machine: &MachinePlan, force: bool, ui: &Ui) -> Result<()>;

    /// Removes every trace of the machine on the host (processes, mounts, network,
    /// disks, keys) except its record dir, which the caller removes.
    fn destroy(&self, machine: &MachinePlan, ui: &Ui) -> Result<()>;

    /// Saves a snapshot; with `replace` one of the same name is replaced.
    fn snapshot_save(&self, machine: &MachinePlan, name: &str, replace: bool, ui: &Ui) -> Result<SnapshotInfo>;
    fn snapshot_restore(&self, machine: &MachinePlan, name: &str, ui: &Ui) -> Result<()>;
    fn snapshot_list(&self, machine: &MachinePlan) -> Result<Vec<SnapshotInfo>>;
    fn snapshot_delete(&self, machine: &MachinePlan, name: &str) -> Result<()>;

    /// Writes the machine's current state as box payload files into `dir`
    /// (a flattened disk, or a rootfs tarball) and returns their names.
    fn export(&self, machine: &MachinePlan, stored: &StoredBox, dir: &std::path::Path, ui: &Ui) -> Result<Vec<PathBuf>>;

    /// Writes what `envy share --push` makes an OCI image of into `dir`.
    fn export_image(&self, machine: &MachinePlan, stored: &StoredBox, dir: &std::path::Path, ui: &Ui) -> Result<ImageExport>;
}

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
        Err(Error::Other(format!(
            "snapshot name {name:?} is not valid: use 1-64 letters, digits, '.', '_' or '-', \
             not starting with '.' and not only digits"
        )))
    }
}

/// The provider for a kind.
pub fn for_kind(kind: ProviderKind) -> Box<dyn Provider> {
    match kind {
        ProviderKind::Container => Box::new(container::ContainerProvider::new()),
        ProviderKind::Qemu => Box::new(qemu::QemuProvider::new()),
        ProviderKind::Lxd => Box::new(lxd::LxdProvider::new()),
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
