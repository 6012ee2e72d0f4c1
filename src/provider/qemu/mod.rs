//! The qemu provider: OCI bundles run by runc over an overlay of the box's rootfs.
//! (Skeleton: the QEMU work fills this in.)

use anyhow::{bail, Result};

use crate::boxes::StoredBox;
use crate::envfile::ProviderKind;
use crate::plan::MachinePlan;
use crate::provider::{ExecRequest, MachineInfo, MachineState, Provider, SnapshotInfo};
use crate::ui::Ui;

pub struct QemuProvider;

impl QemuProvider {
    pub fn new() -> QemuProvider {
        QemuProvider
    }
}

impl Default for QemuProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl Provider for QemuProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Qemu
    }
    fn up(&self, _m: &MachinePlan, _s: &StoredBox, _ui: &Ui) -> Result<()> {
        bail!("qemu provider not built yet")
    }
    fn state(&self, _m: &MachinePlan) -> Result<MachineState> {
        Ok(MachineState::NotCreated)
    }
    fn info(&self, _m: &MachinePlan) -> Result<MachineInfo> {
        Ok(MachineInfo::default())
    }
    fn exec(&self, _m: &MachinePlan, _r: &ExecRequest) -> Result<i32> {
        bail!("qemu provider not built yet")
    }
    fn shell(&self, _m: &MachinePlan) -> Result<i32> {
        bail!("qemu provider not built yet")
    }
    fn halt(&self, _m: &MachinePlan, _f: bool, _ui: &Ui) -> Result<()> {
        bail!("qemu provider not built yet")
    }
    fn destroy(&self, _m: &MachinePlan, _ui: &Ui) -> Result<()> {
        bail!("qemu provider not built yet")
    }
    fn snapshot_save(&self, _m: &MachinePlan, _n: &str, _ui: &Ui) -> Result<SnapshotInfo> {
        bail!("qemu provider not built yet")
    }
    fn snapshot_restore(&self, _m: &MachinePlan, _n: &str, _ui: &Ui) -> Result<()> {
        bail!("qemu provider not built yet")
    }
    fn snapshot_list(&self, _m: &MachinePlan) -> Result<Vec<SnapshotInfo>> {
        bail!("qemu provider not built yet")
    }
    fn snapshot_delete(&self, _m: &MachinePlan, _n: &str) -> Result<()> {
        bail!("qemu provider not built yet")
    }
    fn export(&self, _m: &MachinePlan, _s: &StoredBox, _d: &std::path::Path, _ui: &Ui) -> Result<Vec<std::path::PathBuf>> {
        bail!("qemu provider not built yet")
    }
}
