//! One condition, one message and one exit code, through the real `envy` binary and
//! runc: snapshot names that are taken, missing or invalid give the provider's typed
//! error from every command, and a container runc does not know reads not created
//! (told by runc's state dir, not by its stderr). Run as root.

use crate::common::{self, need, require, DestroyOnDrop, TestEnv};
use predicates::str::contains;

fn machine_state(env: &TestEnv) -> String {
    env.status()["machines"][0]["state"].as_str().unwrap().to_string()
}

#[test]
fn snapshot_errors_have_one_message_and_exit_code_and_store_nothing() {
    require!(need::CONTAINERS);
    let env = TestEnv::new();
    common::busybox_project(&env);
    let _destroy = DestroyOnDrop(&env);
    // No runc state root yet: runc fails, and the missing state dir says "not created".
    assert_eq!(machine_state(&env), "not-created");
    env.envy().arg("up").assert().success();

    env.envy()
        .args(["snapshot", "restore", "nope"])
        .assert()
        .code(5)
        .stderr(contains("error: machine default has no snapshot named nope; it has none\n"));
    env.envy().args(["snapshot", "save", "s1"]).assert().success();
    env.envy()
        .args(["snapshot", "save", "s1"])
        .assert()
        .code(5)
        .stderr(contains("machine default already has a snapshot named s1; pass --force to replace it, or pick another name"));
    env.envy()
        .args(["snapshot", "delete", "nope"])
        .assert()
        .code(5)
        .stderr(contains("machine default has no snapshot named nope; it has: s1"));
    env.envy().args(["snapshot", "save", "123"]).assert().code(5).stderr(contains(r#"snapshot name "123" is not valid"#));

    // Only s1 is stored: its record, and the one layer it names.
    assert_eq!(common::list_dir(&env.machine_dir("default").join("snapshots")), ["s1.json"]);
    assert_eq!(common::list_dir(&env.machine_dir("default").join("layers")).len(), 1);

    env.envy().args(["destroy", "--force"]).assert().success();
    // runc's root exists now, without this container's dir.
    assert_eq!(machine_state(&env), "not-created");
}
