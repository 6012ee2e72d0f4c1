//! envy's first-boot agent (`agent.sh`): for a VM whose root filesystem has no
//! cloud-init, the small program that reads envy's NoCloud seed instead (hostname,
//! root's SSH key, the first NIC, sync mounts, bootcmd). `envy box build --kind qemu`
//! writes it into the disk it made and has the rootfs's init start it at every boot;
//! the qemu provider runs the same script over SSH for a Vagrant box. The rootfs
//! directory the user gave is never changed: the files go into the ext4 image with
//! debugfs (docs/box-format.md, "Guest contract (qemu)").

use std::path::{Path, PathBuf};

use super::Error;
use crate::process::Process;

/// The agent itself, as it runs in the guest.
pub const SCRIPT: &str = include_str!("agent.sh");
/// Where the agent lives in the guest.
pub const GUEST_PATH: &str = "/usr/lib/envy/envy-agent";
/// cloud-init reads the seed itself: such a rootfs needs no agent.
const CLOUD_INIT: &str = "/usr/bin/cloud-init";
/// The systemd unit that starts the agent before the SSH server.
const UNIT_PATH: &str = "/etc/systemd/system/envy-agent.service";
const UNIT_LINK: &str = "/etc/systemd/system/multi-user.target.wants/envy-agent.service";
const UNIT: &str = "[Unit]
Description=envy's first-boot agent: hostname, SSH key, network and mounts from envy's seed
DefaultDependencies=no
After=local-fs.target
Wants=network-pre.target
Before=network-pre.target ssh.service sshd.service dropbear.service systemd-user-sessions.service

[Service]
Type=oneshot
ExecStart=/usr/lib/envy/envy-agent
RemainAfterExit=yes
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
";
/// busybox init runs every `sysinit` line, in order, before it starts anything else.
const INITTAB: &str = "/etc/inittab";
const INITTAB_LINE: &str = "::sysinit:/usr/lib/envy/envy-agent";
/// Tools the agent calls, one of each group (busybox applets count).
const TOOLS: [(&str, &[&str], &str); 2] = [
    ("a POSIX shell", &["/bin/sh"], "dash or busybox"),
    ("ip", &["/sbin/ip", "/bin/ip", "/usr/sbin/ip", "/usr/bin/ip"], "iproute2"),
];

/// How the agent gets started at boot in one root filesystem.
#[derive(Debug, PartialEq)]
pub enum Starter {
    /// A unit, enabled for multi-user.target.
    Systemd,
    /// A `sysinit` line in /etc/inittab; the new inittab's text.
    BusyboxInit(String),
}

/// What `root` needs to read envy's seed: nothing when it has cloud-init, else the
/// agent started by its init (`init`, the host path of the file the init resolves to).
/// A rootfs that can do neither is refused with what is missing.
/// busybox acts as the applet its init path names, so only an init called `init` is busybox init.
pub fn needed(root: &Path, init: (&str, &Path), rootfs: &str, exists: impl Fn(&str) -> bool) -> Result<Option<Starter>, Error> {
    let (init_path, init) = init;
    if exists(CLOUD_INIT) {
        return Ok(None);
    }
    let refuse = |missing: String, advice: &str| Error::CannotBoot { rootfs: rootfs.to_string(), missing, advice: advice.to_string() };
    for (what, paths, package) in TOOLS {
        if !paths.iter().any(|p| exists(p)) {
            return Err(refuse(
                format!("{what} ({}) for envy's first-boot agent, which reads the seed when there is no cloud-init", paths.join(", ")),
                &format!("install {package}, or cloud-init"),
            ));
        }
    }
    match init.file_name().and_then(|n| n.to_str()) {
        Some("systemd") => Ok(Some(Starter::Systemd)),
        Some("busybox") if init_path.rsplit('/').next() == Some("init") => {
            let path = root.join(INITTAB.trim_start_matches('/'));
            let meta = std::fs::symlink_metadata(&path).ok().filter(|m| m.is_file());
            let Some(_) = meta else {
                return Err(refuse(
                    format!("{INITTAB} (a regular file) for busybox init to start envy's first-boot agent from"),
                    "add an /etc/inittab with its ::sysinit: and ::respawn: lines, or install cloud-init",
                ));
            };
            let text = std::fs::read_to_string(&path).map_err(Error::io("cannot read", &path))?;
            if text.lines().any(|l| l.trim() == INITTAB_LINE) {
                return Ok(Some(Starter::BusyboxInit(text)));
            }
            let separator = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
            Ok(Some(Starter::BusyboxInit(format!("{text}{separator}{INITTAB_LINE}\n"))))
        }
        _ => Err(refuse(
            format!("cloud-init, and its init {init_path} is neither systemd nor busybox init, which could start envy's first-boot agent in its place"),
            "install cloud-init, or systemd-sysv",
        )),
    }
}

