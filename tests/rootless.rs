//! envy as a normal user (src/userns.rs): containers in the user's own namespace through
//! snapshots, share and `envy run`; what a guest's root may do on the host (what the user
//! may, not what root may); a user without subordinate ids. The life cycles of
//! lifecycle.rs and qemu_cli.rs also run as a normal user.

use std::os::unix::fs::MetadataExt as _;

use crate::common::{self, need, require, Account, TestEnv};

/// A container box built by root from a busybox rootfs holding /home/app owned by uid
/// 1000 (as a box's service user would be), copied to `env`'s user.
fn box_with_a_user_file(env: &TestEnv) -> std::path::PathBuf {
    let builder = TestEnv::new();
    let rootfs = builder.path("rootfs");
    common::busybox_rootfs(&rootfs);
    std::fs::create_dir_all(rootfs.join("home/app")).unwrap();
    std::os::unix::fs::chown(rootfs.join("home/app"), Some(1000), Some(1000)).unwrap();
    let built = builder.path("app.box");
    builder.envy().args(["box", "build", "--name", "app", "--version", "1", "--rootfs"]).arg(&rootfs).arg("-o").arg(&built).assert().success();
    let copy = env.path("app.box");
    std::fs::copy(&built, &copy).unwrap();
    env.give(&copy);
    copy
}

fn write_envfile(env: &TestEnv, box_path: &std::path::Path) {
    let envfile = env.project.join("Envfile");
    std::fs::write(&envfile, format!("[machine.web]\nbox = {{ path = \"{}\" }}\nsync = [\".:/project\"]\n", box_path.display())).unwrap();
    env.give(&envfile);
}

/// A normal user's project with one machine `web` on the busybox box.
fn busybox_project() -> TestEnv {
    let env = TestEnv::as_normal_user();
    let (box_path, _) = common::build_container_box(&env, "busybox");
    write_envfile(&env, &box_path);
    env
}

fn destroy_leaves_nothing(env: &TestEnv) {
    env.envy().args(["destroy", "--force"]).assert().success();
    assert_eq!(host_traces(env), Vec::<String>::new());
}

/// `envy up`, which must succeed; what it said on stderr.
fn up_said(env: &TestEnv) -> String {
    let up = env.envy().arg("up").output().unwrap();
    let err = String::from_utf8_lossy(&up.stderr).into_owned();
    assert!(up.status.success(), "{err}");
    err
}

/// What envy still has on the host for `env`: runc containers, network namespaces and
/// mounts (in the user's namespace).
fn host_traces(env: &TestEnv) -> Vec<String> {
    let mut traces: Vec<String> = common::container_ids(&env.home).into_iter().map(|c| format!("container {c}")).collect();
    traces.extend(common::netns_names(&env.home).into_iter().map(|n| format!("netns {n}")));
    traces.extend(env.mounts_below(env.dir.path()).into_iter().map(|m| format!("mount {m}")));
    traces
}

#[test]
fn a_normal_users_container_keeps_box_owners_snapshots_shares_and_runs() {
    require!(need::CONTAINERS, need::ROOTLESS);
    let env = TestEnv::as_normal_user();
    let box_path = box_with_a_user_file(&env);
    write_envfile(&env, &box_path);
    let _cleanup = common::DestroyOnDrop(&env);
    let err = up_said(&env);
    if envy::userns::delegated_cgroup().is_err() {
        assert!(err.contains("its cpus and memory limits are not applied"), "limits left out are said: {err}");
    }

    // Root inside, the box's other owners kept through the user's subordinate range.
    assert_eq!(env.out(&["exec", "--", "id", "-u"]), "0\n");
    assert_eq!(env.out(&["exec", "--", "stat", "-c", "%u", "/home/app"]), "1000\n");
    let range = envy::userns::subordinate_ids(std::path::Path::new("/etc/subuid"), common::normal_user().name, env.uid()).unwrap()[0];
    let stored = common::list_dir(&env.home.join("boxes")).into_iter().map(|d| env.home.join("boxes").join(d).join("rootfs/home/app")).find(|p| p.exists());
    assert_eq!(std::fs::metadata(stored.expect("the unpacked box")).unwrap().uid(), range.start + 999, "uid 1000 inside is subuid start + 999");

    // A snapshot of the running container (held still by signals: no cgroup here) keeps
    // a deleted file deleted (an overlay whiteout, made in the user's namespace).
    env.out(&["exec", "--", "sh", "-c", "echo one > /root/state && rm /etc/group"]);
    env.envy().args(["snapshot", "save", "s1"]).assert().success();
    env.out(&["exec", "--", "sh", "-c", "echo two > /root/state && echo back > /etc/group"]);
    env.envy().args(["snapshot", "restore", "s1"]).assert().success();
    assert_eq!(env.out(&["exec", "--", "cat", "/root/state"]), "one\n");
    env.envy().args(["exec", "--", "test", "-e", "/etc/group"]).assert().code(1);

    // share: a box another store (root's) accepts by its digest.
    let shared: serde_json::Value = serde_json::from_str(&env.out(&["share", "--json", "-o", env.path("web.box").to_str().unwrap()])).unwrap();
    assert_eq!(std::fs::metadata(env.path("web.box")).unwrap().uid(), env.uid());
    let other = TestEnv::new();
    other.envy().args(["box", "add"]).arg(env.path("web.box")).args(["--sha256", shared["sha256"].as_str().unwrap()]).assert().success();

    // envy run: the exit code, and nothing of the run left.
    env.envy().args(["run", "--", "sh", "-c", "exit 4"]).assert().code(4);
    assert_eq!(env.run_leftovers(), Vec::<String>::new());

    destroy_leaves_nothing(&env);
}

