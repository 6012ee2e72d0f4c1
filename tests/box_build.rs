//! `envy box build`: container boxes carry the rootfs tarball; qemu boxes an ext4
//! qcow2 disk (valid per qemu-img) plus the rootfs's kernel and initrd for direct boot.

use std::path::Path;
use std::process::Command;

use crate::common::{self, busybox_rootfs, need, require, sha256_hex, Need, TestEnv};
use predicates::str::contains;

/// Reads the entries (name, bytes) of a zstd `.box`.
/// A busybox rootfs that meets a VM box's contract as `box build` checks it: busybox as
/// /sbin/init, and an SSH server at /usr/sbin/dropbear (a stand-in script: these boxes
/// are built and inspected, never booted; the tiny VM box boots a real one).
fn vm_rootfs(dir: &Path) {
    busybox_rootfs(dir);
    std::os::unix::fs::symlink("../bin/busybox", dir.join("sbin/init")).unwrap();
    std::fs::write(dir.join("etc/inittab"), "::sysinit:/etc/init.d/rcS\n").unwrap();
    let sshd = dir.join("usr/sbin/dropbear");
    std::fs::write(&sshd, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&sshd, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

fn box_entries(path: &Path) -> Vec<(String, Vec<u8>)> {
    let data = zstd::decode_all(std::fs::File::open(path).unwrap()).unwrap();
    let mut archive = tar::Archive::new(&data[..]);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
            (name, bytes)
        })
        .collect()
}

#[test]
fn container_box_from_a_directory_and_a_tarball() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let rootfs = env.path("rootfs");
    busybox_rootfs(&rootfs);
    let out = env.path("web.box");
    let assert = env
        .envy()
        .args(["box", "build", "--rootfs"])
        .arg(&rootfs)
        .args(["--name", "web", "--version", "3", "-o"])
        .arg(&out)
        .assert()
        .success();
    let digest = sha256_hex(&std::fs::read(&out).unwrap());
    assert!(String::from_utf8_lossy(&assert.get_output().stdout).starts_with(&digest), "prints the digest");
    let entries = box_entries(&out);
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["box.toml", "rootfs.tar", "box.sums"]);
    let manifest = String::from_utf8_lossy(&entries[0].1).into_owned();
    assert!(manifest.contains("name = \"web\"") && manifest.contains("version = \"3\""), "{manifest}");
    // The payload's digest comes last, as `sha256sum` writes it.
    assert_eq!(String::from_utf8_lossy(&entries[2].1), format!("{}  rootfs.tar\n", sha256_hex(&entries[1].1)));
    let mut inner = tar::Archive::new(&entries[1].1[..]);
    let inner_names: Vec<String> =
        inner.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
    assert!(
        inner_names.contains(&"bin/busybox".to_string()) && inner_names.contains(&"bin/sh".to_string()),
        "{inner_names:?}"
    );

    // From a tarball made by tar(1): the tarball is the payload as is.
    let tarball = env.path("rootfs.tar.gz");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-czf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let out2 = env.path("web2.box");
    env.envy()
        .args(["box", "build", "--rootfs"])
        .arg(&tarball)
        .args(["--name", "web2", "--add", "-o"])
        .arg(&out2)
        .assert()
        .success();
    let digest2 = sha256_hex(&std::fs::read(&out2).unwrap());
    let stored = env.home.join("boxes").join(&digest2);
    assert!(stored.join("rootfs.tar.gz").is_file());
    assert!(stored.join("rootfs/bin/busybox").is_file());
}

#[test]
fn qemu_box_with_kernel_for_direct_boot() {
    require!(need::QEMU_BOX, [Need::Tool("debugfs", "e2fsprogs")]);
    let env = TestEnv::new();
    let rootfs = env.path("rootfs");
    vm_rootfs(&rootfs);
    std::fs::create_dir_all(rootfs.join("boot")).unwrap();
    std::fs::write(rootfs.join("boot/vmlinuz-6.1.0-test"), b"kernel image bytes").unwrap();
    std::fs::write(rootfs.join("boot/initrd.img-6.1.0-test"), b"initrd bytes").unwrap();
    let out = env.path("vm.box");
    env.envy()
        .args(["box", "build", "--kind", "qemu", "--rootfs"])
        .arg(&rootfs)
        .args(["--name", "vm", "--cmdline", "quiet", "--disk-size", "96MiB", "--add", "-o"])
        .arg(&out)
        .assert()
        .success();
    let digest = sha256_hex(&std::fs::read(&out).unwrap());
    let dir = env.home.join("boxes").join(&digest);
    let manifest = std::fs::read_to_string(dir.join("box.toml")).unwrap();
    assert!(manifest.contains("boot = \"kernel\""), "{manifest}");
    assert!(
        manifest.contains("cmdline = \"console=ttyS0 root=/dev/vda rw quiet\""),
        "{manifest}"
    );
    assert_eq!(std::fs::read(dir.join("vmlinuz")).unwrap(), b"kernel image bytes");
    assert_eq!(std::fs::read(dir.join("initrd.img")).unwrap(), b"initrd bytes");

    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(dir.join("disk.qcow2"))
        .output()
        .unwrap();
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 96u64 << 20);

    // The disk is an ext4 filesystem holding the rootfs.
    let raw = env.path("disk.raw");
    assert!(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(dir.join("disk.qcow2"))
        .arg(&raw)
        .status()
        .unwrap()
        .success());
    let debugfs = |request: &str| {
        let out = Command::new("debugfs").args(["-R", request]).arg(&raw).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(debugfs("ls -l /bin").contains("busybox"));
    // No cloud-init: envy's first-boot agent went into the disk, root's and executable,
    // and busybox init starts it; the rootfs directory itself is left as it was.
    let agent = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/boxes/agent.sh")).unwrap();
    assert_eq!(debugfs("cat /usr/lib/envy/envy-agent"), agent);
    let stat = debugfs("stat /usr/lib/envy/envy-agent");
    assert!(stat.contains("Mode:  0755") && stat.contains("User:     0   Group:     0"), "{stat}");
    assert_eq!(debugfs("cat /etc/inittab"), "::sysinit:/etc/init.d/rcS\n::sysinit:/usr/lib/envy/envy-agent\n");
    assert!(!rootfs.join("usr/lib/envy").exists());
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/inittab")).unwrap(), "::sysinit:/etc/init.d/rcS\n");
}

