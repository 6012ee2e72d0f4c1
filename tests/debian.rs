//! A real distribution: a Debian 12 box built with mmdebstrap from Debian's packages
//! (the quick start's own script), provisioning that installs a package from a local
//! file, and the examples/ projects brought up as the docs describe them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::{self, http_get, machine, need, require, Need, TestEnv};

/// The Debian box: mmdebstrap fetches Debian's packages; its machines are containers.
const DEBIAN: &[Need] = &[Need::Network, Need::Tool("mmdebstrap", "mmdebstrap")];

/// Runs scripts/debian-box.sh once per test binary: the box is cached under target/,
/// and each test's ENVY_HOME gets it added as `debian-12`. Its callers require `DEBIAN`
/// and `need::CONTAINERS`.
fn add_debian_box(env: &TestEnv) {
    static BUILT: OnceLock<()> = OnceLock::new();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/debian-box.sh");
    let run = || {
        let status = Command::new("bash")
            .arg(&script)
            .arg(assert_cmd::cargo::cargo_bin("envy"))
            .arg(cache_dir())
            .env("ENVY_HOME", &env.home)
            .env("CI", "1")
            .status()
            .unwrap();
        assert!(status.success(), "scripts/debian-box.sh failed");
    };
    // The first caller builds (the others wait); every caller adds to its own home.
    let mut first = false;
    BUILT.get_or_init(|| {
        run();
        first = true;
    });
    if !first {
        run();
    }
}

/// Where built test boxes are kept between runs.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-boxes")
}

/// A copy of an examples/ folder in the test's project dir.
fn copy_example(name: &str, to: &Path) {
    copy_as_cloned(&Path::new("examples").join(name).join("."), to);
}

/// Copies `rel` of the checkout to `to` as a fresh clone has it: without the
/// Envfile.lock files that the developer's own `scripts/try.sh` pins (git ignores them),
/// which would hold the copy to the developer's box instead of the test's.
fn copy_as_cloned(rel: &Path, to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let status = Command::new("cp").arg("-a").arg(&from).arg(to).status().unwrap();
    assert!(status.success());
    let status = Command::new("find").arg(to).args(["-name", "Envfile.lock", "-delete"]).status().unwrap();
    assert!(status.success());
}

fn host_port(env: &TestEnv, name: &str) -> u16 {
    machine(&env.status(), name)["forwards"][0]["host_port"].as_u64().unwrap() as u16
}

