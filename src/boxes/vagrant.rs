//! Vagrant boxes of the libvirt format: a tar holding `metadata.json`
//! (`{"provider": "libvirt", "format": "qcow2", …}`), the qcow2 disk (`box.img`, or
//! the one `disks` entry of the v2 format) and a Vagrantfile. Told from a root
//! filesystem tarball by its first entries, and stored as a qemu box that boots by
//! its own firmware. The Vagrantfile is Ruby for Vagrant: envy never runs it.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use serde::Deserialize;

use super::archive::{Compression, MAX_PAYLOAD_BYTES, QCOW2_MAGIC};
use super::digest::{copy_hashing, Hasher};
use super::Error;
use crate::ui::Ui;

/// The name of a Vagrant box's metadata file.
const METADATA: &str = "metadata.json";
/// How many entries to look at for `metadata.json` before calling a tar a rootfs
/// (Vagrant's own packers write it first; a rootfs starts with `./`, `bin`, …).
const SNIFF_ENTRIES: usize = 3;
/// Largest metadata.json read.
const MAX_METADATA_BYTES: u64 = 64 << 10;
/// The store's name for the disk.
pub const DISK: &str = "disk.qcow2";

#[derive(Deserialize)]
struct Metadata {
    provider: Option<String>,
    format: Option<String>,
    /// Format v2: the disks, each with its file in the box.
    #[serde(default)]
    disks: Vec<Disk>,
}

#[derive(Deserialize)]
struct Disk {
    path: Option<String>,
}

impl Metadata {
    /// A libvirt box with a qcow2 disk, the one kind envy runs.
    fn check(&self) -> Result<(), String> {
        let provider = self.provider.as_deref().unwrap_or("(none)");
        if provider != "libvirt" {
            return Err(format!(
                "it is a Vagrant box for the {provider} provider; envy runs libvirt boxes (a qcow2 disk), so pick the box's libvirt version"
            ));
        }
        match self.format.as_deref() {
            Some(format) if format != "qcow2" => {
                Err(format!("its metadata.json says format {format:?}; envy reads qcow2 libvirt boxes only"))
            }
            _ => Ok(()),
        }
    }
}

/// Whether the tar at `path` is a Vagrant box: `metadata.json` among its first
/// entries, all of them plain top-level files.
pub fn is_vagrant_box(path: &Path, compression: Compression) -> io::Result<bool> {
    let reader = compression.reader(File::open(path)?)?;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()?.take(SNIFF_ENTRIES) {
        let entry = entry?;
        let name = entry_name(&entry);
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::Directory && name.trim_end_matches('/').is_empty() {
            continue;
        }
        if name.contains('/') || kind != tar::EntryType::Regular {
            return Ok(false);
        }
        if name == METADATA {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `./name` and `name` alike.
fn entry_name<R: Read>(entry: &tar::Entry<R>) -> String {
    let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    raw.strip_prefix("./").unwrap_or(&raw).to_string()
}

/// Unpacks a Vagrant box's disk into `dest` as `disk.qcow2` and returns its sha256.
/// Only the metadata, the Vagrantfile (ignored, and said so), an `info.json` and the
/// disk images are accepted; a box for another provider or format is refused. On
/// error `dest` may hold a partial disk; the caller removes it.
pub fn unpack(path: &Path, compression: Compression, dest: &Path, label: &str, ui: &Ui) -> Result<String, Error> {
    let not_a_box = |reason: String| Error::NotABox { archive: label.to_string(), reason };
    let read = |e: io::Error| not_a_box(format!("cannot read it as a tar archive ({e})"));
    let reader = compression.reader(File::open(path).map_err(Error::io("cannot read", path))?).map_err(read)?;
    let mut archive = tar::Archive::new(reader);
    let mut metadata: Option<Metadata> = None;
    // Every image file, unpacked under its own name: metadata.json may come after them.
    let mut disks: Vec<(String, String)> = Vec::new();
    for entry in archive.entries().map_err(read)? {
        let mut entry = entry.map_err(read)?;
        let name = entry_name(&entry);
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::Directory && name.trim_end_matches('/').is_empty() {
            continue;
        }
        if kind != tar::EntryType::Regular || name.contains('/') || !super::manifest::is_plain_file_name(&name) {
            return Err(Error::HostileEntry {
                archive: label.into(),
                entry: name,
                reason: "is not a plain file at the top of the box (a Vagrant box holds metadata.json, a Vagrantfile and its disks)".into(),
            });
        }
        match name.as_str() {
            METADATA => {
                let mut text = String::new();
                entry.by_ref().take(MAX_METADATA_BYTES).read_to_string(&mut text).map_err(read)?;
                let parsed: Metadata = serde_json::from_str(&text).map_err(|e| not_a_box(format!("its metadata.json is not valid JSON ({e})")))?;
                // A box for another provider is refused at once, not for its other files.
                parsed.check().map_err(not_a_box)?;
                metadata = Some(parsed);
            }
            "Vagrantfile" => ui.warn(format!(
                "{label}: its Vagrantfile is ignored; envy sets the machine up from the Envfile"
            )),
            "info.json" => {}
            _ if name.ends_with(".img") => {
                if disks.iter().any(|(seen, _)| *seen == name) {
                    return Err(Error::HostileEntry { archive: label.into(), entry: name, reason: "appears twice".into() });
                }
                if entry.header().size().unwrap_or(u64::MAX) > MAX_PAYLOAD_BYTES {
                    return Err(not_a_box(format!("its {name} is larger than {} GiB", MAX_PAYLOAD_BYTES >> 30)));
                }
                let out = dest.join(&name);
                let file = File::create(&out).map_err(Error::io("cannot write", &out))?;
                let hashes = copy_hashing(&mut entry, &file, Hasher::new(false)).map_err(Error::io("cannot write", &out))?;
                disks.push((name, hashes.sha256));
            }
            _ => {
                return Err(Error::HostileEntry {
                    archive: label.into(),
                    entry: name,
                    reason: "is not part of a libvirt Vagrant box (metadata.json, Vagrantfile, info.json, *.img)".into(),
                })
            }
        }
    }
    let metadata = metadata.ok_or_else(|| not_a_box("it has no metadata.json".into()))?;
    let wanted = match metadata.disks.as_slice() {
        [] => "box.img".to_string(),
        [one] => one.path.clone().unwrap_or_else(|| "box.img".into()),
        many => return Err(not_a_box(format!("it has {} disks; envy boxes have one", many.len()))),
    };
    let (disk, sha256) = disks
        .iter()
        .find(|(name, _)| *name == wanted)
        .cloned()
        .ok_or_else(|| not_a_box(format!("its metadata.json names the disk {wanted}, which the box does not hold")))?;
    for (other, _) in disks.iter().filter(|(name, _)| *name != disk) {
        std::fs::remove_file(dest.join(other)).map_err(Error::io("cannot remove", dest.join(other)))?;
    }
    let mut magic = [0u8; 4];
    let from = dest.join(&disk);
    let is_qcow2 = File::open(&from).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == QCOW2_MAGIC;
    if !is_qcow2 {
        return Err(not_a_box(format!("its {disk} is not a qcow2 image, as its metadata.json says")));
    }
    std::fs::rename(&from, dest.join(DISK)).map_err(Error::io("cannot move", &from))?;
    Ok(sha256)
}
