//! Container snapshots (chains of frozen layers: a rename for a halted machine, a copy
//! of the upper layer for a running one) and export (the flattened rootfs for `envy
//! share`), against real runc and overlayfs. Run as root.

use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::process::Command;

use envy::plan::MachinePlan;
use envy::provider::{MachineState, Provider};

use crate::common::container::Fixture;
use crate::common::{self, need, require, Need, TestEnv};

/// The machine's chain of frozen layers, bottom first, as dirs.
fn chain(plan: &MachinePlan) -> Vec<PathBuf> {
    let ids: Vec<u32> = std::fs::read(plan.dir.join("layers.json")).map(|b| serde_json::from_slice(&b).unwrap()).unwrap_or_default();
    ids.iter().map(|id| plan.dir.join("layers").join(id.to_string())).collect()
}

/// The frozen layers on disk.
fn layer_dirs(plan: &MachinePlan) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(plan.dir.join("layers")).into_iter().flatten().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

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
    // The snapshot is a private layer dir in a private dir; the machine now runs on it.
    use std::os::unix::fs::PermissionsExt;
    let layers = plan.dir.join("layers");
    assert_eq!(std::fs::metadata(&layers).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(chain(&plan).len(), 1);
    assert_eq!(std::fs::metadata(plan.dir.join("snapshots")).unwrap().permissions().mode() & 0o777, 0o700);
    f.provider.snapshot_delete(&plan, "before").unwrap();
    assert!(f.provider.snapshot_list(&plan).unwrap().is_empty());
    assert_eq!(layer_dirs(&plan).len(), 1, "the machine's own chain keeps its layer");
    let (out, _) = f.exec_captured("web", &["cat", "/root/state"]);
    assert_eq!(out, "one\n");
}

/// Saving a halted machine moves its upper layer into the chain: the file the machine
/// wrote is the same inode afterwards, whatever its size; nothing was copied.
#[test]
fn a_halted_machine_is_saved_by_a_rename() {
    require!(need::CONTAINERS);
    let f = Fixture::new(&[("web", vec![])]);
    let plan = f.plan("web");
    f.up("web");
    assert_eq!(f.sh("web", "head -c 8388608 /dev/urandom > /root/big"), 0);
    f.provider.halt(&plan, false, &f.ui).unwrap();
    let before = std::fs::metadata(plan.dir.join("upper/root/big")).unwrap();
    let saved = f.provider.snapshot_save(&plan, "s1", false, &f.ui).unwrap();
    assert_eq!(saved.size, 8 << 20, "a snapshot's size is its own layer's");
    let layer = chain(&plan).pop().unwrap();
    let after = std::fs::metadata(layer.join("root/big")).unwrap();
    assert_eq!((after.dev(), after.ino()), (before.dev(), before.ino()), "the same file, not a copy");
    assert_eq!(std::fs::read_dir(plan.dir.join("upper")).unwrap().count(), 0, "a new, empty upper layer");
    assert_eq!(f.state("web"), MachineState::Stopped, "it stays halted");
    f.up("web");
    let (out, _) = f.exec_captured("web", &["sh", "-c", "wc -c < /root/big"]);
    assert_eq!(out.trim(), "8388608");
}

