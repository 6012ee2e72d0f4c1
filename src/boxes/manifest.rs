//! `box.toml`: what a box holds and how to run it (docs/box-format.md), read strictly
//! and checked against its payload, or generated for a raw upstream artifact.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::Error;
use crate::model::BoxFormat;

/// The manifest's file name, first entry of every `.box` archive.
pub const FILE_NAME: &str = "box.toml";
/// The last entry of a format 2 `.box`: its payloads' sha256s, as `sha256sum` prints
/// them, known only once the payloads are written.
pub const SUMS_NAME: &str = "box.sums";
/// The manifest format this envy writes. Format 1 boxes (box.toml names every
/// payload's digest, so it is written last, in place) are still read.
pub const FORMAT: u32 = 2;
/// The formats this envy reads.
const READS: [u32; 2] = [1, FORMAT];
/// The most lines a box.sums holds: one per payload, and a box has a few.
const MAX_SUMS: usize = 64;
/// Default kernel command line of boxes built for direct kernel boot.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 root=/dev/vda rw";

/// The box's `box.toml` (docs/box-format.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version (1 or 2: where the payloads' digests are).
    pub format: u32,
    pub name: String,
    pub version: String,
    /// CPU architecture, as `uname -m` says (x86_64).
    pub arch: String,
    /// Providers the box can be run on.
    pub providers: Vec<BoxFormat>,
    pub container: Option<ContainerPayload>,
    pub qemu: Option<QemuPayload>,
    /// sha256 (hex) of every payload file, by file name. Empty in a format 2 box's
    /// own box.toml: its digests come last, in box.sums.
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
        let manifest = Manifest::from_toml(text, archive)?;
        manifest.validate(archive)?;
        Ok(manifest)
    }

    fn from_toml(text: &str, archive: &str) -> Result<Manifest, Error> {
        toml::from_str(text).map_err(|e| Error::BadManifest { archive: archive.to_string(), reason: e.message().to_string() })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a manifest always serializes")
    }

    /// Checks that the manifest is whole and self-consistent: a known format, payload
    /// names that are plain file names, every referenced file listed with a sha256
    /// (in format 2, exactly those).
    pub fn validate(&self, archive: &str) -> Result<(), Error> {
        let bad = |reason: String| Error::BadManifest { archive: archive.to_string(), reason };
        if !READS.contains(&self.format) {
            return Err(bad(format!(
                "format {} is not one this envy reads (1 and {FORMAT}); upgrade envy",
                self.format
            )));
        }
        for (name, digest) in &self.files {
            if !is_payload_name(name) {
                return Err(bad(format!(
                    "payload file name `{name}` must be a plain file name (no `/`, not `..`, not {FILE_NAME} or {SUMS_NAME})"
                )));
            }
            super::digest::parse_sha256(digest)
                .map_err(|_| bad(format!("files.{name} is not a sha256 hex digest")))?;
        }
        let named = self.validate_sections(archive)?;
        if let Some((field, name)) = named.iter().find(|(_, name)| !self.files.contains_key(*name)) {
            return Err(bad(format!("{field} names `{name}`, which `files` does not list with a sha256")));
        }
        if self.format == FORMAT {
            if let Some(extra) = self.files.keys().find(|f| !named.iter().any(|(_, name)| name == f)) {
                return Err(bad(format!("`files` lists `{extra}`, which no section of box.toml names")));
            }
        }
        Ok(())
    }

    /// Parses the box.toml that comes first in a `.box`. A format 1 one is whole; a
    /// format 2 one has no digests yet (they come last, in box.sums), and comes back
    /// with the payload names box.sums must give.
    pub fn parse_first_entry(text: &str, archive: &str) -> Result<(Manifest, Option<BTreeSet<String>>), Error> {
        let manifest = Manifest::from_toml(text, archive)?;
        if manifest.format != FORMAT {
            manifest.validate(archive)?;
            return Ok((manifest, None));
        }
        let bad = |reason: String| Error::BadManifest { archive: archive.to_string(), reason };
        if !manifest.files.is_empty() {
            return Err(bad(format!("format {FORMAT} keeps the payloads' digests in {SUMS_NAME}, last in the box; `files` must be empty")));
        }
        let mut expected = BTreeSet::new();
        for (field, name) in manifest.validate_sections(archive)? {
            if !is_payload_name(name) {
                return Err(bad(format!(
                    "{field} names `{name}`, which is not a plain file name (no `/`, not `..`, not {FILE_NAME} or {SUMS_NAME})"
                )));
            }
            expected.insert(name.to_string());
        }
        Ok((manifest, Some(expected)))
    }

    /// Checks what does not depend on the digests, and returns every payload name the
    /// sections use, with the key that uses it.
    fn validate_sections(&self, archive: &str) -> Result<Vec<(&'static str, &str)>, Error> {
        let bad = |reason: String| Error::BadManifest { archive: archive.to_string(), reason };
        if self.providers.is_empty() {
            return Err(bad("`providers` is empty".into()));
        }
        let mut named: Vec<(&'static str, &str)> = Vec::new();
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
                (Some(rootfs), None) => named.push(("container.rootfs", rootfs)),
                (None, Some(_)) => {}
                _ => return Err(bad("a container box needs exactly one of container.rootfs and [image]".into())),
            }
        }
        if let Some(image) = &self.image {
            named.push(("image.manifest", &image.manifest));
            named.push(("image.config", &image.config));
            named.extend(image.layers.iter().map(|layer| ("image.layers", layer.as_str())));
        }
        if let Some(q) = &self.qemu {
            named.push(("qemu.disk", &q.disk));
            named.extend(q.kernel.iter().map(|k| ("qemu.kernel", k.as_str())));
            named.extend(q.initrd.iter().map(|i| ("qemu.initrd", i.as_str())));
            if q.boot == BootMethod::Kernel && q.kernel.is_none() {
                return Err(bad("qemu.boot is \"kernel\" but qemu.kernel is not set".into()));
            }
        }
        Ok(named)
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

