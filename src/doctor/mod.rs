//! Host checks: each provider's own (`Provider::host_checks`) and the host-wide ones,
//! with what to do about each. `envy doctor` prints them all; `envy up` runs those of
//! the providers its machines use first, so a missing tool fails with advice instead
//! of a runc or QEMU error.

use std::path::Path;

use serde::Serialize;

use crate::model::{CheckStatus, HostCheck, ProviderKind};
use crate::provider;

mod rootless;

/// One check as doctor reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    #[serde(flatten)]
    pub check: HostCheck,
    /// Providers that cannot work while this check fails.
    pub needed_by: Vec<ProviderKind>,
    /// The heading doctor shows it under ("rootless"); None for the provider and
    /// host-wide checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<&'static str>,
}

/// Every check, for `envy doctor`: each registered provider's, a check that several
/// providers share listed once, the host-wide ones, whether a normal user can run
/// machines here (`rootless`), then the remotes the providers reach (`remotes`).
pub fn all(home: &Path) -> Vec<Finding> {
    let mut findings: Vec<Finding> = Vec::new();
    for registration in provider::registered() {
        for check in (registration.make)().host_checks() {
            match findings.iter_mut().find(|f| f.check.name == check.name) {
                Some(found) => found.needed_by.push(registration.kind),
                None => findings.push(Finding { check: provider::host::with_version(check), needed_by: vec![registration.kind], group: None }),
            }
        }
    }
    let everyone: Vec<ProviderKind> = provider::registered().iter().map(|r| r.kind).collect();
    findings.push(Finding { check: box_build_tool(), needed_by: Vec::new(), group: None });
    let space = disk_space(home);
    let needed_by = if space.status == CheckStatus::Fail { everyone } else { Vec::new() };
    findings.push(Finding { check: space, needed_by, group: None });
    findings.extend(rootless::checks(&crate::userns::mode()));
    let state = crate::state::Home::at(home);
    for registration in provider::registered() {
        for check in (registration.make)().remote_checks(&state) {
            // A remote that fails stops that provider's machines on it.
            let needed_by = if check.status == CheckStatus::Fail { vec![registration.kind] } else { Vec::new() };
            findings.push(Finding { check, needed_by, group: Some("remotes") });
        }
    }
    findings
}

/// Fails with the first failed check of a provider the machines use, before any
/// machine is touched (`envy up`, `envy run`).
pub fn require(kinds: &[ProviderKind]) -> anyhow::Result<()> {
    let mut seen = Vec::new();
    for &kind in kinds {
        if seen.contains(&kind) {
            continue;
        }
        seen.push(kind);
        let failed = provider::for_kind(kind)?.host_checks().into_iter().find(|c| c.status == CheckStatus::Fail);
        if let Some(c) = failed {
            return Err(provider::Error::HostCheck {
                check: c.name,
                detail: c.detail,
                advice: c.advice.unwrap_or_default(),
                provider: kind.to_string(),
            }
            .into());
        }
    }
    Ok(())
}

/// `envy box build --kind qemu` makes the disk's filesystem with mkfs.ext4; machines
/// do not need it.
fn box_build_tool() -> HostCheck {
    let mut check = provider::host::with_version(provider::host::tool("mkfs.ext4", "mkfs.ext4", Some("-V")));
    if check.status == CheckStatus::Fail {
        check.status = CheckStatus::Warn;
        check.detail += " (only `envy box build --kind qemu` needs it)";
    }
    check
}

fn disk_space(home: &Path) -> HostCheck {
    // The home may not exist yet: measure the nearest folder that does.
    let existing = home.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let free = nix::sys::statvfs::statvfs(existing).map(|s| s.blocks_available() * s.fragment_size());
    match free {
        Ok(bytes) => {
            let gib = bytes as f64 / (1u64 << 30) as f64;
            let status = if bytes < 1 << 30 {
                CheckStatus::Fail
            } else if bytes < 5 << 30 {
                CheckStatus::Warn
            } else {
                CheckStatus::Ok
            };
            HostCheck {
                name: "disk space".into(),
                status,
                detail: format!("{gib:.1} GiB free for {}", home.display()),
                advice: (status != CheckStatus::Ok)
                    .then(|| "free space, or point ENVY_HOME at a larger disk; `envy box prune` removes unused boxes".to_string()),
                version_from: None,
            }
        }
        Err(e) => HostCheck {
            name: "disk space".into(),
            status: CheckStatus::Warn,
            detail: format!("cannot measure free space at {}: {e}", existing.display()),
            advice: None,
            version_from: None,
        },
    }
}
