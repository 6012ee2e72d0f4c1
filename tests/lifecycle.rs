//! The whole life cycle through the real `envy` binary on the container provider:
//! box build → up (lock, provisioning, forwards, names) → exec → halt → up → crash
//! recovery → destroy, plus the failure paths of `envy up` and the throwaway `envy run`.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use crate::common::{self, free_port, http_get, machine, need, netns_names, require, container_ids, TestEnv};

/// A project with a busybox box built by `envy box build`, and a guard that destroys
/// whatever the test left running. Its tests require `need::CONTAINERS`.
struct Project {
    env: TestEnv,
    box_path: std::path::PathBuf,
}

impl Project {
    fn new(envfile: &str) -> Project {
        Project::in_env(TestEnv::new(), envfile)
    }

    fn in_env(env: TestEnv, envfile: &str) -> Project {
        let (box_path, _) = common::build_container_box(&env, "busybox");
        let envfile = envfile.replace("BOX", &box_path.display().to_string());
        std::fs::write(env.project.join("Envfile"), envfile).unwrap();
        std::fs::write(env.project.join("hello.txt"), "hello from the host\n").unwrap();
        Project { env, box_path }
    }

    fn envy(&self) -> assert_cmd::Command {
        self.env.envy()
    }

    /// Kills a machine's init behind envy's back and waits until status reads it stopped.
    fn kill_init(&self, name: &str) {
        let pid = machine(&self.env.status(), name)["pid"].as_u64().expect("a running machine has a pid") as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        let mut state = String::new();
        for _ in 0..100 {
            state = machine(&self.env.status(), name)["state"].as_str().unwrap().to_string();
            if state == "stopped" {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(state, "stopped");
    }

    fn project_id(&self) -> String {
        envy::plan::project_id(&self.env.project)
    }

    /// runc containers, network namespaces and mounts this project still has on the host.
    fn host_traces(&self) -> Vec<String> {
        let id = self.project_id();
        let mut traces = Vec::new();
        traces.extend(container_ids(&self.env.home).into_iter().map(|c| format!("container {c}")));
        traces.extend(netns_names(&self.env.home).into_iter().filter(|n| n.contains(&id)).map(|n| format!("netns {n}")));
        traces.extend(self.env.mounts_below(self.env.dir.path()).into_iter().map(|m| format!("mount {m}")));
        traces
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if self.env.state_dir().exists() {
            let _ = self.envy().args(["destroy", "--force"]).output();
        }
    }
}

const TWO_MACHINES: &str = r#"
[defaults]
box = { path = "BOX" }
provider = "container"
memory = "256MiB"
sync = [".:/project"]
provision = ["echo provisioned >> /root/provision-count"]

[machine.web]
forward = [{ host = 18080, guest = 80, auto = true }]
env = { GREETING = "hi" }

[machine.db]
"#;

#[test]
fn up_exec_forward_names_halt_up_crash_and_destroy() {
    require!(need::CONTAINERS);
    whole_life_cycle(Project::new(TWO_MACHINES));
}

/// The same, with envy run by a normal user (common::normal_user): containers in the
/// user's own namespace, files on the host the user's.
#[test]
fn the_same_life_cycle_as_a_normal_user() {
    require!(need::CONTAINERS, need::ROOTLESS);
    whole_life_cycle(Project::in_env(TestEnv::as_normal_user(), TWO_MACHINES));
}

fn whole_life_cycle(p: Project) {
    p.envy().arg("up").assert().success();

    // The lock pins the box that arrived.
    let lock = std::fs::read_to_string(p.env.project.join("Envfile.lock")).unwrap();
    let digest = common::sha256_hex(&std::fs::read(&p.box_path).unwrap());
    assert!(lock.contains(&digest) && lock.contains("[machine.web]") && lock.contains("[machine.db]"), "{lock}");

    // exec sees the synced project, the Envfile's env, and passes the exit code through.
    assert_eq!(p.env.out(&["exec", "web", "--", "cat", "/project/hello.txt"]), "hello from the host\n");
    assert_eq!(p.env.out(&["exec", "web", "--", "sh", "-c", "echo $GREETING"]), "hi\n");
    p.envy().args(["exec", "web", "--", "sh", "-c", "exit 7"]).assert().code(7);
    // Writes through the sync folder reach the host.
    p.env.out(&["exec", "web", "--", "sh", "-c", "echo from-guest > /project/written.txt"]);
    assert_eq!(std::fs::read_to_string(p.env.project.join("written.txt")).unwrap(), "from-guest\n");
    use std::os::unix::fs::MetadataExt as _;
    for file in ["written.txt", "Envfile.lock"] {
        let owner = std::fs::metadata(p.env.project.join(file)).unwrap().uid();
        assert_eq!(owner, p.env.uid(), "{file} belongs to the user who ran envy");
    }

    // A forwarded port answers on the host.
    p.env.out(&["exec", "web", "--", "sh", "-c", "mkdir -p /www && echo web-page > /www/index.html && httpd -p 80 -h /www"]);
    let status = p.env.status();
    let web = machine(&status, "web");
    assert_eq!(web["state"], "running");
    let port = web["forwards"][0]["host_port"].as_u64().unwrap() as u16;
    assert_eq!(web["forwards"][0]["host_ip"], "127.0.0.1");
    assert_eq!(http_get(port, "/"), "web-page\n");

    // web reaches db by name.
    p.env.out(&["exec", "db", "--", "sh", "-c", "mkdir -p /www && echo db-page > /www/index.html && httpd -p 8000 -h /www"]);
    let mut reached = String::new();
    for _ in 0..50 {
        let out = p.envy().args(["exec", "web", "--", "wget", "-qO-", "http://db:8000/"]).output().unwrap();
        reached = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(reached, "db-page\n");

    // halt → stopped; up → the machine kept its own changes and was not provisioned again.
    p.env.out(&["exec", "web", "--", "sh", "-c", "echo kept > /root/mark"]);
    p.envy().args(["halt", "web"]).assert().success();
    assert_eq!(machine(&p.env.status(), "web")["state"], "stopped");
    p.envy().args(["exec", "web", "--", "true"]).assert().code(7);
    p.envy().args(["up", "web"]).assert().success();
    assert_eq!(p.env.out(&["exec", "web", "--", "cat", "/root/mark"]), "kept\n");
    assert_eq!(p.env.out(&["exec", "web", "--", "cat", "/root/provision-count"]), "provisioned\n");

    // The container's init killed behind envy's back: status tells the truth, up recovers.
    p.kill_init("db");
    p.envy().arg("up").assert().success();
    assert_eq!(machine(&p.env.status(), "db")["state"], "running");

    // `envy list` sees the project.
    let list: serde_json::Value = serde_json::from_str(&p.env.out(&["list", "--json"])).unwrap();
    assert!(list["projects"].as_array().unwrap().iter().any(|e| e["project"] == p.env.project.to_str().unwrap()));

    // destroy leaves nothing behind but the project's files and the box store.
    let store_before = p.env.store_entries();
    p.envy().args(["destroy", "--force"]).assert().success();
    assert_eq!(p.host_traces(), Vec::<String>::new());
    assert!(!p.env.state_dir().join("machines").exists());
    assert_eq!(std::fs::read_to_string(p.env.project.join("hello.txt")).unwrap(), "hello from the host\n");
    assert!(p.env.project.join("Envfile.lock").exists(), "the lock is the user's, destroy keeps it");
    assert_eq!(p.env.store_entries(), store_before);
    assert_eq!(machine(&p.env.status(), "web")["state"], "not-created");
}

/// `envy up` starts machines together: eight come up in one up, each with its own
/// address, on one project network with one slirp4netns; a machine whose start fails
/// does not stop the others, its error is the result, and nothing is provisioned
/// until an up succeeds. halt and destroy stop them together too: every machine is
/// stopped, then nothing is left, the project network with the last machine.
#[test]
fn machines_start_and_stop_together_and_one_failed_start_leaves_the_others_running() {
    require!(need::CONTAINERS);
    let names: Vec<String> = (1..=8).map(|i| format!("m{i}")).collect();
    let mut envfile = String::from("[defaults]\nbox = { path = \"BOX\" }\nprovision = [\"echo once >> /root/provisioned\"]\n");
    for name in &names {
        envfile.push_str(&format!("[machine.{name}]\n"));
    }
    let p = Project::new(&format!("{envfile}[machine.broken]\nbox = {{ path = \"BROKEN\" }}\n"));
    // A box without /bin/sh: its init cannot start.
    let rootfs = p.env.path("broken-rootfs");
    common::busybox_rootfs(&rootfs);
    std::fs::remove_file(rootfs.join("bin/sh")).unwrap();
    let broken = p.env.path("broken.box");
    p.envy().args(["box", "build", "--rootfs"]).arg(&rootfs).args(["--name", "broken", "--version", "1", "-o"]).arg(&broken).assert().success();
    let text = std::fs::read_to_string(p.env.project.join("Envfile")).unwrap().replace("BROKEN", &broken.display().to_string());
    std::fs::write(p.env.project.join("Envfile"), &text).unwrap();

    let out = p.envy().arg("up").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("broken") && err.contains("/bin/sh"), "names the machine and why its init did not start: {err}");
    let status = p.env.status();
    let mut addresses = Vec::new();
    for name in &names {
        let m = machine(&status, name);
        assert_eq!(m["state"], "running", "{name}: {m}");
        assert_eq!(m["provisioned"], false, "{name}: nothing is provisioned after a failed up");
        addresses.push(m["ip"].as_str().unwrap().to_string());
    }
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), names.len(), "each machine has its own address: {addresses:?}");
    assert_eq!(machine(&status, "broken")["state"], "not-created");
    let slirps = std::process::Command::new("pgrep").args(["-f", &format!("slirp4netns.*{}", p.project_id())]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&slirps.stdout).lines().count(), 1, "one slirp4netns for the project");

    // Without the broken machine the next up provisions each running machine once.
    std::fs::write(p.env.project.join("Envfile"), text.split("[machine.broken]").next().unwrap()).unwrap();
    p.envy().arg("up").assert().success();
    for name in &names {
        assert_eq!(p.env.out(&["exec", name, "--", "cat", "/root/provisioned"]), "once\n", "{name}");
    }

    p.envy().arg("halt").assert().success();
    let status = p.env.status();
    for name in &names {
        assert_eq!(machine(&status, name)["state"], "stopped", "{name}");
    }
    assert!(common::container_ids(&p.env.home).is_empty(), "{:?}", common::container_ids(&p.env.home));
    p.envy().arg("up").assert().success();
    p.envy().args(["destroy", "--force"]).assert().success();
    assert_eq!(p.host_traces(), Vec::<String>::new());
    for name in &names {
        assert!(!p.env.machine_dir(name).exists(), "{name}");
    }
    let slirps = std::process::Command::new("pgrep").args(["-f", &format!("slirp4netns.*{}", p.project_id())]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&slirps.stdout), "", "the project network goes with the last machine");
}

