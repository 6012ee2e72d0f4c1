//! A QEMU machine through the real `envy` binary, from a box made by
//! `envy box build --kind qemu`: up, exec, snapshots with memory, halt, share, destroy;
//! and one Envfile mixing a container and a VM, which reach each other by name. Under
//! TCG (ENVY_ACCEL=tcg).

use std::time::Duration;

use crate::common::{self, machine, need, require, Need, TestEnv};

#[test]
fn a_vm_through_the_cli_with_snapshots_share_and_destroy() {
    require!(need::VMS);
    vm_with_snapshots_share_and_destroy(TestEnv::new());
}

/// The same as a normal user: QEMU runs as the user (under TCG: /dev/kvm is root's here).
#[test]
fn the_same_vm_as_a_normal_user() {
    require!(need::VMS, need::ROOTLESS);
    vm_with_snapshots_share_and_destroy(TestEnv::as_normal_user());
}

fn vm_with_snapshots_share_and_destroy(env: TestEnv) {
    let tiny = common::tiny_vm_box(&env);
    // No sync folder: QEMU cannot save a VM's memory while a sync folder (virtiofs or 9p) is attached (the mixed
    // test below reads a synced file).
    std::fs::write(
        env.project.join("Envfile"),
        format!(
            "[machine.vm]\nbox = {{ path = \"{}\" }}\nprovider = \"qemu\"\nmemory = \"256MiB\"\ncpus = 1\n\
             provision = [\"echo provisioned >> /root/count\"]\n",
            tiny.display()
        ),
    )
    .unwrap();
    let _cleanup = common::DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();
    let vm = machine(&env.status(), "vm").clone();
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["provider"], "qemu");
    let pid = vm["pid"].as_u64().expect("QEMU's pid") as i32;
    assert!(vm["ssh_port"].as_u64().is_some());

    assert!(env.out(&["exec", "--", "uname", "-a"]).starts_with("Linux vm "));
    env.envy().args(["exec", "--", "sh", "-c", "exit 5"]).assert().code(5);
    assert_eq!(env.out(&["exec", "--", "cat", "/root/count"]), "provisioned\n");

    // A running VM's snapshot holds its memory: a process started before it runs again after.
    env.out(&["exec", "--", "sh", "-c", "echo before > /root/state; (sleep 100000 > /dev/null 2>&1 & echo $! > /root/sleep.pid)"]);
    env.envy().args(["snapshot", "save", "clean"]).assert().success();
    env.envy().args(["snapshot", "save", "clean"]).assert().failure().stderr(predicates::str::contains("--force"));
    env.out(&["exec", "--", "sh", "-c", "echo after > /root/state; kill $(cat /root/sleep.pid)"]);
    assert!(!env.out(&["exec", "--", "ps"]).contains("sleep 100000"));
    env.envy().args(["snapshot", "restore", "clean"]).assert().success();
    assert_eq!(env.out(&["exec", "--", "cat", "/root/state"]), "before\n");
    assert!(env.out(&["exec", "--", "ps"]).contains("sleep 100000"), "the process is back after restore");
    let list: serde_json::Value = serde_json::from_str(&env.out(&["snapshot", "list", "--json"])).unwrap();
    assert_eq!(list["version"], 1);
    assert_eq!(list["snapshots"][0]["name"], "clean");
    assert_eq!(list["snapshots"][0]["memory"], true);
    env.envy().args(["snapshot", "restore", "missing"]).assert().failure().stderr(predicates::str::contains("no snapshot named missing"));
    env.envy().args(["snapshot", "delete", "clean"]).assert().success();

    // halt is graceful through QMP; up brings back the machine with its changes.
    env.envy().arg("halt").assert().success();
    assert_eq!(machine(&env.status(), "vm")["state"], "stopped");
    env.envy().arg("up").assert().success();
    assert_eq!(env.out(&["exec", "--", "cat", "/root/state"]), "before\n");
    assert_eq!(env.out(&["exec", "--", "cat", "/root/count"]), "provisioned\n", "provisioned once");

    // A halted VM packs into a verified box that another store accepts.
    env.envy().arg("halt").assert().success();
    let shared: serde_json::Value = serde_json::from_str(&env.out(&["share", "--json", "-o", env.path("vm.box").to_str().unwrap()])).unwrap();
    let other = TestEnv::new();
    other.envy().args(["box", "add"]).arg(env.path("vm.box")).args(["--sha256", shared["sha256"].as_str().unwrap()]).assert().success();

    env.envy().args(["destroy", "--force"]).assert().success();
    assert!(!env.state_dir().join("machines").exists());
    for _ in 0..100 {
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(), "QEMU is gone");
}

#[test]
fn one_envfile_mixes_a_container_and_a_vm() {
    require!(need::VMS, need::CONTAINERS);
    container_and_vm(TestEnv::new());
}

/// The same as a normal user: one project network in the user's namespace, the VM's
/// sync folder over 9p.
#[test]
fn a_container_and_a_vm_as_a_normal_user() {
    require!(need::VMS, need::CONTAINERS, need::ROOTLESS);
    container_and_vm(TestEnv::as_normal_user());
}

