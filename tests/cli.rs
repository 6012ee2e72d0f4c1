//! The command line without any machine: init, help, JSON status of nothing,
//! exit codes for the error families, and no prompt without a terminal.

use assert_cmd::Command;
use predicates::prelude::*;

fn envy(home: &std::path::Path, cwd: &std::path::Path) -> Command {
    let mut cmd = Command::cargo_bin("envy").unwrap();
    cmd.env("ENVY_HOME", home).env("CI", "1").current_dir(cwd);
    cmd
}

#[test]
fn init_writes_each_template_and_refuses_to_overwrite() {
    let home = tempfile::tempdir().unwrap();
    for template in ["minimal", "rust", "python", "node", "postgres-staging"] {
        let project = tempfile::tempdir().unwrap();
        envy(home.path(), project.path())
            .args(["init", "--template", template, "--box", "busybox", "--provider", "qemu"])
            .assert()
            .success();
        let text = std::fs::read_to_string(project.path().join("Envfile")).unwrap();
        assert!(text.contains("box = \"busybox\"") && text.contains("provider = \"qemu\""), "{text}");
        envy(home.path(), project.path())
            .args(["init", "--template", template])
            .assert()
            .failure()
            .stderr(predicate::str::contains("already exists; pass --force"));
    }
}

#[test]
fn init_without_a_terminal_uses_defaults_instead_of_asking() {
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    envy(home.path(), project.path()).arg("init").write_stdin("").assert().success();
    let text = std::fs::read_to_string(project.path().join("Envfile")).unwrap();
    assert!(text.contains("box = \"debian-12\""), "{text}");
}

#[test]
fn destroy_without_a_terminal_refuses_to_ask_and_names_the_flag() {
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("Envfile"), "[defaults]\nbox = \"busybox\"\n").unwrap();
    envy(home.path(), project.path())
        .arg("destroy")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("pass --force"));
}

#[test]
fn a_malformed_envfile_exits_3_with_its_position() {
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("Envfile"), "[defaults]\nbox = \"b\"\nforward = [\"8080\"]\n").unwrap();
    envy(home.path(), project.path())
        .arg("status")
        .assert()
        .code(3)
        .stderr(predicate::str::contains("Envfile:3:12:"));
}

#[test]
fn unknown_machine_names_the_known_ones() {
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("Envfile"), "[defaults]\nbox = \"b\"\n[machine.web]\n[machine.db]\n").unwrap();
    envy(home.path(), project.path())
        .args(["status", "cache"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("it has: web, db"));
}

#[test]
fn status_json_of_machines_never_created() {
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("Envfile"), "[defaults]\nbox = \"b\"\nforward = [\"8080:80\"]\n").unwrap();
    let out = envy(home.path(), project.path()).args(["status", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["machines"][0]["name"], "default");
    assert_eq!(v["machines"][0]["state"], "not-created");
    assert_eq!(v["machines"][0]["forwards"][0]["host_port"], 8080);
}

#[test]
fn usage_errors_exit_2_and_help_reads() {
    let home = tempfile::tempdir().unwrap();
    envy(home.path(), home.path()).arg("frobnicate").assert().code(2);
    envy(home.path(), home.path())
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("Create, start and provision"));
}

#[test]
fn completions_and_man_page_are_generated() {
    let home = tempfile::tempdir().unwrap();
    envy(home.path(), home.path()).args(["completions", "bash"]).assert().success().stdout(predicate::str::contains("envy"));
    envy(home.path(), home.path()).arg("man").assert().success().stdout(predicate::str::contains(".TH envy"));
}

#[test]
fn exec_on_a_machine_never_created_says_to_run_up() {
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("Envfile"), "[defaults]\nbox = \"b\"\n").unwrap();
    envy(home.path(), project.path())
        .args(["exec", "--", "true"])
        .assert()
        .code(7)
        .stderr(predicate::str::contains("envy up default"));
}