/// Machines of one up are started together, so a host port given to one of them is
/// not free for the next before it is bound: an auto port an earlier machine kept
/// from its last start is refused to a later machine that asks for it, before
/// anything starts.
#[test]
fn a_port_given_to_an_earlier_machine_of_the_same_up_is_taken() {
    require!(need::CONTAINERS);
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let p = Project::new(&format!("[machine.a]\nbox = {{ path = \"BOX\" }}\nforward = [{{ host = {port}, guest = 80, auto = true }}]\n"));
    p.envy().arg("up").assert().success();
    let moved = machine(&p.env.status(), "a")["forwards"][0]["host_port"].as_u64().unwrap() as u16;
    assert_ne!(moved, port);
    p.envy().arg("halt").assert().success();
    // a keeps its moved port; b now asks for that very port.
    let envfile = std::fs::read_to_string(p.env.project.join("Envfile")).unwrap();
    std::fs::write(p.env.project.join("Envfile"), format!("{envfile}[machine.b]\nbox = {{ path = \"{}\" }}\nforward = [\"{moved}:80\"]\n", p.box_path.display())).unwrap();
    let out = p.envy().arg("up").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{moved}/tcp")) && err.contains("machine b"), "{err}");
    let status = p.env.status();
    assert_eq!(machine(&status, "a")["state"], "stopped", "nothing started");
    assert_eq!(machine(&status, "b")["state"], "not-created");
    drop(holder);
}

