//! `forward_auto` through the real `envy` binary on the container provider (runc,
//! slirp4netns): a port that starts listening in the machine after `up` is forwarded
//! to the host and released when it closes; declared forwards keep their ports; a
//! taken host port moves to the next free one; the watcher goes with halt and destroy.

use std::net::TcpListener;

use crate::common::{self, eventually, http_get, http_try, need, require, DestroyOnDrop, TestEnv};

struct Project {
    env: TestEnv,
}

impl Project {
    /// `envy status --json`'s auto_forwards of machine web, as (guest, host) ports.
    fn auto_forwards(&self) -> Vec<(u64, u64)> {
        let status = self.env.status();
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
        common::running(pid).then_some(pid)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.env.machine_dir("web").join("forward-auto.log")).unwrap_or_default()
    }
}

fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[test]
fn guest_ports_are_forwarded_as_they_open_and_released_as_they_close() {
    require!(need::CONTAINERS);
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
    let _cleanup = DestroyOnDrop(&p.env);
    let up = p.env.envy().arg("up").output().unwrap();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    assert!(p.watcher_pid().is_some(), "up starts the watcher");
    assert_eq!(p.auto_forwards(), vec![]);

    // A server started after up is forwarded to the same host port.
    let serve = |port: u16, page: &str| {
        let script = format!("mkdir -p /www{port} && echo {page} > /www{port}/index.html && httpd -p {port} -h /www{port}");
        p.env.out(&["exec", "web", "--", "sh", "-c", &script]);
    };
    serve(5173, "page-5173");
    eventually("127.0.0.1:5173 serves the guest's page", || http_try(5173, "/").is_ok_and(|b| b.contains("page-5173")));
    // The watcher adds the forward, then records it: the page can come first.
    eventually("the forward of 5173 is recorded", || p.auto_forwards() == vec![(5173, 5173)]);
    assert!(p.log().contains("==> web: guest 5173 -> 127.0.0.1:5173"), "{}", p.log());

    // Stopped in the guest, released on the host.
    p.env.out(&["exec", "web", "--", "sh", "-c", "killall httpd"]);
    // The watcher releases the port, then rewrites its record: wait for both.
    eventually("host port 5173 is released and the record says so", || free(5173) && p.auto_forwards().is_empty());
    assert!(p.log().contains("guest 5173 closed; released 127.0.0.1:5173"), "{}", p.log());

    // The declared forward keeps host port 5174: guest 5174 moves to the next free one.
    serve(80, "declared-80");
    serve(5174, "page-5174");
    eventually("guest 5174 is forwarded", || p.auto_forwards().contains(&(5174, 5175)));
    assert!(http_get(5174, "/").contains("declared-80"), "the declared forward still serves guest 80");
    assert!(http_get(5175, "/").contains("page-5174"));

    // A host port another program holds: the next free one, and the log says why.
    let holder = TcpListener::bind(("127.0.0.1", 5176)).unwrap();
    serve(5176, "page-5176");
    eventually("guest 5176 is forwarded", || p.auto_forwards().contains(&(5176, 5177)));
    assert!(http_get(5177, "/").contains("page-5176"));
    assert!(p.log().contains("guest 5176 -> 127.0.0.1:5177 (host port 5176 is taken)"), "{}", p.log());
    drop(holder);

    // The watcher goes with halt, comes back with up, and goes with destroy.
    let watcher = p.watcher_pid().unwrap();
    p.env.out(&["halt"]);
    assert!(!common::running(watcher), "halt stops the watcher");
    assert!(free(5175) && free(5177), "halt releases the automatic forwards");
    p.env.out(&["up"]);
    let watcher = p.watcher_pid().expect("up restarts the watcher");
    p.env.out(&["destroy", "--force"]);
    assert!(!common::running(watcher), "destroy stops the watcher");
}

/// The same on the qemu provider (the tiny busybox VM under TCG): the watcher reads
/// /proc/net/tcp over SSH and adds QEMU hostfwd; a killed watcher's forward is
/// released by the next one. Its port is not the container test's, which may run at
/// the same time.
#[test]
fn a_vm_port_is_forwarded_as_it_opens_and_released_as_it_closes() {
    require!(need::VMS);
    assert!(free(5178), "this test needs host port 5178 free");
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
    let p = Project { env };
    let _cleanup = DestroyOnDrop(&p.env);
    p.env.out(&["up"]);
    assert!(p.watcher_pid().is_some(), "up starts the watcher");
    assert_eq!(p.auto_forwards(), vec![], "nothing listens above 1024 after boot (SSH's 22 is below)");

    p.env.out(&["exec", "--", "sh", "-c", "mkdir -p /www && echo page-5178 > /www/index.html && httpd -f -p 5178 -h /www </dev/null >/dev/null 2>&1 &"]);
    let serves = || http_try(5178, "/").is_ok_and(|b| b.contains("page-5178"));
    let started = std::time::Instant::now();
    eventually("127.0.0.1:5178 serves the guest's page", serves);
    eprintln!("the host got the guest's page {} ms after the server started", started.elapsed().as_millis());
    // The watcher adds the forward, then records it: the page can come first.
    eventually("the forward of 5178 is recorded", || p.auto_forwards() == vec![(5178, 5178)]);
    assert!(p.log().contains("==> web: guest 5178 -> 127.0.0.1:5178"), "{}", p.log());

    // A watcher killed outright cannot release what it holds (QEMU keeps the forward):
    // the one the next `up` starts does, and takes the same host port again.
    let killed = p.watcher_pid().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(killed as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    eventually("the killed watcher is gone", || !common::running(killed));
    p.env.out(&["up"]);
    eventually("the new watcher forwards guest 5178 to host 5178 again", || p.auto_forwards() == vec![(5178, 5178)]);
    assert!(serves());

    p.env.out(&["exec", "--", "killall", "httpd"]);
    // The watcher releases the port, then rewrites its record: wait for both.
    eventually("host port 5178 is released and the record says so", || free(5178) && p.auto_forwards().is_empty());
    assert!(p.log().contains("guest 5178 closed; released 127.0.0.1:5178"), "{}", p.log());

    let watcher = p.watcher_pid().unwrap();
    p.env.out(&["halt"]);
    assert!(!common::running(watcher), "halt stops the watcher");
}
