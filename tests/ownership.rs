//! Under `sudo envy …` the files envy writes into the user's project (Envfile.lock,
//! `envy init`'s Envfile, a shared box, a built box and the folders made for it) belong to the user
//! who ran sudo, not to root; a folder that is not theirs keeps its owner. And
//! `envy doctor` run as a normal user reports each rootless check.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use crate::common::{self, need, normal_user, require, Account, TestEnv};

/// `envy` as root through sudo for the test user (the variables sudo sets).
fn sudo_envy(env: &TestEnv, user: &Account) -> assert_cmd::Command {
    let mut cmd = env.envy();
    cmd.env("SUDO_UID", user.uid.to_string()).env("SUDO_GID", user.gid.to_string()).env("SUDO_USER", user.name);
    cmd
}

fn owner(path: &Path) -> (u32, u32) {
    let meta = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.uid(), meta.gid())
}

fn give_project_to(env: &TestEnv, user: &Account) {
    std::os::unix::fs::chown(&env.project, Some(user.uid), Some(user.gid)).unwrap();
}

#[test]
fn under_sudo_init_and_box_build_give_what_they_write_to_the_user() {
    require!(need::ROOTLESS, need::BUSYBOX);
    let user = normal_user();
    let env = TestEnv::new();
    give_project_to(&env, user);
    let ids = (user.uid, user.gid);

    sudo_envy(&env, user).args(["init", "--template", "minimal"]).assert().success();
    assert_eq!(owner(&env.project.join("Envfile")), ids, "envy init's Envfile is the user's");

    std::fs::write(env.project.join("Vagrantfile"), "Vagrant.configure(\"2\") do |config|\n  config.vm.box = \"debian/bookworm64\"\nend\n").unwrap();
    sudo_envy(&env, user).args(["init", "--force", "--from-vagrantfile", "Vagrantfile"]).assert().success();
    assert_eq!(owner(&env.project.join("Envfile")), ids, "the Envfile converted from a Vagrantfile is the user's");

    let rootfs = env.path("rootfs");
    common::busybox_rootfs(&rootfs);
    sudo_envy(&env, user).args(["box", "build", "--name", "b", "--version", "1", "--rootfs"]).arg(&rootfs).args(["-o", "out/boxes/b.box"]).assert().success();
    for made in ["out", "out/boxes", "out/boxes/b.box"] {
        assert_eq!(owner(&env.project.join(made)), ids, "{made}, made by envy box build, is the user's");
    }
}

#[test]
fn a_folder_that_is_not_the_sudo_users_keeps_its_owner() {
    require!(need::ROOTLESS);
    let user = normal_user();
    let env = TestEnv::new();
    sudo_envy(&env, user).args(["init", "--template", "minimal"]).assert().success();
    assert_eq!(owner(&env.project.join("Envfile")), (0, 0), "root's folder, root's file");
}

#[test]
fn under_sudo_the_lock_envy_up_writes_and_the_shared_box_belong_to_the_user() {
    require!(need::ROOTLESS, need::CONTAINERS);
    let user = normal_user();
    let env = TestEnv::new();
    let (box_path, _) = common::build_container_box(&env, "busybox");
    std::fs::write(env.project.join("Envfile"), format!("[defaults]\nbox = {{ path = \"{}\" }}\nprovider = \"container\"\n", box_path.display())).unwrap();
    give_project_to(&env, user);
    let _destroy = common::DestroyOnDrop(&env);
    sudo_envy(&env, user).arg("up").assert().success();
    assert_eq!(owner(&env.project.join("Envfile.lock")), (user.uid, user.gid));
    sudo_envy(&env, user).arg("share").assert().success();
    assert_eq!(owner(&env.project.join("default.box")), (user.uid, user.gid), "envy share's box is the user's");
}

#[test]
fn doctor_as_a_normal_user_reports_each_rootless_check() {
    require!(need::ROOTLESS);
    let user = normal_user();
    let env = TestEnv::as_user(user);
    let tmp = env.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    env.give(&tmp);
    let out = env.envy_std().args(["doctor", "--json"]).env("TMPDIR", &tmp).env_remove("SUDO_UID").env_remove("SUDO_GID").output().unwrap();
    // A failed check this host has (none is expected here) would only change the exit code.
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json as {} printed no JSON ({e}): {}", user.name, String::from_utf8_lossy(&out.stderr)));
    let rootless: Vec<&serde_json::Value> = report["checks"].as_array().unwrap().iter().filter(|c| c["group"] == "rootless").collect();
    let status = |name: &str| -> &str {
        let check = rootless.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no rootless check {name:?} in {rootless:#?}"));
        assert!(!check["detail"].as_str().unwrap().is_empty(), "{check}");
        check["status"].as_str().unwrap()
    };
    // What this host gives a normal user (docs/testing.md: Debian 12, kernel 6.x, uidmap).
    for name in ["user namespaces", "overlay in a user namespace", "subordinate ids", "newuidmap", "/dev/net/tun access"] {
        assert_eq!(status(name), "ok", "{name}: {rootless:#?}");
    }
    for name in ["cgroup delegation", "/dev/kvm access"] {
        assert!(["ok", "warn"].contains(&status(name)), "{name} is never a failure: {rootless:#?}");
    }
    assert_eq!(rootless.len(), 7, "{rootless:#?}");
    assert!(common::list_dir(&tmp).is_empty(), "doctor's overlay try leaves nothing in TMPDIR");
}