#[test]
fn an_up_killed_halfway_is_finished_by_the_next_up() {
    require!(need::CONTAINERS);
    let p = Project::new(
        "[defaults]\nbox = { path = \"BOX\" }\nsync = [\".:/project\"]\n\
         provision = [\"test -f /project/go || sleep 60\", \"echo done > /root/provisioned\"]\n",
    );
    let mut up = p.env.envy_std().arg("up").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Wait until the container runs and provisioning is under way, then kill envy.
    let mut running = false;
    for _ in 0..200 {
        if p.env.status()["machines"][0]["state"] == "running" {
            running = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(running, "the machine never started");
    std::thread::sleep(Duration::from_millis(300));
    up.kill().unwrap();
    up.wait().unwrap();

    std::fs::write(p.env.project.join("go"), "").unwrap();
    p.envy().arg("up").assert().success();
    assert_eq!(p.env.out(&["exec", "--", "cat", "/root/provisioned"]), "done\n");
    p.envy().args(["destroy", "--force"]).assert().success();
    assert_eq!(p.host_traces(), Vec::<String>::new());
}

/// An up killed between its container's start and the state file envy writes for it
/// leaves a container no record names (played here by removing the state file): the
/// next up kills what is left in the container's cgroup before it starts the machine
/// again, so the two never run side by side.
#[test]
fn a_container_left_without_its_state_file_is_killed_before_the_next_start() {
    require!(need::CONTAINERS);
    let p = Project::new("[defaults]\nbox = { path = \"BOX\" }\n");
    p.envy().arg("up").assert().success();
    let orphan = p.env.status()["machines"][0]["pid"].as_u64().expect("a running machine has a pid") as u32;
    let states = envy::state::Home::at(&p.env.home).runtime_dir().join("containers");
    let ids = common::list_dir(&states);
    assert_eq!(ids.len(), 1, "envy's own runtime made the container: {ids:?}");
    std::fs::remove_file(states.join(&ids[0]).join("state.json")).unwrap();
    assert_eq!(p.env.status()["machines"][0]["state"], "stopped");

    p.envy().arg("up").assert().success();
    assert!(!common::running(orphan), "the container left without a state file still runs (pid {orphan})");
    let new = p.env.status()["machines"][0]["pid"].as_u64().unwrap() as u32;
    assert!(new != orphan && common::running(new));
    p.envy().args(["destroy", "--force"]).assert().success();
    assert_eq!(p.host_traces(), Vec::<String>::new());
}

#[test]
fn a_taken_host_port_is_named_before_anything_starts_and_auto_moves_it() {
    require!(need::CONTAINERS);
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let p = Project::new(&format!("[defaults]\nbox = {{ path = \"BOX\" }}\nforward = [\"{port}:80\"]\n"));
    let out = p.envy().arg("up").output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}/tcp")) && err.contains("machine default"), "{err}");
    assert!(err.contains(&format!("pid {}", std::process::id())), "names the holder: {err}");
    assert!(err.contains("auto = true"), "{err}");
    assert!(!p.env.machine_dir("default").join("machine.json").exists(), "nothing was created");
    assert_eq!(p.host_traces(), Vec::<String>::new());

    std::fs::write(
        p.env.project.join("Envfile"),
        format!("[defaults]\nbox = {{ path = \"{}\" }}\nforward = [{{ host = {port}, guest = 80, auto = true }}]\n", p.box_path.display()),
    )
    .unwrap();
    p.envy().arg("up").assert().success();
    let moved = p.env.status()["machines"][0]["forwards"][0]["host_port"].as_u64().unwrap();
    assert_ne!(moved, port as u64);
    drop(holder);
}

#[test]
fn a_box_missing_from_the_store_and_unreachable_fails_with_code_4() {
    require!(need::CONTAINERS);
    let env = TestEnv::new();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        env.project.join("Envfile"),
        format!("[defaults]\nbox = {{ url = \"http://127.0.0.1:{closed}/gone.box\", sha256 = \"{}\" }}\n", "a".repeat(64)),
    )
    .unwrap();
    let out = env.envy().arg("up").output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("127.0.0.1:{closed}/gone.box")));
    assert!(!env.machine_dir("default").join("machine.json").exists());
    assert!(!env.project.join("Envfile.lock").exists(), "nothing was pinned");
}

