//! The lxd provider against a real LXD daemon (Debian's `lxd`), started by the test
//! in a temp dir: the life cycle through the unix socket, images keyed by box digest,
//! sync folders and forwards as devices, snapshots, and instances envy did not make.

use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use crate::common::lxd::{self as lxd_support, Lxd};
use crate::common::{build_container_box, free_port, http_get, need, require, TestEnv};

fn envy(env: &TestEnv, lxd: &Lxd) -> assert_cmd::Command {
    let mut cmd = env.envy();
    cmd.env("LXD_DIR", lxd.path());
    cmd
}

/// `instance name` of the machine `name` of the test project.
fn instance(env: &TestEnv, name: &str) -> String {
    format!("envy-{}-{name}", envy::plan::project_id(&env.project))
}

fn write_envfile(env: &TestEnv, box_path: &std::path::Path, port: u16) {
    std::fs::create_dir_all(env.project.join("www")).unwrap();
    std::fs::write(env.project.join("www/index.html"), "served from the project\n").unwrap();
    std::fs::write(
        env.project.join("Envfile"),
        format!(
            "[machine.web]\nbox = {box_path:?}\nprovider = \"lxd\"\nmemory = \"256MiB\"\nsync = [\".:/project\"]\n\
             forward = [{{ host = {port}, guest = 8080 }}]\nprovision = [\"echo provisioned > /root/provisioned\"]\n\
             env = {{ GREETING = \"hello from the Envfile\" }}\n"
        ),
    )
    .unwrap();
}

#[test]
fn lxd_machine_lives_through_the_unix_socket() {
    require!(need::LXD);
    let lxd = Lxd::start();
    let env = TestEnv::new();
    let (box_path, digest) = build_container_box(&env, "lxd-busybox");
    let port = free_port();
    write_envfile(&env, &box_path, port);
    let name = instance(&env, "web");

    let up = envy(&env, &lxd).arg("up").assert().success();
    let out = String::from_utf8_lossy(&up.get_output().stderr).into_owned();
    assert!(out.contains("uploading box"), "{out}");
    assert_eq!(lxd.instances(), vec![name.clone()]);
    assert_eq!(lxd.image_aliases(), vec![format!("envy-box-{digest}")]);
    assert_eq!(lxd.lxc(&["config", "get", &name, "user.envy.box"]).trim(), digest);

    // exec: stdout, stderr and the exit code pass through; the Envfile's env is set;
    // stdin reaches the command and its end is seen.
    let exec = envy(&env, &lxd)
        .args(["exec", "web", "--", "sh", "-c", "echo \"$GREETING\"; cat; echo to-stderr >&2; cat /root/provisioned; exit 3"])
        .write_stdin("from stdin\n")
        .assert()
        .code(3);
    assert_eq!(String::from_utf8_lossy(&exec.get_output().stdout), "hello from the Envfile\nfrom stdin\nprovisioned\n");
    assert!(String::from_utf8_lossy(&exec.get_output().stderr).contains("to-stderr"));
    envy(&env, &lxd).args(["exec", "web", "--", "no-such-command"]).assert().code(127);

    // The sync folder is the project, writable by root in the machine; the forward
    // reaches a server in it from the host's 127.0.0.1.
    envy(&env, &lxd).args(["exec", "web", "--", "sh", "-c", "echo written-inside > /project/from-guest"]).assert().success();
    assert_eq!(std::fs::read_to_string(env.project.join("from-guest")).unwrap(), "written-inside\n");
    envy(&env, &lxd).args(["exec", "web", "--", "sh", "-c", "httpd -p 8080 -h /project/www"]).assert().success();
    assert!(http_get(port, "/").contains("served from the project"));

    // Snapshot round trip.
    envy(&env, &lxd).args(["snapshot", "save", "web", "clean"]).assert().success();
    envy(&env, &lxd).args(["exec", "web", "--", "sh", "-c", "echo changed > /root/state"]).assert().success();
    let list = envy(&env, &lxd).args(["snapshot", "list", "web"]).assert().success();
    assert!(String::from_utf8_lossy(&list.get_output().stdout).contains("clean"));
    envy(&env, &lxd).args(["snapshot", "restore", "web", "clean"]).assert().success();
    envy(&env, &lxd).args(["exec", "web", "--", "test", "!", "-e", "/root/state"]).assert().success();
    let missing = envy(&env, &lxd).args(["snapshot", "restore", "web", "nope"]).assert().failure();
    assert!(String::from_utf8_lossy(&missing.get_output().stderr).contains("has no snapshot named nope; it has: clean"));
    envy(&env, &lxd).args(["snapshot", "delete", "web", "clean"]).assert().success();
    assert_eq!(lxd.lxc(&["list", &name, "--format", "csv", "-c", "S"]).trim(), "0");

    // halt, status, and up again: the image is found by its alias, nothing is uploaded.
    envy(&env, &lxd).args(["halt", "web"]).assert().success();
    let status = envy(&env, &lxd).args(["--json", "status"]).assert().success();
    let json: serde_json::Value = serde_json::from_slice(&status.get_output().stdout).unwrap();
    assert_eq!(json["machines"][0]["state"], "stopped");
    envy(&env, &lxd).args(["exec", "web", "--", "true"]).assert().code(7);
    let again = envy(&env, &lxd).arg("up").assert().success();
    let out = String::from_utf8_lossy(&again.get_output().stderr).into_owned();
    assert!(!out.contains("uploading") && !out.contains("packing"), "{out}");
    assert_eq!(lxd.image_count(), 1);
    // The sync folder and the forward come back with the restart.
    envy(&env, &lxd).args(["exec", "web", "--", "sh", "-c", "httpd -p 8080 -h /project/www"]).assert().success();
    assert!(http_get(port, "/").contains("served from the project"));

    // destroy removes the instance; the image stays cached like a box in the store.
    envy(&env, &lxd).args(["destroy", "--force"]).assert().success();
    assert!(lxd.instances().is_empty());
    assert_eq!(lxd.image_count(), 1);
    assert!(!env.machine_dir("web").exists());
}

