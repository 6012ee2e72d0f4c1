//! Whether this host lets a normal user run envy's machines (docs/security.md, "root
//! and rootless"): user namespaces, a subordinate id range, newuidmap/newgidmap,
//! overlay inside a user namespace, a delegated cgroup, /dev/kvm and /dev/net/tun.
//! What can be tried is tried (a user namespace, an overlay mount in one), since a
//! sysctl or a file mode says less than the kernel's answer.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::model::{CheckStatus, HostCheck, ProviderKind};
use crate::process::Process;
use crate::userns::Mode;

use super::Finding;

/// The group doctor shows these checks under.
pub const GROUP: &str = "rootless";

/// The checks for the user running doctor (`mode`: inside envy's user namespace the
/// process is root there, so the user is told by the mode, not by the euid). Root's
/// envy uses no user namespace, so most of these would describe root (who opens
/// /dev/kvm, writes every cgroup and needs no subordinate ids) rather than the user who
/// later runs envy: as root only what the kernel allows anyone is shown, user
/// namespaces and overlay inside one.
pub fn checks(mode: &Mode) -> Vec<Finding> {
    let local: Vec<ProviderKind> = ["container", "qemu"].into_iter().map(ProviderKind::new).collect();
    let container = vec![ProviderKind::new("container")];
    let Mode::Rootless(mapping) = mode else {
        // Root's machines need neither: what these say is for the users of the host.
        return vec![finding(user_namespaces(), Vec::new()), finding(overlay_in_user_namespace(), Vec::new())];
    };
    // Every command of a normal user's envy joins its user namespace first (userns.rs).
    let everyone: Vec<ProviderKind> = crate::provider::registered().iter().map(|r| r.kind).collect();
    let mut found = vec![finding(user_namespaces(), everyone), finding(overlay_in_user_namespace(), container.clone())];
    let user = crate::userns::user_name(mapping.uid);
    found.push(finding(subordinate_ids(&user, mapping), Vec::new()));
    found.push(finding(id_map_tools(mapping.has_ranges()), container));
    found.push(finding(cgroup_delegation(), Vec::new()));
    found.push(finding(kvm_access(&user), Vec::new()));
    found.push(finding(tun_access(), local));
    found
}

/// A failed check blocks the providers that need it; a warning blocks nothing.
fn finding(check: HostCheck, needed_by: Vec<ProviderKind>) -> Finding {
    let needed_by = if check.status == CheckStatus::Fail { needed_by } else { Vec::new() };
    Finding { check, needed_by, group: Some(GROUP) }
}

fn check(name: &str, status: CheckStatus, detail: String, advice: Option<String>) -> HostCheck {
    HostCheck { name: name.into(), status, detail, advice: if status == CheckStatus::Ok { None } else { advice }, version_from: None }
}

/// The sysctls that can forbid user namespaces, then a real one.
fn user_namespaces() -> HostCheck {
    let name = "user namespaces";
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").ok().and_then(|s| s.trim().parse::<u64>().ok());
    if max == Some(0) {
        return check(name, CheckStatus::Fail, "user.max_user_namespaces is 0: the kernel allows no user namespace".into(), Some("sudo sysctl -w user.max_user_namespaces=15000 (and set it in /etc/sysctl.d/ to keep it)".into()));
    }
    // Debian's own knob (older kernels): 0 forbids them to everyone but root.
    let clone = std::fs::read_to_string("/proc/sys/kernel/unprivileged_userns_clone").ok();
    if clone.as_deref().map(str::trim) == Some("0") {
        return check(name, CheckStatus::Fail, "kernel.unprivileged_userns_clone is 0: only root may make user namespaces".into(), Some("sudo sysctl -w kernel.unprivileged_userns_clone=1 (and set it in /etc/sysctl.d/ to keep it)".into()));
    }
    let limit = max.map_or_else(|| "no user.max_user_namespaces".to_string(), |m| format!("user.max_user_namespaces {m}"));
    match Process::new("unshare").args(["--user", "--map-root-user", "true"]).doing("trying a user namespace").run() {
        Ok(_) => check(name, CheckStatus::Ok, format!("`unshare --user --map-root-user` works ({limit})"), None),
        Err(e) => check(
            name,
            CheckStatus::Fail,
            format!("`unshare --user --map-root-user` fails: {e}"),
            Some("allow user namespaces: an AppArmor or seccomp policy, or a sysctl (kernel.apparmor_restrict_unprivileged_userns), may forbid them".into()),
        ),
    }
}

/// An overlay mounted inside a new user and mount namespace, as a normal user's envy
/// mounts each container's root. The namespace (and so the mount) ends with `unshare`.
fn overlay_in_user_namespace() -> HostCheck {
    let name = "overlay in a user namespace";
    let tried = tempfile::Builder::new().prefix("envy-doctor-").tempdir().map_err(|e| format!("cannot make a temp dir to try it in: {e}")).and_then(|tmp| {
        let dir = |d: &str| -> Result<PathBuf, String> {
            let path = tmp.path().join(d);
            std::fs::create_dir(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            Ok(path)
        };
        let (lower, upper, work, merged) = (dir("lower")?, dir("upper")?, dir("work")?, dir("merged")?);
        let options = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
        let tried = Process::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "mount", "-t", "overlay", "overlay", "-o", &options])
            .arg(&merged)
            .doing("trying an overlay mount in a user namespace")
            .run()
            .map(drop)
            .map_err(|e| e.to_string());
        // overlayfs leaves work/work mode 000, which a normal user could not remove.
        let _ = std::fs::set_permissions(work.join("work"), std::os::unix::fs::PermissionsExt::from_mode(0o700));
        tried
    });
    match tried {
        Ok(()) => check(name, CheckStatus::Ok, "an overlay mounts inside `unshare --user --map-root-user --mount`".into(), None),
        Err(e) => check(
            name,
            CheckStatus::Fail,
            format!("cannot mount an overlay in a user namespace: {e}"),
            Some("use a kernel of 5.11 or later (overlayfs in user namespaces), with the overlay module loaded (`sudo modprobe overlay`)".into()),
        ),
    }
}

