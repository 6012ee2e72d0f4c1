//! The machine's disk: a qcow2 overlay whose backing file is the box's disk, so
//! creating a machine copies nothing; `disk = "..."` in the Envfile grows it.

use std::path::Path;

use serde::Deserialize;

use crate::process::{Process, ProcessError};
use crate::provider::Error;

/// What `qemu-img info` says about an image (the parts envy uses).
#[derive(Debug, Deserialize)]
pub struct ImageInfo {
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(default)]
    pub snapshots: Vec<ImageSnapshot>,
    /// A file the image reads beneath its own clusters.
    #[serde(rename = "backing-filename", default)]
    pub backing_filename: Option<String>,
    #[serde(rename = "format-specific", default)]
    format_specific: Option<FormatSpecific>,
}

/// qcow2's own part of `qemu-img info`.
#[derive(Debug, Deserialize)]
struct FormatSpecific {
    #[serde(default)]
    data: Option<Qcow2Data>,
}

#[derive(Debug, Deserialize)]
struct Qcow2Data {
    /// An external file that holds the image's data (qcow2 `data-file`).
    #[serde(rename = "data-file", default)]
    data_file: Option<String>,
}

impl ImageInfo {
    /// Another file the image makes QEMU open: a backing file or an external data file.
    pub fn other_file(&self) -> Option<&str> {
        let data_file = self.format_specific.as_ref().and_then(|f| f.data.as_ref()).and_then(|d| d.data_file.as_deref());
        self.backing_filename.as_deref().or(data_file)
    }
}

/// One internal snapshot, as `qemu-img info` lists it.
#[derive(Debug, Deserialize)]
pub struct ImageSnapshot {
    pub name: String,
    #[serde(rename = "vm-state-size")]
    pub vm_state_size: u64,
    #[serde(rename = "date-sec")]
    pub date_sec: u64,
}

/// Reads a qcow2 image's header (`-f qcow2`: a damaged header must not pass as raw).
/// `-U` (force share) lets it read a disk a running QEMU holds.
pub fn info(image: &Path) -> Result<ImageInfo, Error> {
    let out = Process::new("qemu-img")
        .args(["info", "-U", "-f", "qcow2", "--output=json"])
        .arg(image)
        .doing(format!("reading the disk image {}", image.display()))
        .run()?;
    serde_json::from_str(&out).map_err(|cause| Error::DiskInfo { image: image.to_path_buf(), cause })
}

/// Creates `overlay` over `backing` (both qcow2), of `size` bytes when given (it must
/// not be smaller than the backing disk). Nothing is left behind on failure.
pub fn create_overlay(backing: &Path, overlay: &Path, size: Option<u64>) -> Result<(), Error> {
    let base = info(backing).map_err(|e| match e {
        Error::Process(ProcessError::Failed { stderr, .. }) => Error::BadBoxDisk { disk: backing.to_path_buf(), stderr },
        other => other,
    })?;
    // A box's disk comes from elsewhere: one that names a file of this host would have
    // QEMU open that file for the machine.
    if let Some(file) = base.other_file() {
        return Err(Error::BoxDiskNotStandalone { disk: backing.to_path_buf(), file: file.to_string() });
    }
    if let Some(size) = size.filter(|&s| s < base.virtual_size) {
        return Err(Error::DiskBelowBox { size, minimum: base.virtual_size });
    }
    Process::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(backing)
        .arg(overlay)
        .args(size.map(|s| s.to_string()))
        .doing(format!("creating the machine disk {}", overlay.display()))
        .run()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(overlay);
        })?;
    Ok(())
}

/// Grows an existing overlay to `size` bytes; never shrinks (that would lose data).
pub fn grow(overlay: &Path, size: u64) -> Result<(), Error> {
    let current = info(overlay)?.virtual_size;
    if size < current {
        return Err(Error::DiskShrink { size, current });
    }
    if size > current {
        Process::new("qemu-img")
            .args(["resize", "-q"])
            .arg(overlay)
            .arg(size.to_string())
            .doing(format!("growing {} to {size} bytes", overlay.display()))
            .run()?;
    }
    Ok(())
}

/// Writes a standalone copy of `overlay` (its backing chain flattened) to `target`.
pub fn flatten(overlay: &Path, target: &Path) -> Result<(), Error> {
    Process::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(overlay)
        .arg(target)
        .doing(format!("flattening {} into {}", overlay.display(), target.display()))
        .run()
        .map(drop)
        .map_err(Error::from)
        .inspect_err(|_| {
            let _ = std::fs::remove_file(target);
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(dir: &Path, size: &str) -> std::path::PathBuf {
        let path = dir.join("base.qcow2");
        Process::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&path).arg(size).run().unwrap();
        path
    }

    #[test]
    fn an_overlay_copies_nothing_and_grows_but_never_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let base = base(dir.path(), "64M");
        let overlay = dir.path().join("overlay.qcow2");

        let err = create_overlay(&base, &overlay, Some(32 << 20)).unwrap_err().to_string();
        assert!(err.contains("smaller than the box's disk (67108864 bytes)"), "{err}");
        assert!(!overlay.exists());

        create_overlay(&base, &overlay, None).unwrap();
        assert_eq!(info(&overlay).unwrap().virtual_size, 64 << 20);
        assert!(std::fs::metadata(&overlay).unwrap().len() < 1 << 20, "the overlay copied data");

        grow(&overlay, 128 << 20).unwrap();
        assert_eq!(info(&overlay).unwrap().virtual_size, 128 << 20);
        let err = grow(&overlay, 100 << 20).unwrap_err().to_string();
        assert!(err.contains("disks only grow"), "{err}");
        assert_eq!(info(&overlay).unwrap().virtual_size, 128 << 20);
    }

    #[test]
    fn a_base_that_is_not_qcow2_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("disk.qcow2");
        std::fs::write(&base, vec![0u8; 4096]).unwrap();
        let overlay = dir.path().join("overlay.qcow2");
        let err = create_overlay(&base, &overlay, None).unwrap_err().to_string();
        assert!(err.contains(&format!("the box disk {} is not a readable qcow2 image", base.display())), "{err}");
        assert!(!overlay.exists());
    }
}