/// s1 ⊂ s2 ⊂ s3, nested: restoring the middle one brings its state back (and neither
/// the later one's nor what came after), deleting snapshots frees only layers no chain
/// names, and `share` after a restore exports what the machine has.
#[test]
fn nested_snapshots_restore_a_middle_one_delete_and_share() {
    require!(need::CONTAINERS);
    let f = Fixture::new(&[("web", vec![])]);
    let plan = f.plan("web");
    f.up("web");
    let steps = [("s1", "echo 1 > /root/one"), ("s2", "echo 2 > /root/two; rm /etc/box-release"), ("s3", "echo 3 > /root/three; rm /root/one")];
    for (i, (name, change)) in steps.iter().enumerate() {
        assert_eq!(f.sh("web", change), 0);
        // Halted and running saves take turns.
        if i % 2 == 0 {
            f.provider.halt(&plan, false, &f.ui).unwrap();
        }
        f.provider.snapshot_save(&plan, name, false, &f.ui).unwrap();
        f.up("web");
    }
    assert_eq!(f.sh("web", "echo after > /root/after"), 0);
    let view = "ls /root | tr '\\n' ' '; test -e /etc/box-release && echo box-release";
    f.provider.snapshot_restore(&plan, "s2", &f.ui).unwrap();
    assert_eq!(f.exec_captured("web", &["sh", "-c", view]).0, "one two ");
    f.provider.snapshot_restore(&plan, "s3", &f.ui).unwrap();
    assert_eq!(f.exec_captured("web", &["sh", "-c", view]).0, "three two ");
    f.provider.snapshot_restore(&plan, "s1", &f.ui).unwrap();
    assert_eq!(f.exec_captured("web", &["sh", "-c", view]).0, "one box-release\n");

    // On s1 now: deleting s2 and s3 frees their own layers, and s1's stays.
    let before = layer_dirs(&plan);
    f.provider.snapshot_delete(&plan, "s3").unwrap();
    f.provider.snapshot_delete(&plan, "s2").unwrap();
    let after = layer_dirs(&plan);
    assert!(after.len() < before.len() && after.len() == chain(&plan).len(), "{before:?} -> {after:?}");
    assert_eq!(f.exec_captured("web", &["cat", "/root/one"]).0, "1\n");

    // share: the box, s1's layer and what came after it, as one rootfs.
    assert_eq!(f.sh("web", "echo later > /root/later"), 0);
    let out = f.root().join("export");
    std::fs::create_dir_all(&out).unwrap();
    let files = crate::common::export_files(&f.provider, &plan, &f.stored, &out, &f.ui).unwrap();
    let mut archive = tar::Archive::new(std::fs::File::open(&files[0]).unwrap());
    let names: Vec<String> = archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
    for wanted in ["bin/busybox", "root/one", "root/later", "etc/box-release"] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} is in: {names:?}");
    }
    assert!(!names.iter().any(|n| n == "root/two" || n == "root/after"), "{names:?}");
}

/// Past MAX_DEPTH frozen layers the chain is merged into one (hard links): what the
/// machine sees is the same, whiteouts and opaque dirs included, and the snapshots
/// taken before the merge still restore.
#[test]
fn a_deep_chain_is_merged_into_one_layer() {
    require!(need::CONTAINERS);
    let f = Fixture::new(&[("web", vec![])]);
    let plan = f.plan("web");
    f.up("web");
    // Layer 1 removes a box file and /usr's contents (an opaque dir); later layers add
    // and remove files of their own.
    assert_eq!(f.sh("web", "rm /etc/box-release; rm -rf /usr && mkdir -p /usr/mine && echo m > /usr/mine/f"), 0);
    f.provider.halt(&plan, false, &f.ui).unwrap();
    f.provider.snapshot_save(&plan, "first", false, &f.ui).unwrap();
    let depth = 17;
    for i in 2..=depth {
        f.up("web");
        assert_eq!(f.sh("web", &format!("echo {i} > /root/f{i}; rm -f /root/f{}", i - 2)), 0);
        f.provider.halt(&plan, false, &f.ui).unwrap();
        f.provider.snapshot_save(&plan, &format!("s{i}"), false, &f.ui).unwrap();
    }
    assert_eq!(chain(&plan).len(), 1, "the chain was merged");
    f.up("web");
    let view = "ls /root | tr '\\n' ' '; ls -A /usr; test -e /etc/box-release || echo gone";
    let expected = format!("f{} f{} mine\ngone\n", depth - 1, depth);
    assert_eq!(f.exec_captured("web", &["sh", "-c", view]).0, expected);
    f.provider.snapshot_restore(&plan, "first", &f.ui).unwrap();
    assert_eq!(f.exec_captured("web", &["sh", "-c", view]).0, "mine\ngone\n");
    f.provider.snapshot_restore(&plan, &format!("s{depth}"), &f.ui).unwrap();
    assert_eq!(f.exec_captured("web", &["sh", "-c", view]).0, expected);
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
    let files = crate::common::export_files(&f.provider, &plan, &f.stored, &out, &f.ui).unwrap();
    assert_eq!(files, [out.join("rootfs.tar")]);
    let mut archive = tar::Archive::new(std::fs::File::open(&files[0]).unwrap());
    let names: Vec<String> = archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
    assert!(names.iter().any(|n| n == "bin/busybox"), "box files are in: {names:?}");
    assert!(names.iter().any(|n| n == "root/made-here"), "machine files are in");

    // A halted machine exports too, and is left unmounted.
    f.provider.halt(&plan, false, &f.ui).unwrap();
    std::fs::remove_file(&files[0]).unwrap();
    crate::common::export_files(&f.provider, &plan, &f.stored, &out, &f.ui).unwrap();
    assert!(files[0].exists());
    assert!(f.mounts().is_empty(), "{:?}", f.mounts());
}

