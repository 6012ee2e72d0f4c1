//! The command line, and nothing else: clap definitions whose doc comments are the
//! `--help` text, the man page and the shell completions. Each subcommand is carried
//! out by one function in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::ProviderKind;

#[derive(Debug, Parser)]
#[command(
    name = "envy",
    version,
    about = "Reproducible dev environments: verified boxes booted as VMs or containers",
    long_about = "envy brings up the environment an Envfile describes: it fetches a verified \
base image (a box), boots it as a QEMU/KVM virtual machine or an OCI container, syncs the \
project in and provisions it.\n\nStart with `envy init`, then `envy up` and `envy exec -- CMD`.",
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 Envfile, 4 box, 5 provider, 6 busy, \
7 wrong machine state or not ready in time; exec and run pass the guest command's code through."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// More log output on stderr (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print machine-readable JSON on stdout (schema in docs/json.md).
    #[arg(long, global = true)]
    pub json: bool,
    /// Run as if started in DIR (where the Envfile is looked for).
    #[arg(short = 'C', long = "project", global = true, value_name = "DIR")]
    pub project: Option<PathBuf>,
    /// Fail at once instead of waiting when another envy command holds the project.
    #[arg(long, global = true)]
    pub no_wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write an Envfile for this folder from a template or a Vagrantfile.
    Init(InitArgs),
    /// Create, start and provision the Envfile's machines.
    Up(UpArgs),
    /// Show the state of this project's machines.
    Status(MachinesArgs),
    /// List every environment of this user, across projects.
    List,
    /// Open an interactive shell in a machine.
    Ssh(MachineArg),
    /// Run a command in a machine; its exit code is envy's.
    Exec(ExecArgs),
    /// Stop machines, keeping their disks and layers.
    Halt(HaltArgs),
    /// Halt and start machines again (picks up Envfile changes).
    Reload(MachinesArgs),
    /// Run the machines' provisioners again.
    Provision(MachinesArgs),
    /// Remove machines and every trace of them; never the box store or your files.
    Destroy(DestroyArgs),
    /// Save, restore, list and delete snapshots of a machine.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Pack a machine's current state into a verified box, optionally serving it.
    Share(ShareArgs),
    /// Throwaway copies of the machines: up, run CMD, destroy; exits with CMD's code
    #[command(long_about = "Throwaway copies of the Envfile's machines: each is brought up with its own state, \