#[test]
fn lxd_refuses_an_instance_envy_did_not_make() {
    require!(need::LXD);
    let lxd = Lxd::start();
    let env = TestEnv::new();
    let (box_path, _) = build_container_box(&env, "lxd-busybox");
    write_envfile(&env, &box_path, free_port());
    let name = instance(&env, "web");
    // Someone else's instance under the name envy would use (an empty one will do).
    lxd.lxc(&["init", "--empty", &name]);

    let up = envy(&env, &lxd).arg("up").assert().code(5);
    let err = String::from_utf8_lossy(&up.get_output().stderr).into_owned();
    assert!(err.contains(&format!("already has an instance {name} that envy did not make")), "{err}");
    let destroy = envy(&env, &lxd).args(["destroy", "--force"]).assert().code(5);
    assert!(String::from_utf8_lossy(&destroy.get_output().stderr).contains("envy neither reuses nor deletes it"));
    assert_eq!(lxd.instances(), vec![name]);
}

/// The Envfile of two machines placed on the two members of a remote cluster.
fn cluster_envfile(env: &TestEnv, box_path: &std::path::Path) {
    std::fs::write(
        env.project.join("Envfile"),
        format!(
            "[defaults]\nbox = {box_path:?}\nprovider = \"lxd\"\nremote = \"staging\"\nmemory = \"256MiB\"\n\
             [machine.one]\ntarget = \"node1\"\n[machine.two]\ntarget = \"node2\"\nprovision = [\"echo made > /root/made\"]\n"
        ),
    )
    .unwrap();
}

