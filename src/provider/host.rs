//! Host checks the providers share (`Provider::host_checks`): a tool on PATH with its
//! version and the Debian package that has it, and a filesystem the kernel knows.

use std::path::PathBuf;

use crate::model::{CheckStatus, HostCheck};

/// Where a binary is on PATH.
pub fn which(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(binary)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// `binary` is on PATH; `version_arg` makes it print its version, which `with_version`
/// reads when it is shown. Missing is a failure: the provider cannot run without it.
pub fn tool(name: &str, binary: &str, version_arg: Option<&'static str>) -> HostCheck {
    let Some(path) = which(binary) else {
        return HostCheck {
            name: name.to_string(),
            status: CheckStatus::Fail,
            detail: format!("{binary} is not installed or not on PATH"),
            advice: Some(crate::process::install_advice(binary)),
            version_from: None,
        };
    };
    HostCheck {
        name: name.to_string(),
        status: CheckStatus::Ok,
        detail: path.display().to_string(),
        advice: None,
        version_from: version_arg.map(|arg| (path, arg)),
    }
}

/// The check with the found tool's version (the first line it prints) before its path.
pub fn with_version(mut check: HostCheck) -> HostCheck {
    if let Some((path, arg)) = check.version_from.take() {
        if let Ok(out) = crate::process::Process::new(&path).arg(arg).output() {
            let text = if out.stdout.is_empty() { out.stderr } else { out.stdout };
            let version = String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_string();
            check.detail = format!("{version} ({})", path.display());
        }
    }
    check
}

/// The kernel lists filesystem `fs` in /proc/filesystems; `name` is the check's.
pub fn filesystem(name: &str, fs: &str) -> HostCheck {
    let present = std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.lines().any(|l| l.ends_with(&format!("\t{fs}"))));
    HostCheck {
        version_from: None,
        name: name.to_string(),
        status: if present { CheckStatus::Ok } else { CheckStatus::Fail },
        detail: if present { format!("{fs} is in /proc/filesystems") } else { format!("the kernel lists no {fs} filesystem") },
        advice: (!present).then(|| format!("load it: modprobe {fs}")),
    }
}