network and ports (never the machines `envy up` made, nor another run's), waited for until its `ready` check \
passes, then CMD runs in --machine (default: the first), everything is destroyed and envy exits with CMD's \
code, also on Ctrl-C and SIGTERM. The Envfile.lock's pins are used and left unchanged. With --json, one JSON \
event a line on stdout: up, ready, exit, destroyed.\n\nWith --box, one bare machine of that box with this \
folder at /project instead.")]
    Run(RunArgs),
    /// Manage boxes: add, list, remove, prune, build, verify; outdated, update (pins).
    #[command(name = "box", subcommand)]
    Box(BoxCommand),
    /// LXD/Incus servers and clusters that lxd machines can run on (`remote = "NAME"`).
    #[command(subcommand)]
    Remote(RemoteCommand),
    /// Check this host for what envy needs, and say what to do about each problem.
    Doctor,
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Print envy's man page (roff).
    #[command(hide = true)]
    Man,
    /// The forward_auto watcher of one machine, started detached by `envy up`.
    #[command(name = "__forward-watch", hide = true)]
    ForwardWatch(MachineArg),
    /// Holds a normal user's envy namespaces between commands (started by the first that needs them).
    // userns.rs (HOLDER_COMMAND) spawns and recognises the holder by this name.
    #[command(name = "__userns-holder", hide = true)]
    UsernsHolder(UsernsHolderArgs),
    /// The process that enters a container for `envy exec` (provider/container/enter.rs).
    #[command(name = "__container-exec", hide = true)]
    ContainerExec(ContainerExecArgs),
    /// The process that makes a container for envy's own runtime (provider/container/create.rs).
    #[command(name = "__container-start", hide = true)]
    ContainerStart(ContainerStartArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Template to start from (minimal, rust, python, node, postgres-staging).
    #[arg(long, conflicts_with = "from_vagrantfile")]
    pub template: Option<String>,
    /// Convert a Vagrantfile (default: ./Vagrantfile) instead of using a template; what
    /// cannot be converted is listed with its line and marked TODO in the Envfile.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "Vagrantfile", conflicts_with_all = ["box_name", "provider"])]
    pub from_vagrantfile: Option<PathBuf>,
    /// Box for the machines (catalog name, or a URL with #sha256=...).
    #[arg(long = "box", value_name = "BOX")]
    pub box_name: Option<String>,
    /// Provider for the machines.
    #[arg(long, value_parser = crate::provider::name_parser())]
    pub provider: Option<ProviderKind>,
    /// Overwrite an existing Envfile.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Machines to bring up (default: all in the Envfile).
    pub machines: Vec<String>,
    /// Skip provisioning, even on first start.
    #[arg(long)]
    pub no_provision: bool,
    /// Accept box URLs the Envfile does not pin; the digest that arrives is pinned in
    /// Envfile.lock and checked from then on.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Debug, Args)]
pub struct MachinesArgs {
    /// Machines to act on (default: all in the Envfile).
    pub machines: Vec<String>,
}

/// `envy __userns-holder RUNTIME_DIR`.
#[derive(Debug, Args)]
pub struct UsernsHolderArgs {
    /// The runtime dir whose pid file names this holder; it exits once the file is gone.
    pub runtime_dir: PathBuf,
}

/// `envy __container-exec PIDFD ORDERS REPORT [CONSOLE]`: descriptors its parent handed it.
#[derive(Debug, Args)]
pub struct ContainerExecArgs {
    pub pidfd: i32,
    pub orders: i32,
    pub report: i32,
    pub console: Option<i32>,
}

/// `envy __container-start ORDERS REPORT`: descriptors its parent handed it.
#[derive(Debug, Args)]
pub struct ContainerStartArgs {
    pub orders: i32,
    pub report: i32,
}

#[derive(Debug, Args)]
pub struct MachineArg {
    /// Machine to use (may be left out when the Envfile has one).
    pub machine: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Machine to run in (may be left out when the Envfile has one).
    pub machine: Option<String>,
    /// Allocate a terminal even when stdin is not one (-t), or never (-T).
    #[arg(short = 't', long = "tty", overrides_with = "no_tty")]
    pub tty: bool,
    #[arg(short = 'T', long = "no-tty")]
    pub no_tty: bool,
    /// Working directory inside the machine.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct HaltArgs {
    /// Machines to halt (default: all).
    pub machines: Vec<String>,
    /// Kill at once instead of asking the guest to shut down.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// Machines to destroy (default: all).
    pub machines: Vec<String>,
    /// Do not ask.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a snapshot (a running VM's memory too).
    #[command(override_usage = "envy snapshot save [OPTIONS] [MACHINE] <NAME>")]
    Save(SnapshotArgs),
    /// Put a machine back to a snapshot.
    #[command(override_usage = "envy snapshot restore [OPTIONS] [MACHINE] <NAME>")]
    Restore(SnapshotArgs),
    /// List a machine's snapshots.
    List(MachineArg),
    /// Delete a snapshot and free its space.
    #[command(override_usage = "envy snapshot delete [OPTIONS] [MACHINE] <NAME>")]
    Delete(SnapshotArgs),
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// `[MACHINE] NAME`: the machine may be left out when the Envfile has one.
    #[arg(num_args = 1..=2, required = true, value_name = "[MACHINE] NAME")]
    pub words: Vec<String>,
    /// Overwrite a snapshot of the same name.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ShareArgs {
    /// Machine to share (may be left out when the Envfile has one).
    pub machine: Option<String>,
    /// Where to write the box (default: <machine>.box in the project).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Serve the box over HTTP after packing it (default 127.0.0.1:0, a free port).
    #[arg(long, value_name = "ADDR:PORT", num_args = 0..=1, default_missing_value = "127.0.0.1:0")]
    pub serve: Option<String>,
    /// Push the machine to an OCI registry instead of writing a box: a container as its
    /// box's layers plus its own changes as one layer, a halted VM as a containerDisk.
    /// Prints the Envfile line pinning it.
    #[arg(long, value_name = "oci://REGISTRY/REPO:TAG", conflicts_with_all = ["output", "serve"])]
    pub push: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run one bare machine of this box, with this folder at /project, instead of the
    /// Envfile's machines (catalog name, URL#sha256=..., or a path).
    #[arg(long = "box", value_name = "BOX")]
    pub box_name: Option<String>,
    /// Provider of the --box machine [default: container, or lxd with --remote].
    #[arg(long, value_parser = crate::provider::name_parser(), requires = "box_name")]
    pub provider: Option<ProviderKind>,
    /// Run the throwaway machines on this LXD remote (`envy remote add`), as
    /// `remote = "NAME"` on each would.
    #[arg(long, value_name = "NAME")]
    pub remote: Option<String>,
    /// Keep the --box machine when CMD fails, to look around.
    #[arg(long, requires = "box_name")]
    pub keep_on_failure: bool,
    /// The Envfile's machine to run CMD in (default: the first).
    #[arg(long, short, value_name = "MACHINE", conflicts_with = "box_name")]
    pub machine: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Trust envy's client certificate on a server with a token and pin the server's certificate.
    #[command(long_about = "Makes envy's client certificate (once, 0600 in envy's config dir), trades TOKEN for \
the server's trust (make one on the server with `lxc config trust add --name envy`), and pins the sha256 of the \
server's certificate: the one the token names, or the one it shows now. A server that later shows another \
certificate is refused.")]
    Add(RemoteAddArgs),
    /// List the remotes envy knows.
    List,
    /// Forget a remote (the server keeps trusting envy's certificate until its admin removes it).
    Remove(RemoteRemoveArgs),
}

#[derive(Debug, Args)]
pub struct RemoteAddArgs {
    /// The name Envfiles use (`remote = "NAME"`).
    pub name: String,
    /// The server's API address: https://HOST[:PORT] (port 8443 by default).
    pub url: String,
    /// A trust token from the server (`lxc config trust add --name envy`).
    #[arg(long, env = "ENVY_LXD_TOKEN", hide_env_values = true)]
    pub token: String,
}

#[derive(Debug, Args)]
pub struct RemoteRemoveArgs {
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum BoxCommand {
    /// Fetch a box into the store, verified: catalog name, URL, file, vagrant:// or oci://.
    Add(BoxAddArgs),
    /// List the boxes in the store.
    List,
    /// Remove a box from the store.
    Remove(BoxRemoveArgs),
    /// Remove every box no project's Envfile.lock references.
    Prune(BoxPruneArgs),
    /// Make a box from a root filesystem (a directory or a tarball).
    Build(BoxBuildArgs),
    /// Re-hash stored boxes and report any corruption.
    Verify(BoxVerifyArgs),
    /// List each machine's pinned box beside the newest build its source offers.
    Outdated(BoxOutdatedArgs),
    /// Move machines' Envfile.lock pins to the newest build: resolve, verify, fetch.
    Update(BoxUpdateArgs),
}

#[derive(Debug, Args)]
pub struct BoxOutdatedArgs {
    /// Machines to check (default: all in the Envfile).
    pub machines: Vec<String>,
}

#[derive(Debug, Args)]
pub struct BoxUpdateArgs {
    /// Machines to update (default: all in the Envfile). A machine that exists keeps
    /// its old base until it is destroyed and brought up again.
    pub machines: Vec<String>,
    /// Accept whatever arrives from a URL box the Envfile gives no digest for.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Debug, Args)]
pub struct BoxAddArgs {
    /// Catalog name (name or name@version), URL, path of a .box/.qcow2/rootfs tarball
    /// (or of a libvirt Vagrant box), a Vagrant Cloud box vagrant://USER/BOX[@VERSION],
    /// or image oci://REGISTRY/REPO[:TAG][@sha256:DIGEST] (Docker Hub names work too:
    /// oci://debian:12).
    pub source: String,
    /// Expected sha256 of the file (64 hex digits).
    #[arg(long, value_parser = crate::boxes::parse_sha256)]
    pub sha256: Option<String>,
    /// Name to list the box under.
    #[arg(long)]
    pub name: Option<String>,
    /// Accept a URL with no digest to check (the digest that arrived is recorded).
    #[arg(long)]
    pub insecure: bool,
    /// Catalog to resolve names in (a directory, a .toml file or a URL); or ENVY_CATALOG.
    #[arg(long, env = "ENVY_CATALOG")]
    pub catalog: Option<String>,
}

#[derive(Debug, Args)]
pub struct BoxRemoveArgs {
    /// Box name or digest (a unique prefix of at least 8 hex digits is enough).
    pub boxes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct BoxPruneArgs {
    /// Only say what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BoxKindArg {
    Container,
    Qemu,
}

#[derive(Debug, Args)]
pub struct BoxBuildArgs {
    /// Root filesystem: a directory, or a tarball (e.g. from mmdebstrap).
    #[arg(long)]
    pub rootfs: PathBuf,
    /// Box name written into its manifest.
    #[arg(long)]
    pub name: String,
    /// Box version written into its manifest.
    #[arg(long, default_value = "0")]
    pub version: String,
    /// What the box is for. A qemu box's rootfs needs an init, an SSH server, and
    /// cloud-init or else an init (systemd, busybox) that starts envy's first-boot agent,
    /// which is then installed into the disk.
    #[arg(long, value_enum, default_value = "container")]
    pub kind: BoxKindArg,
    /// Size of the VM disk (qemu boxes), e.g. 2GiB; default: the rootfs plus room.
    #[arg(long)]
    pub disk_size: Option<String>,
    /// Extra kernel command line for direct boot (qemu boxes).
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Output file (default: NAME.box).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Also add the built box to the store.
    #[arg(long)]
    pub add: bool,
}

#[derive(Debug, Args)]
pub struct BoxVerifyArgs {
    /// Boxes to verify (default: all).
    pub boxes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// Shell to generate for.
    pub shell: clap_complete::Shell,
}

