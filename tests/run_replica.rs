//! `envy run -- CMD` without `--box`: throwaway copies of the Envfile's machines on the
//! container provider (busybox boxes, real runc and slirp4netns), waited for until
//! ready, CMD's exit code passed through, and nothing left behind — also on SIGTERM,
//! and with two runs in one folder at once. Also the `ready` check of `envy up`.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::common::{self, free_port, need, netns_names, require, container_ids, TestEnv};

/// db serves /project/db over HTTP once provisioned; web finds it by name.
const ENVFILE: &str = r#"[defaults]
box = { path = "BOX" }
sync = [".:/project"]

[machine.db]
provision = ["httpd -p 7000 -h /project/db"]
ready = { tcp = 7000, timeout = "30s" }

[machine.web]
env = { DB_URL = "http://db:7000" }
forward = [{ host = PORT, guest = 8000 }]
"#;

struct Project {
    env: TestEnv,
}

impl Project {
    /// A project of `envfile`; its tests require `need::CONTAINERS`.
    fn new(envfile: &str) -> Project {
        let env = TestEnv::new();
        let (box_path, _) = common::build_container_box(&env, "busybox");
        let port = free_port();
        let envfile = envfile.replace("BOX", &box_path.display().to_string()).replace("PORT", &port.to_string());
        std::fs::write(env.project.join("Envfile"), envfile).unwrap();
        std::fs::create_dir_all(env.project.join("db")).unwrap();
        std::fs::write(env.project.join("db/hello.txt"), "hello from db\n").unwrap();
        Project { env }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.env.envy().args(args).output().unwrap()
    }

    /// Nothing of any run is left: throwaway state, runc containers, mounts, networks
    /// (the developer's own machines, if up, stay). `run_ids` are runs seen while running.
    fn assert_nothing_left(&self, run_ids: &[String]) {
        let env = &self.env;
        let dev = format!("envy-{}", envy::plan::project_id(&env.project));
        assert_eq!(env.run_leftovers(), Vec::<String>::new(), "a run's state is left");
        let containers = container_ids(&env.home);
        assert!(containers.iter().all(|c| c.starts_with(&dev)), "a run's container is left: {containers:?}");
        let own = env.state_dir().to_string_lossy().into_owned();
        // The developer's own machines keep their mounts: their state and network namespaces.
        let left: Vec<String> = common::mounts_below(&env.home)
            .into_iter()
            .filter(|m| !m.starts_with(&own) && !Path::new(m).file_name().is_some_and(|n| n.to_string_lossy().starts_with(&dev)))
            .collect();
        assert!(left.is_empty(), "a run's mount is left: {left:?}");
        let networks = common::list_dir(&env.home.join("run/net"));
        assert!(networks.iter().all(|n| dev.ends_with(n.as_str())), "a run's network is left: {networks:?}");
        let netns = netns_names(&env.home);
        for id in run_ids {
            assert!(!netns.iter().any(|n| n.contains(&format!("envy-{id}"))), "the network namespace of run {id} is left: {netns:?}");
        }
    }
}

/// Sends `signal` to a running `envy run` alone (as a CI runner cancelling a job, or
/// Ctrl-C), checks it exits 130, and returns its stderr.
fn interrupt(mut child: std::process::Child, signal: nix::sys::signal::Signal) -> String {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    stderr
}

