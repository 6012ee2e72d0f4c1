//! `forward_auto` through the real `envy` binary on the container provider (runc,
//! slirp4netns): a port that starts listening in the machine after `up` is forwarded
//! to the host and released when it closes; declared forwards keep their ports; a
//! taken host port moves to the next free one; the watcher goes with halt and destroy.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::TestEnv;

fn require_host() {
    assert!(nix::unistd::geteuid().is_root(), "the forward_auto tests start containers: run them as root");
    for (tool, package) in [("runc", "runc"), ("slirp4netns", "slirp4netns"), ("ip", "iproute2"), ("curl", "curl")] {
        common::require_tool(tool, package);
    }
}

struct Project {
    env: TestEnv,
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.env.envy().args(["destroy", "--force"]).output();
    }
}

impl Project {
    fn envy_ok(&self, args: &[&str]) -> String {
        let out = self.env.envy().args(args).output().unwrap();
        assert!(out.status.success(), "envy {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `envy status --json`'s auto_forwards of machine web, as (guest, host) ports.
    fn auto_forwards(&self) -> Vec<(u64, u64)> {
        let status: serde_json::Value = serde_json::from_str(&self.envy_ok(&["status", "--json"])).unwrap();
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

    fn watcher_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.env.machine_dir("web").join("forward-auto.pid")).ok()?;
        let pid = serde_json::from_str::<serde_json::Value>(&text).unwrap()["pid"].as_u64().unwrap() as u32;
        std::path::Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.env.machine_dir("web").join("forward-auto.log")).unwrap_or_default()
    }
}

/// Waits (bounded, generously) until `done` holds; panics with `what` otherwise.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn get(port: u16) -> Option<String> {
    let out = Command::new("curl").args(["-fsS", "--max-time", "5"]).arg(format!("http://127.0.0.1:{port}/")).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[test]
fn guest_ports_are_forwarded_as_they_open_and_released_as_they_close() {
    require_host();
    for port in [5173, 5174, 5175, 5176, 5177] {
        assert!(free(port), "this test needs host port {port} free");
    }
    let env = TestEnv::new();
    let (box_path, _) = common::build_container_box(&env, "busybox");
    std::fs::write(
        env.project.join("Envfile"),
        format!(
            "[defaults]\nbox = {{ path = \"{}\" }}\nprovider = \"container\"\nmemory = \"256MiB\"\nforward_auto = true\n\n\
             [machine.web]\nforward = [{{ host = 5174, guest = 80 }}]\n",
            box_path.display()
        ),
    )
    .unwrap();
    let p = Project { env };
    let up = p.env.envy().arg("up").output().unwrap();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    assert!(p.watcher_pid().is_some(), "up starts the watcher");
    assert_eq!(p.auto_forwards(), vec![]);

    // A server started after up is forwarded to the same host port.
    let serve = |port: u16, page: &str| {
        let script = format!("mkdir -p /www{port} && echo {page} > /www{port}/index.html && httpd -p {port} -h /www{port}");
        p.envy_ok(&["exec", "web", "--", "sh", "-c", &script]);
    };
    serve(5173, "page-5173");
    eventually("127.0.0.1:5173 serves the guest's page", || get(5173).is_some_and(|b| b.contains("page-5173")));
    assert_eq!(p.auto_forwards(), vec![(5173, 5173)]);
    assert!(p.log().contains("==> web: guest 5173 -> 127.0.0.1:5173"), "{}", p.log());

    // Stopped in the guest, released on the host.
    p.envy_ok(&["exec", "web", "--", "sh", "-c", "killall httpd"]);
    eventually("host port 5173 is released", || free(5173));
    assert_eq!(p.auto_forwards(), vec![]);
    assert!(p.log().contains("guest 5173 closed; released 127.0.0.1:5173"), "{}", p.log());

    // The declared forward keeps host port 5174: guest 5174 moves to the next free one.
    serve(80, "declared-80");
    serve(5174, "page-5174");
    eventually("guest 5174 is forwarded", || p.auto_forwards().contains(&(5174, 5175)));
    assert!(get(5174).unwrap().contains("declared-80"), "the declared forward still serves guest 80");
    assert!(get(5175).unwrap().contains("page-5174"));

    // A host port another program holds: the next free one, and the log says why.
    let holder = TcpListener::bind(("127.0.0.1", 5176)).unwrap();
    serve(5176, "page-5176");
    eventually("guest 5176 is forwarded", || p.auto_forwards().contains(&(5176, 5177)));
    assert!(get(5177).unwrap().contains("page-5176"));
    assert!(p.log().contains("guest 5176 -> 127.0.0.1:5177 (host port 5176 is taken)"), "{}", p.log());
    drop(holder);

    // The watcher goes with halt, comes back with up, and goes with destroy.
    let watcher = p.watcher_pid().unwrap();
    p.envy_ok(&["halt"]);
    assert!(!std::path::Path::new(&format!("/proc/{watcher}")).exists(), "halt stops the watcher");
    assert!(free(5175) && free(5177), "halt releases the automatic forwards");
    p.envy_ok(&["up"]);
    let watcher = p.watcher_pid().expect("up restarts the watcher");
    p.envy_ok(&["destroy", "--force"]);
    assert!(!std::path::Path::new(&format!("/proc/{watcher}")).exists(), "destroy stops the watcher");
}