#[test]
fn lxd_cluster_over_https_places_machines_by_target() {
    require!(need::LXD);
    let cluster = lxd_support::Cluster::start();
    let env = TestEnv::new();
    let (box_path, digest) = build_container_box(&env, "lxd-busybox");
    cluster_envfile(&env, &box_path);

    // A bad token is refused and nothing is kept.
    let refused = env.envy().args(["remote", "add", "staging", &cluster.url, "--token", "bm90IGEgdG9rZW4="]).assert().code(5);
    assert!(String::from_utf8_lossy(&refused.get_output().stderr).contains("refused trading the token for trust"));
    assert!(env.envy().args(["remote", "list"]).assert().success().get_output().stdout.ends_with(b"SHA256\n"));

    let token = cluster.trust_token();
    env.envy().args(["remote", "add", "staging", &cluster.url, "--token", &token]).assert().success();
    let key = env.home.join("lxd/client.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let listed = env.envy().args(["--json", "remote", "list"]).assert().success();
    let listed: serde_json::Value = serde_json::from_slice(&listed.get_output().stdout).unwrap();
    let pinned = cluster.node1.lxc(&["info"]);
    assert!(pinned.contains(listed["remotes"]["staging"]["fingerprint"].as_str().unwrap()), "the pin is node1's certificate");

    env.envy().arg("up").assert().success();
    let s = env.status();
    assert_eq!(s["machines"][0]["state"], "running");
    assert_eq!(s["machines"][0]["location"], "node1");
    assert_eq!(s["machines"][1]["location"], "node2");
    let one = instance(&env, "one");
    let two = instance(&env, "two");
    assert_eq!(cluster.node1.lxc(&["list", &two, "--format", "csv", "-c", "L"]).trim(), "node2");
    // One image for both machines, whichever member they run on.
    assert_eq!(cluster.node1.image_aliases(), vec![format!("envy-box-{digest}")]);

    // exec through the API on the other member: output and exit code.
    let exec = env.envy().args(["exec", "two", "--", "sh", "-c", "cat /root/made; exit 4"]).assert().code(4);
    assert_eq!(String::from_utf8_lossy(&exec.get_output().stdout), "made\n");

    // Snapshot round trip on node2.
    env.envy().args(["snapshot", "save", "two", "base"]).assert().success();
    env.envy().args(["exec", "two", "--", "rm", "/root/made"]).assert().success();
    env.envy().args(["snapshot", "restore", "two", "base"]).assert().success();
    env.envy().args(["exec", "two", "--", "cat", "/root/made"]).assert().success();

    // Evacuating node2 moves its machine (LXD's default for a container): status says where it went.
    cluster.node1.lxc(&["cluster", "evacuate", "node2", "--force"]);
    let s = env.status();
    assert_eq!((&s["machines"][1]["state"], &s["machines"][1]["location"]), (&json!("running"), &json!("node1")));
    cluster.node1.lxc(&["cluster", "restore", "node2", "--force"]);
    assert_eq!(env.status()["machines"][1]["location"], "node2");
    // A machine the cluster may only stop stays on the evacuated member: status says so.
    cluster.node1.lxc(&["config", "set", &two, "cluster.evacuate=stop"]);
    cluster.node1.lxc(&["cluster", "evacuate", "node2", "--force"]);
    let s = env.status();
    assert_eq!((&s["machines"][1]["state"], &s["machines"][1]["location"]), (&json!("stopped"), &json!("node2 (evacuated)")));
    assert_eq!(s["machines"][0]["state"], "running");
    let down = env.envy().args(["exec", "two", "--", "true"]).assert().code(7);
    assert!(String::from_utf8_lossy(&down.get_output().stderr).contains("machine two is stopped"));
    cluster.node1.lxc(&["cluster", "restore", "node2", "--force"]);

    // A server that shows another certificate than the pinned one is refused.
    let remotes = env.home.join("lxd/remotes.json");
    let saved = std::fs::read_to_string(&remotes).unwrap();
    let fp = listed["remotes"]["staging"]["fingerprint"].as_str().unwrap();
    std::fs::write(&remotes, saved.replace(fp, &"0".repeat(64))).unwrap();
    let changed = env.envy().args(["status"]).assert().code(5);
    assert!(String::from_utf8_lossy(&changed.get_output().stderr).contains(&format!("showed a server certificate with sha256 {fp}")));
    std::fs::write(&remotes, saved).unwrap();

    // destroy leaves no instance and no profile envy made; the image stays cached.
    env.envy().args(["destroy", "--force"]).assert().success();
    assert!(cluster.node1.instances().is_empty(), "{one} and {two} are gone");
    assert_eq!(cluster.node1.lxc(&["profile", "list", "--format", "csv"]).lines().count(), 1);
    assert_eq!(cluster.node1.image_count(), 1);

}

#[test]
fn lxd_without_a_daemon_or_remote_says_so_and_makes_nothing() {
    require!(need::LXD);
    let env = TestEnv::new();
    let (box_path, _) = build_container_box(&env, "lxd-busybox");
    let empty = env.path("no-daemon");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(env.project.join("Envfile"), format!("[machine.web]\nbox = {box_path:?}\nprovider = \"lxd\"\n")).unwrap();
    let up = env.envy().env("LXD_DIR", &empty).arg("up").assert().code(5);
    let err = String::from_utf8_lossy(&up.get_output().stderr).into_owned();
    assert!(err.contains(&format!("no LXD or Incus daemon answers on {}/unix.socket", empty.display())), "{err}");
    assert!(!env.machine_dir("web").join("machine.json").exists());

    std::fs::write(env.project.join("Envfile"), format!("[machine.web]\nbox = {box_path:?}\nprovider = \"lxd\"\nremote = \"nope\"\n")).unwrap();
    let up = env.envy().arg("up").assert().code(5);
    let err = String::from_utf8_lossy(&up.get_output().stderr).into_owned();
    assert!(err.contains("no LXD remote named nope; add it with `envy remote add nope https://HOST:8443 --token TOKEN`"), "{err}");
    assert!(!env.machine_dir("web").join("machine.json").exists());
    assert!(!env.home.join("lxd/remotes.json").exists());

    let add = env.envy().args(["remote", "add", "staging", "http://10.0.0.5:8443", "--token", "x"]).assert().code(5);
    assert!(String::from_utf8_lossy(&add.get_output().stderr).contains("is not an LXD remote address: give https://HOST:PORT"));
    let remove = env.envy().args(["remote", "remove", "staging"]).assert().code(5);
    assert!(String::from_utf8_lossy(&remove.get_output().stderr).contains("there is no remote named staging"));
}

#[test]
fn lxd_run_passes_the_exit_code_and_leaves_nothing() {
    require!(need::LXD);
    let lxd = Lxd::start();
    let env = TestEnv::new();
    let (box_path, digest) = build_container_box(&env, "lxd-busybox");
    std::fs::write(env.project.join("input.txt"), "from the project\n").unwrap();

    // A bare machine of the box, this folder at /project, the code passed through.
    let run = envy(&env, &lxd)
        .args(["run", "--provider", "lxd", "--box"])
        .arg(&box_path)
        .args(["--", "sh", "-c", "cat input.txt; exit 7"])
        .assert()
        .code(7);
    assert_eq!(String::from_utf8_lossy(&run.get_output().stdout), "from the project\n");
    assert!(lxd.instances().is_empty());
    assert_eq!(env.run_leftovers(), Vec::<String>::new());
    // No profile envy made; the image is the cache keyed by the box digest.
    assert_eq!(lxd.lxc(&["profile", "list", "--format", "csv"]).lines().count(), 1);
    assert_eq!(lxd.image_aliases(), vec![format!("envy-box-{digest}")]);

    // The Envfile's machines as throwaways.
    std::fs::write(env.project.join("Envfile"), format!("[machine.web]\nbox = {box_path:?}\nprovider = \"lxd\"\n")).unwrap();
    envy(&env, &lxd).args(["run", "--", "sh", "-c", "exit 3"]).assert().code(3);
    assert!(lxd.instances().is_empty());
    assert_eq!(env.run_leftovers(), Vec::<String>::new());

    // --remote on a provider that runs machines here is refused before anything is made.
    let refused = envy(&env, &lxd).args(["run", "--provider", "container", "--remote", "staging", "--box"]).arg(&box_path).args(["--", "true"]).assert().code(5);
    assert!(String::from_utf8_lossy(&refused.get_output().stderr).contains("the container provider cannot run machines on a remote"));
    assert_eq!(env.run_leftovers(), Vec::<String>::new());

    // Ctrl-C in the middle of CMD: the machine is stopped under it, removed, and the run exits 130.
    use std::os::unix::process::CommandExt;
    let mut run = env.envy_std();
    run.env("LXD_DIR", lxd.path()).args(["run", "--provider", "lxd", "--box"]).arg(&box_path).args(["--", "sleep", "600"]);
    run.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).stdin(std::process::Stdio::null());
    // Its own process group, as a terminal's foreground job: Ctrl-C reaches all of it.
    run.process_group(0);
    let mut child = run.spawn().unwrap();
    let running = (0..600).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        lxd.lxc(&["list", "--format", "csv", "-c", "s"]).trim() == "RUNNING"
    });
    assert!(running, "the throwaway never ran");
    std::thread::sleep(std::time::Duration::from_secs(1));
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert!(lxd.instances().is_empty());
    assert_eq!(env.run_leftovers(), Vec::<String>::new());
}

