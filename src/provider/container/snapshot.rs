//! Container snapshots and export. A snapshot is a chain of the machine's frozen
//! layers (layers.rs): saving a halted machine is a rename whatever changed, saving a
//! running one a copy of its upper layer while it is held still; restoring is a new
//! empty upper layer over the snapshot's chain. A JSON record names the chain; it is
//! the commit point. Records of format 2 (an older envy) name a zstd tar of the upper
//! layer by its sha256 instead; they still restore, the archive checked first.
//! Export flattens box + layers into the `rootfs.tar` a shared box carries.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use super::layers::Layers;
use super::runtime::Status;
use super::{freeze, overlay, Layout, Machine};
use crate::provider::{Error, MachineState, SnapshotInfo};
use crate::ui::Ui;

/// Record format written: 3, a chain of layers. 2 (an archive named by digest) is read.
const FORMAT: u32 = 3;
const FORMAT_ARCHIVE: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    format: u32,
    name: String,
    created: u64,
    size: u64,
    /// Format 2: sha256 of the archive, which is `<sha256>.tar.zst` beside the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    /// Format 3: the frozen layers, bottom first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    layers: Vec<u32>,
}

impl Sidecar {
    fn archive(&self, layout: &Layout) -> Option<PathBuf> {
        self.sha256.as_ref().map(|d| layout.snapshots().join(format!("{d}.tar.zst")))
    }
}

fn sidecar_path(layout: &Layout, name: &str) -> PathBuf {
    layout.snapshots().join(format!("{name}.json"))
}

fn missing_machine(m: &Machine) -> anyhow::Error {
    crate::state::Error::NotCreated { machine: m.name().into() }.into()
}

/// What `frozen` holds a running container still for.
#[derive(PartialEq)]
enum Hold {
    /// Its files are read (packed into a tar).
    ToRead,
    /// Its upper layer is copied into a snapshot layer: a clone of its blocks on XFS
    /// and btrfs, so it is written out first (`Layers::write_out_for_clones`), while
    /// the container runs, and not inside the pause.
    ToCopyLayer,
}

