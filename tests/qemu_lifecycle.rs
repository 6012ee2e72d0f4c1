//! The qemu provider against real QEMU (TCG) and the tiny test box: the full life
//! cycle on one machine, then the faults (killed QEMU, taken port, corrupt disk).

use std::net::{Ipv4Addr, TcpListener};

use envy::model::{Forward, Protocol};
use envy::provider::{MachineState, Provider};

use crate::common::qemu::{tiny_box, TestMachine};
use crate::common::{free_port, http_get, need, require};

#[test]
fn up_exec_sync_forward_halt_up_snapshot_destroy() {
    require!(need::VMS);
    let web_port = free_port();
    let forward = Forward {
        host_ip: Ipv4Addr::LOCALHOST.into(),
        host_port: web_port,
        guest_port: 80,
        protocol: Protocol::Tcp,
        auto: false,
    };
    let m = TestMachine::new("web", vec![forward], true);
    std::fs::write(m.project_dir().join("hello.txt"), "a synced project file\n").unwrap();
    let stored = tiny_box();

    assert_eq!(m.provider.state(&m.plan).unwrap(), MachineState::NotCreated);
    m.provider.up(&m.plan, &stored, &m.ui).unwrap();
    assert_eq!(m.provider.state(&m.plan).unwrap(), MachineState::Running);

    // exec: output comes back through the synced folder; exit codes pass through.
    assert_eq!(m.sh("uname -a > /project/uname.txt && cat /project/hello.txt > /project/copy.txt"), 0);
    let uname = std::fs::read_to_string(m.project_dir().join("uname.txt")).unwrap();
    assert!(uname.starts_with("Linux web "), "uname -a said {uname:?}");
    assert_eq!(std::fs::read_to_string(m.project_dir().join("copy.txt")).unwrap(), "a synced project file\n");
    assert_eq!(m.sh("exit 7"), 7);
    // The default workdir is the first sync folder, and the Envfile's env is set.
    assert_eq!(m.sh("[ \"$(pwd)\" = /project ] && [ \"$ENVY_TEST\" = 'from the Envfile' ]"), 0);

    // Warm exec goes through the ControlMaster socket in the machine dir.
    let control = m.plan.dir.join("ssh.ctl");
    assert!(control.exists(), "no ControlMaster socket at {}", control.display());
    assert_eq!(m.sh("true"), 0);

    // Keys and sockets are private.
    use std::os::unix::fs::PermissionsExt;
    for file in ["id_ed25519", "qmp.sock", "ssh.ctl"] {
        let mode = std::fs::metadata(m.plan.dir.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{file} has mode {mode:o}");
    }

    // A forwarded port answers from the host.
    assert_eq!(m.sh("httpd -p 80 -h /srv/www"), 0);
    let page = http_get(web_port, "/");
    assert!(page.contains("hello from the tiny vm"), "the forward answered {page:?}");

    // Graceful halt: the guest powers itself off (its own shutdown message), QEMU exits.
    assert_eq!(m.sh("echo kept > /root/kept.txt"), 0);
    m.provider.halt(&m.plan, false, &m.ui).unwrap();
    let console = std::fs::read_to_string(m.plan.dir.join("console.log")).unwrap();
    assert!(console.contains("envy-guest: clean shutdown complete"), "console:\n{console}");
    assert_eq!(m.provider.state(&m.plan).unwrap(), MachineState::Stopped);
    assert_eq!(m.qemu_processes(), 0);
    assert!(m.provider.info(&m.plan).unwrap().log_tail.is_none(), "a halted machine did not die: no log tail");

    // Export (for share) flattens the halted disk into a standalone qcow2 plus the kernel.
    let out = m.tmp.path().join("export");
    std::fs::create_dir_all(&out).unwrap();
    let names = crate::common::export_files(&m.provider, &m.plan, &stored, &out, &m.ui).unwrap();
    assert_eq!(names, ["disk.qcow2", "initrd.img", "vmlinuz"].map(|n| out.join(n)));
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(out.join("disk.qcow2"))
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("\"format\": \"qcow2\"") && !info.contains("backing-filename"), "{info}");

    // Up again keeps what was written inside.
    m.provider.up(&m.plan, &stored, &m.ui).unwrap();
    assert_eq!(m.sh("grep -q kept /root/kept.txt"), 0);

    let err = crate::common::export_files(&m.provider, &m.plan, &stored, &out, &m.ui).unwrap_err().to_string();
    assert!(err.contains("machine web is running"), "{err}");

    // Snapshot of a running machine with a sync folder attached (virtiofs or 9p): disk only (QEMU blocks
    // savevm then); restoring it stops the machine and rewinds the disk.
    let snap = m.provider.snapshot_save(&m.plan, "before", false, &m.ui).unwrap();
    assert!(!snap.memory, "sync folders block memory snapshots");
    assert_eq!(m.sh("rm /root/kept.txt && sync"), 0);
    m.provider.snapshot_restore(&m.plan, "before", &m.ui).unwrap();
    assert_eq!(m.provider.state(&m.plan).unwrap(), MachineState::Stopped);
    m.provider.up(&m.plan, &stored, &m.ui).unwrap();
    assert_eq!(m.sh("grep -q kept /root/kept.txt"), 0);
    let names: Vec<String> = m.provider.snapshot_list(&m.plan).unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["before"]);
    let err = m.provider.snapshot_save(&m.plan, "before", false, &m.ui).unwrap_err().to_string();
    assert!(err.contains("already has a snapshot named before"), "{err}");
    m.provider.snapshot_delete(&m.plan, "before").unwrap();
    assert!(m.provider.snapshot_list(&m.plan).unwrap().is_empty());

    // Destroy leaves no process, disk, socket or key.
    m.provider.destroy(&m.plan, &m.ui).unwrap();
    assert_eq!(m.qemu_processes(), 0);
    for file in ["overlay.qcow2", "seed.img", "qmp.sock", "ssh.ctl", "id_ed25519", "id_ed25519.pub", "pid.json"] {
        assert!(!m.plan.dir.join(file).exists(), "{file} survived destroy");
    }
    assert_eq!(m.provider.state(&m.plan).unwrap(), MachineState::NotCreated);
}

