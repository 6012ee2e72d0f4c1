//! Choosing QEMU's accelerator: KVM only where a real probe shows it works and it is
//! not the kvm-pvm software hypervisor (a stock kernel crawls under it), TCG otherwise.
//! `ENVY_ACCEL` wins over the Envfile, which wins over the probe.

use serde::Serialize;

use crate::model::Accel;
use crate::provider::Error;
use crate::ui::Ui;

/// The environment variable that forces the accelerator (`kvm`, `tcg` or `auto`).
pub const ENV: &str = "ENVY_ACCEL";

/// The accelerator QEMU is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Chosen {
    Kvm,
    Tcg,
}

impl Chosen {
    pub fn name(self) -> &'static str {
        match self {
            Chosen::Kvm => "kvm",
            Chosen::Tcg => "tcg",
        }
    }
}

/// What the host offers, for `up` and for `envy doctor`.
#[derive(Debug, Clone, Serialize)]
pub struct AccelReport {
    /// /dev/kvm opened and a VM could be created in it.
    pub kvm_works: bool,
    /// The KVM in place is kvm-pvm (software, slow for stock kernels).
    pub kvm_pvm: bool,
    /// One sentence on what was found.
    pub detail: String,
}

impl AccelReport {
    /// What `auto` picks on this host.
    pub fn auto_choice(&self) -> Chosen {
        if self.kvm_works && !self.kvm_pvm {
            Chosen::Kvm
        } else {
            Chosen::Tcg
        }
    }
}

/// The only KVM API version there has ever been (<linux/kvm.h>).
const KVM_API_VERSION: i32 = 12;

/// Probes /dev/kvm for real (open read-write, API version, create a VM) rather than
/// trusting that the file exists, and looks for kvm-pvm.
pub fn probe() -> AccelReport {
    let kvm_pvm = kvm_pvm_loaded();
    let (kvm_works, mut detail) = match probe_kvm() {
        Ok(()) => (true, "/dev/kvm works".to_string()),
        Err(why) => (false, why),
    };
    if kvm_works && kvm_pvm {
        detail = "/dev/kvm is kvm-pvm, a software hypervisor: stock kernels crawl under it, \
                  and QEMU 7.2 may abort on it (failed to set MSR 0x10a)"
            .into();
    }
    AccelReport { kvm_works, kvm_pvm, detail }
}

fn probe_kvm() -> Result<(), String> {
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| format!("cannot open /dev/kvm read-write ({e})"))?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(format!("/dev/kvm answers API version {version}, expected {KVM_API_VERSION}"));
    }
    // The VM (and its descriptor) is dropped at once: only whether it can be made counts.
    kvm.create_vm().map_err(|e| format!("/dev/kvm cannot create a VM ({e})"))?;
    Ok(())
}

/// kvm-pvm shows as a loaded module (or, when built in, in the kernel log).
fn kvm_pvm_loaded() -> bool {
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return true;
    }
    crate::process::Process::new("dmesg")
        .doing("looking for kvm-pvm in the kernel log")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("kvm-pvm: loaded"))
}

/// The accelerator for a machine: `ENVY_ACCEL`, then the Envfile's `accel`, then auto.
/// Auto avoiding KVM says why (and how to force it) through `ui.warn`.
pub fn choose(spec: Option<Accel>, ui: &Ui) -> Result<Chosen, Error> {
    let wanted = match std::env::var(ENV) {
        Ok(v) if !v.is_empty() => match v.as_str() {
            "kvm" => Accel::Kvm,
            "tcg" => Accel::Tcg,
            "auto" => Accel::Auto,
            _ => return Err(Error::BadEnvVar { name: ENV, value: v.clone(), expected: "an accelerator; use kvm, tcg or auto" }),
        },
        _ => spec.unwrap_or(Accel::Auto),
    };
    match wanted {
        Accel::Tcg => Ok(Chosen::Tcg),
        Accel::Kvm => {
            let report = probe();
            if report.kvm_works {
                Ok(Chosen::Kvm)
            } else {
                Err(Error::KvmUnusable { detail: report.detail })
            }
        }
        Accel::Auto => {
            let report = probe();
            let chosen = report.auto_choice();
            if chosen == Chosen::Tcg && report.kvm_pvm {
                ui.warn(format!(
                    "using TCG instead of KVM: {}; set {ENV}=kvm (or accel = \"kvm\") to use it anyway",
                    report.detail
                ));
            } else if chosen == Chosen::Tcg {
                tracing::debug!("KVM unusable ({}); using TCG", report.detail);
            }
            Ok(chosen)
        }
    }
}

/// For `envy doctor`: whether VMs get KVM here, or run under TCG (slower).
pub fn host_check() -> crate::model::HostCheck {
    use crate::model::{CheckStatus, HostCheck};
    let report = probe();
    let usable = report.auto_choice() == Chosen::Kvm;
    HostCheck {
        name: "kvm".into(),
        status: if usable { CheckStatus::Ok } else { CheckStatus::Warn },
        detail: report.detail,
        advice: (!usable).then(|| format!("VMs run under TCG (slower); set {ENV}=kvm to force KVM")),
        version_from: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_avoids_kvm_pvm_and_broken_kvm() {
        let report = |kvm_works, kvm_pvm| AccelReport { kvm_works, kvm_pvm, detail: String::new() };
        assert_eq!(report(true, false).auto_choice(), Chosen::Kvm);
        assert_eq!(report(true, true).auto_choice(), Chosen::Tcg);
        assert_eq!(report(false, false).auto_choice(), Chosen::Tcg);
    }

    #[test]
    fn the_probe_agrees_with_what_this_host_shows() {
        let report = probe();
        let openable = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
        if !openable {
            assert!(!report.kvm_works && report.detail.starts_with("cannot open /dev/kvm"), "{}", report.detail);
        }
        if std::path::Path::new("/sys/module/kvm_pvm").exists() {
            assert!(report.kvm_pvm);
        }
        match (report.kvm_works, report.kvm_pvm) {
            (true, true) => assert!(report.detail.contains("kvm-pvm"), "{}", report.detail),
            (true, false) => assert_eq!(report.detail, "/dev/kvm works"),
            (false, _) => assert!(report.detail.contains("/dev/kvm"), "{}", report.detail),
        }
    }
}