/// box.sums's text: `HEX  NAME` lines, as `sha256sum` prints them (so `sha256sum -c
/// box.sums` checks an unpacked box), in name order.
pub fn sums_text(files: &BTreeMap<String, String>) -> String {
    files.iter().map(|(name, sha256)| format!("{sha256}  {name}\n")).collect()
}

/// Reads box.sums strictly: each line `HEX  NAME` with a lowercase sha256, a payload
/// name, each name once. Errors name the line.
pub fn parse_sums(text: &str, archive: &str) -> Result<BTreeMap<String, String>, Error> {
    let bad = |line: usize, reason: &str| Error::BadManifest { archive: archive.to_string(), reason: format!("{SUMS_NAME} line {line}: {reason}") };
    let mut files = BTreeMap::new();
    let Some(body) = text.strip_suffix('\n') else {
        return Err(bad(text.lines().count().max(1), "the file must end with a newline"));
    };
    for (index, line) in body.split('\n').enumerate() {
        let number = index + 1;
        if files.len() == MAX_SUMS {
            return Err(bad(number, &format!("a box has at most {MAX_SUMS} payload files")));
        }
        let Some((digest, name)) = line.split_once("  ") else {
            return Err(bad(number, "expected `SHA256  NAME` (two spaces between)"));
        };
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad(number, &format!("`{digest}` is not a lowercase sha256 hex digest")));
        }
        if !is_payload_name(name) {
            return Err(bad(number, &format!("`{name}` is not a payload file name")));
        }
        if files.insert(name.to_string(), digest.to_string()).is_some() {
            return Err(bad(number, &format!("`{name}` is listed twice")));
        }
    }
    Ok(files)
}

/// A name a payload file may have: a plain file name, and not one of the box's own.
fn is_payload_name(name: &str) -> bool {
    is_plain_file_name(name) && name != FILE_NAME && name != SUMS_NAME
}

/// A single path component that is safe to join onto a directory.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}