#[test]
fn a_box_that_changed_behind_its_lock_is_refused_with_the_way_out() {
    require!(need::CONTAINERS);
    let p = Project::new("[defaults]\nbox = { path = \"BOX\" }\n");
    p.envy().arg("up").assert().success();
    p.envy().args(["destroy", "--force"]).assert().success();
    // While the pinned box is stored, up uses exactly it, whatever the path holds now.
    // On a host without it (a teammate's, or after `box remove`), the source is fetched
    // again: the same path now holds another box.
    let pinned = common::sha256_hex(&std::fs::read(&p.box_path).unwrap());
    p.envy().args(["box", "remove", &pinned[..12]]).assert().success();
    let rootfs = p.env.path("other-rootfs");
    common::busybox_rootfs(&rootfs);
    std::fs::write(rootfs.join("etc/changed"), "yes").unwrap();
    p.envy().args(["box", "build", "--rootfs"]).arg(&rootfs).args(["--name", "busybox", "-o"]).arg(&p.box_path).assert().success();
    let out = p.envy().arg("up").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is pinned to box") && err.contains("Envfile.lock"), "{err}");
    assert!(!p.env.machine_dir("default").join("machine.json").exists());
}

#[test]
fn run_passes_the_exit_code_and_leaves_nothing() {
    require!(need::CONTAINERS);
    let env = TestEnv::new();
    let (box_path, _) = common::build_container_box(&env, "busybox");
    std::fs::write(env.project.join("input.txt"), "synced\n").unwrap();
    let out = env
        .envy()
        .args(["run", "--box"])
        .arg(&box_path)
        .args(["--", "sh", "-c", "cat input.txt; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "synced\n");
    assert_no_throwaways(&env);
}

#[test]
fn a_terminal_exec_and_ssh_get_a_pty_of_the_machines_own_and_the_commands_exit_code() {
    require!(need::CONTAINERS, &[need::Need::Tool("script", "bsdutils")]);
    let p = Project::new("[machine.web]\nbox = { path = \"BOX\" }\nprovider = \"container\"\n");
    let _cleanup = common::DestroyOnDrop(&p.env);
    p.envy().arg("up").assert().success();
    // script(1) gives envy a terminal, as a user's shell would.
    let in_terminal = |args: &str, keys: &str| {
        let envy = p.env.envy_std();
        let mut script = std::process::Command::new("script");
        script.args(["-qec", &format!("{} {args}", envy.get_program().to_string_lossy()), "/dev/null"]).current_dir(&p.env.project);
        for (key, value) in envy.get_envs() {
            match value {
                Some(value) => script.env(key, value),
                None => script.env_remove(key),
            };
        }
        let mut child = script.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), keys.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = in_terminal("exec -t -- sh -c 'tty; stty size; test -c $(tty) && echo in-its-root; exit 5'", "");
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("/dev/pts/0") && out.contains("24 80") && out.contains("in-its-root"), "{out}");
    let (code, out) = in_terminal("ssh", "echo typed-$((20+22))\nexit 3\n");
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("typed-42"), "{out}");
    // A guest that puts something else at /dev/ptmx gets no terminal, and says so.
    p.env.out(&["exec", "--", "sh", "-c", "rm /dev/ptmx && mkfifo /dev/ptmx"]);
    let (code, out) = in_terminal("exec -t -- true", "");
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("/dev/ptmx in the machine is not a pty multiplexer"), "{out}");
}

