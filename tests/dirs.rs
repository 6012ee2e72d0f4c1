//! Without ENVY_HOME envy keeps each kind of state in the user's dir for it: the store
//! in the data dir, partial downloads in the cache dir, the config in the config dir
//! and sockets and pid files in `$XDG_RUNTIME_DIR/envy`, which must be the user's own.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use predicates::str::contains;

use crate::common::{self, need, require, TestEnv};

/// `envy` with no ENVY_HOME: HOME and XDG_RUNTIME_DIR in the test's temp dir, the
/// other XDG variables unset so `directories` derives them from HOME.
fn envy_without_home(env: &TestEnv, runtime: &Path) -> assert_cmd::Command {
    let mut cmd = env.envy();
    cmd.env_remove("ENVY_HOME")
        .env("HOME", env.path("user"))
        .env("XDG_RUNTIME_DIR", runtime)
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_CACHE_HOME");
    cmd
}

#[test]
fn the_store_goes_to_the_data_dir_downloads_to_the_cache_and_sockets_to_the_runtime_dir() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let (box_path, digest) = common::build_container_box(&env, "b");
    let runtime = env.path("run");
    std::fs::create_dir(&runtime).unwrap();
    envy_without_home(&env, &runtime).args(["box", "add"]).arg(&box_path).assert().success().stdout(contains(&digest));

    let user = env.path("user");
    assert_eq!(common::list_dir(&user.join(".local/share/envy/boxes")), [digest], "the store is in the data dir");
    assert!(user.join(".cache/envy/downloads").is_dir(), "the box was staged in the cache dir");
    assert!(common::list_dir(&user.join(".cache/envy/downloads")).is_empty(), "and moved out of it into the store");
    let mode = std::fs::metadata(runtime.join("envy")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the runtime dir is private");
    assert!(!env.home.join("boxes").exists(), "nothing in the ENVY_HOME that was not set");
}

#[test]
fn a_runtime_dir_that_is_a_symlink_or_open_to_others_is_refused_and_nothing_is_stored() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let (box_path, _) = common::build_container_box(&env, "b");
    let runtime = env.path("run");
    std::fs::create_dir(&runtime).unwrap();
    let elsewhere = env.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, runtime.join("envy")).unwrap();
    let refused = |problem: &str| {
        envy_without_home(&env, &runtime)
            .args(["box", "add"])
            .arg(&box_path)
            .assert()
            .code(7)
            .stderr(contains(format!("envy's runtime folder {} {problem}", runtime.join("envy").display())))
            .stderr(contains("remove it, or set XDG_RUNTIME_DIR (or ENVY_HOME) to a private folder"));
        assert!(!env.path("user/.local/share/envy").exists(), "nothing was stored");
        assert!(!env.path("user/.cache/envy").exists(), "nothing was staged");
    };
    refused("is a symlink");
    std::fs::remove_file(runtime.join("envy")).unwrap();
    std::fs::create_dir(runtime.join("envy")).unwrap();
    std::fs::set_permissions(runtime.join("envy"), std::fs::Permissions::from_mode(0o777)).unwrap();
    refused("is open to other users (mode 777)");
}