#[test]
fn a_guests_root_is_the_user_and_cannot_write_the_hosts_root_files() {
    require!(need::CONTAINERS, need::ROOTLESS);
    let env = busybox_project();
    // Root's file in the user's project: the user may not write it, so neither may the guest.
    std::fs::write(env.project.join("roots.txt"), "root's\n").unwrap();
    std::fs::create_dir(env.project.join("roots-dir")).unwrap();
    let _cleanup = common::DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();
    assert_eq!(env.out(&["exec", "--", "stat", "-c", "%u", "/project/roots.txt"]), "65534\n", "root's file is nobody's inside");
    env.envy().args(["exec", "--", "sh", "-c", "echo guest >> /project/roots.txt"]).assert().failure();
    env.envy().args(["exec", "--", "sh", "-c", "echo guest > /project/roots-dir/new"]).assert().failure();
    env.envy().args(["exec", "--", "chown", "0:0", "/project/roots.txt"]).assert().failure();
    assert_eq!(std::fs::read_to_string(env.project.join("roots.txt")).unwrap(), "root's\n");
    assert!(!env.project.join("roots-dir/new").exists());
    // What the guest may write is the user's on the host.
    env.out(&["exec", "--", "sh", "-c", "echo guest > /project/guests.txt"]);
    assert_eq!(std::fs::metadata(env.project.join("guests.txt")).unwrap().uid(), env.uid());
    // The container's processes run as the user on the host, not as root.
    let pid = common::machine(&env.status(), "web")["pid"].as_u64().unwrap();
    let uid_line = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap().lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert!(uid_line.split_whitespace().skip(1).all(|u| u == env.uid().to_string()), "{uid_line}");
}

#[test]
fn a_user_without_subordinate_ids_gets_root_alone_and_is_told() {
    require!(need::CONTAINERS, need::ROOTLESS);
    let user: &'static Account = common::user_without_subordinate_ids();
    let env = TestEnv::as_user(user);
    let box_path = box_with_a_user_file(&env);
    write_envfile(&env, &box_path);
    let _cleanup = common::DestroyOnDrop(&env);
    let err = up_said(&env);
    assert!(err.contains(&format!("user {} has no subordinate id range", user.name)) && err.contains("usermod --add-subuids"), "{err}");
    // The box's uid-1000 folder became root's: no other id exists in the namespace.
    assert_eq!(env.out(&["exec", "--", "stat", "-c", "%u", "/home/app"]), "0\n");
    env.out(&["exec", "--", "sh", "-c", "echo ok > /project/out.txt"]);
    assert_eq!(std::fs::metadata(env.project.join("out.txt")).unwrap().uid(), user.uid);
    destroy_leaves_nothing(&env);
}

#[test]
fn a_killed_namespace_holder_is_replaced_and_up_restarts_its_machines() {
    require!(need::CONTAINERS, need::ROOTLESS);
    let env = busybox_project();
    let _cleanup = common::DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();
    let old_init = common::machine(&env.status(), "web")["pid"].as_u64().unwrap() as u32;
    let runtime = envy::state::Home::at(&env.home).runtime_dir();
    let holder = envy::userns::holder(&runtime).expect("a normal user's envy leaves its holder running");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(holder as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    common::eventually("the holder is gone", || envy::userns::holder(&runtime).is_none());
    // Its mounts and namespaces went with it: the container, still alive, cannot be
    // entered from the next holder's namespace, and reads stopped.
    assert_eq!(common::machine(&env.status(), "web")["state"], "stopped");
    env.envy().args(["exec", "--", "true"]).assert().code(7);
    env.envy().arg("up").assert().success();
    assert_ne!(envy::userns::holder(&runtime), Some(holder));
    common::eventually("the old container's init is gone", || !common::running(old_init));
    assert_eq!(env.out(&["exec", "--", "cat", "/project/Envfile"]).lines().next(), Some("[machine.web]"));
    destroy_leaves_nothing(&env);
}

#[test]
fn a_holder_whose_envy_home_is_gone_exits() {
    require!(need::ROOTLESS);
    let env = TestEnv::as_normal_user();
    env.out(&["box", "list"]);
    let runtime = envy::state::Home::at(&env.home).runtime_dir();
    let holder = envy::userns::holder(&runtime).expect("a command that touches the store starts the holder");
    std::fs::remove_dir_all(&env.home).unwrap();
    common::eventually("the holder exits", || !common::running(holder));
}
