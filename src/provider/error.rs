//! What can go wrong in a provider: one variant per condition, each a full sentence
//! naming the machine, file or port and what to do. src/error.rs gives every variant its
//! one exit code, and callers match variants, never message text.

use std::net::IpAddr;
use std::path::PathBuf;

use indicatif::HumanBytes;

/// A provider failed, or the host lacks something it needs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host tool is missing, could not start, or failed.
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
    /// The provider cannot do this at all (snapshots on a provider without them); the
    /// Provider trait's defaults give it.
    #[error("the {provider} provider cannot {what}")]
    Unsupported { provider: crate::model::ProviderKind, what: &'static str },
    /// A machine or record names a provider this envy does not have.
    #[error("provider {name:?} is not known: this envy has {known}")]
    UnknownProvider { name: String, known: String },
    /// What a machine printed for envy to read (its /proc/net/tcp over SSH) was too
    /// long, never ended, or could not be read; `log` holds ssh's own words.
    #[error("{problem} in the machine on SSH port {port}; see {}", .log.display())]
    GuestOutput { port: u16, problem: String, log: PathBuf },
    /// A machine's /proc/net/tcp text is not what Linux writes.
    #[error("machine {machine}: {problem}")]
    GuestPorts { machine: String, problem: String },
    /// QEMU's monitor refused to add or remove a host forward (`forward_auto`).
    #[error("QEMU could not {doing} for machine {machine}: {said}")]
    HostForward { machine: String, doing: String, said: String },
    /// A host check `envy up` runs before touching anything failed (`envy doctor`'s).
    #[error("{detail}: {advice} (the {provider} provider needs {check}; `envy doctor` checks everything)")]
    HostCheck { check: String, detail: String, advice: String, provider: String },
    /// An environment variable envy reads has a value it cannot use.
    #[error("{name}={value} is not {expected}")]
    BadEnvVar { name: &'static str, value: String, expected: &'static str },
    /// KVM was asked for and does not work here.
    #[error("KVM was asked for but {detail}; use accel = \"tcg\" (or ENVY_ACCEL=tcg), or fix /dev/kvm access")]
    KvmUnusable { detail: String },
    /// The machine did not become ready in time; `detail` holds what was seen (console tail).
    #[error("machine {machine} did not become ready within {seconds} s: {detail}")]
    NotReady { machine: String, seconds: u64, detail: String },
    /// A Vagrant box's guest did not take envy in as Vagrant's contract says.
    #[error("machine {machine} (a Vagrant box) could not be set up over SSH as {user}: {detail}. A Vagrant box must let user vagrant in with Vagrant's insecure key and give it passwordless sudo; the machine was stopped")]
    VagrantContract { machine: String, user: String, detail: String },
    /// The command needs the machine halted, and it runs.
    #[error("{reason}; run `envy halt {machine}` first")]
    MustBeHalted { machine: String, reason: String },
    /// `exec` with nothing to run.
    #[error("no command given to run in the machine; put it after `--`")]
    NoCommand,
    /// An environment variable name the guest's shell cannot take.
    #[error("environment variable name {key:?} is not valid; use letters, digits and _ (not first a digit)")]
    BadEnvName { key: String },
    /// A kernel-booted machine cannot become a containerDisk image.
    #[error("machine {machine} boots by kernel (box {box_name}), and a containerDisk image boots by firmware; share it as a box file with `envy share`")]
    KernelBootImage { machine: String, box_name: String },
    /// A machine made from a Vagrant box holds this machine's key in place of Vagrant's
    /// insecure one and reads no seed: a box made of its disk could not be entered.
    #[error("machine {machine} was made from Vagrant box {box_name}: its disk lets in this machine's own key instead of Vagrant's insecure one, and it reads no seed, so no machine made from a copy of it could be entered. Share a machine of a box that reads envy's seed (cloud-init, or one made by `envy box build`)")]
    VagrantBoxShare { machine: String, box_name: String },

    /// A snapshot name that could not be a file name, job id and qemu-img argument.
    #[error("snapshot name {name:?} is not valid: use 1-64 letters, digits, '.', '_' or '-', not starting with '.' and not only digits")]
    InvalidSnapshotName { name: String },
    /// No snapshot of that name; `known` lists the machine's snapshots.
    #[error("machine {machine} has no snapshot named {name}; {}", known_snapshots(.known))]
    NoSnapshot { machine: String, name: String, known: Vec<String> },
    /// Saving under a name that is taken, without --force.
    #[error("machine {machine} already has a snapshot named {name}; pass --force to replace it, or pick another name")]
    SnapshotExists { machine: String, name: String },
    /// QEMU reported success but the disk lists no such snapshot.
    #[error("snapshot {name} of machine {machine} was not recorded in its disk")]
    SnapshotNotRecorded { machine: String, name: String },
    /// A container snapshot's archive is not the one its record names.
    #[error(
        "snapshot {name} of machine {machine} is damaged: {} has sha256 {got}, its record says {want}; it was not restored \
         (delete it with `envy snapshot delete {name}`)",
        .archive.display()
    )]
    SnapshotDamaged { machine: String, name: String, archive: PathBuf, got: String, want: String },
    /// A container snapshot names a frozen layer that is not there.
    #[error(
        "snapshot {name} of machine {machine} is damaged: its layer {} is gone; it was not restored \
         (delete it with `envy snapshot delete {name}`)",
        .layer.display()
    )]
    SnapshotLayerGone { machine: String, name: String, layer: PathBuf },
    /// Replacing a snapshot would not leave room for the new one.
    #[error(
        "replacing snapshot {name} of machine {machine} needs about {} free in {} and {} are; \
         the old snapshot is kept: free space, or save under another name",
        HumanBytes(*.need), .dir.display(), HumanBytes(*.free)
    )]
    NoRoomToReplace { machine: String, name: String, dir: PathBuf, need: u64, free: u64 },

    /// QEMU's QMP socket does not answer.
    #[error("cannot talk to QEMU over its QMP socket {socket}: {problem}")]
    QmpUnreachable { socket: String, problem: String },
    /// QEMU answered a QMP command with an error.
    #[error("QEMU refused {command} (QMP socket {socket}): {problem}")]
    QmpRefused { command: &'static str, socket: String, problem: String },
    /// A QEMU snapshot job failed, vanished or overran.
    #[error("QEMU's job {job} {problem}")]
    QmpJob { job: String, problem: String },
    /// QEMU daemonized without leaving its pid.
    #[error("QEMU started but wrote no pid to {}; see {}", .pidfile.display(), .log.display())]
    QemuNoPid { pidfile: PathBuf, log: PathBuf },
    /// A process envy started could not be recorded, so it would be lost.
    #[error("cannot record {program}'s pid {pid}: {cause}")]
    RecordPid { program: &'static str, pid: u32, cause: String },
    /// QEMU survives SIGKILL (uninterruptible sleep).
    #[error("QEMU (pid {pid}) did not exit after SIGKILL; check `ps -p {pid}` and kill it by hand")]
    Unkillable { pid: u32 },

    /// `qemu-img info` printed something envy cannot read.
    #[error("qemu-img info printed unreadable JSON for {}: {cause}", .image.display())]
    DiskInfo { image: PathBuf, cause: serde_json::Error },
    /// The box's disk is not a qcow2 image qemu-img can read.
    #[error(
        "the box disk {} is not a readable qcow2 image; the box may be corrupt: \
         remove it with `envy box remove` and add it again.\n{stderr}",
        .disk.display()
    )]
    BadBoxDisk { disk: PathBuf, stderr: String },
    /// The box's disk names another file (a backing or data file) QEMU would open.
    #[error(
        "the box disk {} names the file {file} beneath it; a box disk must stand alone (QEMU would open that file \
         of this host for the machine): the box is refused; remove it with `envy box remove`",
        .disk.display()
    )]
    BoxDiskNotStandalone { disk: PathBuf, file: String },
    /// The Envfile's `disk` is smaller than the box's disk.
    #[error("disk = {size} bytes is smaller than the box's disk ({minimum} bytes); set disk to at least that or remove it from the Envfile")]
    DiskBelowBox { size: u64, minimum: u64 },
    /// The Envfile's `disk` would shrink the machine's disk.
    #[error(
        "disk = {size} bytes is smaller than the machine's disk ({current} bytes); \
         disks only grow: raise disk in the Envfile, or `envy destroy` and `envy up` to start smaller"
    )]
    DiskShrink { size: u64, current: u64 },

    /// The project network has no address left for this machine.
    #[error("a project can hold at most {limit} machines on its network; this is machine number {number}")]
    TooManyMachines { limit: usize, number: usize },
    /// Only root can make the project network's namespace.
    /// A forward's host port is taken; `holder` names the process when it is known.
    #[error(
        "host port {host_ip}:{host_port}/{protocol} wanted by machine {machine} is taken{}; free it, change the forward, or add `auto = true` to it",
        .holder.as_ref().map(|h| format!(" by {h}")).unwrap_or_default()
    )]
    PortTaken { host_ip: IpAddr, host_port: u16, protocol: &'static str, machine: String, holder: Option<String> },
    /// slirp4netns would not add a forward.
    #[error(
        "cannot forward {host_ip}:{host_port} to machine {machine} port {guest_port} ({protocol}): {cause}; \
         another program may be using that host port: free it or change the forward in the Envfile"
    )]
    ForwardFailed { host_ip: IpAddr, host_port: u16, machine: String, guest_port: u16, protocol: &'static str, cause: String },
    /// slirp4netns did not report its tap ready; `log` is its framed log.
    #[error("slirp4netns failed (not ready) while attaching to network namespace {netns}:\n{log}")]
    SlirpNotReady { netns: String, log: String },
    /// The VM's tap device could not be made.
    #[error(
        "cannot make tap device {name} in the project network: {cause}{}",
        if .cause.raw_os_error() == Some(libc::EBUSY) { "; another QEMU of this machine still holds it: run `envy halt --force` first" } else { "" }
    )]
    TapDevice { name: String, cause: std::io::Error },
    /// envy's own runtime could not make or start a container (native.rs).
    #[error("container {id} did not start: {reason}")]
    ContainerStart { id: String, reason: String },
    /// The host refused a resource envy needs (a pipe, a port, a path).
    #[error("cannot {doing}: {cause}")]
    Host { doing: String, cause: std::io::Error },

    /// A path overlayfs cannot name in its options.
    #[error(
        "cannot mount the machine's root filesystem: the path {} holds ',' or ':', which overlayfs cannot take; \
         move the project or ENVY_HOME to a path without them",
        .path.display()
    )]
    OverlayPath { path: PathBuf },
    /// The machine's overlay root could not be mounted.
    #[error(
        "cannot mount the overlay root filesystem at {} (lower {}): {cause}; check that the kernel has overlayfs; `envy doctor` says whether a normal user may mount it here",
        .merged.display(), .lower.display()
    )]
    OverlayMount { merged: PathBuf, lower: PathBuf, cause: nix::errno::Errno },
    /// A sync folder could not be bind-mounted into a container.
    #[error("cannot bind-mount a sync folder at {}: {cause}; `envy doctor` says what this host allows", .point.display())]
    BindMount { point: PathBuf, cause: nix::errno::Errno },
    /// A mount under the machine's dir stays, so nothing below it may be removed.
    #[error("cannot unmount {}: {cause}; unmount it by hand (umount -l) and try again", .point.display())]
    Unmount { point: PathBuf, cause: nix::errno::Errno },
    /// A mount is still listed after it was unmounted.
    #[error("{} is still mounted after unmounting; unmount it by hand (umount -l) and try again", .point.display())]
    StillMounted { point: PathBuf },

    /// virtiofsd made no socket in time (or died).
    #[error(
        "virtiofsd for sync folder {} did not start (no socket {} within {seconds} s); see {}, \
         or set ENVY_VIRTIOFSD=none to share folders over 9p",
        .folder.display(), .socket.display(), .log.display()
    )]
    VirtiofsdNotStarted { folder: PathBuf, socket: PathBuf, seconds: u64, log: PathBuf },
    /// virtiofsd's sandbox root is not the folder envy opened.
    #[error(
        "virtiofsd for sync folder {} does not serve the folder envy opened (it was replaced while the \
         machine started, or virtiofsd stopped; see {}); the machine was stopped: check the folder and run `envy up` again",
        .folder.display(), .log.display()
    )]
    VirtiofsdWrongRoot { folder: PathBuf, log: PathBuf },
}

/// "it has none" or "it has: a, b".
fn known_snapshots(known: &[String]) -> String {
    if known.is_empty() {
        "it has none".to_string()
    } else {
        format!("it has: {}", known.join(", "))
    }
}
