//! Where a QEMU machine keeps its files: one name per concern, all inside the
//! machine dir (in the project's state, in envy's data dir), sockets moved to the
//! runtime dir only when the machine dir's path is too long for a Unix socket address
//! (a deep ENVY_HOME or home folder).

use std::path::PathBuf;

use crate::plan::MachinePlan;

/// Longest socket path we use (sun_path holds 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 100;

/// Paths of one machine's files.
#[derive(Debug, Clone)]
pub struct MachineFiles {
    pub dir: PathBuf,
    /// The machine's disk: a qcow2 overlay over the box's disk.
    pub overlay: PathBuf,
    /// The NoCloud seed disk (vfat, label cidata).
    pub seed: PathBuf,
    /// Serial console output of the current (or last) boot.
    pub console_log: PathBuf,
    /// QMP control socket.
    pub qmp_socket: PathBuf,
    /// QEMU's own pid file (written by QEMU when it daemonizes).
    pub qemu_pidfile: PathBuf,
    /// envy's pid record (boot id + start time), the truth about "running".
    pub pid_record: PathBuf,
    /// Provider facts kept between commands (SSH port, accelerator).
    pub runtime_record: PathBuf,
    /// The machine's SSH key pair (private key; `.pub` beside it).
    pub ssh_key: PathBuf,
    pub known_hosts: PathBuf,
    /// OpenSSH ControlMaster socket: warm `exec` reuses one connection.
    pub ssh_control: PathBuf,
    /// stderr of background SSH connections (readiness probes, the master).
    pub ssh_log: PathBuf,
    /// Where sockets go when the machine dir's path is too long for one.
    long_path_sockets: PathBuf,
}

impl MachineFiles {
    pub fn of(plan: &MachinePlan) -> MachineFiles {
        let dir = plan.dir.clone();
        let mut files = MachineFiles {
            overlay: dir.join("overlay.qcow2"),
            seed: dir.join("seed.img"),
            console_log: dir.join("console.log"),
            qmp_socket: PathBuf::new(),
            qemu_pidfile: dir.join("qemu.pid"),
            pid_record: dir.join("pid.json"),
            runtime_record: dir.join("qemu.json"),
            ssh_key: dir.join("id_ed25519"),
            known_hosts: dir.join("known_hosts"),
            ssh_control: PathBuf::new(),
            ssh_log: dir.join("ssh.log"),
            long_path_sockets: plan.home.runtime_dir().join(&plan.runtime_id),
            dir,
        };
        files.qmp_socket = files.socket("qmp.sock");
        files.ssh_control = files.socket("ssh.ctl");
        files
    }

    /// The socket `name`: in the machine dir, or in the runtime dir (prefixed with the
    /// machine's runtime id) when the path would be too long for a socket address.
    pub fn socket(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        if path.as_os_str().len() <= MAX_SOCKET_PATH {
            path
        } else {
            let mut moved = self.long_path_sockets.clone().into_os_string();
            moved.push(format!("-{name}"));
            PathBuf::from(moved)
        }
    }

    /// Every file `destroy` removes.
    pub fn all(&self) -> Vec<PathBuf> {
        [
            &self.overlay,
            &self.seed,
            &self.console_log,
            &self.qmp_socket,
            &self.qemu_pidfile,
            &self.pid_record,
            &self.runtime_record,
            &self.ssh_key,
            &self.known_hosts,
            &self.ssh_control,
            &self.ssh_log,
        ]
        .into_iter()
        .cloned()
        .chain([self.ssh_public_key()])
        .collect()
    }

    /// The folders the files live in (the machine dir, and the runtime dir when a
    /// socket had to move there).
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.dir.clone()];
        for socket in [&self.qmp_socket, &self.ssh_control] {
            if let Some(parent) = socket.parent().filter(|p| *p != self.dir) {
                dirs.push(parent.to_path_buf());
            }
        }
        dirs.dedup();
        dirs
    }

    pub fn ssh_public_key(&self) -> PathBuf {
        self.ssh_key.with_extension("pub")
    }

    /// A boot that can never reach SSH, as its console shows it: a kernel panic, a root
    /// filesystem without an init, an initramfs rescue shell. Reads the log's last 8 KiB
    /// (what a guest prints is only matched, never trusted further).
    pub fn console_dead_end(&self) -> Option<&'static str> {
        const DEAD_ENDS: [(&str, &str); 5] = [
            ("Kernel panic - not syncing", "the guest kernel panicked"),
            ("doesn't have requested /sbin/init", "the root filesystem has no /sbin/init"),
            ("can't execute '/sbin/init'", "the root filesystem has no /sbin/init"),
            ("No working init found", "the guest kernel found no init to run"),
            ("(initramfs) ", "the guest dropped to an initramfs shell"),
        ];
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(&self.console_log).ok()?;
        let len = file.metadata().ok()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(8192))).ok()?;
        let mut tail = Vec::new();
        file.take(8192).read_to_end(&mut tail).ok()?;
        let text = String::from_utf8_lossy(&tail);
        DEAD_ENDS.iter().find(|(seen, _)| text.contains(seen)).map(|(_, why)| *why)
    }

    /// The last `n` lines of the console log, or a sentence saying there is none.
    pub fn console_tail(&self, n: usize) -> String {
        crate::fsutil::tail_lines(&self.console_log, n)
            .unwrap_or_else(|| format!("(no console log at {})", self.console_log.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_with_home(home: &str) -> MachinePlan {
        crate::plan::test_plan("/src/app", home, "[machine.web]\nbox = \"x\"\n", "web")
    }

    #[test]
    fn sockets_stay_in_the_machine_dir_unless_the_path_is_too_long() {
        let files = MachineFiles::of(&plan_with_home("/h"));
        assert_eq!(files.qmp_socket, PathBuf::from("/h/projects/0badcafe/machines/web/qmp.sock"));
        assert_eq!(files.dirs(), [PathBuf::from("/h/projects/0badcafe/machines/web")]);

        let deep = format!("/home/{}", "very-long-folder-name/".repeat(4));
        let deep = deep.trim_end_matches('/');
        let files = MachineFiles::of(&plan_with_home(deep));
        assert_eq!(files.qmp_socket, PathBuf::from(format!("{deep}/run/envy-0badcafe-web-qmp.sock")));
        assert_eq!(files.ssh_control, PathBuf::from(format!("{deep}/run/envy-0badcafe-web-ssh.ctl")));
        assert!(files.dirs().contains(&PathBuf::from(format!("{deep}/run"))));
    }
}