/// `envy remote add staging` for the cluster.
fn add_remote(env: &TestEnv, cluster: &lxd_support::Cluster) {
    let token = cluster.trust_token();
    env.envy().args(["remote", "add", "staging", &cluster.url, "--token", &token]).assert().success();
}

fn stdout(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stdout).into_owned()
}

fn stderr(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stderr).into_owned()
}

#[test]
fn lxd_cluster_copies_sync_folders_and_runs_throwaways() {
    require!(need::LXD);
    let cluster = lxd_support::Cluster::start();
    let env = TestEnv::new();
    let (box_path, _) = build_container_box(&env, "lxd-busybox");
    add_remote(&env, &cluster);
    let envfile = env.project.join("Envfile");
    std::fs::create_dir_all(env.project.join("src")).unwrap();
    std::fs::write(env.project.join("src/main.txt"), "version 1\n").unwrap();
    // A symlink out of the project is copied as the link, never followed on the host.
    std::os::unix::fs::symlink("/etc/shadow", env.project.join("src/outside")).unwrap();

    // A remote cannot mount this host's folders: refused where the Envfile asks, nothing made.
    let machine = format!("[machine.one]\nbox = {box_path:?}\nprovider = \"lxd\"\nremote = \"staging\"\ntarget = \"node2\"\nmemory = \"256MiB\"\n");
    std::fs::write(&envfile, format!("{machine}sync = [\".:/project\"]\n")).unwrap();
    let refused = env.envy().arg("up").assert().code(3);
    assert!(stderr(&refused).contains(&format!(
        "{}:7:9: machine one: machine one runs on remote staging, which cannot mount this host's folders ({}): set sync_mode = \"copy\"",
        envfile.display(),
        env.project.display()
    )), "{}", stderr(&refused));
    // A mode that is not known, and copy on a provider that mounts, are refused at their keys.
    std::fs::write(&envfile, format!("{machine}sync_mode = \"sideways\"\nsync = [\".:/project\"]\n")).unwrap();
    let bad = env.envy().arg("up").assert().code(3);
    assert!(stderr(&bad).contains(":7:13: sync_mode \"sideways\" is not known: use \"mount\" (the default) or \"copy\""), "{}", stderr(&bad));
    std::fs::write(&envfile, format!("[machine.one]\nbox = {box_path:?}\nprovider = \"container\"\nsync = [{{ host = \".\", guest = \"/p\", mode = \"copy\" }}]\n")).unwrap();
    let bad = env.envy().arg("up").assert().code(3);
    assert!(stderr(&bad).contains("the container provider mounts this host's folders"), "{}", stderr(&bad));
    // Forwards to a remote machine are refused, not tunnelled (docs/lxd.md says why).
    std::fs::write(&envfile, format!("{machine}forward = [\"8080:80\"]\n")).unwrap();
    let bad = env.envy().arg("up").assert().code(3);
    assert!(stderr(&bad).contains(&format!(
        "{}:7:12: machine one: machine one runs on remote staging, which cannot listen on this host's ports",
        envfile.display()
    )), "{}", stderr(&bad));
    assert!(cluster.node1.instances().is_empty());

    // Copied at up, before provisioning, which sees it.
    std::fs::write(&envfile, format!("{machine}sync_mode = \"copy\"\nsync = [\".:/project\"]\nprovision = [\"cat /project/src/main.txt > /root/seen\"]\n")).unwrap();
    let up = env.envy().arg("up").assert().success();
    assert!(stderr(&up).contains(&format!("one: copying {} to /project", env.project.display())), "{}", stderr(&up));
    let exec = |script: &str| stdout(&env.envy().args(["exec", "one", "--", "sh", "-c", script]).assert().success());
    assert_eq!(exec("cat /root/seen src/main.txt"), "version 1\nversion 1\n");
    assert_eq!(exec("readlink /project/src/outside; test -L /project/src/outside && echo link"), "/etc/shadow\nlink\n");
    // One way: the host's changes wait for the next push, the machine's never come back.
    std::fs::write(env.project.join("src/main.txt"), "version 2\n").unwrap();
    exec("echo from-guest > /project/from-guest");
    assert_eq!(exec("cat /project/src/main.txt"), "version 1\n");
    assert!(!env.project.join("from-guest").exists());
    env.envy().args(["provision", "one"]).assert().success();
    assert_eq!(exec("cat /project/src/main.txt /project/from-guest"), "version 2\nfrom-guest\n");
    std::fs::write(env.project.join("src/main.txt"), "version 3\n").unwrap();
    env.envy().args(["reload", "one"]).assert().success();
    assert_eq!(exec("cat /project/src/main.txt"), "version 3\n");
    env.envy().args(["destroy", "--force"]).assert().success();
    assert!(cluster.node1.instances().is_empty());

    // envy run --remote: the Envfile's machines (mounted folders become copies) on the
    // cluster, the command's code passed through, nothing left.
    std::fs::write(&envfile, format!("[machine.ci]\nbox = {box_path:?}\nprovider = \"lxd\"\nmemory = \"256MiB\"\nsync = [\".:/project\"]\n")).unwrap();
    let run = env.envy().args(["run", "--remote", "staging", "--", "sh", "-c", "cat src/main.txt; exit 9"]).assert().code(9);
    assert_eq!(stdout(&run), "version 3\n");
    assert!(cluster.node1.instances().is_empty());
    assert_eq!(env.run_leftovers(), Vec::<String>::new());
    // A forward of a machine that --remote places is refused at its key, as when the
    // Envfile names the remote, before anything is made.
    std::fs::write(&envfile, format!("[machine.ci]\nbox = {box_path:?}\nprovider = \"lxd\"\nforward = [\"8080:80\"]\n")).unwrap();
    let refused = env.envy().args(["run", "--remote", "staging", "--", "true"]).assert().code(3);
    let said = stderr(&refused);
    assert!(said.contains(&format!("{}:4:", envfile.display())), "{said}");
    assert!(said.contains("machine ci: machine ci runs on remote staging, which cannot listen on this host's ports"), "{said}");
    assert!(cluster.node1.instances().is_empty());
    assert_eq!(env.run_leftovers(), Vec::<String>::new());
    // A bare machine of a box, this folder copied to /project.
    let run = env.envy().args(["run", "--remote", "staging", "--box"]).arg(&box_path).args(["--", "sh", "-c", "cat src/main.txt; exit 4"]).assert().code(4);
    assert_eq!(stdout(&run), "version 3\n");
    assert!(cluster.node1.instances().is_empty());
    assert_eq!(env.run_leftovers(), Vec::<String>::new());
    assert_eq!(cluster.node1.lxc(&["profile", "list", "--format", "csv"]).lines().count(), 1);

    // SIGTERM to envy alone (a CI runner cancelling the job) while CMD runs on the
    // cluster: the machine is stopped under CMD, deleted, and the run exits 130.
    std::fs::write(&envfile, format!("[machine.ci]\nbox = {box_path:?}\nprovider = \"lxd\"\nmemory = \"256MiB\"\nsync = [\".:/project\"]\n")).unwrap();
    let mut run = env.envy_std();
    run.args(["run", "--remote", "staging", "--", "sh", "-c", "touch /root/started; sleep 600"]);
    let mut child = run.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).stdin(std::process::Stdio::null()).spawn().unwrap();
    let started = (0..600).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        cluster.node1.instances().first().is_some_and(|name| {
            cluster.node1.command("lxc", &["exec", name, "--", "test", "-e", "/root/started"]).output().is_ok_and(|o| o.status.success())
        })
    });
    assert!(started, "the throwaway's command never started");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert!(cluster.node1.instances().is_empty());
    assert_eq!(env.run_leftovers(), Vec::<String>::new());
}

