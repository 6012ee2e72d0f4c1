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

/// `binary` is on PATH; `version_arg` makes it print its version (its first line is
/// shown). Missing is a failure: the provider cannot run without it.
pub fn tool(name: &str, binary: &str, version_arg: Option<&str>) -> HostCheck {
    let Some(path) = which(binary) else {
        return HostCheck {
            name: name.to_string(),
            status: CheckStatus::Fail,
            detail: format!("{binary} is not installed or not on PATH"),
            advice: Some(crate::process::install_advice(binary)),
        };
    };
    let version = version_arg.and_then(|arg| crate::process::Process::new(&path).arg(arg).output().ok()).map(|o| {
        let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
        String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_string()
    });
    let detail = match version {
        Some(v) => format!("{v} ({})", path.display()),
        None => path.display().to_string(),
    };
    HostCheck { name: name.to_string(), status: CheckStatus::Ok, detail, advice: None }
}

/// The kernel lists filesystem `fs` in /proc/filesystems; `name` is the check's.
pub fn filesystem(name: &str, fs: &str) -> HostCheck {
    let present = std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.lines().any(|l| l.ends_with(&format!("\t{fs}"))));
    HostCheck {
        name: name.to_string(),
        status: if present { CheckStatus::Ok } else { CheckStatus::Fail },
        detail: if present { format!("{fs} is in /proc/filesystems") } else { format!("the kernel lists no {fs} filesystem") },
        advice: (!present).then(|| format!("load it: modprobe {fs}")),
    }
}
