//! Boxes: base images fetched, verified and kept content-addressed.
//! (Skeleton: the box-pipeline work fills in download, store, archive, catalog, build.)

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::context::Home;
use crate::envfile::{BoxRef, ProviderKind};
use crate::ui::Ui;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Other(String),
}

/// The box's `box.toml` (docs/box-format.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version (1).
    pub format: u32,
    pub name: String,
    pub version: String,
    /// CPU architecture, as `uname -m` says (x86_64).
    pub arch: String,
    /// Providers the box can be run on.
    pub providers: Vec<ProviderKind>,
    pub container: Option<ContainerPayload>,
    pub qemu: Option<QemuPayload>,
    /// sha256 (hex) of every payload file, by file name.
    pub files: std::collections::BTreeMap<String, String>,
}

/// What a container needs: a root filesystem tarball.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerPayload {
    /// File name of the rootfs tarball (tar, optionally gzip/zstd/xz).
    pub rootfs: String,
}

/// What a VM needs: a disk and how to boot it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuPayload {
    /// File name of the qcow2 disk (the machines' backing file).
    pub disk: String,
    pub boot: BootMethod,
    /// Kernel, initrd and command line for `boot = "kernel"`.
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMethod {
    /// The disk's own bootloader (stock cloud images).
    Firmware,
    /// QEMU loads the box's kernel and initrd directly.
    Kernel,
}

/// Where to get a box.
#[derive(Debug, Clone)]
pub struct BoxSource {
    pub reference: BoxRef,
    pub insecure: bool,
    pub catalog: Option<String>,
}

/// A verified box in the store.
#[derive(Debug, Clone)]
pub struct StoredBox {
    pub digest: String,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl StoredBox {
    /// Path of a payload file in the store.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The unpacked root filesystem (container boxes), the overlay's lower layer.
    pub fn rootfs(&self) -> anyhow::Result<PathBuf> {
        Ok(self.dir.join("rootfs"))
    }
}

pub struct Store {
    pub home: Home,
}

impl Store {
    pub fn open(home: &Home) -> anyhow::Result<Store> {
        Ok(Store { home: home.clone() })
    }
    /// Makes sure the box is in the store (fetching and verifying it) and returns it.
    pub fn ensure(&self, _source: &BoxSource, _ui: &Ui) -> anyhow::Result<StoredBox> {
        Err(Error::Other("box store not built yet".into()).into())
    }
    /// A stored box by digest, re-hashed first if its files changed since verification.
    pub fn get(&self, _digest: &str) -> anyhow::Result<StoredBox> {
        Err(Error::Other("box store not built yet".into()).into())
    }
}
