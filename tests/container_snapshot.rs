//! Container snapshots (the machine's upper layer as a zstd tar) and export (the
//! flattened rootfs for `envy share`), against real runc and overlayfs. Run as root.

use envy::provider::{MachineState, Provider};

use crate::common::container::Fixture;
use crate::common::{need, require, sha256_hex};

#[test]
fn restore_brings_back_the_saved_layer_and_delete_frees_it() {
    require!(need::CONTAINERS);
    let f = Fixture::new(&[("web", vec![])]);
    let plan = f.plan("web");
    f.up("web");
    assert_eq!(f.sh("web", "echo one > /root/state; rm /etc/box-release"), 0);
    let saved = f.provider.snapshot_save(&plan, "before", false, &f.ui).unwrap();
    assert_eq!(saved.name, "before");
    assert!(saved.size > 0);
    assert_eq!(f.state("web"), MachineState::Running, "saving resumes the machine");

    let err = f.provider.snapshot_save(&plan, "before", false, &f.ui).unwrap_err();
    assert!(err.to_string().contains("already has a snapshot named before"), "{err}");

    // Change everything the snapshot covers: a file, a new file, a deleted box file back.
    assert_eq!(f.sh("web", "echo two > /root/state; echo new > /root/extra; echo back > /etc/box-release"), 0);
    f.provider.snapshot_restore(&plan, "before", &f.ui).unwrap();
    assert_eq!(f.state("web"), MachineState::Running, "a running machine runs again after restore");
    let (out, code) = f.exec_captured("web", &["sh", "-c", "cat /root/state; ls /root; test -e /etc/box-release || echo deleted"]);
    assert_eq!((out.as_str(), code), ("one\nstate\ndeleted\n", 0));

    let listed = f.provider.snapshot_list(&plan).unwrap();
    assert_eq!(listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["before"]);
    // The archive is named by its digest, private, in a private dir.
    use std::os::unix::fs::PermissionsExt;
    let snapshots = plan.dir.join("snapshots");
    assert_eq!(std::fs::metadata(&snapshots).unwrap().permissions().mode() & 0o777, 0o700);
    let archive = std::fs::read_dir(&snapshots).unwrap().map(|e| e.unwrap().path()).find(|p| p.to_string_lossy().ends_with(".tar.zst")).unwrap();
    assert_eq!(std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(archive.file_name().unwrap().to_string_lossy(), format!("{}.tar.zst", sha256_hex(&std::fs::read(&archive).unwrap())));
    f.provider.snapshot_delete(&plan, "before").unwrap();
    assert!(!archive.exists(), "delete frees the space");
    assert!(f.provider.snapshot_list(&plan).unwrap().is_empty());
}

#[test]
fn a_halted_machine_restores_and_stays_halted() {
    require!(need::CONTAINERS);
    let f = Fixture::new(&[("web", vec![])]);
    let plan = f.plan("web");
    f.up("web");
    assert_eq!(f.sh("web", "echo saved > /root/state"), 0);
    f.provider.halt(&plan, false, &f.ui).unwrap();
    f.provider.snapshot_save(&plan, "s1", false, &f.ui).unwrap();
    f.up("web");
    assert_eq!(f.sh("web", "echo later > /root/state"), 0);
    f.provider.halt(&plan, true, &f.ui).unwrap();
    f.provider.snapshot_restore(&plan, "s1", &f.ui).unwrap();
    assert_eq!(f.state("web"), MachineState::Stopped);
    f.up("web");
    let (out, _) = f.exec_captured("web", &["cat", "/root/state"]);
    assert_eq!(out, "saved\n");
}

#[test]
fn bad_snapshot_names_and_unknown_snapshots_are_clear_errors() {
    require!(need::CONTAINERS);
    let f = Fixture::new(&[("web", vec![])]);
    let plan = f.plan("web");
    let err = f.provider.snapshot_save(&plan, "s1", false, &f.ui).unwrap_err();
    assert_eq!(err.to_string(), "machine web has not been created; run `envy up web` first");
    f.up("web");
    let err = f.provider.snapshot_save(&plan, "../escape", false, &f.ui).unwrap_err();
    assert!(err.to_string().contains(r#"snapshot name "../escape" is not valid"#), "{err}");
    let err = f.provider.snapshot_restore(&plan, "nope", &f.ui).unwrap_err();
    assert_eq!(err.to_string(), "machine web has no snapshot named nope; it has none");
    let err = f.provider.snapshot_delete(&plan, "nope").unwrap_err();
    assert!(err.to_string().contains("has no snapshot named nope"), "{err}");
    assert!(!plan.dir.join("snapshots").exists() || std::fs::read_dir(plan.dir.join("snapshots")).unwrap().next().is_none());
    assert_eq!(f.state("web"), MachineState::Running);
}

#[test]
fn export_writes_the_box_and_the_machine_changes_as_one_rootfs() {
    require!(need::CONTAINERS);
    let f = Fixture::new(&[("web", vec![])]);
    let plan = f.plan("web");
    f.up("web");
    assert_eq!(f.sh("web", "echo mine > /root/made-here"), 0);
    let out = f.root().join("export");
    std::fs::create_dir_all(&out).unwrap();
    let files = f.provider.export(&plan, &f.stored, &out, &f.ui).unwrap();
    assert_eq!(files, [out.join("rootfs.tar")]);
    let mut archive = tar::Archive::new(std::fs::File::open(&files[0]).unwrap());
    let names: Vec<String> = archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
    assert!(names.iter().any(|n| n == "bin/busybox"), "box files are in: {names:?}");
    assert!(names.iter().any(|n| n == "root/made-here"), "machine files are in");

    // A halted machine exports too, and is left unmounted.
    f.provider.halt(&plan, false, &f.ui).unwrap();
    std::fs::remove_file(&files[0]).unwrap();
    f.provider.export(&plan, &f.stored, &out, &f.ui).unwrap();
    assert!(files[0].exists());
    assert!(f.mounts().is_empty(), "{:?}", f.mounts());
}
