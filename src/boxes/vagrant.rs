//! Vagrant boxes of the libvirt format: a tar holding `metadata.json`
//! (`{"provider": "libvirt", "format": "qcow2", …}`), the qcow2 disk (`box.img`, or
//! the one `disks` entry of the v2 format) and a Vagrantfile. Told from a root
//! filesystem tarball by its first entry, read in one pass (Packer writes the disk
//! before metadata.json), and stored as a qemu box that boots by its own firmware.
//! The Vagrantfile is Ruby for Vagrant: envy never runs it.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use serde::Deserialize;

use super::archive::{write_entry, Compression, QCOW2_MAGIC};
use super::Error;
use crate::ui::Ui;

/// The name of a Vagrant box's metadata file.
const METADATA: &str = "metadata.json";
/// The other files a libvirt Vagrant box may hold beside its `*.img` disk.
const VAGRANTFILE: &str = "Vagrantfile";
const INFO: &str = "info.json";
/// Largest metadata.json read.
const MAX_METADATA_BYTES: u64 = 64 << 10;
/// The disk a box without `disks` in its metadata.json holds (format v1).
const V1_DISK: &str = "box.img";
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

    /// The file of the box's one disk: `box.img`, or the v2 format's `disks[].path`.
    fn disk(&self) -> Result<String, String> {
        match self.disks.as_slice() {
            [] => Ok(V1_DISK.to_string()),
            [one] => Ok(one.path.clone().unwrap_or_else(|| V1_DISK.into())),
            many => Err(format!("it has {} disks; envy boxes have one", many.len())),
        }
    }
}

/// Whether the tar at `path` is a Vagrant box: its first entry (after a `./` one) is
/// a plain top-level file that only a Vagrant box holds there (metadata.json, a
/// Vagrantfile, info.json or a `*.img` disk); a root filesystem starts with folders
/// and files such as `bin` or `./etc/`. Only headers are read, never a body, so a disk
/// written first is not inflated to decide; `unpack` then requires metadata.json.
pub fn is_vagrant_box(path: &Path, compression: Compression) -> io::Result<bool> {
    let reader = compression.reader(File::open(path)?)?;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let entry = entry?;
        let name = entry_name(&entry);
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::Directory && name.trim_end_matches('/').is_empty() {
            continue;
        }
        let vagrant_file = matches!(name.as_str(), METADATA | VAGRANTFILE | INFO) || name.ends_with(".img");
        return Ok(kind == tar::EntryType::Regular && !name.contains('/') && vagrant_file);
    }
    Ok(false)
}

/// `./name` and `name` alike.
fn entry_name<R: Read>(entry: &tar::Entry<R>) -> String {
    let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    raw.strip_prefix("./").unwrap_or(&raw).to_string()
}

/// Unpacks a Vagrant box's disk into `dest` as `disk.qcow2` and returns its sha256,
/// in one pass over the tar. Only the metadata, the Vagrantfile (ignored, and said
/// so), an `info.json` and one disk image, the one metadata.json names, are accepted:
/// the disk is the only file written, whether metadata.json comes before or after it.
/// A box for another provider or format is refused. On error `dest` may hold a
/// partial disk; the caller removes it.
pub fn unpack(path: &Path, compression: Compression, dest: &Path, label: &str, ui: &Ui) -> Result<String, Error> {
    let not_a_box = |reason: String| Error::NotABox { archive: label.to_string(), reason };
    let read = |e: io::Error| not_a_box(format!("cannot read it as a tar archive ({e})"));
    let reader = compression.reader(File::open(path).map_err(Error::io("cannot read", path))?).map_err(read)?;
    let mut archive = tar::Archive::new(reader);
    // The disk metadata.json names, once it has been read.
    let mut wanted: Option<String> = None;
    // The disk written, with its sha256.
    let mut disk: Option<(String, String)> = None;
    for entry in archive.entries().map_err(read)? {
        let mut entry = entry.map_err(read)?;
        let name = entry_name(&entry);
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::Directory && name.trim_end_matches('/').is_empty() {
            continue;
        }
        let hostile = |reason: &str| Error::HostileEntry { archive: label.into(), entry: name.clone(), reason: reason.into() };
        if kind != tar::EntryType::Regular || name.contains('/') || !super::manifest::is_plain_file_name(&name) {
            return Err(hostile("is not a plain file at the top of the box (a Vagrant box holds metadata.json, a Vagrantfile and its disk)"));
        }
        match name.as_str() {
            METADATA if wanted.is_some() => return Err(hostile("appears twice")),
            METADATA => {
                let mut text = String::new();
                entry.by_ref().take(MAX_METADATA_BYTES).read_to_string(&mut text).map_err(read)?;
                let parsed: Metadata = serde_json::from_str(&text).map_err(|e| not_a_box(format!("its metadata.json is not valid JSON ({e})")))?;
                // A box for another provider is refused at once, not for its other files.
                parsed.check().map_err(not_a_box)?;
                let named = parsed.disk().map_err(not_a_box)?;
                if let Some((written, _)) = disk.as_ref().filter(|(written, _)| *written != named) {
                    return Err(not_a_box(format!("its metadata.json names the disk {named}, but the box holds {written}")));
                }
                wanted = Some(named);
            }
            VAGRANTFILE => ui.warn(format!("{label}: its Vagrantfile is ignored; envy sets the machine up from the Envfile")),
            INFO => {}
            _ if name.ends_with(".img") => {
                if let Some((written, _)) = &disk {
                    return Err(hostile(&format!("is a second disk image beside {written}; envy runs Vagrant boxes with one disk")));
                }
                if let Some(named) = wanted.as_ref().filter(|named| **named != name) {
                    return Err(hostile(&format!("is not the disk {named} that its metadata.json names")));
                }
                let sha256 = write_entry(&mut entry, &dest.join(&name), &name, label)?;
                disk = Some((name, sha256));
            }
            _ => return Err(hostile("is not part of a libvirt Vagrant box (metadata.json, Vagrantfile, info.json, one *.img)")),
        }
    }
    let wanted = wanted.ok_or_else(|| not_a_box("it has no metadata.json".into()))?;
    let (disk, sha256) =
        disk.ok_or_else(|| not_a_box(format!("its metadata.json names the disk {wanted}, which the box does not hold")))?;
    let mut magic = [0u8; 4];
    let from = dest.join(&disk);
    let is_qcow2 = File::open(&from).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == QCOW2_MAGIC;
    if !is_qcow2 {
        return Err(not_a_box(format!("its {disk} is not a qcow2 image, as its metadata.json says")));
    }
    std::fs::rename(&from, dest.join(DISK)).map_err(Error::io("cannot move", &from))?;
    Ok(sha256)
}
