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
        crate::fsutil::read_record(&Self::path(machine_dir))
    }

    pub fn save(&self, machine_dir: &Path) -> Result<()> {
        crate::fsutil::write_record(&Self::path(machine_dir), self)
    }
}

impl crate::fsutil::Record for MachineRecord {
    const VERSION: u32 = VERSION;
    const REMEDY: &'static str = "`envy destroy` removes the machine and its record";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_or_foreign_record_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        assert!(MachineRecord::load(dir.path()).unwrap().is_none());
        let record = MachineRecord {
            version: VERSION,
            name: "web".into(),
            provider: crate::model::ProviderKind::new("container"),
            box_digest: "0".repeat(64),
            created: 1,
            forwards: Vec::new(),
            provisioned: true,
        };
        record.save(dir.path()).unwrap();
        assert_eq!(MachineRecord::load(dir.path()).unwrap().unwrap().name, "web");
        let path = MachineRecord::path(dir.path());
        for (bytes, problem) in [
            ("{\"version\": 1, \"name\": ", "is damaged"),
            ("{\"version\": 9}", "was written by a newer envy (format 9; this envy reads 1)"),
            ("{\"name\": \"web\"}", "has no format version"),
        ] {
            std::fs::write(&path, bytes).unwrap();
            let err = MachineRecord::load(dir.path()).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(problem) && text.ends_with("`envy destroy` removes the machine and its record"), "{text}");
            assert_eq!(crate::error::exit_code(&err), crate::error::code::STATE);
        }
    }
}