#[test]
fn lxd_share_makes_a_box_another_home_runs() {
    require!(need::LXD);
    require!(need::CONTAINERS);
    let lxd = Lxd::start();
    let me = TestEnv::new();
    let (box_path, digest) = build_container_box(&me, "lxd-busybox");
    std::fs::write(me.project.join("Envfile"), format!("[machine.web]\nbox = {box_path:?}\nprovider = \"lxd\"\nmemory = \"256MiB\"\n")).unwrap();
    envy(&me, &lxd).arg("up").assert().success();
    envy(&me, &lxd).args(["exec", "web", "--", "sh", "-c", "echo made-on-lxd > /root/shared.txt"]).assert().success();

    // Shared while running: published from a snapshot, exported, the snapshot and image gone after.
    let shared = me.path("web.box");
    let out = envy(&me, &lxd).args(["share", "--json", "web", "-o"]).arg(&shared).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let sha256 = v["sha256"].as_str().unwrap().to_string();
    assert_eq!(sha256, crate::common::sha256_hex(&std::fs::read(&shared).unwrap()));
    assert_eq!(lxd.image_aliases(), vec![format!("envy-box-{digest}")]);
    assert_eq!(lxd.image_count(), 1, "the image made for the export is deleted");
    assert_eq!(lxd.lxc(&["list", &instance(&me, "web"), "--format", "csv", "-c", "S"]).trim(), "0");

    // Another ENVY_HOME adds it by its digest and runs it with the container provider.
    let mate = TestEnv::new();
    mate.envy().args(["box", "add"]).arg(&shared).args(["--sha256", &sha256, "--name", "from-lxd"]).assert().success();
    std::fs::write(mate.project.join("Envfile"), "[machine.copy]\nbox = \"from-lxd\"\nprovider = \"container\"\n").unwrap();
    let _theirs = crate::common::DestroyOnDrop(&mate);
    mate.envy().arg("up").assert().success();
    let out = mate.envy().args(["exec", "--", "cat", "/root/shared.txt"]).assert().success();
    assert_eq!(String::from_utf8_lossy(&out.get_output().stdout), "made-on-lxd\n");

    // --push (an OCI image of the machine's changes) is not for lxd machines: said, nothing made.
    let push = envy(&me, &lxd).args(["share", "web", "--push", "oci://127.0.0.1:1/x/y:1"]).assert().code(5);
    assert!(stderr(&push).contains("envy share --push does not push lxd machines (machine web)"), "{}", stderr(&push));
    envy(&me, &lxd).args(["destroy", "--force"]).assert().success();
}

