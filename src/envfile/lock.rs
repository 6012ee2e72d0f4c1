//! Envfile.lock: pins each machine's box to the sha256 that arrived the first time,
//! like Cargo.lock. Written by `envy up`, committed by users, honored ever after.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Error;

/// The lock file's name, beside the Envfile.
pub const FILE_NAME: &str = "Envfile.lock";
/// Format version written into the file.
pub const VERSION: u32 = 1;

/// A machine's pinned box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedBox {
    /// The box as the Envfile names it (catalog name, URL or path).
    pub source: String,
    /// sha256 (hex) of the box file that was verified (for an `oci://` image: of the
    /// platform manifest that was picked).
    pub sha256: String,
    /// For an `oci://` image whose reference named an index (multi-platform): the
    /// index's sha256 at the time of pinning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// For a catalog or `vagrant://` box: the URL it was fetched from, so a host without it in its
    /// store fetches those bytes again, not whatever upstream offers today.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// For a catalog or `vagrant://` box: the digest upstream published for it
    /// (`sha512:HEX` from Debian's SHA512SUMS, `sha256:HEX`, …), what `envy box
    /// outdated` compares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub version: u32,
    /// Machine name → its pinned box.
    #[serde(default, rename = "machine")]
    pub machines: BTreeMap<String, LockedBox>,
}

impl LockFile {
    pub fn path_for(project_dir: &Path) -> PathBuf {
        project_dir.join(FILE_NAME)
    }

    /// Reads the lock; a missing file is an empty lock.
    pub fn load(path: &Path) -> Result<LockFile, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LockFile { version: VERSION, machines: BTreeMap::new() })
            }
            Err(source) => return Err(Error::Read { path: path.into(), source }),
        };
        let lock: LockFile = toml::from_str(&text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| super::parse::line_col(&text, s.start))
                .unwrap_or((1, 1));
            Error::At { path: path.into(), line, column, message: format!("{}; delete the file to re-pin every box", e.message()) }
        })?;
        if lock.version != VERSION {
            return Err(Error::Lock {
                path: path.into(),
                message: format!("lock format version {} is not one this envy reads ({VERSION})", lock.version),
            });
        }
        Ok(lock)
    }

    /// Writes the lock atomically, with a header saying what it is.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let body = toml::to_string_pretty(self)?;
        let text = format!(
            "# Written by envy: each machine's box pinned to the digest that was verified.\n\
             # Commit this file; `envy up` on any host then gets byte-identical boxes.\n{body}"
        );
        crate::fsutil::write_atomic(path, text.as_bytes())?;
        crate::fsutil::give_to_invoking_user(path)
    }

    /// Every digest the lock pins.
    pub fn digests(&self) -> impl Iterator<Item = &str> {
        self.machines.values().map(|b| b.sha256.as_str())
    }
}
