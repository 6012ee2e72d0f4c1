//! Container snapshots and export. A snapshot is the machine's upper layer, so its
//! cost grows with what the machine changed, never with the box: a zstd tar of
//! upper/ (overlay whiteouts and opaque-dir xattrs kept) plus a JSON sidecar.
//! Export flattens box + layer into the `rootfs.tar` a shared box carries.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use super::{overlay, Layout, Machine};
use crate::provider::tool;
use crate::provider::{Error, MachineState, SnapshotInfo};
use crate::ui::Ui;

/// Sidecar format version.
const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    format: u32,
    name: String,
    created: u64,
    size: u64,
}

fn archive_path(layout: &Layout, name: &str) -> PathBuf {
    layout.snapshots().join(format!("{name}.tar.zst"))
}

fn sidecar_path(layout: &Layout, name: &str) -> PathBuf {
    layout.snapshots().join(format!("{name}.json"))
}

/// GNU tar with what an overlay layer needs: numeric owners, and the trusted.overlay
/// xattrs that mark opaque dirs (whiteouts are char devices, which tar keeps anyway).
fn layer_tar() -> Command {
    let mut cmd = Command::new("tar");
    cmd.args(["--numeric-owner", "--xattrs", "--xattrs-include=trusted.overlay.*", "--zstd"]);
    cmd
}

fn missing_machine(m: &Machine) -> anyhow::Error {
    crate::state::Error::NotCreated { machine: m.name().into() }.into()
}

/// Runs `work` with the container frozen when it is running, so files are copied
/// in one consistent state; it is resumed whatever `work` returns.
fn frozen<T>(m: &Machine, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let running = m.state()? == MachineState::Running;
    if running {
        m.runc.pause(m.id())?;
    }
    let result = work();
    if running {
        m.runc.resume(m.id())?;
    }
    result
}

pub fn save(m: &Machine, name: &str, ui: &Ui) -> Result<SnapshotInfo> {
    crate::provider::check_snapshot_name(name)?;
    if !m.layout.exists() {
        return Err(missing_machine(m));
    }
    let archive = archive_path(&m.layout, name);
    if archive.exists() {
        bail!(Error::Other(format!(
            "machine {} already has a snapshot named {name}; delete it first (`envy snapshot delete {name}`) or save with --force",
            m.name()
        )));
    }
    std::fs::create_dir_all(m.layout.snapshots())?;
    let partial = m.layout.snapshots().join(format!(".{name}.partial"));
    ui.step(format!("{}: saving snapshot {name}", m.name()));
    let saved = frozen(m, || {
        tool::run(
            layer_tar().arg("--create").arg("--file").arg(&partial).arg("--directory").arg(m.layout.upper()).arg("."),
            &format!("saving snapshot {name} of machine {}", m.name()),
        )
        .map_err(anyhow::Error::from)
    });
    if let Err(e) = saved {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &archive).with_context(|| format!("cannot move the snapshot into {}", archive.display()))?;
    let sidecar = Sidecar {
        format: FORMAT,
        name: name.to_string(),
        created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        size: std::fs::metadata(&archive)?.len(),
    };
    crate::state::write_atomic(&sidecar_path(&m.layout, name), serde_json::to_string_pretty(&sidecar)?.as_bytes())?;
    Ok(info(&sidecar))
}

fn info(sidecar: &Sidecar) -> SnapshotInfo {
    SnapshotInfo { name: sidecar.name.clone(), created: sidecar.created, size: sidecar.size, memory: false }
}

fn read_sidecar(path: &Path) -> Result<Sidecar> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let sidecar: Sidecar = serde_json::from_str(&text).with_context(|| format!("{} is not a snapshot record", path.display()))?;
    if sidecar.format != FORMAT {
        bail!(crate::state::Error::BadRecord {
            path: path.to_path_buf(),
            message: format!("snapshot record format {} is not known to this envy (it reads {FORMAT}); upgrade envy", sidecar.format),
        });
    }
    Ok(sidecar)
}

fn require_snapshot(layout: &Layout, machine: &str, name: &str) -> Result<()> {
    crate::provider::check_snapshot_name(name)?;
    if !archive_path(layout, name).exists() {
        let known: Vec<String> = list(layout)?.into_iter().map(|s| s.name).collect();
        let known = if known.is_empty() { "it has none".to_string() } else { format!("it has: {}", known.join(", ")) };
        bail!(Error::Other(format!("machine {machine} has no snapshot named {name}; {known}")));
    }
    Ok(())
}

pub fn restore(m: &Machine, name: &str, ui: &Ui) -> Result<()> {
    require_snapshot(&m.layout, m.name(), name)?;
    let staging = m.layout.restore_tmp();
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    // Unpack first: a bad archive fails here with the machine untouched.
    let unpacked = tool::run(
        layer_tar().arg("--extract").arg("--file").arg(archive_path(&m.layout, name)).arg("--directory").arg(&staging),
        &format!("unpacking snapshot {name} of machine {}", m.name()),
    );
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
        m.restart_container(&m.recorded_lower()?)?;
    }
    Ok(())
}

pub fn list(layout: &Layout) -> Result<Vec<SnapshotInfo>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(layout.snapshots()).into_iter().flatten() {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            found.push(info(&read_sidecar(&path)?));
        }
    }
    found.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    Ok(found)
}

pub fn delete(layout: &Layout, name: &str) -> Result<()> {
    let machine = layout.dir().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    require_snapshot(layout, &machine, name)?;
    std::fs::remove_file(archive_path(layout, name))?;
    let _ = std::fs::remove_file(sidecar_path(layout, name));
    Ok(())
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
        tool::run(
            Command::new("tar").args(["--create", "--numeric-owner", "--file"]).arg(&target).arg("--directory").arg(&rootfs).arg("."),
            &format!("exporting the root filesystem of machine {}", m.name()),
        )
        .map_err(anyhow::Error::from)
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
