//! The command line without any machine: init, help, JSON status of nothing,
//! exit codes for the error families, and no prompt without a terminal.

use assert_cmd::Command;
use predicates::prelude::*;

use crate::common::{require, Need};

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
fn a_short_sha256_is_a_usage_error_and_nothing_is_stored() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("x.box");
    std::fs::write(&file, "not a box").unwrap();
    envy(home.path(), home.path())
        .args(["box", "add"])
        .arg(&file)
        .args(["--sha256", "abc"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("`abc` is not a sha256 digest (64 hex digits expected)"));
    let stored: Vec<_> = std::fs::read_dir(home.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(stored, [std::ffi::OsString::from("x.box")], "nothing but the file itself in ENVY_HOME");
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

#[test]
fn a_second_command_fails_at_once_with_no_wait_and_waits_without_it() {
    use std::io::Read;
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("Envfile"), "[defaults]\nbox = \"not-in-any-catalog\"\n").unwrap();
    let state_dir = envy::plan::Project::state_dir_for(&envy::state::Home::at(home.path()), project.path());
    let held = envy::state::ProjectLock::acquire(&state_dir, project.path(), true, |_| ()).unwrap();

    envy(home.path(), project.path())
        .args(["up", "--no-wait"])
        .assert()
        .code(6)
        .stderr(predicate::str::contains(format!("(pid {})", std::process::id())));

    let mut waiting = std::process::Command::new(env!("CARGO_BIN_EXE_envy"))
        .arg("up")
        .env("ENVY_HOME", home.path())
        .env("CI", "1")
        .current_dir(project.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The waiting command says so on its first line, then blocks until the lock is free.
    let mut stderr = waiting.stderr.take().unwrap();
    let mut first = Vec::new();
    let mut byte = [0u8];
    while stderr.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        first.push(byte[0]);
    }
    let first = String::from_utf8(first).unwrap();
    assert!(first.contains("waiting for another envy command"), "{first}");
    assert!(waiting.try_wait().unwrap().is_none(), "it waits while the lock is held");
    drop(held);
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let status = waiting.wait().unwrap();
    // Past the lock it goes on to the box, which no catalog has.
    assert_eq!(status.code(), Some(4), "{rest}");
    assert!(rest.contains("not-in-any-catalog"), "{rest}");
}

#[test]
fn docs_cli_md_matches_the_help_text() {
    let generated = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gen-cli-docs.sh"))
        .arg("--stdout")
        .env("ENVY_BIN", env!("CARGO_BIN_EXE_envy"))
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let on_disk = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md")).unwrap();
    assert!(
        on_disk == String::from_utf8(generated.stdout).unwrap(),
        "docs/cli.md is out of date: run scripts/gen-cli-docs.sh"
    );
}

#[test]
fn doctor_reports_this_host_and_its_json_parses() {
    require!([Need::Tool("runc", "runc"), Need::Tool("qemu-system-x86_64", "qemu-system-x86")]);
    let home = tempfile::tempdir().unwrap();
    let out = envy(home.path(), home.path()).args(["doctor", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 1);
    assert!(v["envfile"].is_null());
    let check = |name: &str| v["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no {name} check")).clone();
    // This project's machines have runc and QEMU installed by scripts/deps.sh.
    assert_eq!(check("runc")["status"], "ok");
    assert_eq!(check("qemu")["status"], "ok");
    assert_eq!(check("overlayfs")["status"], "ok");
    // The kvm check says what the probe finds: ok only where auto would pick KVM (on
    // this project's machines /dev/kvm is kvm-pvm, so a warning with the way to force it).
    let kvm = check("kvm");
    let report = envy::provider::qemu::accel::probe();
    let kvm_usable = report.auto_choice() == envy::provider::qemu::accel::Chosen::Kvm;
    assert_eq!(kvm["status"], if kvm_usable { "ok" } else { "warn" }, "{kvm}");
    assert_eq!(kvm["detail"], report.detail, "{kvm}");
    if !kvm_usable {
        assert!(kvm["advice"].as_str().unwrap().contains("ENVY_ACCEL=kvm"), "{kvm}");
    }
    for c in v["checks"].as_array().unwrap() {
        assert!(c["detail"].is_string() && c["needed_by"].is_array(), "{c}");
    }
    assert_eq!(out.status.code(), Some(if v["ok"] == true { 0 } else { 5 }));
}

#[test]
fn doctor_says_which_sync_transport_vms_get() {
    // virtiofsd's sandbox needs root: as another user doctor rightly says 9p.
    require!([Need::Root, Need::Tool("/usr/lib/qemu/virtiofsd", "qemu-system-common")]);
    let home = tempfile::tempdir().unwrap();
    let check = |virtiofsd: &str| {
        let out = envy(home.path(), home.path()).env("ENVY_VIRTIOFSD", virtiofsd).args(["doctor", "--json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "virtiofsd").expect("a virtiofsd check").clone()
    };
    let found = check("/usr/lib/qemu/virtiofsd");
    assert_eq!(found["status"], "ok", "{found}");
    assert!(found["detail"].as_str().unwrap().contains("use virtiofs"), "{found}");
    let missing = check("none");
    assert_eq!(missing["status"], "warn", "{missing}");
    assert!(missing["detail"].as_str().unwrap().contains("use 9p"), "{missing}");
    assert!(missing["advice"].as_str().unwrap().contains("apt-get install qemu-system-common"), "{missing}");
}

#[test]
fn up_without_qemu_on_path_fails_first_with_doctors_advice() {
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("Envfile"), "[defaults]\nbox = \"debian-12\"\nprovider = \"qemu\"\n").unwrap();
    // A PATH with the basics but no QEMU.
    let bin = tempfile::tempdir().unwrap();
    for tool in ["sh", "ssh", "qemu-img"] {
        if let Some(path) = envy::provider::host::which(tool) {
            std::os::unix::fs::symlink(path, bin.path().join(tool)).unwrap();
        }
    }
    let out = envy(home.path(), project.path()).arg("up").env("PATH", bin.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("qemu-system-x86_64 is not installed or not on PATH"), "{err}");
    assert!(err.contains("apt-get install qemu-system-x86") && err.contains("envy doctor"), "{err}");
    let state_dir = envy::plan::Project::state_dir_for(&envy::state::Home::at(home.path()), project.path());
    assert!(!state_dir.join("machines").exists(), "nothing was started");
    assert!(!home.path().join("boxes").exists() && !home.path().join("downloads").exists(), "nothing was fetched");
    // doctor says the same, and fails for this Envfile.
    let doctor = envy(home.path(), project.path()).arg("doctor").env("PATH", bin.path()).output().unwrap();
    assert_eq!(doctor.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&doctor.stdout).contains("apt-get install qemu-system-x86"));
}

/// Runs envy on a pseudo-terminal (util-linux `script`, which its callers require),
/// typing `keys` one chunk at a time, with CI unset: the interactive case.
fn on_a_terminal(home: &std::path::Path, cwd: &std::path::Path, args: &str, keys: &[&str]) -> (String, std::process::ExitStatus) {
    use std::io::Write;
    let mut child = std::process::Command::new("script")
        .args(["-qec", &format!("{} {args}", env!("CARGO_BIN_EXE_envy")), "/dev/null"])
        .env_remove("CI")
        .env("ENVY_HOME", home)
        .current_dir(cwd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for key in keys {
        std::thread::sleep(std::time::Duration::from_millis(700));
        stdin.write_all(key.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(700));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), out.status)
}

#[test]
fn on_a_terminal_init_asks_for_template_box_and_provider() {
    require!([Need::Tool("script", "bsdutils")]);
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    // Down once (rust), accept the default box, down once (qemu).
    let (screen, status) = on_a_terminal(home.path(), project.path(), "init", &["\x1b[B\n", "\n", "\x1b[B\n"]);
    assert!(status.success(), "{screen}");
    assert!(screen.contains("Template") && screen.contains("Box") && screen.contains("Provider"), "{screen}");
    let text = std::fs::read_to_string(project.path().join("Envfile")).unwrap();
    assert!(text.contains("Rust toolchain") && text.contains("provider = \"qemu\""), "{text}");
}

#[test]
fn on_a_terminal_destroy_asks_and_a_no_keeps_everything() {
    require!([Need::Tool("script", "bsdutils")]);
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("Envfile"), "[defaults]\nbox = \"busybox\"\n").unwrap();
    let (screen, status) = on_a_terminal(home.path(), project.path(), "destroy", &["n"]);
    assert_eq!(status.code(), Some(1), "{screen}");
    assert!(screen.contains("Destroy default of"), "{screen}");
    assert!(project.path().join("Envfile").exists());
}