fn container_and_vm(env: TestEnv) {
    let tiny = common::tiny_vm_box(&env);
    let (busybox, _) = common::build_container_box(&env, "busybox");
    std::fs::write(env.project.join("hello.txt"), "hello VM\n").unwrap();
    // One box name for both, as in the README: it resolves per provider, as a Vagrant
    // box has one name and several providers.
    for path in [&busybox, &tiny] {
        env.envy().args(["box", "add"]).arg(path).args(["--name", "base"]).assert().success();
    }
    std::fs::write(
        env.project.join("Envfile"),
        "[defaults]\nbox = \"base\"\n\n[machine.web]\nprovider = \"container\"\n\n\
         [machine.db]\nprovider = \"qemu\"\nmemory = \"256MiB\"\ncpus = 1\nsync = [\".:/project\"]\n",
    )
    .unwrap();
    let _cleanup = common::DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();
    let s = env.status();
    assert_eq!(machine(&s, "web")["state"], "running");
    assert_eq!(machine(&s, "db")["state"], "running");
    assert_eq!(env.out(&["exec", "web", "--", "hostname"]).trim(), "web");
    assert_eq!(env.out(&["exec", "db", "--", "hostname"]).trim(), "db");
    assert_eq!(env.out(&["exec", "db", "--", "cat", "/project/hello.txt"]), "hello VM\n");
    env.out(&["exec", "db", "--", "sh", "-c", "echo from-vm > /project/from-vm.txt"]);
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(env.project.join("from-vm.txt")).unwrap().uid(), env.uid(), "the VM's write is the user's");
    // One project network: the container and the VM reach each other by name, both ways.
    env.out(&["exec", "web", "--", "sh", "-c", "mkdir -p /www && echo from-the-container > /www/index.html && httpd -p 8000 -h /www"]);
    env.out(&["exec", "db", "--", "httpd", "-p", "8080", "-h", "/srv/www"]);
    assert_eq!(env.out(&["exec", "db", "--", "wget", "-q", "-O", "-", "http://web:8000/"]), "from-the-container\n");
    assert!(env.out(&["exec", "web", "--", "wget", "-q", "-O", "-", "http://db:8080/"]).contains("hello from the tiny vm"));
    // A command that is not there exits 127, one that cannot be executed 126, in either.
    for machine in ["web", "db"] {
        env.envy().args(["exec", machine, "--", "no-such-command"]).assert().code(127);
        env.envy().args(["exec", machine, "--", "no-such-command", "with", "args"]).assert().code(127);
        env.envy().args(["exec", machine, "--", "/etc"]).assert().code(126);
        env.envy().args(["exec", machine, "--", "/etc/hosts"]).assert().code(126);
    }
    // With a sync folder attached (virtiofs as root here, 9p as a user) a VM's snapshot holds its disk only; restoring it rewinds
    // the disk and the machine runs again.
    env.out(&["exec", "db", "--", "sh", "-c", "echo before > /root/state; sync"]);
    env.envy().args(["snapshot", "save", "db", "disk-only"]).assert().success().stderr(predicates::str::contains("disk only"));
    env.out(&["exec", "db", "--", "sh", "-c", "echo after > /root/state; sync"]);
    env.envy().args(["snapshot", "restore", "db", "disk-only"]).assert().success();
    assert_eq!(machine(&env.status(), "db")["state"], "running");
    assert_eq!(env.out(&["exec", "db", "--", "cat", "/root/state"]), "before\n");
    env.envy().args(["destroy", "--force"]).assert().success();
    assert_eq!(machine(&env.status(), "db")["state"], "not-created");
}

#[test]
fn a_disk_with_its_own_bootloader_boots_by_firmware_like_a_cloud_image() {
    require!(need::VMS, [Need::Tool("sfdisk", "fdisk"), Need::Tool("grub-mkimage", "grub-common")]);
    let env = TestEnv::new();
    common::tiny_vm_box(&env);
    // A bare qcow2 with GRUB in its MBR: no kernel beside it, as with a stock cloud image.
    let disk = env.path("cloudlike.qcow2");
    let recipe = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("boxes/recipes/tiny-vm-bios.sh");
    let built = std::process::Command::new(&recipe).arg(&disk).output().unwrap();
    assert!(built.status.success(), "tiny-vm-bios.sh failed: {}", String::from_utf8_lossy(&built.stderr));
    env.envy().args(["box", "add"]).arg(&disk).args(["--name", "cloudlike"]).assert().success();
    let boxes: serde_json::Value = serde_json::from_str(&env.out(&["box", "list", "--json"])).unwrap();
    assert!(boxes.to_string().contains("cloudlike"), "{boxes}");

    std::fs::write(
        env.project.join("Envfile"),
        "[machine.cloud]\nbox = \"cloudlike\"\nprovider = \"qemu\"\nmemory = \"256MiB\"\ncpus = 1\n",
    )
    .unwrap();
    let _cleanup = common::DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();
    // GRUB, not QEMU's -kernel, started the kernel; the seed named the machine.
    let cmdline = env.out(&["exec", "--", "cat", "/proc/cmdline"]);
    assert!(cmdline.starts_with("BOOT_IMAGE=/boot/vmlinuz-") && cmdline.contains("root=/dev/vda1"), "{cmdline}");
    assert_eq!(env.out(&["exec", "--", "hostname"]).trim(), "cloud");
    env.envy().args(["destroy", "--force"]).assert().success();
}