#[test]
fn killed_qemu_reads_stopped_with_its_log_and_up_recovers_on_another_port() {
    require!(need::VMS);
    let m = TestMachine::new("crash", vec![], false);
    let stored = tiny_box();
    m.provider.up(&m.plan, &stored, &m.ui).unwrap();
    let info = m.provider.info(&m.plan).unwrap();
    let (pid, old_port) = (info.pid.unwrap(), info.ssh_port.unwrap());
    assert!(info.log_tail.is_none(), "a running machine shows no log tail");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    crate::common::eventually("the killed QEMU is gone", || !crate::common::running(pid));
    assert_eq!(m.provider.state(&m.plan).unwrap(), MachineState::Stopped);
    let info = m.provider.info(&m.plan).unwrap();
    assert!(info.pid.is_none());
    let tail = info.log_tail.expect("a dead machine shows its console tail");
    assert!(tail.contains("envy-guest: ready"), "tail:\n{tail}");

    // Someone took the recorded SSH port meanwhile: up picks another and recovers.
    // The dying QEMU may still hold the port for a moment after it reads stopped, so the
    // squatter retries; if it never gets it, another test's machine holds it: taken all
    // the same, but then only `up` succeeding is checked.
    let mut squatter = None;
    for _ in 0..100 {
        squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, old_port)).ok();
        if squatter.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    m.provider.up(&m.plan, &stored, &m.ui).unwrap();
    let new_port = m.provider.info(&m.plan).unwrap().ssh_port.unwrap();
    if squatter.is_some() {
        assert_ne!(new_port, old_port);
    }
    assert_eq!(m.sh("true"), 0);

    // Up on a running machine only checks it answers: same process, same port.
    let before = m.provider.info(&m.plan).unwrap();
    m.provider.up(&m.plan, &stored, &m.ui).unwrap();
    let after = m.provider.info(&m.plan).unwrap();
    assert_eq!((before.pid, before.ssh_port), (after.pid, after.ssh_port));
    assert_eq!(m.qemu_processes(), 1);

    // Without sync folders a running machine's snapshot holds memory and restores live.
    assert_eq!(m.sh("echo in-memory > /run/marker"), 0);
    let snap = m.provider.snapshot_save(&m.plan, "live", false, &m.ui).unwrap();
    assert!(snap.memory && snap.size > 0, "{snap:?}");
    assert_eq!(m.sh("rm /run/marker"), 0);
    m.provider.snapshot_restore(&m.plan, "live", &m.ui).unwrap();
    assert_eq!(m.provider.state(&m.plan).unwrap(), MachineState::Running);
    assert_eq!(m.sh("grep -q in-memory /run/marker"), 0, "tmpfs content comes back with memory");
}