/// Writes the agent and what starts it into the ext4 image `disk`, which mkfs.ext4
/// made from `root` (so what is in `root` tells what the image holds). `work` is a
/// private temp dir for the files debugfs copies in.
pub fn install(disk: &Path, root: &Path, starter: &Starter, work: &Path) -> anyhow::Result<()> {
    let mut script = Script { root, work, commands: String::new() };
    script.dirs(&["/usr", "/usr/lib", "/usr/lib/envy"])?;
    script.file(GUEST_PATH, SCRIPT, 0o755)?;
    match starter {
        Starter::Systemd => {
            script.dirs(&["/etc", "/etc/systemd", "/etc/systemd/system", "/etc/systemd/system/multi-user.target.wants"])?;
            script.file(UNIT_PATH, UNIT, 0o644)?;
            script.remove(UNIT_LINK);
            script.commands += &format!("symlink {UNIT_LINK} {UNIT_PATH}\n");
        }
        Starter::BusyboxInit(inittab) => script.file(INITTAB, inittab, 0o644)?,
    }
    let out = Process::new("debugfs")
        .args(["-w", "-f", "-"])
        .arg(disk)
        .stdin_bytes(script.commands.into_bytes())
        .doing("installing envy's first-boot agent into the disk image")
        .output()?;
    // debugfs exits 0 whatever its commands did; a failed one says so on stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failures: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs ")).collect();
    if !out.status.success() || !failures.is_empty() {
        return Err(Error::AgentInstall { disk: disk.to_path_buf(), problem: failures.join("; ") }.into());
    }
    Ok(())
}

/// debugfs commands being written, for files that replace what `root` holds.
struct Script<'a> {
    root: &'a Path,
    work: &'a Path,
    commands: String,
}

