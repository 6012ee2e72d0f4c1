//! `envy share --serve` handing a machine to a teammate (another folder, another
//! ENVY_HOME), and a tampered box refused by digest; a killed share leaves no box
//! where it was to go. Container provider; the VM case lives with the QEMU tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::common::{self, need, require, TestEnv};

/// A running `envy share --serve` whose server stops (Ctrl-C) when dropped.
struct Sharing {
    child: Child,
    url: String,
    sha256: String,
    path: std::path::PathBuf,
}

impl Sharing {
    fn start(env: &TestEnv) -> Sharing {
        let mut child = env
            .envy_std()
            .args(["share", "--json", "--serve", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("share printed {line:?}: {e}"));
        assert_eq!(v["version"], 1);
        Sharing {
            url: v["url"].as_str().unwrap().to_string(),
            sha256: v["sha256"].as_str().unwrap().to_string(),
            path: v["path"].as_str().unwrap().into(),
            child,
        }
    }
}

impl Drop for Sharing {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
    }
}

#[test]
fn a_teammate_gets_the_shared_state_and_a_tampered_box_is_refused() {
    require!(need::CONTAINERS);
    let me = TestEnv::new();
    let (box_path, _) = common::build_container_box(&me, "busybox");
    std::fs::write(
        me.project.join("Envfile"),
        format!("[machine.web]\nbox = {{ path = \"{}\" }}\nforward = [{{ host = 18090, guest = 80, auto = true }}]\n", box_path.display()),
    )
    .unwrap();
    let _mine = common::DestroyOnDrop(&me);
    me.envy().arg("up").assert().success();
    me.envy().args(["exec", "--", "sh", "-c", "echo made-by-me > /root/shared.txt"]).assert().success();

    let sharing = Sharing::start(&me);
    assert!(sharing.url.starts_with("http://127.0.0.1:"), "served on loopback by default: {}", sharing.url);
    assert_eq!(common::sha256_hex(&std::fs::read(&sharing.path).unwrap()), sharing.sha256);
    // The box carries the machine's Envfile section.
    let listing = Command::new("tar").arg("--zstd").arg("-xOf").arg(&sharing.path).arg("box.toml").output().unwrap();
    let manifest = String::from_utf8_lossy(&listing.stdout);
    assert!(manifest.contains("[machine.web]") && manifest.contains("guest = 80"), "{manifest}");

    // The teammate: another folder, another ENVY_HOME, only the URL and digest.
    let mate = TestEnv::new();
    std::fs::write(
        mate.project.join("Envfile"),
        format!("[machine.copy]\nbox = {{ url = \"{}\", sha256 = \"{}\" }}\n", sharing.url, sharing.sha256),
    )
    .unwrap();
    let _theirs = common::DestroyOnDrop(&mate);
    mate.envy().arg("up").assert().success();
    let out = mate.envy().args(["exec", "--", "cat", "/root/shared.txt"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "made-by-me\n");

    // One byte of the served file flipped: a third host refuses it by digest.
    let mut bytes = std::fs::read(&sharing.path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&sharing.path, &bytes).unwrap();
    let other = TestEnv::new();
    std::fs::write(
        other.project.join("Envfile"),
        format!("[machine.copy]\nbox = {{ url = \"{}\", sha256 = \"{}\" }}\n", sharing.url, sharing.sha256),
    )
    .unwrap();
    let out = other.envy().arg("up").output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong sha256 digest") && err.contains(&sharing.sha256), "{err}");
    assert!(other.store_entries().iter().all(|e| e.starts_with('.')) || other.store_entries().is_empty(), "{:?}", other.store_entries());
    assert!(!other.machine_dir("copy").join("machine.json").exists());
}

#[test]
fn share_without_serve_writes_a_box_that_box_add_accepts() {
    require!(need::CONTAINERS);
    let env = TestEnv::new();
    common::busybox_project(&env);
    let _cleanup = common::DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();
    env.envy().args(["halt"]).assert().success();
    let out = env.envy().args(["share", "--json", "-o"]).arg(env.path("mine.box")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sha256"].as_str().unwrap(), common::sha256_hex(&std::fs::read(env.path("mine.box")).unwrap()));
    env.envy().args(["box", "add"]).arg(env.path("mine.box")).args(["--sha256", v["sha256"].as_str().unwrap()]).assert().success();
}

#[test]
fn a_killed_share_leaves_no_box_and_the_next_share_is_whole() {
    require!(need::CONTAINERS);
    let env = TestEnv::new();
    common::busybox_project(&env);
    let _cleanup = common::DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();
    // Enough to pack that the share is still writing when it is killed.
    env.envy().args(["exec", "--", "sh", "-c", "dd if=/dev/urandom of=/root/big bs=1M count=96 2>/dev/null"]).assert().success();
    env.envy().arg("halt").assert().success();
    let output = env.path("mine.box");
    let part = env.path("mine.box.part");
    let mut child = env.envy_std().args(["share", "-o"]).arg(&output).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = std::time::Instant::now();
    while !part.exists() {
        assert!(child.try_wait().unwrap().is_none(), "share ended before it was killed");
        assert!(started.elapsed() < std::time::Duration::from_secs(120), "share wrote no {}", part.display());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!output.exists(), "a killed share left {}", output.display());

    // The next share replaces what the killed one left, and its box verifies.
    let out = env.envy().args(["share", "--json", "-o"]).arg(&output).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!part.exists());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    env.envy().args(["box", "add"]).arg(&output).args(["--sha256", v["sha256"].as_str().unwrap()]).assert().success();
}