/// Runs `work` with the container frozen when it is running, so files are copied
/// in one consistent state; it is resumed whatever `work` returns. `work` is told
/// whether the container runs.
fn frozen<T>(m: &Machine, hold: Hold, work: impl FnOnce(bool) -> Result<T>) -> Result<T> {
    let init = match m.runtime.state(m.id())? {
        Some(c) if c.status == Status::Running => Some(c.pid),
        _ => None,
    };
    if hold == Hold::ToCopyLayer && init.is_some() {
        Layers::of(&m.layout).write_out_for_clones()?;
    }
    let frozen = init.map(|pid| freeze::freeze(&m.runtime, m.id(), pid)).transpose()?;
    let held = std::time::Instant::now();
    let result = work(init.is_some());
    if let Some(frozen) = frozen {
        freeze::thaw(&m.runtime, m.id(), &frozen)?;
        tracing::debug!(machine = m.name(), "held still for {} ms", held.elapsed().as_millis());
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
    let layers = Layers::of(&m.layout);
    layers.repair()?;
    ui.step(format!("{}: saving snapshot {name}", m.name()));
    let chain = frozen(m, Hold::ToCopyLayer, |running| {
        // A running machine's overlay holds its upper layer: that is copied. Otherwise
        // (halted, or its root left mounted by a killed command) it is renamed.
        if running {
            layers.copy_upper()
        } else {
            overlay::unmount_all(m.layout.dir())?;
            layers.freeze_upper()
        }
    })
    .with_context(|| format!("cannot save snapshot {name} of machine {}", m.name()))?;
    let top = *chain.last().context("a saved chain has a layer")?;
    let sidecar = Sidecar {
        format: FORMAT,
        name: name.to_string(),
        created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        size: layers.size(top),
        sha256: None,
        layers: chain,
    };
    crate::fsutil::write_atomic(&sidecar_path(&m.layout, name), serde_json::to_string_pretty(&sidecar)?.as_bytes())?;
    if let Some(old) = old {
        remove_archive_unless_used(&m.layout, &old)?;
    }
    remove_unused_layers(&m.layout)?;
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
    match sidecar.format {
        FORMAT if !sidecar.layers.is_empty() => {}
        FORMAT => bail!(bad("names no layer".into())),
        FORMAT_ARCHIVE => {
            let digest = sidecar.sha256.as_deref().unwrap_or_default();
            crate::boxes::parse_sha256(digest).map_err(|_| bad("names no valid sha256".into()))?;
        }
        other => bail!(bad(format!("snapshot record format {other} is not known to this envy (it reads {FORMAT_ARCHIVE} and {FORMAT}); upgrade envy"))),
    }
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
    let Some(archive) = gone.archive(layout) else { return Ok(()) };
    let used = list_sidecars(layout)?.iter().any(|s| s.sha256 == gone.sha256);
    if !used {
        match std::fs::remove_file(&archive) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", archive.display()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Layers neither the machine's chain nor a snapshot names are removed.
fn remove_unused_layers(layout: &Layout) -> Result<()> {
    let layers = Layers::of(layout);
    let mut used: BTreeSet<u32> = layers.chain()?.into_iter().collect();
    for sidecar in list_sidecars(layout)? {
        used.extend(sidecar.layers);
    }
    layers.remove_unused(&used)
}

pub fn restore(m: &Machine, name: &str, ui: &Ui) -> Result<()> {
    let sidecar = require_snapshot(&m.layout, m.name(), name)?;
    let layers = Layers::of(&m.layout);
    // Checked (and an archive unpacked) first: a bad snapshot leaves the machine untouched.
    let unpacked = match sidecar.archive(&m.layout) {
        Some(archive) => Some(unpack_archive(m, &sidecar, &archive)?),
        None => {
            if let Some(&id) = sidecar.layers.iter().find(|&&id| !layers.is_there(id)) {
                bail!(Error::SnapshotLayerGone { machine: m.name().to_string(), name: name.to_string(), layer: layers.path(id) });
            }
            None
        }
    };
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
    match unpacked {
        // An archive holds the whole upper layer over the box.
        Some(staging) => {
            layers.set_chain(&[])?;
            std::fs::rename(&staging, m.layout.upper())?;
        }
        None => {
            layers.set_chain(&sidecar.layers)?;
            layers.fresh_upper(sidecar.layers.last().copied())?;
        }
    }
    std::fs::remove_dir_all(&old).ok();
    // overlayfs's work dir belongs to the old upper layer.
    if m.layout.work().exists() {
        std::fs::remove_dir_all(m.layout.work())?;
    }
    remove_unused_layers(&m.layout)?;
    if was_running {
        m.start_container(&m.recorded_box()?)?;
    }
    Ok(())
}

/// A format-2 snapshot's archive, checked against its record and unpacked beside the
/// machine's upper layer; returns where.
fn unpack_archive(m: &Machine, sidecar: &Sidecar, archive: &Path) -> Result<PathBuf> {
    let name = &sidecar.name;
    let want = sidecar.sha256.clone().unwrap_or_default();
    // The archive must be the one that was saved, byte for byte.
    let got = crate::boxes::sha256_file(archive)?;
    if got != want {
        bail!(Error::SnapshotDamaged { machine: m.name().to_string(), name: name.to_string(), archive: archive.to_path_buf(), got, want });
    }
    let staging = m.layout.restore_tmp();
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    crate::fsutil::create_private_dir(&staging)?;
    let unpacked = crate::boxes::unpack_upper(archive, &staging, &format!("snapshot {name} of machine {}", m.name()));
    if let Err(e) = unpacked {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e.into());
    }
    Ok(staging)
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
    remove_archive_unless_used(layout, &sidecar)?;
    remove_unused_layers(layout)
}

/// Writes `layer.tar`, the machine's upper layer as an OCI image layer, into `dir`
/// (the container paused meanwhile, so the layer is one moment's state).
pub fn export_layer(m: &Machine, dir: &Path, ui: &Ui) -> Result<PathBuf> {
    if !m.layout.exists() {
        return Err(missing_machine(m));
    }
    let target = dir.join("layer.tar");
    ui.step(format!("{}: packing its changes as an image layer", m.name()));
    let layers = Layers::of(&m.layout);
    frozen(m, Hold::ToRead, |_| {
        if layers.chain()?.is_empty() {
            return crate::boxes::pack_layer_dir(&m.layout.upper(), &target);
        }
        // Its changes over the box are its frozen layers and its upper one, as one layer.
        let merged = m.layout.merging();
        let _ = std::fs::remove_dir_all(&merged);
        let packed = layers.merge_all(&merged).and_then(|()| crate::boxes::pack_layer_dir(&merged, &target));
        let _ = std::fs::remove_dir_all(&merged);
        packed
    })?;
    Ok(target)
}

/// Hands `pack` the machine's root filesystem (box + its layers) as the tree of the
/// box's `rootfs.tar`, the machine held still meanwhile.
pub fn export(m: &Machine, lower: &Path, ui: &Ui, pack: &mut crate::provider::ExportPack<'_>) -> Result<()> {
    if !m.layout.exists() {
        return Err(missing_machine(m));
    }
    let rootfs = m.layout.rootfs();
    let mounted_here = !overlay::is_mounted(&rootfs)?;
    if mounted_here {
        m.mount_root(lower, super::RootFor::Reading)?;
    }
    ui.step(format!("{}: exporting its root filesystem", m.name()));
    let payloads = std::collections::BTreeMap::from([("rootfs.tar".to_string(), crate::boxes::Payload::Tree(rootfs))]);
    let packed = frozen(m, Hold::ToRead, |_| pack(&payloads).with_context(|| format!("cannot export the root filesystem of machine {}", m.name())));
    if mounted_here {
        overlay::unmount_all(m.layout.dir())?;
    }
    packed
}
