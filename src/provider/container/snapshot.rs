//! Container snapshots and export. A snapshot is the machine's upper layer, so its
//! cost grows with what the machine changed, never with the box: a zstd tar of
//! upper/ (boxes::pack_upper: overlay whiteouts and xattrs kept), named by its sha256, plus a
//! JSON record that names it. The record is the commit point: a new snapshot is
//! written whole before its record replaces the old one, and an archive is checked
//! against the digest in its record before it is unpacked.
//! Export flattens box + layer into the `rootfs.tar` a shared box carries.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use super::runc::Status;
use super::{freeze, overlay, Layout, Machine};
use crate::provider::{Error, MachineState, SnapshotInfo};
use crate::ui::Ui;

/// Record format version (2: archives named by digest, digest checked on restore).
const FORMAT: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    format: u32,
    name: String,
    created: u64,
    size: u64,
    /// sha256 of the archive, which is `<sha256>.tar.zst` beside the record.
    sha256: String,
}

impl Sidecar {
    fn archive(&self, layout: &Layout) -> PathBuf {
        layout.snapshots().join(format!("{}.tar.zst", self.sha256))
    }
}

fn sidecar_path(layout: &Layout, name: &str) -> PathBuf {
    layout.snapshots().join(format!("{name}.json"))
}

fn missing_machine(m: &Machine) -> anyhow::Error {
    crate::state::Error::NotCreated { machine: m.name().into() }.into()
}

/// Runs `work` with the container frozen when it is running, so files are copied
/// in one consistent state; it is resumed whatever `work` returns.
fn frozen<T>(m: &Machine, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let init = match m.runc.state(m.id())? {
        Some(c) if c.status == Status::Running => Some(c.pid),
        _ => None,
    };
    let frozen = init.map(|pid| freeze::freeze(&m.runc, m.id(), pid)).transpose()?;
    let result = work();
    if let Some(frozen) = frozen {
        freeze::thaw(&m.runc, m.id(), &frozen)?;
    }
    result
}

/// Saves a snapshot; with `replace` an existing one of that name is replaced only once
/// the new one is whole (a full disk leaves the old one as it was).
pub fn save(m: &Machine, name: &str, replace: bool, ui: &Ui) -> Result<SnapshotInfo> {
    crate::provider::check_snapshot_name(name)?;
    if !m.layout.exists() {
        return Err(missing_machine(m));
    }
    let old = read_sidecar(&m.layout, name)?;
    if old.is_some() && !replace {
        bail!(Error::SnapshotExists { machine: m.name().to_string(), name: name.to_string() });
    }
    crate::fsutil::create_private_dir(&m.layout.snapshots())?;
    let partial = m.layout.snapshots().join(format!(".{name}.partial"));
    ui.step(format!("{}: saving snapshot {name}", m.name()));
    let saved = frozen(m, || {
        let file = crate::fsutil::create_private(&partial)?;
        crate::boxes::pack_upper(&m.layout.upper(), file)
            .with_context(|| format!("cannot save snapshot {name} of machine {}", m.name()))
    });
    let sha256 = match saved {
        Ok(digest) => digest,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    let sidecar = Sidecar {
        format: FORMAT,
        name: name.to_string(),
        created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        size: std::fs::metadata(&partial)?.len(),
        sha256,
    };
    let committed = std::fs::rename(&partial, sidecar.archive(&m.layout))
        .with_context(|| format!("cannot move the snapshot into {}", m.layout.snapshots().display()))
        .and_then(|()| crate::fsutil::write_atomic(&sidecar_path(&m.layout, name), serde_json::to_string_pretty(&sidecar)?.as_bytes()));
    if let Err(e) = committed {
        let _ = std::fs::remove_file(&partial);
        if old.as_ref().is_none_or(|o| o.sha256 != sidecar.sha256) {
            let _ = std::fs::remove_file(sidecar.archive(&m.layout));
        }
        return Err(e);
    }
    if let Some(old) = old.filter(|o| o.sha256 != sidecar.sha256) {
        remove_archive_unless_used(&m.layout, &old)?;
    }
    Ok(info(&sidecar))
}

fn info(sidecar: &Sidecar) -> SnapshotInfo {
    SnapshotInfo { name: sidecar.name.clone(), created: sidecar.created, size: sidecar.size, memory: false }
}

/// The record of snapshot `name`, None when there is none.
fn read_sidecar(layout: &Layout, name: &str) -> Result<Option<Sidecar>> {
    let path = sidecar_path(layout, name);
    let Some(bytes) = crate::fsutil::read_private(&path)? else { return Ok(None) };
    let bad = |message: String| crate::state::Error::BadRecord { path: path.clone(), message };
    let sidecar: Sidecar = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("is not a snapshot record ({e}); delete the snapshot and save it again")))?;
    if sidecar.format != FORMAT {
        bail!(bad(format!("snapshot record format {} is not known to this envy (it reads {FORMAT}); upgrade envy", sidecar.format)));
    }
    crate::boxes::parse_sha256(&sidecar.sha256).map_err(|_| bad("names no valid sha256".into()))?;
    Ok(Some(sidecar))
}