#[test]
fn provisioning_installs_a_package_from_a_local_file() {
    require!(DEBIAN, need::CONTAINERS);
    let env = TestEnv::new();
    add_debian_box(&env);
    let deb = build_deb(&env.path("pkg"));
    std::fs::copy(&deb, env.project.join("envy-hello.deb")).unwrap();
    std::fs::write(
        env.project.join("Envfile"),
        "[machine.app]\nbox = \"debian-12\"\nsync = [\".:/project\"]\nprovision = [\"dpkg -i /project/envy-hello.deb\"]\n",
    )
    .unwrap();
    let _cleanup = common::DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();
    let out = env.envy().args(["exec", "--", "envy-hello"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from a local package\n");
    let os = env.envy().args(["exec", "--", "cat", "/etc/os-release"]).output().unwrap();
    assert!(String::from_utf8_lossy(&os.stdout).contains("bookworm"));
    // dpkg knows it: it was installed, not copied.
    env.envy().args(["exec", "--", "dpkg", "-s", "envy-hello"]).assert().success();
}

/// A one-file Debian package made with dpkg-deb.
fn build_deb(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
    std::fs::write(
        dir.join("DEBIAN/control"),
        "Package: envy-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: envy tests <tests@envy.invalid>\nDescription: says hello\n",
    )
    .unwrap();
    let bin = dir.join("usr/bin/envy-hello");
    std::fs::write(&bin, "#!/bin/sh\necho hello from a local package\n").unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = dir.with_extension("deb");
    let status = Command::new("dpkg-deb").args(["--build", "--root-owner-group"]).arg(dir).arg(&out).status().unwrap();
    assert!(status.success(), "dpkg-deb failed");
    out
}

#[test]
fn the_web_app_example_serves_its_page() {
    require!(DEBIAN, need::CONTAINERS);
    let env = TestEnv::new();
    add_debian_box(&env);
    copy_example("web-app", &env.project);
    let _cleanup = common::DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();
    let page = http_get(host_port(&env, "web"), "/");
    assert!(page.contains("<h1>It works</h1>"), "{page}");
    // Its server comes back with the machine (a `run = "always"` step).
    env.envy().arg("halt").assert().success();
    env.envy().arg("up").assert().success();
    let page = http_get(host_port(&env, "web"), "/");
    assert!(page.contains("<h1>It works</h1>"), "after halt and up: {page}");
}

#[test]
fn the_staging_example_web_reads_db_by_name() {
    require!(DEBIAN, need::CONTAINERS);
    let env = TestEnv::new();
    add_debian_box(&env);
    copy_example("staging", &env.project);
    let _cleanup = common::DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();
    let body = http_get(host_port(&env, "web"), "/");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["from_db"][0]["name"], "seed", "{body}");
    // db has no forward: it is reachable from web only.
    assert_eq!(machine(&env.status(), "db")["forwards"], serde_json::json!([]));
}

#[test]
fn the_staging_example_runs_as_a_throwaway_replica_for_ci() {
    require!(DEBIAN, need::CONTAINERS);
    let env = TestEnv::new();
    add_debian_box(&env);
    copy_example("staging", &env.project);
    let out = env.envy().args(["--json", "run", "--machine", "web", "--", "python3", "/project/web/check.py"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("db says: [{\"id\": 1, \"name\": \"seed\"}]"), "web reached db by name: {stdout}");
    let events: Vec<serde_json::Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).filter(|e: &serde_json::Value| e.get("event").is_some()).collect();
    let names: Vec<String> = events.iter().map(|e| format!("{} {}", e["event"].as_str().unwrap(), e["machine"].as_str().unwrap())).collect();
    assert_eq!(names, ["up db", "ready db", "up web", "ready web", "exit web", "destroyed web", "destroyed db"]);
    // CMD's exit code is envy's.
    let out = env.envy().args(["run", "--machine", "web", "--", "python3", "-c", "import sys; sys.exit(3)"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(env.run_leftovers(), Vec::<String>::new());
    assert!(!env.project.join("Envfile.lock").exists(), "a run leaves the project's files alone");
}

#[test]
fn the_readme_quick_start_runs_as_written() {
    require!(DEBIAN, need::CONTAINERS);
    let env = TestEnv::new();
    add_debian_box(&env);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains("./scripts/try.sh") && readme.contains("./scripts/test.sh"));
    // try.sh as written, in a copy of the checkout's scripts and example: the test
    // never writes into the source tree (a developer's own Envfile.lock stays theirs).
    let copy = env.path("checkout");
    std::fs::create_dir_all(copy.join("examples")).unwrap();
    for (from, to) in [("scripts", copy.clone()), ("examples/web-app", copy.join("examples"))] {
        copy_as_cloned(Path::new(from), &to);
    }
    let out = Command::new("bash")
        .arg(copy.join("scripts/try.sh"))
        .env("ENVY_HOME", &env.home)
        .env("ENVY_BIN", assert_cmd::cargo::cargo_bin("envy"))
        .env("ENVY_BOX_CACHE", cache_dir())
        .env("CI", "1")
        .output()
        .unwrap();
    let _ = env.envy().arg("-C").arg(copy.join("examples/web-app")).args(["destroy", "--force"]).output();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "try.sh failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("hello from envy: Debian GNU/Linux 12 (bookworm)"), "{stdout}");
    assert!(stdout.contains("<h1>It works</h1>"), "{stdout}");
}

#[test]
fn two_builds_of_the_debian_box_give_one_digest() {
    // mmdebstrap builds as root here.
    require!(DEBIAN, [Need::Root]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/debian-box.sh");
    let digests: Vec<String> = (0..2)
        .map(|_| {
            let env = TestEnv::new();
            let out = Command::new("bash")
                .arg(&script)
                .arg(assert_cmd::cargo::cargo_bin("envy"))
                .arg(env.path("own-cache"))
                .env("ENVY_HOME", &env.home)
                .env("CI", "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "debian-box.sh failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
            stdout.lines().find_map(|l| l.strip_prefix("debian-12 box: sha256 ")).expect("the script prints the digest").to_string()
        })
        .collect();
    assert_eq!(digests[0], digests[1], "two builds from the same packages differ");
}

/// A Debian 12 root filesystem for a VM, unpacked into `dir`: systemd, OpenSSH, iproute2
/// and udev from Debian (scripts/debian-rootfs.sh, the tarball cached under target/ by its
/// package list), no cloud-init. Debian's kernel is left out to keep the build and the
/// boot short: the tiny VM's kernel and initramfs (Debian's generic kernel, its modules
/// loaded before the switch to this root) go into its /boot.
fn debian_vm_rootfs(dir: &Path) {
    static TARBALL: OnceLock<PathBuf> = OnceLock::new();
    let tarball = TARBALL.get_or_init(|| {
        let packages = "systemd-sysv,openssh-server,iproute2,udev";
        let out = cache_dir().join(format!("debian-12-vm-{}.tar", &common::sha256_hex(packages.as_bytes())[..12]));
        if !out.exists() {
            std::fs::create_dir_all(cache_dir()).unwrap();
            // mmdebstrap writes a tarball for a name ending in .tar (else a directory).
            let partial = out.with_extension(format!("{}.tar", std::process::id()));
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/debian-rootfs.sh");
            let status = Command::new(&script).arg(packages).arg(&partial).status().unwrap();
            assert!(status.success(), "scripts/debian-rootfs.sh failed");
            std::fs::rename(&partial, &out).unwrap();
        }
        out
    });
    std::fs::create_dir_all(dir).unwrap();
    let status = Command::new("tar").args(["-x", "--numeric-owner", "-f"]).arg(tarball).arg("-C").arg(dir).status().unwrap();
    assert!(status.success());
    let tiny = common::tiny_vm_rootfs();
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    for entry in std::fs::read_dir(tiny.join("boot")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join("boot").join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_debian_rootfs_without_cloud_init_boots_as_a_vm_through_envys_agent() {
    require!(DEBIAN, need::VMS, [Need::Root, Need::Tool("debugfs", "e2fsprogs")]);
    let env = TestEnv::new();
    let rootfs = env.path("rootfs");
    debian_vm_rootfs(&rootfs);
    let out = env.path("debian-vm.box");
    let build = |env: &TestEnv| {
        let mut cmd = env.envy();
        cmd.args(["box", "build", "--kind", "qemu", "--name", "debian-vm", "--rootfs"]).arg(&rootfs).arg("-o").arg(&out);
        cmd.assert()
    };
    // Without an init (systemd-sysv's /sbin/init), the build is refused naming it.
    let init = rootfs.join("usr/sbin/init");
    let target = std::fs::read_link(&init).unwrap();
    std::fs::remove_file(&init).unwrap();
    build(&env).code(4).stderr(predicates::str::contains("has no init at /sbin/init")).stderr(predicates::str::contains("systemd-sysv"));
    assert!(!out.exists());
    std::os::unix::fs::symlink(&target, &init).unwrap();
    build(&env).success().stderr(predicates::str::contains("installing envy's first-boot agent"));

    std::fs::write(env.project.join("marker"), "from the host\n").unwrap();
    std::fs::write(
        env.project.join("Envfile"),
        format!(
            "[machine.deb]\nbox = {{ path = \"{}\" }}\nprovider = \"qemu\"\nmemory = \"1GiB\"\ncpus = 2\nsync = [\".:/project\"]\n",
            out.display()
        ),
    )
    .unwrap();
    let _cleanup = common::DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();
    // systemd started the agent before sshd: hostname, root's key, the NIC and the mount.
    assert_eq!(env.out(&["exec", "--", "hostname"]).trim(), "deb");
    assert_eq!(env.out(&["exec", "--", "cat", "/project/marker"]), "from the host\n");
    assert_eq!(env.out(&["exec", "--", "systemctl", "is-active", "envy-agent"]).trim(), "active");
    assert!(env.out(&["exec", "--", "cat", "/proc/1/comm"]).starts_with("systemd"));
    // The box's SSH host keys, shared by every machine made from it, were replaced.
    let host_key = |path: &Path| std::fs::read_to_string(path.join("etc/ssh/ssh_host_ed25519_key.pub")).unwrap();
    let guest = env.out(&["exec", "--", "cat", "/etc/ssh/ssh_host_ed25519_key.pub"]);
    assert!(guest.starts_with("ssh-ed25519 ") && guest != host_key(&rootfs), "{guest}");
}
