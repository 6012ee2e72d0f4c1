//! `box.toml`: what a box holds and how to run it (docs/box-format.md), read strictly
//! and checked against its payload, or generated for a raw upstream artifact.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Error;
use crate::model::BoxFormat;

/// The manifest's file name, first entry of every `.box` archive.
pub const FILE_NAME: &str = "box.toml";
/// The manifest format this envy writes and reads.
pub const FORMAT: u32 = 1;
/// Default kernel command line of boxes built for direct kernel boot.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 root=/dev/vda rw";

/// The box's `box.toml` (docs/box-format.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version (1).
    pub format: u32,
    pub name: String,
    pub version: String,
    /// CPU architecture, as `uname -m` says (x86_64).
    pub arch: String,
    /// Providers the box can be run on.
    pub providers: Vec<BoxFormat>,
    pub container: Option<ContainerPayload>,
    pub qemu: Option<QemuPayload>,
    /// sha256 (hex) of every payload file, by file name.
    pub files: BTreeMap<String, String>,
    /// A box pulled from an OCI registry: its blobs, as stored payload files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImagePayload>,
    /// The Envfile section of the machine a shared box was made from (`envy share`),
    /// so a teammate gets its forwards, sync folders and settings too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envfile: Option<String>,
}

/// What a container needs: a root filesystem tarball, or (left out) the layers of
/// the box's `[image]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerPayload {
    /// File name of the rootfs tarball (tar, optionally gzip/zstd/xz).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
}

/// The blobs of an OCI image (docs/box-format.md, "Boxes from OCI registries"). The
/// box digest is the sha256 of `manifest`, so every payload file's digest is also the
/// registry's name for that blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePayload {
    /// The image manifest, byte for byte as the registry served it.
    pub manifest: String,
    /// The image config (Env, WorkingDir, User, rootfs.diff_ids).
    pub config: String,
    /// The layer blobs as downloaded (compressed), bottom first.
    pub layers: Vec<String>,
}

/// What a VM needs: a disk and how to boot it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuPayload {
    /// File name of the qcow2 disk (the machines' backing file).
    pub disk: String,
    pub boot: BootMethod,
    /// Kernel, initrd and command line for `boot = "kernel"`.
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    /// How envy first gets into the guest: through its seed (the default), or as a
    /// Vagrant box's `vagrant` user (docs/box-format.md, "Vagrant boxes").
    #[serde(default, skip_serializing_if = "FirstLogin::is_seed")]
    pub first_login: FirstLogin,
}

/// How envy first gets into a VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirstLogin {
    /// The guest reads envy's seed (cloud-init or envy's agent) and authorizes root.
    #[default]
    Seed,
    /// Vagrant's contract: user `vagrant` with Vagrant's public insecure key and
    /// passwordless sudo; envy makes the machine's own key the only one over SSH.
    Vagrant,
}

impl FirstLogin {
    fn is_seed(&self) -> bool {
        *self == FirstLogin::Seed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMethod {
    /// The disk's own bootloader (stock cloud images).
    Firmware,
    /// QEMU loads the box's kernel and initrd directly.
    Kernel,
}

impl Manifest {
    /// Parses and validates `box.toml` text; `archive` names the box in errors.
    pub fn parse(text: &str, archive: &str) -> Result<Manifest, Error> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| Error::BadManifest {
            archive: archive.to_string(),
            reason: e.message().to_string(),
        })?;
        manifest.validate(archive)?;
        Ok(manifest)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a manifest always serializes")
    }

