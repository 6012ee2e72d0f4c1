//! The machine's disk: a qcow2 overlay whose backing file is the box's disk, so
//! creating a machine copies nothing; `disk = "..."` in the Envfile grows it.

use std::path::Path;
use std::process::Command;

use serde::Deserialize;

use super::tool;
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
    serde_json::from_slice(&out.stdout).map_err(|e| {
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