/// A halted save killed after it named its new layer in the chain but before it renamed
/// the upper layer into it: the next start finishes the rename, and nothing is lost.
#[test]
fn a_save_killed_halfway_is_finished_by_the_next_start() {
    require!(need::CONTAINERS);
    let f = Fixture::new(&[("web", vec![])]);
    let plan = f.plan("web");
    f.up("web");
    assert_eq!(f.sh("web", "echo kept > /root/kept"), 0);
    f.provider.halt(&plan, false, &f.ui).unwrap();
    envy::fsutil::create_private_dir(&plan.dir.join("layers")).unwrap();
    envy::fsutil::write_atomic(&plan.dir.join("layers.json"), b"[1]").unwrap();
    f.up("web");
    assert_eq!(f.exec_captured("web", &["cat", "/root/kept"]).0, "kept\n");
    assert!(plan.dir.join("layers/1/root/kept").exists(), "the rename was finished");
    assert_eq!(chain(&plan).len(), 1);
}

/// A loop-mounted XFS filesystem with reflinks over a folder, for the test's lifetime.
struct XfsDisk {
    at: PathBuf,
    device: String,
}

impl XfsDisk {
    fn mount(at: &std::path::Path, image: &std::path::Path) -> XfsDisk {
        std::fs::File::create(image).unwrap().set_len(1 << 30).unwrap();
        let out = Command::new("losetup").args(["--find", "--show"]).arg(image).output().unwrap();
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let disk = XfsDisk { at: at.to_path_buf(), device };
        assert!(Command::new("mkfs.xfs").args(["-q", "-m", "reflink=1", &disk.device]).status().unwrap().success());
        assert!(Command::new("mount").arg(&disk.device).arg(at).status().unwrap().success());
        disk
    }
}

impl Drop for XfsDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// On a filesystem whose copies clone blocks (XFS here), a running machine's save
/// writes its layer out first, then clones it while the machine is held still: the
/// snapshot's file shares its blocks with the machine's, and what the machine writes
/// afterwards is its own (restore brings back the file as it was).
#[test]
fn a_running_save_on_xfs_shares_the_layers_blocks_and_restores_what_was_saved() {
    require!(need::CONTAINERS, [Need::Tool("mkfs.xfs", "xfsprogs"), Need::Tool("losetup", "mount"), Need::Tool("filefrag", "e2fsprogs")]);
    let env = TestEnv::new();
    let (box_path, _) = common::build_container_box(&env, "busybox");
    let _disk = XfsDisk::mount(&env.home, &env.path("xfs.img"));
    std::fs::write(env.project.join("Envfile"), format!("[machine.web]\nbox = {{ path = \"{}\" }}\n", box_path.display())).unwrap();
    let _machines = common::DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();
    let sha256 = || {
        let out = env.envy().args(["exec", "--", "sha256sum", "/root/data"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
    };
    env.envy().args(["exec", "--", "sh", "-c", "head -c 16777216 /dev/urandom > /root/data"]).assert().success();
    let saved = sha256();

    let out = env.envy().args(["-v", "snapshot", "save", "live"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && log.contains("held still for"), "{log}");
    let projects = env.home.join("projects");
    let machine = std::fs::read_dir(&projects).unwrap().next().unwrap().unwrap().path().join("machines/web");
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(machine.join("snapshots/live.json")).unwrap()).unwrap();
    let top = record["layers"].as_array().unwrap().last().unwrap().to_string();
    for file in [machine.join("layers").join(top).join("root/data"), machine.join("upper/root/data")] {
        let extents = Command::new("filefrag").arg("-v").arg(&file).output().unwrap();
        let extents = String::from_utf8_lossy(&extents.stdout);
        assert!(extents.contains("shared"), "{} shares its blocks: {extents}", file.display());
    }

    env.envy().args(["exec", "--", "sh", "-c", "echo more >> /root/data"]).assert().success();
    assert_ne!(sha256(), saved);
    env.envy().args(["snapshot", "restore", "live"]).assert().success();
    assert_eq!(sha256(), saved, "the snapshot kept the file as it was saved");
}