fn subordinate_ids(user: &str, mapping: &crate::userns::Mapping) -> HostCheck {
    let name = "subordinate ids";
    let show = |r: Option<crate::userns::IdRange>| r.map_or_else(|| "none".to_string(), |r| format!("{}-{}", r.start, u64::from(r.start) + u64::from(r.count) - 1));
    let detail = format!("uids {} in /etc/subuid, gids {} in /etc/subgid", show(mapping.subuids), show(mapping.subgids));
    if mapping.has_ranges() {
        return check(name, CheckStatus::Ok, detail, None);
    }
    check(
        name,
        CheckStatus::Warn,
        format!("{detail}: machines see one user only (root), and files a box gives other users become root's"),
        Some(format!("sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}")),
    )
}

/// newuidmap and newgidmap write a namespace's map of subordinate ids, which only
/// root may: they work when setuid root or given CAP_SETUID/CAP_SETGID as file
/// capabilities. Without a range they are not used.
fn id_map_tools(has_ranges: bool) -> HostCheck {
    let name = "newuidmap";
    let mut found = Vec::new();
    for tool in ["newuidmap", "newgidmap"] {
        let Some(path) = crate::provider::host::which(tool) else {
            let status = if has_ranges { CheckStatus::Fail } else { CheckStatus::Warn };
            return check(name, status, format!("{tool} is not installed or not on PATH; envy needs it to map the user's subordinate ids"), Some(crate::process::install_advice(tool)));
        };
        let meta = std::fs::metadata(&path);
        let setuid_root = meta.as_ref().is_ok_and(|m| m.uid() == 0 && m.mode() & libc::S_ISUID != 0);
        if !setuid_root && !has_file_capabilities(&path) {
            return check(
                name,
                CheckStatus::Fail,
                format!("{} is neither setuid root nor given file capabilities, so it cannot write a map", path.display()),
                Some(format!("sudo chown root {p} && sudo chmod u+s {p} (or reinstall the uidmap package)", p = path.display())),
            );
        }
        found.push(format!("{} ({})", path.display(), if setuid_root { "setuid root" } else { "file capabilities" }));
    }
    check(name, CheckStatus::Ok, found.join(", "), None)
}

fn has_file_capabilities(path: &Path) -> bool {
    xattr::get(path, "security.capability").is_ok_and(|caps| caps.is_some_and(|c| !c.is_empty()))
}

/// Limits of a rootless container go through a cgroup v2 subtree the user may write
/// (`userns::delegated_cgroup`).
fn cgroup_delegation() -> HostCheck {
    let name = "cgroup delegation";
    match crate::userns::delegated_cgroup() {
        Ok(dir) => check(name, CheckStatus::Ok, format!("{} is this user's, with memory and cpu", dir.display()), None),
        Err(why) => check(
            name,
            CheckStatus::Warn,
            format!("{why}: memory and cpu limits of rootless containers are not applied"),
            Some(
                "boot with cgroup v2 only (systemd.unified_cgroup_hierarchy=1) and log in through a systemd user session, \
                 whose user@.service has Delegate=yes (add `Delegate=memory cpu pids` in a drop-in for user@.service)"
                    .to_string(),
            ),
        ),
    }
}

fn kvm_access(user: &str) -> HostCheck {
    let name = "/dev/kvm access";
    let kvm = Path::new("/dev/kvm");
    let Ok(meta) = std::fs::metadata(kvm) else {
        return check(name, CheckStatus::Warn, "there is no /dev/kvm: VMs run under TCG (slow)".into(), Some("enable virtualization in the firmware and load kvm_intel or kvm_amd".into()));
    };
    match std::fs::OpenOptions::new().read(true).write(true).open(kvm) {
        Ok(_) => check(name, CheckStatus::Ok, format!("{user} can open /dev/kvm read-write"), None),
        Err(e) => {
            let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(meta.gid())).ok().flatten().map_or_else(|| meta.gid().to_string(), |g| g.name);
            let mode = meta.mode() & 0o777;
            let join = format!("sudo usermod -aG {group} {user}, then log in again");
            let advice = if meta.gid() != 0 && mode & 0o060 == 0o060 {
                join
            } else {
                format!("give /dev/kvm to a group as Debian's udev does (`sudo chgrp kvm /dev/kvm && sudo chmod 0660 /dev/kvm`), then sudo usermod -aG kvm {user} and log in again")
            };
            check(name, CheckStatus::Warn, format!("{user} cannot open /dev/kvm ({e}; it is {mode:o} owned by group {group}): VMs run under TCG (slow)"), Some(advice))
        }
    }
}

/// slirp4netns and a VM's tap open /dev/net/tun as the user.
fn tun_access() -> HostCheck {
    let name = "/dev/net/tun access";
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun") {
        Ok(_) => check(name, CheckStatus::Ok, "this user can open /dev/net/tun (slirp4netns and VM taps need it)".into(), None),
        Err(e) => check(
            name,
            CheckStatus::Fail,
            format!("this user cannot open /dev/net/tun ({e}); slirp4netns and VM taps need it"),
            Some("sudo chmod 0666 /dev/net/tun (Debian's udev makes it 0666; a host without udev may leave it 0600)".into()),
        ),
    }
}
