//! A machine's record in `<state dir>/machines/<name>/machine.json`: what envy decided
//! for it (box digest, provider, final ports). Whether it runs is never read from
//! here; providers ask the processes.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::model::{Forward, ProviderKind};

/// Format version of the record; bumped on incompatible change.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineRecord {
    pub version: u32,
    pub name: String,
    pub provider: ProviderKind,
    /// sha256 of the box the machine was created from.
    pub box_digest: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Forwards with the host ports in use.
    pub forwards: Vec<Forward>,
    /// Whether first-boot provisioning completed.
    pub provisioned: bool,
}

impl MachineRecord {
    pub fn path(machine_dir: &Path) -> PathBuf {
        machine_dir.join("machine.json")
    }

    /// The record, or None when the machine was never created.
    pub fn load(machine_dir: &Path) -> Result<Option<MachineRecord>> {
        let path = Self::path(machine_dir);
        let Some(bytes) = crate::fsutil::read_private(&path)? else { return Ok(None) };
        let record: MachineRecord = serde_json::from_slice(&bytes).map_err(|e| super::Error::BadRecord {
            path: path.clone(),
            message: format!("unreadable ({e}); `envy destroy` removes it"),
        })?;
        if record.version != VERSION {
            return Err(super::Error::BadRecord {
                path,
                message: format!(
                    "written by another envy (record version {}, this envy reads {VERSION})",
                    record.version
                ),
            }
            .into());
        }
        Ok(Some(record))
    }

    pub fn save(&self, machine_dir: &Path) -> Result<()> {
        crate::fsutil::write_atomic(&Self::path(machine_dir), &serde_json::to_vec_pretty(self)?)
    }
}
