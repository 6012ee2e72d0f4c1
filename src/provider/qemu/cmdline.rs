//! The qemu-system-x86_64 command line, built one concern per method; every fixed
//! flag says why it is there, and the whole command is logged at debug level.

use std::ffi::OsString;
use std::path::Path;

use super::accel::Chosen;
use crate::process::Process;

/// The emulator envy drives.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// A command line under construction.
#[derive(Debug, Default)]
pub struct QemuCommand {
    args: Vec<OsString>,
    devices: usize,
}

/// `path` as a QEMU option value: commas are doubled so a path cannot inject options.
fn opt_path(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

impl QemuCommand {
    pub fn new(name: &str) -> QemuCommand {
        let mut cmd = QemuCommand::default();
        // Only the devices we add: no default NIC, VGA, floppy, CD-ROM or monitor.
        cmd.push(["-nodefaults", "-no-user-config"]);
        // Headless: the console goes to a log file, control to QMP.
        cmd.push(["-display", "none"]);
        // Names the process (`ps`) and the machine (QMP query-name).
        cmd.push(["-name".to_string(), format!("{name},process={name}")]);
        cmd
    }

    fn push<I: IntoIterator<Item = S>, S: Into<OsString>>(&mut self, args: I) {
        self.args.extend(args.into_iter().map(Into::into));
    }

    /// q35 (PCIe, modern chipset) with the accelerator; `-cpu host` exposes the real CPU
    /// under KVM, `max` gives TCG every feature it can emulate.
    pub fn machine(&mut self, accel: Chosen) -> &mut Self {
        self.push(["-machine", "q35", "-accel", accel.name()]);
        self.push(["-cpu", if accel == Chosen::Kvm { "host" } else { "max" }]);
        self
    }

    pub fn cpus(&mut self, cpus: u32) -> &mut Self {
        self.push(["-smp".to_string(), cpus.max(1).to_string()]);
        self
    }

    /// The guest's memory; `shared` backs it with a memfd that other processes may map,
    /// which vhost-user devices (virtiofsd) need to reach the guest's buffers.
    pub fn memory(&mut self, bytes: u64, shared: bool) -> &mut Self {
        let size = format!("{}M", (bytes >> 20).max(64));
        if shared {
            self.push(["-object".to_string(), format!("memory-backend-memfd,id=mem,size={size},share=on")]);
            self.push(["-numa", "node,memdev=mem"]);
        }
        self.push(["-m".to_string(), size]);
        self
    }

    /// Direct kernel boot (boxes with `boot = "kernel"`): the console goes to the serial
    /// port so the log holds the boot.
    pub fn kernel(&mut self, kernel: &Path, initrd: Option<&Path>, cmdline: &str) -> &mut Self {
        self.push([OsString::from("-kernel"), kernel.as_os_str().to_owned()]);
        if let Some(initrd) = initrd {
            self.push([OsString::from("-initrd"), initrd.as_os_str().to_owned()]);
        }
        let mut append = cmdline.to_string();
        if !append.split_whitespace().any(|a| a.starts_with("console=")) {
            append.push_str(" console=ttyS0");
        }
        self.push(["-append".to_string(), append]);
        self
    }

    /// A virtio disk; `id` names the drive and `id`-node its block node in QMP (snapshot
    /// jobs take node names). `boot` marks the disk firmware boots from (stock cloud images).
    pub fn disk(&mut self, path: &Path, id: &str, format: &str, readonly: bool, boot: bool) -> &mut Self {
        let ro = if readonly { ",readonly=on" } else { "" };
        // discard=unmap: blocks the guest frees are freed in the overlay too.
        self.push([
            "-drive".to_string(),
            format!("file={},if=none,id={id},node-name={id}-node,format={format},discard=unmap{ro}", opt_path(path)),
        ]);
        let bootindex = if boot { ",bootindex=0" } else { "" };
        self.push(["-device".to_string(), format!("virtio-blk-pci,drive={id}{bootindex}")]);
        self
    }

    /// The serial console, appended to a file (truncated at each start by the caller).
    pub fn console_log(&mut self, path: &Path) -> &mut Self {
        self.push(["-chardev".to_string(), format!("file,id=console,path={}", opt_path(path))]);
        self.push(["-serial", "chardev:console"]);
        self
    }

    /// QMP on a Unix socket; `wait=off` so QEMU starts without a client attached.
    pub fn qmp(&mut self, socket: &Path) -> &mut Self {
        self.push([
            "-chardev".to_string(),
            format!("socket,id=qmp,path={},server=on,wait=off", opt_path(socket)),
        ]);
        self.push(["-mon", "chardev=qmp,mode=control"]);
        self
    }

    /// A virtio NIC on `netdev` (an option string naming `id=`), with a fixed MAC.
    pub fn nic(&mut self, netdev: &str, id: &str, mac: &str) -> &mut Self {
        self.push(["-netdev", netdev]);
        self.push(["-device".to_string(), format!("virtio-net-pci,netdev={id},mac={mac}")]);
        self
    }

    /// A host folder shared over virtio-9p. mapped-xattr keeps guest ownership and
    /// modes in xattrs, so the guest's root can write without root on the host.
    pub fn shared_folder(&mut self, host: &Path, tag: &str, readonly: bool) -> &mut Self {
        let id = self.next_id("fs");
        let ro = if readonly { ",readonly=on" } else { "" };
        self.push([
            "-virtfs".to_string(),
            format!(
                "local,id={id},path={},mount_tag={tag},security_model=mapped-xattr{ro}",
                opt_path(host)
            ),
        ]);
        self
    }

    /// A host folder shared over virtiofs, served by the virtiofsd listening on `socket`
    /// (needs `memory(.., true)`).
    pub fn virtiofs(&mut self, socket: &Path, tag: &str) -> &mut Self {
        let id = self.next_id("vfs");
        self.push(["-chardev".to_string(), format!("socket,id={id},path={}", opt_path(socket))]);
        self.push(["-device".to_string(), format!("vhost-user-fs-pci,chardev={id},tag={tag}")]);
        self
    }

    /// Detaches into its own session once the machine is set up (errors still reach our
    /// stderr before that) and writes its pid.
    pub fn daemonize(&mut self, pidfile: &Path) -> &mut Self {
        self.push([OsString::from("-daemonize"), OsString::from("-pidfile"), pidfile.as_os_str().to_owned()]);
        self
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.devices += 1;
        format!("{prefix}{}", self.devices)
    }

    /// The finished command (the runner logs it at debug level).
    pub fn build(&self) -> Process {
        Process::new(QEMU_BINARY).args(&self.args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &QemuCommand) -> Vec<String> {
        cmd.build().command().get_args().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn kernel_boot_gets_a_serial_console_unless_the_box_names_one() {
        let mut cmd = QemuCommand::new("m");
        cmd.kernel(Path::new("/b/vmlinuz"), None, "root=/dev/vda rw");
        assert!(args(&cmd).ends_with(&["-append".into(), "root=/dev/vda rw console=ttyS0".into()]));
        let mut cmd = QemuCommand::new("m");
        cmd.kernel(Path::new("/b/vmlinuz"), None, "console=hvc0");
        assert!(args(&cmd).ends_with(&["-append".into(), "console=hvc0".into()]));
    }

    #[test]
    fn firmware_boot_marks_the_disk_and_commas_in_paths_cannot_add_options() {
        let mut cmd = QemuCommand::new("m");
        cmd.disk(Path::new("/p,format=raw/overlay.qcow2"), "overlay", "qcow2", false, true);
        let args = args(&cmd);
        assert!(args.contains(&"file=/p,,format=raw/overlay.qcow2,if=none,id=overlay,node-name=overlay-node,format=qcow2,discard=unmap".into()), "{args:?}");
        assert!(args.contains(&"virtio-blk-pci,drive=overlay,bootindex=0".into()));
        assert!(!args.contains(&"-kernel".into()));
    }

    #[test]
    fn virtiofs_gets_shared_memory_and_a_socket_device() {
        let mut cmd = QemuCommand::new("m");
        cmd.memory(512 << 20, true).virtiofs(Path::new("/m/virtiofs0.sock"), "envy0");
        let shared = args(&cmd);
        assert!(shared.windows(2).any(|w| w == ["-object", "memory-backend-memfd,id=mem,size=512M,share=on"]), "{shared:?}");
        assert!(shared.windows(2).any(|w| w == ["-numa", "node,memdev=mem"]));
        assert!(shared.windows(2).any(|w| w == ["-m", "512M"]));
        assert!(shared.windows(2).any(|w| w == ["-chardev", "socket,id=vfs1,path=/m/virtiofs0.sock"]));
        assert!(shared.windows(2).any(|w| w == ["-device", "vhost-user-fs-pci,chardev=vfs1,tag=envy0"]));
        let mut plain = QemuCommand::new("m");
        plain.memory(512 << 20, false);
        assert!(!args(&plain).contains(&"-object".to_string()));
    }

    #[test]
    fn accelerator_picks_the_cpu_model() {
        let mut kvm = QemuCommand::new("m");
        kvm.machine(Chosen::Kvm);
        assert!(args(&kvm).windows(2).any(|w| w == ["-cpu", "host"]));
        let mut tcg = QemuCommand::new("m");
        tcg.machine(Chosen::Tcg);
        assert!(args(&tcg).windows(2).any(|w| w == ["-accel", "tcg"]));
        assert!(args(&tcg).windows(2).any(|w| w == ["-cpu", "max"]));
    }
}