/// The JSON events among a run's stdout lines, as (event, machine).
fn events(stdout: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e.get("event").is_some())
        .map(|e| (e["event"].as_str().unwrap().to_string(), e["machine"].as_str().unwrap().to_string()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn a_replica_runs_cmd_in_the_named_machine_and_leaves_the_developers_machines_alone() {
    require!(need::CONTAINERS);
    let p = Project::new(ENVFILE);
    let _cleanup = common::DestroyOnDrop(&p.env);
    // The developer's own machines are up, holding web's host port.
    p.env.envy().arg("up").assert().success();
    p.env.envy().args(["exec", "web", "--", "sh", "-c", "echo mine > /root/dev"]).assert().success();

    let out = p.run(&["--json", "run", "--machine", "web", "--", "sh", "-c", "wget -q -O- \"$DB_URL/hello.txt\"; hostname; exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("hello from db\nweb\n"), "{stdout}");
    assert_eq!(
        events(&out.stdout),
        pairs(&[("up", "db"), ("ready", "db"), ("up", "web"), ("ready", "web"), ("exit", "web"), ("destroyed", "web"), ("destroyed", "db")])
    );
    let exit = stdout.lines().find(|l| l.contains("\"exit\"")).unwrap();
    assert!(exit.contains("\"code\":5"), "{exit}");

    // Without --machine, CMD runs in the first machine.
    let out = p.run(&["run", "--", "hostname"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "db\n");

    // The developer's machines still run, as they were, and Envfile.lock is as `up` left it.
    let status: serde_json::Value = serde_json::from_slice(&p.run(&["status", "--json"]).stdout).unwrap();
    for m in status["machines"].as_array().unwrap() {
        assert_eq!(m["state"], "running", "{status}");
    }
    let kept = p.run(&["exec", "web", "--", "cat", "/root/dev"]);
    assert_eq!(String::from_utf8_lossy(&kept.stdout), "mine\n");
    p.assert_nothing_left(&[]);
}

#[test]
fn sigterm_mid_run_destroys_every_machine_of_the_run() {
    require!(need::CONTAINERS);
    let p = Project::new(ENVFILE);
    // SIGTERM to envy alone, as a CI runner cancelling a job sends it.
    let child = p.env.envy_std().args(["run", "--", "sleep", "300"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut id = None;
    for _ in 0..600 {
        // Both machines run: CMD is about to start or running.
        if container_ids(&p.env.home).len() == 2 {
            id = common::list_dir(&p.env.home.join("projects")).into_iter().find_map(|n| n.strip_prefix("run-").map(str::to_string));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let id = id.expect("the run never brought both machines up");
    std::thread::sleep(Duration::from_secs(1));
    let stderr = interrupt(child, nix::sys::signal::Signal::SIGTERM);
    assert!(stderr.contains("removing the throwaway machines"), "{stderr}");
    p.assert_nothing_left(&[id]);
}

#[test]
fn a_ready_check_that_never_passes_fails_with_its_own_message() {
    require!(need::CONTAINERS);
    let p = Project::new(&ENVFILE.replace("ready = { tcp = 7000, timeout = \"30s\" }", "ready = { cmd = \"test -e /never\", timeout = \"3s\" }"));
    let _cleanup = common::DestroyOnDrop(&p.env);
    let expected = "machine db is not ready after 3s: its ready check (`test -e /never`) still fails (last exit code 1)";
    let out = p.run(&["up"]);
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stderr).contains(expected), "{}", String::from_utf8_lossy(&out.stderr));
    p.env.envy().args(["destroy", "--force"]).assert().success();

    let out = p.run(&["--json", "run", "--", "true"]);
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stderr).contains(expected), "{}", String::from_utf8_lossy(&out.stderr));
    // Both started together; db's ready check stopped the run before web was provisioned.
    assert_eq!(events(&out.stdout), pairs(&[("destroyed", "web"), ("destroyed", "db")]), "no machine was up and ready");
    p.assert_nothing_left(&[]);
}

#[test]
fn two_runs_at_once_in_one_folder_do_not_meet() {
    require!(need::CONTAINERS);
    let p = Project::new(ENVFILE);
    let start = |marker: &str| {
        p.env
            .envy_std()
            .args(["run", "--machine", "web", "--"])
            .args(["sh", "-c", &format!("echo {marker} > /root/mine; wget -q -O- \"$DB_URL/hello.txt\"; sleep 1; cat /root/mine")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (start("first"), start("second"));
    for (child, marker) in [(first, "first"), (second, "second")] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("hello from db\n{marker}\n"));
    }
    p.assert_nothing_left(&[]);
}

#[test]
fn ctrl_c_during_a_box_download_stops_the_run_at_once_and_keeps_what_arrived() {
    require!(need::CONTAINERS);
    let p = Project::new("[defaults]\nbox = { url = \"URL\", sha256 = \"SHA\" }\n");
    let (box_path, digest) = common::build_container_box(&p.env, "slow");
    let server = common::http::Server::start();
    server.serve("/slow.box", std::fs::read(&box_path).unwrap());
    // Long enough that the run would otherwise wait for the whole box, then start it.
    server.throttle("/slow.box", 16 << 10, Duration::from_millis(200));
    let envfile = std::fs::read_to_string(p.env.project.join("Envfile")).unwrap();
    std::fs::write(p.env.project.join("Envfile"), envfile.replace("URL", &server.url("/slow.box")).replace("SHA", &digest)).unwrap();

    let child = p.env.envy_std().args(["run", "--", "true"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let part_has_bytes = || {
        p.env.download_entries().iter().any(|n| std::fs::metadata(p.env.home.join("downloads").join(n)).is_ok_and(|m| m.len() > 0))
    };
    for _ in 0..300 {
        if part_has_bytes() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(part_has_bytes(), "the download never started");
    let stderr = interrupt(child, nix::sys::signal::Signal::SIGINT);
    assert!(stderr.contains("interrupted while downloading"), "{stderr}");
    assert!(!stderr.contains("starting"), "the run went on to start the machine: {stderr}");
    assert!(part_has_bytes(), "what arrived was not kept for a resume");
    p.assert_nothing_left(&[]);
}