#[test]
fn lxd_daemon_gone_during_up_or_before_exec_is_named_and_the_next_command_sees_the_truth() {
    require!(need::LXD);
    let mut lxd = Lxd::start();
    let env = TestEnv::new();
    let (box_path, _) = build_container_box(&env, "lxd-busybox");
    // Provisioning waits until the test lets it go: the daemon dies in the middle of `up`.
    std::fs::write(
        env.project.join("Envfile"),
        format!(
            "[machine.web]\nbox = {box_path:?}\nprovider = \"lxd\"\nmemory = \"256MiB\"\n\
             provision = [\"touch /root/waiting; while [ ! -e /root/go ]; do sleep 0.2; done\"]\n"
        ),
    )
    .unwrap();
    let name = instance(&env, "web");
    let mut up = env.envy_std();
    up.env("LXD_DIR", lxd.path()).arg("up").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let up = up.spawn().unwrap();
    let provisioning = (0..600).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        lxd.command("lxc", &["exec", &name, "--", "test", "-e", "/root/waiting"]).output().is_ok_and(|o| o.status.success())
    });
    assert!(provisioning, "provisioning never started");
    lxd.kill();
    let out = up.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    let socket = lxd.socket();
    assert!(err.contains(&format!("cannot talk to the daemon at {}", socket.display())), "{err}");
    assert!(err.contains("`envy status` shows the true state"), "{err}");

    // Before exec, the daemon still gone: the same words, exit 5.
    for args in [&["exec", "web", "--", "true"][..], &["status"][..]] {
        let gone = envy(&env, &lxd).args(args).assert().code(5);
        assert!(
            stderr(&gone).contains(&format!("cannot talk to the daemon at {} while reading the machine's instance", socket.display())),
            "{}",
            stderr(&gone)
        );
        assert!(stderr(&gone).contains("check that it runs and is reachable"), "{}", stderr(&gone));
    }
    // Back: the machine ran on without its daemon, and envy reads that from the daemon;
    // `up` finishes what the killed one left (its provisioning had not ended).
    lxd.restart();
    let status = envy(&env, &lxd).args(["--json", "status"]).assert().success();
    let status: serde_json::Value = serde_json::from_slice(&status.get_output().stdout).unwrap();
    assert_eq!(status["machines"][0]["state"], "running");
    lxd.lxc(&["exec", &name, "--", "touch", "/root/go"]);
    let again = envy(&env, &lxd).arg("up").assert().success();
    assert!(stderr(&again).contains("web: provision 1/1"), "{}", stderr(&again));
    envy(&env, &lxd).args(["exec", "web", "--", "true"]).assert().success();
    envy(&env, &lxd).args(["destroy", "--force"]).assert().success();
    assert!(lxd.instances().is_empty());
}

