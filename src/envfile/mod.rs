//! The Envfile: a project's declaration of its machines (TOML), read strictly —
//! every error points at file:line:column and the key — and the Envfile.lock that
//! pins each machine's box to a digest.

pub mod cloud_config;
mod error;
mod host;
pub mod lock;
mod parse;
mod render;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::Error;
use crate::model::{Accel, BoxRef, Forward, ProviderKind};
pub use parse::{find, load, parse_str, DEFAULT_MACHINE, DEFAULT_READY_TIMEOUT, MIN_DISK};

/// The file name envy looks for.
pub const FILE_NAME: &str = "Envfile";

/// A validated Envfile.
#[derive(Debug, Clone)]
pub struct Envfile {
    /// The Envfile's path.
    pub path: PathBuf,
    /// The folder holding it: the project.
    pub project_dir: PathBuf,
    /// Machines in the order the file declares them.
    pub machines: Vec<MachineSpec>,
    /// Line and column of each (machine, key) that decided a setting; the key ""
    /// is the machine's own table.
    keys: BTreeMap<(String, &'static str), (usize, usize)>,
}

impl Envfile {
    /// An Envfile made in code rather than read (no key has a place in a file).
    pub fn new(path: PathBuf, project_dir: PathBuf, machines: Vec<MachineSpec>) -> Envfile {
        Envfile { path, project_dir, machines, keys: BTreeMap::new() }
    }

    pub fn machine(&self, name: &str) -> Option<&MachineSpec> {
        self.machines.iter().find(|m| m.name == name)
    }

    /// The error for a setting found invalid after parsing (a provider's
    /// `validate`), at the place in the file where the key is written.
    pub fn invalid(&self, machine: &str, invalid: Invalid) -> Error {
        let place = |key: &'static str| self.keys.get(&(machine.to_string(), key)).copied();
        let (line, column) = place(invalid.key).or_else(|| place("")).unwrap_or((1, 1));
        Error::At { path: self.path.clone(), line, column, message: format!("machine {machine}: {}", invalid.message) }
    }
}

/// A machine setting its provider cannot honour: the Envfile key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The Envfile key (`user_data`, `forward_auto`, `provider`, …).
    pub key: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(key: &'static str, message: impl Into<String>) -> Invalid {
        Invalid { key, message: message.into() }
    }
}

/// One machine, with `[defaults]` applied.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineSpec {
    pub name: String,
    pub box_ref: BoxRef,
    pub provider: ProviderKind,
    pub cpus: u32,
    /// Bytes.
    pub memory: u64,
    /// Bytes; the VM disk size (qemu), grown from the box's.
    pub disk: Option<u64>,
    /// Forced acceleration for qemu (ENVY_ACCEL wins over it).
    pub accel: Option<Accel>,
    pub env: BTreeMap<String, String>,
    pub forwards: Vec<Forward>,
    pub sync: Vec<SyncFolder>,
    pub provision: Vec<ProvisionStep>,
    /// What must pass before the machine counts as up (`envy up`, `envy run` wait for it).
    pub ready: Option<Ready>,
    /// Forward each TCP port that starts listening in the machine (`forward_auto`).
    pub forward_auto: Option<AutoForward>,
    /// The user's cloud-config, merged into envy's NoCloud user-data (qemu only).
    pub user_data: Option<UserData>,
    /// Where an lxd machine runs (`remote`, `target`); empty for the other providers.
    pub placement: Placement,
}

/// `remote = "NAME"` and `target = "MEMBER"` of an lxd machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// A remote added with `envy remote add`; None is the local daemon's unix socket.
    pub remote: Option<String>,
    /// The cluster member to create the machine on; None lets the cluster choose.
    pub target: Option<String>,
}

/// A machine's own cloud-config (`user_data`), from a project file or inline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserData {
    /// A file in the project (absolute host path), read when the seed is written.
    File(PathBuf),
    /// Text given in the Envfile, starting with `#cloud-config`.
    Inline(String),
}

/// `forward_auto`: guest ports that start listening are forwarded to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoForward {
    /// The lowest guest port forwarded (1025 unless the Envfile allows lower).
    pub min_port: u16,
}

/// The lowest guest port `forward_auto` forwards when the Envfile does not say.
pub const AUTO_FORWARD_MIN_PORT: u16 = 1025;

/// A project folder made visible inside the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncFolder {
    /// Absolute host path.
    pub host: PathBuf,
    /// Absolute guest path.
    pub guest: String,
    pub readonly: bool,
    /// The host path may resolve outside the project (the Envfile says so).
    #[serde(default)]
    pub allow_outside: bool,
    /// Mounted, or pushed into the machine one way (`sync_mode = "copy"`).
    #[serde(default)]
    pub mode: SyncMode,
}

/// How a sync folder reaches the machine: `sync_mode` of a machine, `mode` of a folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Mounted from the host: both sides see each other's changes at once.
    #[default]
    Mount,
    /// Packed on the host and unpacked in the machine at each start and `envy provision`;
    /// what the machine changes stays in it (a remote daemon cannot mount this host's folders).
    Copy,
}

/// One provisioning step and when it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionStep {
    pub action: ProvisionAction,
    /// Also run on every `envy up` that starts the machine, not only the first
    /// (`run = "always"`, Vagrant's `run: "always"`).
    pub always: bool,
}

/// What a provisioning step runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProvisionAction {
    /// A shell command run with `sh -c`.
    Shell(String),
    /// A script file from the project (absolute host path), copied in and run.
    Script(PathBuf),
    /// A file or folder from the project (absolute host path), copied to `to` in the
    /// machine, owned by root; `mode` sets a file's permission bits.
    File { from: PathBuf, to: String, mode: Option<u32> },
}

/// When a machine counts as ready, as a compose healthcheck says when a service is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub check: ReadyCheck,
    /// How long `envy up` keeps probing before it gives up.
    pub timeout: Duration,
}

/// A readiness probe, run inside the machine (127.0.0.1 is the machine itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadyCheck {
    /// A shell command that exits 0 once the machine is ready.
    Command(String),
    /// Something listens on this TCP port.
    Tcp(u16),
    /// This URL answers with a 2xx status.
    Http(String),
}