#[test]
fn qemu_box_without_kernel_boots_by_firmware() {
    require!(need::QEMU_BOX);
    let env = TestEnv::new();
    let rootfs = env.path("rootfs");
    vm_rootfs(&rootfs);
    let tarball = env.path("rootfs.tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let out = env.path("fw.box");
    env.envy()
        .args(["box", "build", "--kind", "qemu", "--rootfs"])
        .arg(&tarball)
        .args(["--name", "fw", "-o"])
        .arg(&out)
        .assert()
        .success()
        .stderr(contains("has no /boot/vmlinuz*"));
    let entries = box_entries(&out);
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["box.toml", "disk.qcow2", "box.sums"]);
    assert!(String::from_utf8_lossy(&entries[0].1).contains("boot = \"firmware\""));
}

#[test]
fn missing_tool_names_its_package_and_leaves_nothing() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let rootfs = env.path("rootfs");
    vm_rootfs(&rootfs);
    let out = env.path("vm.box");
    let empty_path = env.path("empty-path");
    std::fs::create_dir_all(&empty_path).unwrap();
    env.envy()
        .env("PATH", &empty_path)
        .args(["box", "build", "--kind", "qemu", "--rootfs"])
        .arg(&rootfs)
        .args(["--name", "vm", "-o"])
        .arg(&out)
        .assert()
        .code(5)
        .stderr(contains(
            "mkfs.ext4 is not installed or not on PATH: install it with `apt-get install e2fsprogs`",
        ));
    assert!(!out.exists());
    let leftovers: Vec<String> =
        common::list_dir(env.dir.path()).into_iter().filter(|n| n.starts_with(".envy-build")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_box_built_twice_with_source_date_epoch_has_one_digest() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let rootfs = env.path("rootfs");
    common::busybox_rootfs(&rootfs);
    let build = |out: &str| {
        env.envy()
            .args(["box", "build", "--rootfs"])
            .arg(&rootfs)
            .args(["--name", "repro", "--version", "1", "-o"])
            .arg(env.path(out))
            .env("SOURCE_DATE_EPOCH", "1686355200")
            .assert()
            .success();
        common::sha256_hex(&std::fs::read(env.path(out)).unwrap())
    };
    let first = build("first.box");
    // Touched files (newer than the epoch) pack the same as before.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let touched = std::process::Command::new("touch").arg(rootfs.join("etc/box-release")).arg(rootfs.join("etc")).status().unwrap();
    assert!(touched.success());
    assert_eq!(build("second.box"), first);
    // A real change is a new digest.
    std::fs::write(rootfs.join("etc/box-release"), "changed\n").unwrap();
    assert_ne!(build("third.box"), first);
}

#[test]
fn a_vm_rootfs_that_could_never_boot_is_refused_naming_what_it_lacks() {
    require!(need::BUSYBOX, [Need::Tool("mkfs.ext4", "e2fsprogs")]);
    let env = TestEnv::new();
    let rootfs = env.path("rootfs");
    busybox_rootfs(&rootfs);
    let out = env.path("vm.box");
    let build = |extra: &[&str]| {
        let mut cmd = env.envy();
        cmd.args(["box", "build", "--kind", "qemu", "--name", "vm", "--rootfs"]).arg(&rootfs).args(extra).arg("-o").arg(&out);
        cmd.assert()
    };
    // busybox has no /sbin/init here (its init applet is /bin/init).
    build(&[]).code(4).stderr(contains("has no init at /sbin/init")).stderr(contains("systemd-sysv"));
    // An init named on the command line is looked for instead; then the SSH server.
    build(&["--cmdline", "init=/bin/init"]).code(4).stderr(contains("has no SSH server")).stderr(contains("openssh-server"));
    // With one, the seed needs a reader: no cloud-init, and a shell as init cannot start
    // envy's agent (busybox is init only when called so).
    let sshd = rootfs.join("usr/sbin/dropbear");
    std::fs::create_dir_all(sshd.parent().unwrap()).unwrap();
    std::fs::write(&sshd, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&sshd, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    build(&["--cmdline", "init=/bin/sh"]).code(4).stderr(contains("has no cloud-init, and its init")).stderr(contains("is neither systemd nor busybox init"));
    build(&["--cmdline", "init=/bin/init"]).code(4).stderr(contains("has no /etc/inittab"));
    // Where the agent must go, the rootfs holds a file: refused after mkfs, the disk dropped.
    std::fs::write(rootfs.join("etc/inittab"), "::sysinit:/etc/init.d/rcS\n").unwrap();
    std::fs::create_dir_all(rootfs.join("usr/lib")).unwrap();
    std::fs::write(rootfs.join("usr/lib/envy"), "not a folder\n").unwrap();
    build(&["--cmdline", "init=/bin/init"])
        .code(4)
        .stderr(contains("cannot install envy's first-boot agent"))
        .stderr(contains("/usr/lib/envy is not a directory in the root filesystem"));
    assert!(!out.exists());
    let leftovers: Vec<String> = common::list_dir(env.dir.path()).into_iter().filter(|n| n.starts_with(".envy-build")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
