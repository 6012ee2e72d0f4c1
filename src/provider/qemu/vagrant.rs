//! Vagrant's guest contract, for a machine made from a Vagrant box (a libvirt `.box` or
//! `vagrant://`): such a guest reads no seed, and has a `vagrant` user that Vagrant's
//! public insecure key logs in as, with passwordless sudo. At the machine's first boot
//! envy logs in that way once and runs its first-boot agent (boxes/agent.sh) under sudo:
//! root and `vagrant` get the machine's own key in place of the insecure one. At every
//! later boot envy logs in as root with that key and runs the agent again, for the
//! hostname, the sync mounts and the project NIC (docs/box-format.md, "Vagrant boxes").

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use super::files::MachineFiles;
use super::ssh::SshTarget;
use crate::boxes::agent;
use crate::provider::Error;

/// The user Vagrant boxes are made for.
pub const USER: &str = "vagrant";
/// Vagrant's insecure private keys, as Vagrant publishes them (keys/ in its repository):
/// a box made for Vagrant authorizes one of them for `vagrant` until first use.
const INSECURE_KEYS: [(&str, &str); 2] = [
    ("vagrant-insecure-ed25519", include_str!("vagrant-insecure-ed25519.key")),
    ("vagrant-insecure-rsa", include_str!("vagrant-insecure-rsa.key")),
];
/// How long the agent may take in the guest (it waits up to 5 s for the seed disk).
const AGENT_LIMIT: Duration = Duration::from_secs(120);
/// The most the agent prints that envy reads.
const AGENT_OUTPUT_MAX: usize = 64 << 10;

/// The insecure keys' files in the machine dir, which `destroy` removes.
pub fn key_files(files: &MachineFiles) -> Vec<PathBuf> {
    INSECURE_KEYS.iter().map(|(name, _)| files.dir.join(name)).collect()
}

/// The target of the first login: `vagrant`, with Vagrant's insecure keys written
/// (0600) into the machine dir, over the machine's SSH port and known_hosts. The
/// machine's own key is offered too: a first login cut short after the agent ran (envy
/// killed) left it as the only one `vagrant` accepts.
pub fn first_login(files: &MachineFiles, machine: &SshTarget) -> Result<SshTarget> {
    for ((_, text), path) in INSECURE_KEYS.iter().zip(key_files(files)) {
        crate::fsutil::write_atomic(&path, text.as_bytes())?;
    }
    let keys = key_files(files).into_iter().chain(machine.keys.iter().cloned()).collect();
    Ok(SshTarget { user: USER.to_string(), keys, control: files.socket("ssh-vagrant.ctl"), ..machine.clone() })
}

/// Runs envy's agent in the guest through `target` (under sudo unless it is root):
/// what it prints is returned for the log, a failure names the machine and the contract.
pub fn run_agent(target: &SshTarget, machine: &str, dir: &Path) -> Result<String> {
    let sudo = if target.user == "root" { "" } else { "sudo -n " };
    let script = tempfile::Builder::new().prefix(".agent-").tempfile_in(dir)?;
    std::fs::write(script.path(), agent::SCRIPT)?;
    let remote = format!("{sudo}sh -s -- --login-user {USER}");
    let out = target.output(&remote, Some(script.path()), AGENT_OUTPUT_MAX, AGENT_LIMIT).map_err(|e| Error::VagrantContract {
        machine: machine.to_string(),
        user: target.user.clone(),
        detail: format!("{e:#}"),
    })?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Removes the insecure keys' files once the machine has its own key.
pub fn forget_insecure_keys(files: &MachineFiles) {
    for path in key_files(files) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_insecure_keys_are_the_ones_vagrant_boxes_authorize() {
        // The public halves Vagrant puts into its boxes' authorized_keys.
        let published = [
            "AAAAC3NzaC1lZDI1NTE5AAAAIN1YdxBpNlzxDqfJyw/QKow1F+wvG9hXGoqiysfJOn5Y",
            "AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNltGEFHzD8+v1I2YJ6oXevct1YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMzF8dJSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUecp4pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJnAmCP3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXzcWyLbIbEgE98OHlnVYCzRdK8jlqm8tehUc9c9WhQ==",
        ];
        let dir = tempfile::tempdir().unwrap();
        for ((name, text), public) in super::INSECURE_KEYS.iter().zip(published) {
            let path = dir.path().join(name);
            crate::fsutil::write_atomic(&path, text.as_bytes()).unwrap();
            let derived = std::process::Command::new("ssh-keygen").arg("-y").arg("-f").arg(&path).output().expect("ssh-keygen (openssh-client)");
            assert!(String::from_utf8_lossy(&derived.stdout).contains(public), "{name}: {derived:?}");
        }
    }
}