#[test]
fn a_failing_provision_step_makes_up_exit_with_its_code_naming_machine_and_step() {
    require!(need::CONTAINERS);
    let p = Project::new("[machine.web]\nbox = { path = \"BOX\" }\nprovider = \"container\"\nprovision = [\"true\", \"exit 42\", \"touch /never\"]\n");
    let out = p.envy().arg("up").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(42), "{err}");
    assert!(err.contains("provision step 2/3 of machine web failed with exit code 42: exit 42"), "{err}");
    assert!(err.contains("`envy provision web`"), "{err}");
    // `envy provision` says the same with the same code.
    p.envy().arg("provision").assert().code(42);
    p.envy().args(["exec", "--", "test", "-e", "/never"]).assert().code(1);
}

#[test]
fn a_command_not_found_exits_127_and_one_not_executable_126() {
    require!(need::CONTAINERS);
    let p = Project::new("[machine.web]\nbox = { path = \"BOX\" }\nprovider = \"container\"\nsync = [\".:/project\"]\n");
    std::fs::write(p.env.project.join("notexec.sh"), "echo never\n").unwrap();
    std::fs::set_permissions(p.env.project.join("notexec.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    p.envy().arg("up").assert().success();
    p.envy().args(["exec", "--", "no-such-command"]).assert().code(127);
    p.envy().args(["exec", "--", ""]).assert().code(127);
    let out = p.envy().args(["exec", "--workdir", "/no-such-dir", "--", "true"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("working directory /no-such-dir"), "{out:?}");
    assert_ne!(out.status.code(), Some(0));
    p.envy().args(["exec", "--", "/project/no-such-file"]).assert().code(127);
    // A guest symlink to a host path is looked up in the machine's root, not the host's.
    assert!(std::path::Path::new("/usr/bin/slirp4netns").is_file(), "the host has what the guest's link points at");
    p.env.out(&["exec", "--", "ln", "-s", "/usr/bin/slirp4netns", "/bin/hostslirp"]);
    p.envy().args(["exec", "--", "hostslirp"]).assert().code(127);
    p.envy().args(["exec", "--", "./notexec.sh"]).assert().code(126);
    p.envy().args(["exec", "--", "/project"]).assert().code(126);
    p.envy().args(["exec", "--workdir", "/", "--", "project/notexec.sh"]).assert().code(126);
    // A command that itself exits 255 keeps its code.
    p.envy().args(["exec", "--", "sh", "-c", "exit 255"]).assert().code(255);
    p.envy().args(["destroy", "--force"]).assert().success();

    let out = p.envy().args(["run", "--box"]).arg(&p.box_path).args(["--", "no-such-command"]).output().unwrap();
    assert_eq!(out.status.code(), Some(127), "{}", String::from_utf8_lossy(&out.stderr));
    assert_no_throwaways(&p.env);
}

#[test]
fn run_interrupted_by_ctrl_c_cleans_up_and_exits_130() {
    require!(need::CONTAINERS);
    use std::os::unix::process::CommandExt;
    let env = TestEnv::new();
    let (box_path, _) = common::build_container_box(&env, "busybox");
    let mut run = env.envy_std();
    run.args(["run", "--box"]).arg(&box_path).args(["--", "sleep", "60"]).stdout(Stdio::null()).stderr(Stdio::null());
    // Its own process group, as a terminal's foreground job: Ctrl-C reaches all of it.
    run.process_group(0);
    let mut child = run.spawn().unwrap();
    let mut started = false;
    for _ in 0..200 {
        if !container_ids(&env.home).is_empty() {
            started = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(started, "the throwaway never started");
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_no_throwaways(&env);
}

fn assert_no_throwaways(env: &TestEnv) {
    assert_eq!(env.run_leftovers(), Vec::<String>::new());
    assert_eq!(container_ids(&env.home), Vec::<String>::new());
    assert_eq!(common::mounts_below(env.dir.path()), Vec::<String>::new(), "a mount is left");
}

#[test]
fn two_runs_in_one_folder_at_once_do_not_meet() {
    require!(need::CONTAINERS);
    let env = TestEnv::new();
    let (box_path, _) = common::build_container_box(&env, "busybox");
    std::fs::write(env.project.join("input.txt"), "shared input\n").unwrap();
    let start = |marker: &str| {
        env.envy_std()
            .args(["run", "--box"])
            .arg(&box_path)
            .args(["--", "sh", "-c", &format!("echo {marker} > /root/mine; sleep 1; cat /root/mine input.txt")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (start("first"), start("second"));
    for (child, marker) in [(first, "first"), (second, "second")] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{marker}\nshared input\n"));
    }
    assert_no_throwaways(&env);
}

#[test]
fn a_machine_dropped_from_the_envfile_is_named_not_forgotten() {
    require!(need::CONTAINERS);
    let p = Project::new("[defaults]\nbox = { path = \"BOX\" }\n[machine.web]\n[machine.db]\n");
    p.envy().arg("up").assert().success();
    let full = std::fs::read_to_string(p.env.project.join("Envfile")).unwrap();
    std::fs::write(p.env.project.join("Envfile"), full.replace("[machine.db]\n", "")).unwrap();
    let warned = |out: std::process::Output| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("db in ") && err.contains("no section in the Envfile") && err.contains("envy destroy db"), "{err}");
    };
    warned(p.envy().arg("status").output().unwrap());
    warned(p.envy().args(["destroy", "--force"]).output().unwrap());
    // Put back, it is destroyed like any machine, and nothing is left.
    std::fs::write(p.env.project.join("Envfile"), &full).unwrap();
    p.envy().args(["destroy", "--force", "db"]).assert().success();
    assert_eq!(p.host_traces(), Vec::<String>::new());
}

#[test]
fn an_unpinned_url_needs_insecure_once_and_is_held_to_the_lock_after() {
    require!(need::CONTAINERS);
    let env = TestEnv::new();
    let (box_path, digest) = common::build_container_box(&env, "busybox");
    let server = common::Server::start();
    let bytes = std::fs::read(&box_path).unwrap();
    server.serve("/bb.box", bytes.clone());
    std::fs::write(env.project.join("Envfile"), format!("[defaults]\nbox = \"{}\"\n", server.url("/bb.box"))).unwrap();
    let _cleanup = common::DestroyOnDrop(&env);

    let out = env.envy().arg("up").output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!env.project.join("Envfile.lock").exists());

    env.envy().args(["up", "--insecure"]).assert().success();
    let lock = std::fs::read_to_string(env.project.join("Envfile.lock")).unwrap();
    assert!(lock.contains(&digest), "what arrived is pinned: {lock}");
    env.envy().args(["destroy", "--force"]).assert().success();

    // Without the box in the store, the URL is fetched again and must match the pin.
    env.envy().args(["box", "remove", &digest[..12]]).assert().success();
    env.envy().arg("up").assert().success();
    env.envy().args(["destroy", "--force"]).assert().success();
    env.envy().args(["box", "remove", &digest[..12]]).assert().success();
    let mut tampered = bytes;
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0xff;
    server.serve("/bb.box", tampered);
    let out = env.envy().arg("up").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("is pinned to box {digest}")) && err.contains("Envfile.lock"), "{err}");
    assert!(!env.machine_dir("default").join("machine.json").exists());
}

#[test]
fn a_dead_machine_gets_its_own_port_back_and_a_dead_network_is_repaired_in_place() {
    require!(need::CONTAINERS);
    let port = free_port();
    let p = Project::new(&format!("[defaults]\nbox = {{ path = \"BOX\" }}\nforward = [\"{port}:80\"]\nsync = [\".:/project\"]\n"));
    std::fs::write(p.env.project.join("index.html"), "page\n").unwrap();
    let serve = || p.env.out(&["exec", "--", "httpd", "-p", "80", "-h", "/project"]);
    p.envy().arg("up").assert().success();
    serve();
    assert_eq!(http_get(port, "/"), "page\n");

    // The init killed: the forward it had stays in the project's slirp4netns, but it is
    // the machine's own, so `up` takes it back instead of calling the port taken.
    p.kill_init("default");
    p.envy().arg("up").assert().success();
    serve();
    assert_eq!(http_get(port, "/"), "page\n");

    // slirp4netns killed: the machine still runs and takes commands; `up` restarts the
    // network and its forward without restarting the machine (httpd is still there).
    let slirp_record = p.env.home.join("run/net").join(p.project_id()).join("slirp.pid");
    let slirp: serde_json::Value = serde_json::from_slice(&std::fs::read(&slirp_record).unwrap()).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(slirp["pid"].as_i64().unwrap() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(p.env.status()["machines"][0]["state"], "running");
    assert_eq!(p.env.out(&["exec", "--", "cat", "/project/index.html"]), "page\n");
    let up = p.envy().arg("up").output().unwrap();
    let said = String::from_utf8_lossy(&up.stderr);
    assert!(up.status.success() && said.contains("already running") && !said.contains("starting"), "{said}");
    assert_eq!(http_get(port, "/"), "page\n");
}
