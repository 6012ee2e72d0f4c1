//! `forward_auto` through the real `envy` binary on the qemu provider (the tiny busybox
//! VM under TCG): a server started in the guest after `up` is forwarded to the same
//! port on the host's 127.0.0.1 (read from /proc/net/tcp over SSH, added with QEMU's
//! hostfwd), `envy status --json` lists it, and the host port is released when the
//! server stops; a killed watcher's forward is released by the next one; the watcher
//! goes with halt.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::TestEnv;

fn envy_ok(env: &TestEnv, args: &[&str]) -> String {
    let out = env.envy().args(args).output().unwrap();
    assert!(out.status.success(), "envy {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `envy status --json`'s auto_forwards of machine web, as (guest, host) ports.
fn auto_forwards(env: &TestEnv) -> Vec<(u64, u64)> {
    let status: serde_json::Value = serde_json::from_str(&envy_ok(env, &["status", "--json"])).unwrap();
    let web = &status["machines"][0];
    web["auto_forwards"]
        .as_array()
        .unwrap_or_else(|| panic!("no auto_forwards in {web}"))
        .iter()
        .map(|f| {
            assert_eq!(f["host_ip"], "127.0.0.1", "{f}");
            (f["guest_port"].as_u64().unwrap(), f["host_port"].as_u64().unwrap())
        })
        .collect()
}

/// Waits (bounded, generously: a TCG guest on a shared host is slow) until `done`
/// holds; panics with `what` otherwise. Returns how long it took, for the log.
fn eventually(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

fn get(port: u16) -> Option<String> {
    let out = Command::new("curl").args(["-fsS", "--max-time", "5"]).arg(format!("http://127.0.0.1:{port}/")).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn watcher_pid(env: &TestEnv) -> Option<u32> {
    let text = std::fs::read_to_string(env.machine_dir("web").join("forward-auto.pid")).ok()?;
    let pid = serde_json::from_str::<serde_json::Value>(&text).unwrap()["pid"].as_u64().unwrap() as u32;
    std::path::Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

#[test]
fn a_vm_port_is_forwarded_as_it_opens_and_released_as_it_closes() {
    common::require_tool("curl", "curl");
    assert!(free(5173), "this test needs host port 5173 free");
    let env = TestEnv::new();
    let tiny = common::tiny_vm_box(&env);
    std::fs::write(
        env.project.join("Envfile"),
        format!(
            "[machine.web]\nbox = {{ path = \"{}\" }}\nprovider = \"qemu\"\nmemory = \"256MiB\"\ncpus = 1\nforward_auto = true\n",
            tiny.display()
        ),
    )
    .unwrap();
    let _cleanup = common::DestroyOnDrop(&env);
    envy_ok(&env, &["up"]);
    assert!(watcher_pid(&env).is_some(), "up starts the watcher");
    assert_eq!(auto_forwards(&env), vec![], "nothing listens above 1024 after boot (SSH's 22 is below)");
    let log = || std::fs::read_to_string(env.machine_dir("web").join("forward-auto.log")).unwrap_or_default();

    envy_ok(
        &env,
        &["exec", "--", "sh", "-c", "mkdir -p /www && echo page-5173 > /www/index.html && httpd -f -p 5173 -h /www </dev/null >/dev/null 2>&1 &"],
    );
    let took = eventually("127.0.0.1:5173 serves the guest's page", || get(5173).is_some_and(|b| b.contains("page-5173")));
    eprintln!("the host got the guest's page {} ms after the server started", took.as_millis());
    assert_eq!(auto_forwards(&env), vec![(5173, 5173)]);
    assert!(log().contains("==> web: guest 5173 -> 127.0.0.1:5173"), "{}", log());

    // A watcher killed outright cannot release what it holds (QEMU keeps the forward):
    // the one the next `up` starts does, and takes the same host port again.
    let killed = watcher_pid(&env).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(killed as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    eventually("the killed watcher is gone", || !std::path::Path::new(&format!("/proc/{killed}/stat")).exists()
        || std::fs::read_to_string(format!("/proc/{killed}/stat")).is_ok_and(|s| s.contains(") Z ")));
    envy_ok(&env, &["up"]);
    eventually("the new watcher forwards guest 5173 to host 5173 again", || auto_forwards(&env) == vec![(5173, 5173)]);
    assert!(get(5173).is_some_and(|b| b.contains("page-5173")));

    envy_ok(&env, &["exec", "--", "killall", "httpd"]);
    eventually("host port 5173 is released", || free(5173));
    assert_eq!(auto_forwards(&env), vec![]);
    assert!(log().contains("guest 5173 closed; released 127.0.0.1:5173"), "{}", log());

    let watcher = watcher_pid(&env).unwrap();
    envy_ok(&env, &["halt"]);
    assert!(!std::path::Path::new(&format!("/proc/{watcher}")).exists(), "halt stops the watcher");
}