#[test]
fn lxd_doctor_checks_the_remotes_and_a_remote_gone_is_named() {
    require!(need::LXD);
    let mut cluster = lxd_support::Cluster::start();
    let env = TestEnv::new();
    let (box_path, _) = build_container_box(&env, "lxd-busybox");
    add_remote(&env, &cluster);
    let doctor = || {
        let out = env.envy().args(["--json", "doctor"]).output().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), json)
    };
    let find = |json: &serde_json::Value, name: &str| {
        json["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap_or_else(|| panic!("no check {name}: {json}"))
    };
    let (_, json) = doctor();
    let api = find(&json, "staging");
    assert_eq!(api["status"], "ok", "{api}");
    assert!(api["detail"].as_str().unwrap().starts_with("LXD 5.0"), "{api}");
    assert!(api["detail"].as_str().unwrap().ends_with(&format!("at {}, API 1.0", cluster.url.trim_start_matches("https://"))), "{api}");
    assert_eq!(find(&json, "staging trust")["status"], "ok");
    let members = find(&json, "staging members");
    assert_eq!((&members["status"], &members["detail"]), (&json!("ok"), &json!("node1, node2 online")));
    let text = String::from_utf8(env.envy().arg("doctor").output().unwrap().stdout).unwrap();
    assert!(text.contains("remotes:\n[ok  ] staging      LXD 5.0"), "{text}");
    assert!(text.contains("[ok  ] staging members node1, node2 online"), "{text}");

    std::fs::write(
        env.project.join("Envfile"),
        format!("[machine.one]\nbox = {box_path:?}\nprovider = \"lxd\"\nremote = \"staging\"\ntarget = \"node1\"\nmemory = \"256MiB\"\n"),
    )
    .unwrap();
    env.envy().arg("up").assert().success();

    // node2 stops: once the cluster notices (its heartbeat), the members check says so.
    cluster.node2.kill();
    let members = (0..120)
        .find_map(|_| {
            let members = find(&doctor().1, "staging members");
            if members["status"] == "warn" {
                return Some(members);
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
            None
        })
        .expect("the cluster never saw node2 go");
    assert!(members["detail"].as_str().unwrap().starts_with("node1 online, node2 offline"), "{members}");
    assert!(members["advice"].as_str().unwrap().starts_with("machines placed on node2 (`target`) cannot be created or started there"), "{members}");
    assert_eq!(env.status()["machines"][0]["state"], "running");

    // The remote's own address goes: every command names it (exit 5), doctor fails it.
    cluster.node1.kill();
    let address = cluster.url.trim_start_matches("https://").to_string();
    let gone = env.envy().args(["exec", "one", "--", "true"]).assert().code(5);
    assert!(stderr(&gone).contains(&format!("cannot talk to remote staging ({address}) while reading the machine's instance")), "{}", stderr(&gone));
    let (code, json) = doctor();
    let api = find(&json, "staging");
    assert_eq!((code, &api["status"]), (Some(5), &json!("fail")), "{api}");
    assert!(api["detail"].as_str().unwrap().contains(&format!("cannot talk to remote staging ({address}) while asking for its API")), "{api}");
    assert!(api["advice"].as_str().unwrap().starts_with("start the daemon or fix the network"), "{api}");

    // Back: the next command finds the machine as it is.
    cluster.node1.restart();
    assert_eq!(env.status()["machines"][0]["state"], "running");
    env.envy().args(["exec", "one", "--", "true"]).assert().success();
    env.envy().args(["destroy", "--force"]).assert().success();
    assert!(cluster.node1.instances().is_empty());
}

/// A box pulled from a registry runs on lxd as on the container provider: the image's
/// Env, WorkingDir and User, the Envfile's env winning over the image's; provisioning
/// and `exec` asked to run as root run as root.
#[test]
fn lxd_runs_an_image_box_with_its_env_workdir_and_user() {
    use crate::common::registry::{busybox_image, Registry, REGISTRY};
    require!(need::LXD, REGISTRY);
    let lxd = Lxd::start();
    let registry = Registry::start(None);
    let env = TestEnv::new();
    let layout = env.path("layout");
    busybox_image(&layout, "base", &["--config.env", "FROM_IMAGE=yes", "--config.env", "BOTH=image", "--config.workingdir", "/srv/app", "--config.user", "nobody"]);
    registry.push(&layout, "base", "team/app:1", &[]);
    std::fs::write(
        env.project.join("Envfile"),
        format!(
            "[machine.m]\nbox = \"oci://{}/team/app:1\"\nprovider = \"lxd\"\nenv = {{ BOTH = \"envfile\" }}\n\
             provision = [\"mkdir -p /srv/app && id -u > /tmp/provisioned-as\"]\n",
            registry.host()
        ),
    )
    .unwrap();
    envy(&env, &lxd).arg("up").assert().success();
    let out = stdout(&envy(&env, &lxd).args(["exec", "--", "sh", "-c", "echo $FROM_IMAGE $BOTH $HOME $(pwd) $(id -u):$(id -g)"]).assert().success());
    assert_eq!(out, "yes envfile / /srv/app 65534:65534\n");
    assert_eq!(stdout(&envy(&env, &lxd).args(["exec", "--workdir", "/tmp", "--", "cat", "provisioned-as"]).assert().success()), "0\n");
    envy(&env, &lxd).args(["destroy", "--force"]).assert().success();
    assert!(lxd.instances().is_empty());
}