    /// Checks that the manifest is self-consistent: known format, payload names that
    /// are plain file names, every referenced file listed with a sha256.
    pub fn validate(&self, archive: &str) -> Result<(), Error> {
        let bad = |reason: String| Error::BadManifest { archive: archive.to_string(), reason };
        if self.format != FORMAT {
            return Err(bad(format!(
                "format {} is not one this envy reads ({FORMAT}); upgrade envy",
                self.format
            )));
        }
        if self.providers.is_empty() {
            return Err(bad("`providers` is empty".into()));
        }
        for (name, digest) in &self.files {
            if !is_plain_file_name(name) || name == FILE_NAME {
                return Err(bad(format!(
                    "payload file name `{name}` must be a plain file name (no `/`, not `..`, not box.toml)"
                )));
            }
            super::digest::parse_sha256(digest)
                .map_err(|_| bad(format!("files.{name} is not a sha256 hex digest")))?;
        }
        let listed = |field: &str, name: &str| {
            if self.files.contains_key(name) {
                Ok(())
            } else {
                Err(bad(format!("{field} names `{name}`, which `files` does not list with a sha256")))
            }
        };
        for kind in &self.providers {
            match kind {
                BoxFormat::Container if self.container.is_none() => {
                    return Err(bad("providers lists container but there is no [container] section".into()))
                }
                BoxFormat::Qemu if self.qemu.is_none() => {
                    return Err(bad("providers lists qemu but there is no [qemu] section".into()))
                }
                _ => {}
            }
        }
        if let Some(c) = &self.container {
            match (&c.rootfs, &self.image) {
                (Some(rootfs), None) => listed("container.rootfs", rootfs)?,
                (None, Some(_)) => {}
                _ => return Err(bad("a container box needs exactly one of container.rootfs and [image]".into())),
            }
        }
        if let Some(image) = &self.image {
            listed("image.manifest", &image.manifest)?;
            listed("image.config", &image.config)?;
            for layer in &image.layers {
                listed("image.layers", layer)?;
            }
        }
        if let Some(q) = &self.qemu {
            listed("qemu.disk", &q.disk)?;
            if let Some(k) = &q.kernel {
                listed("qemu.kernel", k)?;
            }
            if let Some(i) = &q.initrd {
                listed("qemu.initrd", i)?;
            }
            if q.boot == BootMethod::Kernel && q.kernel.is_none() {
                return Err(bad("qemu.boot is \"kernel\" but qemu.kernel is not set".into()));
            }
        }
        Ok(())
    }

    /// The manifest of a bare qcow2 disk image: booted by its own firmware.
    pub fn for_qcow2(name: &str, version: &str, file: &str, sha256: &str) -> Manifest {
        Manifest {
            format: FORMAT,
            name: name.to_string(),
            version: version.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            providers: vec![BoxFormat::Qemu],
            container: None,
            qemu: Some(QemuPayload {
                disk: file.to_string(),
                boot: BootMethod::Firmware,
                kernel: None,
                initrd: None,
                cmdline: None,
                first_login: FirstLogin::Seed,
            }),
            files: BTreeMap::from([(file.to_string(), sha256.to_string())]),
            image: None,
            envfile: None,
        }
    }

    /// The manifest of a Vagrant box's disk: booted by its own firmware, entered as
    /// Vagrant's `vagrant` user.
    pub fn for_vagrant_box(name: &str, version: &str, file: &str, sha256: &str) -> Manifest {
        let mut manifest = Manifest::for_qcow2(name, version, file, sha256);
        if let Some(qemu) = manifest.qemu.as_mut() {
            qemu.first_login = FirstLogin::Vagrant;
        }
        manifest
    }

    /// The manifest of a bare root filesystem tarball: a container box.
    pub fn for_rootfs(name: &str, version: &str, file: &str, sha256: &str) -> Manifest {
        Manifest {
            format: FORMAT,
            name: name.to_string(),
            version: version.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            providers: vec![BoxFormat::Container],
            container: Some(ContainerPayload { rootfs: Some(file.to_string()) }),
            qemu: None,
            files: BTreeMap::from([(file.to_string(), sha256.to_string())]),
            image: None,
            envfile: None,
        }
    }
}

/// A single path component that is safe to join onto a directory.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}