fn require_snapshot(layout: &Layout, machine: &str, name: &str) -> Result<Sidecar> {
    crate::provider::check_snapshot_name(name)?;
    match read_sidecar(layout, name)? {
        Some(sidecar) => Ok(sidecar),
        None => {
            let known = list(layout)?.into_iter().map(|s| s.name).collect();
            bail!(Error::NoSnapshot { machine: machine.to_string(), name: name.to_string(), known })
        }
    }
}

/// Two snapshots of an unchanged machine share one archive; it goes with the last.
fn remove_archive_unless_used(layout: &Layout, gone: &Sidecar) -> Result<()> {
    let used = list_sidecars(layout)?.iter().any(|s| s.sha256 == gone.sha256);
    if !used {
        let archive = gone.archive(layout);
        match std::fs::remove_file(&archive) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", archive.display()))
            }
            _ => {}
        }
    }
    Ok(())
}

pub fn restore(m: &Machine, name: &str, ui: &Ui) -> Result<()> {
    let sidecar = require_snapshot(&m.layout, m.name(), name)?;
    let archive = sidecar.archive(&m.layout);
    // The archive must be the one that was saved, byte for byte.
    let got = crate::boxes::sha256_file(&archive)?;
    if got != sidecar.sha256 {
        bail!(Error::SnapshotDamaged { machine: m.name().to_string(), name: name.to_string(), archive, got, want: sidecar.sha256 });
    }
    let staging = m.layout.restore_tmp();
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    crate::fsutil::create_private_dir(&staging)?;
    // Unpack first: a bad archive fails here with the machine untouched.
    let unpacked = crate::boxes::unpack_upper(&archive, &staging, &format!("snapshot {name} of machine {}", m.name()));
    if let Err(e) = unpacked {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e.into());
    }
    let was_running = m.state()? == MachineState::Running;
    ui.step(format!("{}: restoring snapshot {name}", m.name()));
    m.stop_container(false, ui)?;
    let old = m.layout.upper_old();
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    if m.layout.upper().exists() {
        std::fs::rename(m.layout.upper(), &old)?;
    }
    std::fs::rename(&staging, m.layout.upper())?;
    std::fs::remove_dir_all(&old).ok();
    // overlayfs's work dir belongs to the old upper layer.
    if m.layout.work().exists() {
        std::fs::remove_dir_all(m.layout.work())?;
    }
    if was_running {
        m.start_container(&m.recorded_box()?)?;
    }
    Ok(())
}

fn list_sidecars(layout: &Layout) -> Result<Vec<Sidecar>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(layout.snapshots()).into_iter().flatten() {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            found.extend(read_sidecar(layout, &name)?);
        }
    }
    Ok(found)
}

pub fn list(layout: &Layout) -> Result<Vec<SnapshotInfo>> {
    let mut found: Vec<SnapshotInfo> = list_sidecars(layout)?.iter().map(info).collect();
    found.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    Ok(found)
}

pub fn delete(layout: &Layout, name: &str) -> Result<()> {
    let machine = layout.dir().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let sidecar = require_snapshot(layout, &machine, name)?;
    std::fs::remove_file(sidecar_path(layout, name))?;
    remove_archive_unless_used(layout, &sidecar)
}

/// Writes `layer.tar`, the machine's upper layer as an OCI image layer, into `dir`
/// (the container paused meanwhile, so the layer is one moment's state).
pub fn export_layer(m: &Machine, dir: &Path, ui: &Ui) -> Result<PathBuf> {
    if !m.layout.exists() {
        return Err(missing_machine(m));
    }
    let target = dir.join("layer.tar");
    ui.step(format!("{}: packing its changes as an image layer", m.name()));
    frozen(m, || crate::boxes::pack_layer_dir(&m.layout.upper(), &target))?;
    Ok(target)
}

/// Writes `rootfs.tar` (box + the machine's changes) into `dir`.
pub fn export(m: &Machine, lower: &Path, dir: &Path, ui: &Ui) -> Result<Vec<PathBuf>> {
    if !m.layout.exists() {
        return Err(missing_machine(m));
    }
    let rootfs = m.layout.rootfs();
    let mounted_here = !overlay::is_mounted(&rootfs)?;
    if mounted_here {
        std::fs::create_dir_all(m.layout.work())?;
        overlay::mount_overlay(lower, &m.layout.upper(), &m.layout.work(), &rootfs)?;
    }
    let target = dir.join("rootfs.tar");
    ui.step(format!("{}: exporting its root filesystem", m.name()));
    let written = frozen(m, || {
        crate::boxes::pack_rootfs_dir(&rootfs, &target)
            .map(drop)
            .with_context(|| format!("cannot export the root filesystem of machine {}", m.name()))
    });
    if mounted_here {
        overlay::unmount_all(m.layout.dir())?;
    }
    if let Err(e) = written {
        let _ = std::fs::remove_file(&target);
        return Err(e);
    }
    Ok(vec![target])
}
