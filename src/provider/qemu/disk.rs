//! The machine's disk: a qcow2 overlay whose backing file is the box's disk, so
//! creating a machine copies nothing; `disk = "..."` in the Envfile grows it.

use std::path::Path;
use std::process::Command;

use serde::Deserialize;

use crate::provider::tool;
use crate::provider::Error;

/// What `qemu-img info` says about an image (the parts envy uses).
#[derive(Debug, Deserialize)]
pub struct ImageInfo {
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(default)]
    pub snapshots: Vec<ImageSnapshot>,
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
    let out = tool::run(
        Command::new("qemu-img").args(["info", "-U", "-f", "qcow2", "--output=json"]).arg(image),
        &format!("reading the disk image {}", image.display()),
    )?;
    serde_json::from_str(&out).map_err(|e| {
        Error::Other(format!("qemu-img info printed unreadable JSON for {}: {e}", image.display()))
    })
}

/// Creates `overlay` over `backing` (both qcow2), of `size` bytes when given (it must
/// not be smaller than the backing disk). Nothing is left behind on failure.
pub fn create_overlay(backing: &Path, overlay: &Path, size: Option<u64>) -> Result<(), Error> {
    let base = info(backing).map_err(|e| match e {
        Error::ToolFailed { stderr, .. } => Error::Other(format!(
            "the box disk {} is not a readable qcow2 image; the box may be corrupt: \
             remove it with `envy box remove` and add it again.\n{stderr}",
            backing.display()
        )),
        other => other,
    })?;
    if let Some(size) = size.filter(|&s| s < base.virtual_size) {
        return Err(Error::Other(format!(
            "disk = {size} bytes is smaller than the box's disk ({} bytes); \
             set disk to at least that or remove it from the Envfile",
            base.virtual_size
        )));
    }
    let mut command = Command::new("qemu-img");
    command.args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"]).arg(backing).arg(overlay);
    if let Some(size) = size {
        command.arg(size.to_string());
    }
    tool::run(&mut command, &format!("creating the machine disk {}", overlay.display())).inspect_err(|_| {
        let _ = std::fs::remove_file(overlay);
    })?;
    Ok(())
}

/// Grows an existing overlay to `size` bytes; never shrinks (that would lose data).
pub fn grow(overlay: &Path, size: u64) -> Result<(), Error> {
    let current = info(overlay)?.virtual_size;
    if size < current {
        return Err(Error::Other(format!(
            "disk = {size} bytes is smaller than the machine's disk ({current} bytes); \
             disks only grow: raise disk in the Envfile, or `envy destroy` and `envy up` to start smaller"
        )));
    }
    if size > current {
        tool::run(
            Command::new("qemu-img").args(["resize", "-q"]).arg(overlay).arg(size.to_string()),
            &format!("growing {} to {size} bytes", overlay.display()),
        )?;
    }
    Ok(())
}

/// Writes a standalone copy of `overlay` (its backing chain flattened) to `target`.
pub fn flatten(overlay: &Path, target: &Path) -> Result<(), Error> {
    tool::run(
        Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(overlay).arg(target),
        &format!("flattening {} into {}", overlay.display(), target.display()),
    )
    .map(drop)
    .inspect_err(|_| {
        let _ = std::fs::remove_file(target);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(dir: &Path, size: &str) -> std::path::PathBuf {
        let path = dir.join("base.qcow2");
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg(size)
            .status()
            .expect("qemu-img is needed by these tests: apt-get install qemu-utils");
        assert!(status.success());
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