impl Script<'_> {
    fn host(&self, guest: &str) -> PathBuf {
        self.root.join(guest.trim_start_matches('/'))
    }

    /// Makes each of `dirs` that the rootfs lacks; a non-directory there is refused.
    fn dirs(&mut self, dirs: &[&str]) -> Result<(), Error> {
        for dir in dirs {
            match std::fs::symlink_metadata(self.host(dir)) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(Error::AgentInstall { disk: self.host(dir), problem: format!("{dir} is not a directory in the root filesystem") }),
                Err(_) => self.commands += &format!("mkdir {dir}\n"),
            }
        }
        Ok(())
    }

    fn remove(&mut self, guest: &str) {
        if std::fs::symlink_metadata(self.host(guest)).is_ok() {
            self.commands += &format!("rm {guest}\n");
        }
    }

    /// `text` as the file `guest`, root's, with `mode`, replacing what is there.
    fn file(&mut self, guest: &str, text: &str, mode: u32) -> Result<(), Error> {
        let name = guest.rsplit('/').next().unwrap_or(guest);
        let local = self.work.join(format!("agent-{name}"));
        std::fs::write(&local, text).map_err(Error::io("cannot write", &local))?;
        self.remove(guest);
        // debugfs reads a double-quoted argument whole; a quote in the path cannot be.
        let quoted = local.to_str().filter(|p| !p.contains('"') && !p.contains('\n')).ok_or_else(|| Error::AgentInstall {
            disk: local.clone(),
            problem: "debugfs cannot be given a path with a quote, a newline or non-UTF-8 in it; build into another folder".into(),
        })?;
        self.commands += &format!(
            "write \"{quoted}\" {guest}\nsif {guest} mode 0{:o}\nsif {guest} uid 0\nsif {guest} gid 0\n",
            0o100000 | mode
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let host = dir.path().join(path);
            std::fs::create_dir_all(host.parent().unwrap()).unwrap();
            std::fs::write(host, text).unwrap();
        }
        dir
    }

    fn exists_in(root: &Path) -> impl Fn(&str) -> bool + '_ {
        move |p| root.join(p.trim_start_matches('/')).exists()
    }

    #[test]
    fn cloud_init_needs_nothing_and_each_init_gets_its_starter() {
        let root = rootfs(&[("usr/bin/cloud-init", ""), ("bin/sh", ""), ("sbin/ip", ""), ("etc/inittab", "::sysinit:/etc/rcS")]);
        let systemd = root.path().join("lib/systemd/systemd");
        let init = ("/sbin/init", systemd.as_path());
        assert_eq!(needed(root.path(), init, "r", exists_in(root.path())).unwrap(), None);
        std::fs::remove_file(root.path().join("usr/bin/cloud-init")).unwrap();
        assert_eq!(needed(root.path(), init, "r", exists_in(root.path())).unwrap(), Some(Starter::Systemd));
        let busybox_file = root.path().join("bin/busybox");
        let busybox = ("/sbin/init", busybox_file.as_path());
        assert_eq!(
            needed(root.path(), busybox, "r", exists_in(root.path())).unwrap(),
            Some(Starter::BusyboxInit(format!("::sysinit:/etc/rcS\n{INITTAB_LINE}\n")))
        );
        // Already there: not added twice.
        std::fs::write(root.path().join("etc/inittab"), format!("{INITTAB_LINE}\n")).unwrap();
        assert_eq!(
            needed(root.path(), busybox, "r", exists_in(root.path())).unwrap(),
            Some(Starter::BusyboxInit(format!("{INITTAB_LINE}\n")))
        );
    }

    #[test]
    fn a_rootfs_that_cannot_run_the_agent_is_refused_naming_what_it_lacks() {
        let root = rootfs(&[("bin/sh", "")]);
        let err = needed(root.path(), ("/sbin/init", Path::new("/x/lib/systemd/systemd")), "r", exists_in(root.path())).unwrap_err().to_string();
        assert!(err.contains("ip (/sbin/ip") && err.contains("iproute2"), "{err}");
        std::fs::create_dir_all(root.path().join("sbin")).unwrap();
        std::fs::write(root.path().join("sbin/ip"), "").unwrap();
        let err = needed(root.path(), ("/sbin/openrc-init", Path::new("/x/sbin/openrc-init")), "r", exists_in(root.path())).unwrap_err().to_string();
        assert!(err.contains("openrc-init is neither systemd") && err.contains("cloud-init"), "{err}");
        let err = needed(root.path(), ("/bin/init", Path::new("/x/bin/busybox")), "r", exists_in(root.path())).unwrap_err().to_string();
        assert!(err.contains("/etc/inittab"), "{err}");
        // busybox called as a shell is no init.
        let err = needed(root.path(), ("/bin/sh", Path::new("/x/bin/busybox")), "r", exists_in(root.path())).unwrap_err().to_string();
        assert!(err.contains("/bin/sh is neither systemd"), "{err}");
    }

    #[test]
    fn the_agent_uses_the_user_network_that_qemu_gives_the_first_nic() {
        // The script hard-codes what cmdline.rs and QEMU's user network give the guest.
        for fact in ["52:54:00:12:34:56", "10.0.2.15/24", "via 10.0.2.2", "nameserver 10.0.2.3"] {
            assert!(SCRIPT.contains(fact), "{fact}");
        }
        assert!(UNIT.contains(&format!("ExecStart={GUEST_PATH}\n")) && INITTAB_LINE.ends_with(GUEST_PATH));
    }
}
