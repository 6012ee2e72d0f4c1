//! Host checks: what each provider needs, whether it is here, and what to do when
//! it is not. `envy doctor` prints them all; `envy up` runs the ones its machines
//! need first, so a missing tool fails with advice instead of a runc or QEMU error.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::envfile::ProviderKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, but not as well as it could (e.g. TCG instead of KVM).
    Warn,
    /// Missing or broken: what needs it will not work.
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// What was found (a version, a path, a number).
    pub detail: String,
    /// What to do when the status is not ok.
    pub advice: Option<String>,
    /// Providers that cannot work without this check passing.
    pub needed_by: Vec<ProviderKind>,
}

/// A tool that must be on PATH, the Debian package that has it, and who needs it.
struct Tool {
    name: &'static str,
    binary: &'static str,
    /// Flag that prints the version; None for tools without one.
    version_arg: Option<&'static str>,
    package: &'static str,
    needed_by: &'static [ProviderKind],
}

const TOOLS: &[Tool] = &[
    Tool { name: "runc", binary: "runc", version_arg: Some("--version"), package: "runc", needed_by: &[ProviderKind::Container] },
    Tool { name: "slirp4netns", binary: "slirp4netns", version_arg: Some("--version"), package: "slirp4netns", needed_by: &[ProviderKind::Container] },
    Tool { name: "iproute2", binary: "ip", version_arg: Some("-V"), package: "iproute2", needed_by: &[ProviderKind::Container] },
    Tool { name: "qemu", binary: "qemu-system-x86_64", version_arg: Some("--version"), package: "qemu-system-x86", needed_by: &[ProviderKind::Qemu] },
    Tool { name: "qemu-img", binary: "qemu-img", version_arg: Some("--version"), package: "qemu-utils", needed_by: &[ProviderKind::Qemu] },
    Tool { name: "ssh", binary: "ssh", version_arg: Some("-V"), package: "openssh-client", needed_by: &[ProviderKind::Qemu] },
    Tool { name: "mkfs.ext4", binary: "mkfs.ext4", version_arg: Some("-V"), package: "e2fsprogs", needed_by: &[] },
];

/// Every check, for `envy doctor`.
pub fn all(home: &Path) -> Vec<Check> {
    let mut checks: Vec<Check> = TOOLS.iter().map(tool).collect();
    checks.push(overlayfs());
    checks.push(kvm());
    checks.push(virtiofsd());
    checks.push(disk_space(home));
    checks
}

/// The checks a provider needs, failing ones first; `envy up` calls this.
pub fn require(kind: ProviderKind) -> Result<(), crate::provider::Error> {
    let failed = TOOLS
        .iter()
        .filter(|t| t.needed_by.contains(&kind))
        .map(tool)
        .chain((kind == ProviderKind::Container).then(overlayfs))
        .find(|c| c.status == Status::Fail);
    match failed {
        Some(c) => Err(crate::provider::Error::MissingTool {
            tool: c.name.to_string(),
            advice: format!("{} (the {kind} provider needs it; `envy doctor` checks everything)", c.advice.unwrap_or_default()),
        }),
        None => Ok(()),
    }
}

/// `require` for every provider the machines use, before any machine is touched.
pub fn require_for(machines: &[&crate::envfile::MachineSpec]) -> Result<(), crate::provider::Error> {
    machines.iter().try_for_each(|m| require(m.provider))
}

/// Where a binary is on PATH.
pub fn which(binary: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(binary)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn tool(t: &Tool) -> Check {
    let needed_by = t.needed_by.to_vec();
    let Some(path) = which(t.binary) else {
        return Check {
            name: t.name,
            status: if needed_by.is_empty() { Status::Warn } else { Status::Fail },
            detail: format!("{} is not on PATH", t.binary),
            advice: Some(format!("install it: apt-get install {}", t.package)),
            needed_by,
        };
    };
    let version = t.version_arg.and_then(|arg| Command::new(&path).arg(arg).output().ok()).map(|o| {
        let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
        String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_string()
    });
    let detail = match version {
        Some(v) => format!("{v} ({})", path.display()),
        None => path.display().to_string(),
    };
    Check { name: t.name, status: Status::Ok, detail, advice: None, needed_by }
}

fn overlayfs() -> Check {
    let present = std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.lines().any(|l| l.ends_with("\toverlay")));
    Check {
        name: "overlayfs",
        status: if present { Status::Ok } else { Status::Fail },
        detail: if present { "overlay is in /proc/filesystems".into() } else { "the kernel lists no overlay filesystem".into() },
        advice: (!present).then(|| "load it: modprobe overlay".to_string()),
        needed_by: vec![ProviderKind::Container],
    }
}

fn kvm() -> Check {
    let report = crate::provider::qemu::accel::probe();
    let usable = report.auto_choice() == crate::provider::qemu::accel::Chosen::Kvm;
    Check {
        name: "kvm",
        status: if usable { Status::Ok } else { Status::Warn },
        detail: report.detail,
        advice: (!usable).then(|| {
            format!("VMs run under TCG (slower); set {}=kvm to force KVM", crate::provider::qemu::accel::ENV)
        }),
        needed_by: Vec::new(),
    }
}

/// virtiofsd makes VM sync folders fast; without it they use 9p, which works.
fn virtiofsd() -> Check {
    use crate::provider::qemu::virtiofs;
    let found = virtiofs::find();
    let root = nix::unistd::geteuid().is_root();
    let (status, detail, advice) = match &found {
        Ok(path) if root => (Status::Ok, format!("VM sync folders use virtiofs ({})", path.display()), None),
        Ok(path) => (
            Status::Warn,
            format!("{} is here, but virtiofsd's sandbox needs root, so VM sync folders use 9p", path.display()),
            Some("run envy as root for virtiofs sync folders".to_string()),
        ),
        Err(why) => (
            Status::Warn,
            format!("{why}, so VM sync folders use 9p (about half as fast)"),
            Some(format!(
                "install it: apt-get install qemu-system-common (Debian 12 ships it as /usr/lib/qemu/virtiofsd), \
                 or `cargo install --locked virtiofsd` (needs libcap-ng-dev and libseccomp-dev); \
                 {} names another one, or none for 9p",
                virtiofs::ENV
            )),
        ),
    };
    Check { name: "virtiofsd", status, detail, advice, needed_by: Vec::new() }
}

fn disk_space(home: &Path) -> Check {
    // The home may not exist yet: measure the nearest folder that does.
    let existing = home.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let free = nix::sys::statvfs::statvfs(existing).map(|s| s.blocks_available() * s.fragment_size());
    match free {
        Ok(bytes) => {
            let gib = bytes as f64 / (1u64 << 30) as f64;
            let status = if bytes < 1 << 30 { Status::Fail } else if bytes < 5 << 30 { Status::Warn } else { Status::Ok };
            Check {
                name: "disk space",
                status,
                detail: format!("{gib:.1} GiB free for {}", home.display()),
                advice: (status != Status::Ok).then(|| "free space, or point ENVY_HOME at a larger disk; `envy box prune` removes unused boxes".to_string()),
                needed_by: if status == Status::Fail { vec![ProviderKind::Container, ProviderKind::Qemu] } else { Vec::new() },
            }
        }
        Err(e) => Check {
            name: "disk space",
            status: Status::Warn,
            detail: format!("cannot measure free space at {}: {e}", existing.display()),
            advice: None,
            needed_by: Vec::new(),
        },
    }
}
