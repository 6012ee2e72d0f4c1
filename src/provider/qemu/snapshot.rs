//! Machine snapshots as qcow2 internal snapshots of the overlay: a running machine's
//! include memory and device state (QMP snapshot-save/-load jobs), except when sync
//! folders are attached (QEMU 7.2 blocks migration for both 9p and vhost-user-fs) when
//! they are disk-only (QMP blockdev-snapshot-internal-sync); a halted machine's are
//! disk-only (qemu-img).

use super::disk;
use super::files::MachineFiles;
use super::qmp::{self, Qmp, SnapshotJob};
use crate::process::Process;
use crate::provider::{Error, SnapshotInfo};

/// QMP name of the machine's disk drive (the overlay), and of its block node.
pub const OVERLAY_DEVICE: &str = "overlay";
const OVERLAY_NODE: &str = "overlay-node";

pub fn list(files: &MachineFiles) -> Result<Vec<SnapshotInfo>, Error> {
    Ok(disk::info(&files.overlay)?
        .snapshots
        .into_iter()
        .map(|s| SnapshotInfo { name: s.name, created: s.date_sec, size: s.vm_state_size, memory: s.vm_state_size > 0 })
        .collect())
}

fn find(files: &MachineFiles, name: &str) -> Result<Option<SnapshotInfo>, Error> {
    Ok(list(files)?.into_iter().find(|s| s.name == name))
}

/// The snapshot named `name`, or an error naming the ones there are.
pub fn get(files: &MachineFiles, machine: &str, name: &str) -> Result<SnapshotInfo, Error> {
    crate::provider::check_snapshot_name(name)?;
    let all = list(files)?;
    let known = all.iter().map(|s| s.name.clone()).collect();
    all.into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| Error::NoSnapshot { machine: machine.to_string(), name: name.to_string(), known })
}

/// Runs a snapshot job on the running machine's overlay (which also holds the VM state).
fn job(files: &MachineFiles, job: SnapshotJob, name: &str) -> Result<(), Error> {
    Qmp::connect(&files.qmp_socket, qmp::SLOW)?.snapshot_job(job, name, OVERLAY_NODE)
}

fn qemu_img_snapshot(files: &MachineFiles, flag: &str, name: &str, doing: &str) -> Result<(), Error> {
    Process::new("qemu-img").args(["snapshot", flag, name]).arg(&files.overlay).doing(doing).run()?;
    Ok(())
}

/// Saves snapshot `name`; a running machine's holds its memory when `with_memory` (no
/// sync folder is attached, which QEMU would refuse to migrate).
pub fn save(files: &MachineFiles, machine: &str, name: &str, running: bool, with_memory: bool) -> Result<SnapshotInfo, Error> {
    crate::provider::check_snapshot_name(name)?;
    if find(files, name)?.is_some() {
        return Err(Error::SnapshotExists { machine: machine.to_string(), name: name.to_string() });
    }
    if running && with_memory {
        job(files, SnapshotJob::Save, name)?;
    } else if running {
        Qmp::connect(&files.qmp_socket, qmp::SLOW)?.snapshot_disk(OVERLAY_DEVICE, name)?;
    } else {
        qemu_img_snapshot(files, "-c", name, &format!("saving snapshot {name} of machine {machine}"))?;
    }
    find(files, name)?.ok_or_else(|| Error::SnapshotNotRecorded { machine: machine.to_string(), name: name.to_string() })
}

/// Restores a snapshot: live (memory and disk) on a running machine when the snapshot
/// holds memory; otherwise the machine must be halted and its disk is rewound.
pub fn restore(files: &MachineFiles, machine: &str, snapshot: &SnapshotInfo, running: bool) -> Result<(), Error> {
    let name = &snapshot.name;
    if running && snapshot.memory {
        return job(files, SnapshotJob::Load, name);
    }
    if running {
        return Err(Error::MustBeHalted {
            machine: machine.to_string(),
            reason: format!("snapshot {name} of machine {machine} holds no memory, so it is restored halted"),
        });
    }
    qemu_img_snapshot(files, "-a", name, &format!("restoring snapshot {name} of machine {machine}"))
}

pub fn delete(files: &MachineFiles, machine: &str, name: &str, running: bool) -> Result<(), Error> {
    get(files, machine, name)?;
    if running {
        job(files, SnapshotJob::Delete, name)
    } else {
        qemu_img_snapshot(files, "-d", name, &format!("deleting snapshot {name} of machine {machine}"))
    }
}