#[test]
fn a_corrupt_box_disk_is_a_clear_error_that_leaves_nothing() {
    require!(need::VMS);
    let m = TestMachine::new("corrupt", vec![], false);
    let good = tiny_box();
    let bad_dir = m.tmp.path().join("bad-box");
    std::fs::create_dir_all(&bad_dir).unwrap();
    for file in good.manifest.files.keys() {
        std::fs::copy(good.file(file), bad_dir.join(file)).unwrap();
    }
    // Flip the qcow2 magic and version bytes.
    let disk = bad_dir.join("disk.qcow2");
    let mut bytes = std::fs::read(&disk).unwrap();
    for b in &mut bytes[0..8] {
        *b ^= 0xff;
    }
    std::fs::write(&disk, bytes).unwrap();

    let err = m.provider.up(&m.plan, &envy::boxes::StoredBox { dir: bad_dir.clone(), ..good }, &m.ui).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("is not a readable qcow2 image"), "{text}");
    assert!(text.contains(&disk.display().to_string()), "the error names the disk: {text}");
    assert_nothing_left(&m);
    assert_eq!(envy::error::exit_code(&err), envy::error::code::PROVIDER);
}

/// A box disk that names a file beneath it (a qcow2 backing file of this host) is
/// refused before QEMU could open that file for the machine.
#[test]
fn a_box_disk_that_names_a_host_file_is_refused_and_leaves_nothing() {
    require!(need::VMS);
    let m = TestMachine::new("backed", vec![], false);
    let good = tiny_box();
    let bad_dir = m.tmp.path().join("backed-box");
    std::fs::create_dir_all(&bad_dir).unwrap();
    for file in good.manifest.files.keys() {
        std::fs::copy(good.file(file), bad_dir.join(file)).unwrap();
    }
    let secret = m.tmp.path().join("host-secret");
    std::fs::write(&secret, "the host's\n").unwrap();
    let disk = bad_dir.join("disk.qcow2");
    std::fs::remove_file(&disk).unwrap();
    let made = std::process::Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"]).arg(&secret).arg(&disk).arg("64M").status().unwrap();
    assert!(made.success());

    let err = m.provider.up(&m.plan, &envy::boxes::StoredBox { dir: bad_dir.clone(), ..good }, &m.ui).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("must stand alone") && text.contains(&secret.display().to_string()), "{text}");
    assert_nothing_left(&m);
    assert_eq!(envy::error::exit_code(&err), envy::error::code::PROVIDER);
}

/// A machine whose `up` failed before booting has no files and no process.
fn assert_nothing_left(m: &TestMachine) {
    for file in ["overlay.qcow2", "seed.img", "id_ed25519", "qemu.json", "pid.json"] {
        assert!(!m.plan.dir.join(file).exists(), "{file} was left behind");
    }
    assert_eq!(m.qemu_processes(), 0);
}

#[test]
fn a_taken_forward_port_is_a_clear_error_that_leaves_nothing() {
    require!(need::VMS);
    let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = squatter.local_addr().unwrap().port();
    let forward = Forward {
        host_ip: Ipv4Addr::LOCALHOST.into(),
        host_port: port,
        guest_port: 80,
        protocol: Protocol::Tcp,
        auto: false,
    };
    let m = TestMachine::new("busy", vec![forward], false);
    let err = m.provider.up(&m.plan, &tiny_box(), &m.ui).unwrap_err().to_string();
    assert!(err.contains(&format!("host port 127.0.0.1:{port}/tcp wanted by machine busy is taken")), "{err}");
    assert_nothing_left(&m);
}

#[test]
fn a_missing_sync_folder_is_a_clear_error_that_leaves_nothing() {
    require!(need::VMS);
    let mut m = TestMachine::new("nosync", vec![], true);
    let missing = m.project_dir().join("not-there");
    m.plan.spec.sync[0].host = missing.clone();
    let err = m.provider.up(&m.plan, &tiny_box(), &m.ui).unwrap_err().to_string();
    assert!(err.contains(&format!("machine nosync: sync folder {}: does not exist", missing.display())), "{err}");
    assert_nothing_left(&m);
}
