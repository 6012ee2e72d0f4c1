//! Exit codes and the top-level error report. Modules raise their own typed errors;
//! here each family is mapped to one documented exit code (docs/cli.md).

/// Exit codes shared by every command.
pub mod code {
    /// An error that fits no family below.
    pub const FAILURE: i32 = 1;
    /// The command line itself was wrong (clap).
    pub const USAGE: i32 = 2;
    /// The Envfile or Envfile.lock is malformed or inconsistent (or a Vagrantfile to convert is).
    pub const ENVFILE: i32 = 3;
    /// A box could not be fetched, verified or unpacked.
    pub const BOX: i32 = 4;
    /// A provider (runc, QEMU, network) failed, or the host lacks what it needs.
    pub const PROVIDER: i32 = 5;
    /// Another envy command holds this project's lock and `--no-wait` was given.
    pub const BUSY: i32 = 6;
    /// The machine is not in a state that allows the command (e.g. exec on a halted machine),
    /// or did not become ready (its Envfile `ready` check) in time.
    pub const STATE: i32 = 7;
    /// exec/run: the command exists in the machine but cannot be executed (as shells say).
    pub const COMMAND_NOT_EXECUTABLE: i32 = 126;
    /// exec/run: no such command in the machine (as shells say).
    pub const COMMAND_NOT_FOUND: i32 = 127;
    /// Interrupted by SIGINT (128 + 2, as shells report it).
    pub const INTERRUPTED: i32 = 130;
}

/// Picks the exit code for an error by the first typed error found in its chain;
/// a failed provision step passes on its own code.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if cause.is::<crate::signals::Interrupted>()
            || matches!(cause.downcast_ref::<crate::boxes::Error>(), Some(crate::boxes::Error::Interrupted { .. }))
        {
            return code::INTERRUPTED;
        }
        if cause.is::<crate::copy_in::CopyFailed>() {
            return code::PROVIDER;
        }
        if let Some(failed) = cause.downcast_ref::<crate::lifecycle::ProvisionFailed>() {
            return failed.code;
        }
        if cause.is::<crate::envfile::Error>() || cause.is::<crate::vagrantfile::Error>() {
            return code::ENVFILE;
        }
        if cause.is::<crate::boxes::Error>() {
            return code::BOX;
        }
        if let Some(e) = cause.downcast_ref::<crate::provider::Error>() {
            return provider_code(e);
        }
        if cause.is::<crate::provider::lxd::Error>() {
            return code::PROVIDER;
        }
        if cause.is::<crate::userns::Error>() {
            return code::PROVIDER;
        }
        if cause.is::<crate::process::ProcessError>() {
            return code::PROVIDER;
        }
        if cause.is::<crate::ready::Error>() {
            return code::STATE;
        }
        if cause.is::<crate::fsutil::BadRecord>() {
            return code::STATE;
        }
        if let Some(e) = cause.downcast_ref::<crate::state::Error>() {
            return match e {
                crate::state::Error::Busy { .. } => code::BUSY,
                _ => code::STATE,
            };
        }
    }
    code::FAILURE
}

/// Each provider error's one code: a machine in the wrong state is STATE, whatever
/// provider says so; everything else is the provider's (or the host's) failure.
fn provider_code(e: &crate::provider::Error) -> i32 {
    use crate::provider::Error as E;
    match e {
        E::MustBeHalted { .. } => code::STATE,
        E::Process(_)
        | E::Unsupported { .. }
        | E::UnknownProvider { .. }
        | E::GuestOutput { .. }
        | E::GuestPorts { .. }
        | E::HostForward { .. }
        | E::HostCheck { .. }
        | E::BadEnvVar { .. }
        | E::KvmUnusable { .. }
        | E::NotReady { .. }
        | E::VagrantContract { .. }
        | E::NoCommand
        | E::BadEnvName { .. }
        | E::KernelBootImage { .. }
        | E::VagrantBoxShare { .. }
        | E::InvalidSnapshotName { .. }
        | E::NoSnapshot { .. }
        | E::SnapshotExists { .. }
        | E::SnapshotNotRecorded { .. }
        | E::SnapshotDamaged { .. }
        | E::SnapshotLayerGone { .. }
        | E::NoRoomToReplace { .. }
        | E::QmpUnreachable { .. }
        | E::QmpRefused { .. }
        | E::QmpJob { .. }
        | E::QemuNoPid { .. }
        | E::RecordPid { .. }
        | E::Unkillable { .. }
        | E::DiskInfo { .. }
        | E::BadBoxDisk { .. }
        | E::BoxDiskNotStandalone { .. }
        | E::DiskBelowBox { .. }
        | E::DiskShrink { .. }
        | E::TooManyMachines { .. }
        | E::PortTaken { .. }
        | E::ForwardFailed { .. }
        | E::SlirpNotReady { .. }
        | E::TapDevice { .. }
        | E::Host { .. }
        | E::ContainerStart { .. }
        | E::OverlayPath { .. }
        | E::OverlayMount { .. }
        | E::BindMount { .. }
        | E::Unmount { .. }
        | E::StillMounted { .. }
        | E::VirtiofsdNotStarted { .. }
        | E::VirtiofsdWrongRoot { .. } => code::PROVIDER,
    }
}

/// Prints the error and its causes to stderr, one per line.
pub fn report(err: &anyhow::Error) {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}
