//! The OCI bundle a machine's container runs from (envy's runtime or runc: runtime.rs):
//! `config.json` built from oci-spec types (runc's own defaults for mounts, masked
//! paths and devices, plus envy's process, namespaces, sync folders, hosts/resolv.conf
//! and limits), and the generated network files. Any setting added here must be
//! applied by envy's runtime too (create.rs and enter.rs refuse one they do not know).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxResourcesBuilder, MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use super::layout::Layout;
use super::network::{self, MachineNet};
use crate::envfile::SyncFolder;
use crate::boxes::ImageRun;
use crate::plan::MachinePlan;

/// The init process: PID 1 of the container keeps it up, reaps orphans (the shell
/// waits for its children) and exits cleanly on SIGTERM. busybox and Debian both have it.
const INIT: &str = r#"trap "exit 0" TERM; while :; do sleep 3600 & wait $!; done"#;

/// Capabilities of docker's default set: enough for package managers to work.
const CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::NetRaw,
    Capability::SysChroot,
    Capability::Mknod,
    Capability::AuditWrite,
    Capability::Setfcap,
];

/// cgroup cpu period; the quota is `cpus` times this.
const CPU_PERIOD: u64 = 100_000;

/// The environment every process of the machine starts with: envy's defaults, then
/// an image box's `Env`, then the Envfile's `env` (each overriding the one before).
pub fn environment(plan: &MachinePlan, image: Option<&ImageRun>) -> Vec<String> {
    let home = image.and_then(|i| i.user.as_ref()).map_or(Some("/root".to_string()), |u| u.home.clone());
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ("TERM".into(), std::env::var("TERM").unwrap_or_else(|_| "xterm".into())),
    ];
    env.extend(home.map(|h| ("HOME".to_string(), h)));
    let image_env = image.map(|i| i.env.as_slice()).unwrap_or_default();
    for (key, value) in image_env.iter().map(|(k, v)| (k, v)).chain(&plan.spec.env) {
        env.retain(|(k, _)| k != key);
        env.push((key.clone(), value.clone()));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// `/etc/hosts`: the machine and its peers by name.
pub fn hosts_file(plan: &MachinePlan, net: &MachineNet) -> Result<String> {
    let mut text = format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n", net.ip, plan.name());
    for (peer, index) in &plan.peers {
        text.push_str(&format!("{}\t{peer}\n", network::machine_ip(*index)?));
    }
    Ok(text)
}

/// Where the runtime mounts the sync folders from: mount points in the machine dir that hold
/// the folders as they were opened, and read-only files laid over their guest paths.
#[derive(Debug, Default)]
pub struct SyncSources {
    pub folders: Vec<(PathBuf, SyncFolder)>,
    /// (mount point, guest path) of project files a guest must not rewrite.
    pub guarded: Vec<(PathBuf, String)>,
}

/// Writes hosts, resolv.conf and config.json into the machine dir.
pub fn write(plan: &MachinePlan, layout: &Layout, net: &MachineNet, sync: &SyncSources, image: Option<&ImageRun>) -> Result<()> {
    crate::fsutil::write_atomic(&layout.hosts(), hosts_file(plan, net)?.as_bytes())?;
    crate::fsutil::write_atomic(&layout.resolv_conf(), format!("nameserver {}\n", network::DNS).as_bytes())?;
    let spec = spec(plan, layout, net, sync, image)?;
    let json = serde_json::to_vec_pretty(&spec)?;
    crate::fsutil::write_atomic(&layout.config(), &json)
}

/// Where commands start: the image's WorkingDir, else the first sync folder, else /.
pub fn default_dir(plan: &MachinePlan, image: Option<&ImageRun>) -> String {
    image
        .and_then(|i| i.working_dir.clone())
        .or_else(|| plan.spec.sync.first().map(|s| s.guest.clone()))
        .unwrap_or_else(|| "/".into())
}

fn bind(source: &Path, destination: &str, readonly: bool) -> Result<oci_spec::runtime::Mount> {
    let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
    if readonly {
        options.push("ro".into());
    }
    Ok(MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(options)
        .build()?)
}

fn spec(plan: &MachinePlan, layout: &Layout, net: &MachineNet, sync: &SyncSources, image: Option<&ImageRun>) -> Result<Spec> {
    let caps: oci_spec::runtime::Capabilities = CAPABILITIES.into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()?;
    // `runc exec` starts commands with the init's user and directory unless told otherwise.
    let cwd = default_dir(plan, image);
    let user = image.and_then(|i| i.user.as_ref()).map_or((0, 0), |u| (u.uid, u.gid));
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(vec!["/bin/sh".to_string(), "-c".to_string(), INIT.to_string()])
        .env(environment(plan, image))
        .cwd(cwd)
        .user(UserBuilder::default().uid(user.0).gid(user.1).build()?)
        .capabilities(capabilities)
        .no_new_privileges(false)
        .build()?;

    let mut mounts = oci_spec::runtime::get_default_mounts();
    if crate::userns::only_root_inside() {
        // devpts's gid=5 (tty) names a group that a namespace holding root alone lacks.
        for mount in mounts.iter_mut().filter(|m| m.typ().as_deref() == Some("devpts")) {
            let options = mount.options().clone().unwrap_or_default().into_iter().filter(|o| !o.starts_with("gid=")).collect();
            mount.set_options(Some(options));
        }
    }
    for (source, folder) in &sync.folders {
        mounts.push(bind(source, &folder.guest, folder.readonly)?);
    }
    for (source, guest) in &sync.guarded {
        mounts.push(bind(source, guest, true)?);
    }
    mounts.push(bind(&layout.hosts(), "/etc/hosts", true)?);
    mounts.push(bind(&layout.resolv_conf(), "/etc/resolv.conf", true)?);

    let mut spec = Spec::default();
    spec.set_hostname(Some(plan.name().to_string()));
    spec.set_process(Some(process));
    spec.set_root(Some(RootBuilder::default().path(layout.rootfs()).readonly(false).build()?));
    spec.set_mounts(Some(mounts));
    spec.set_annotations(None);

    let linux = spec.linux_mut().as_mut().context("oci-spec's default spec has no linux section")?;
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    namespaces.retain(|ns| ns.typ() != LinuxNamespaceType::Network);
    namespaces.push(LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network).path(net.netns_path()).build()?);
    linux.set_namespaces(Some(namespaces));
    let limits = Limits::for_this_user();
    let mut resources = LinuxResourcesBuilder::default();
    let cgroups_path = match limits {
        Limits::Root => format!("/envy/{}", plan.runtime_id).into(),
        Limits::Delegated(dir) => dir.strip_prefix("/sys/fs/cgroup").unwrap_or(dir).join(format!("envy-{}", plan.runtime_id)),
        // runc, rootless, skips the cgroups it may not make only when no path is given.
        Limits::NotApplied => {
            linux.set_resources(Some(resources.build()?));
            return Ok(spec);
        }
    };
    linux.set_cgroups_path(Some(cgroups_path));
    if plan.spec.cpus > 0 {
        resources = resources.cpu(LinuxCpuBuilder::default().quota(i64::from(plan.spec.cpus) * CPU_PERIOD as i64).period(CPU_PERIOD).build()?);
    }
    if plan.spec.memory > 0 {
        resources = resources.memory(LinuxMemoryBuilder::default().limit(plan.spec.memory as i64).build()?);
    }
    linux.set_resources(Some(resources.build()?));
    Ok(spec)
}

/// Where a machine's memory and cpu limits go.
#[derive(Debug)]
pub enum Limits {
    /// Root's cgroups, under /envy.
    Root,
    /// A normal user's delegated cgroup v2 subtree (`userns::delegated_cgroup`).
    Delegated(std::path::PathBuf),
    /// A normal user without one: the limits cannot be applied, and `up` says so
    /// (runc, rootless, then leaves cgroups alone).
    NotApplied,
}

impl Limits {
    /// This user's, found once per process: a normal user's answer reads the mount
    /// table, which grows with every machine, and up, the bundle and the runtime ask.
    pub fn for_this_user() -> &'static Limits {
        static LIMITS: std::sync::OnceLock<Limits> = std::sync::OnceLock::new();
        LIMITS.get_or_init(|| {
            if !crate::userns::is_rootless() {
                return Limits::Root;
            }
            match crate::userns::delegated_cgroup() {
                Ok(dir) => Limits::Delegated(dir),
                Err(_) => Limits::NotApplied,
            }
        })
    }
}
