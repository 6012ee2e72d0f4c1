//! What overlayfs keeps in a machine's upper layer (whiteouts, opaque dirs, numeric
//! owners) survives a snapshot's frozen layer, against real runc and overlayfs; and the
//! archives older envys saved (record format 2: boxes::unpack_upper, or GNU tar before
//! that) still restore, a hostile one refused with the machine untouched. Run as root.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use envy::plan::MachinePlan;
use envy::provider::Provider;
use crate::common::container::Fixture;
use crate::common::{need, require, sha256_hex, Need};

/// Changes that leave each kind of overlayfs state in the upper layer: /usr (bin and
/// sbin in the box) removed and made again is an opaque dir, a removed box file is a
/// whiteout, and a file owned by nobody with mode 640.
const CHANGES: &str = "rm -rf /usr && mkdir -p /usr/mine && echo x > /usr/mine/f && rm /etc/box-release \
                       && echo n > /root/owned && chown 65534:65534 /root/owned && chmod 640 /root/owned";

fn upper(plan: &MachinePlan) -> PathBuf {
    plan.dir.join("upper")
}

/// The upper layer holds what CHANGES makes (so the round trip has something to keep).
fn assert_upper_has_the_changes(upper: &Path, root_mode: u32) {
    assert_eq!(xattr::get(upper.join("usr"), "trusted.overlay.opaque").unwrap().as_deref(), Some(&b"y"[..]), "usr is opaque");
    let whiteout = std::fs::symlink_metadata(upper.join("etc/box-release")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0, "box-release is a whiteout");
    let owned = std::fs::metadata(upper.join("root/owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid(), owned.permissions().mode() & 0o7777), (65534, 65534, 0o640));
    assert_eq!(std::fs::metadata(upper).unwrap().permissions().mode() & 0o7777, root_mode, "the upper dir's own mode");
}

/// The machine sees what CHANGES made, and nothing of what came after.
fn assert_machine_has_the_changes(f: &Fixture) {
    let (out, code) = f.exec_captured(
        "web",
        &["sh", "-c", "ls -A /usr; test -e /etc/box-release || echo gone; stat -c '%u:%g %a' /root/owned; ls /root"],
    );
    assert_eq!((out.as_str(), code), ("mine\ngone\n65534:65534 640\nowned\n", 0));
}

/// Undoes what CHANGES made, so a restore has something to bring back.
const UNDO: &str = "mkdir -p /usr/bin && echo back > /etc/box-release && chown 0:0 /root/owned && echo later > /root/later";

#[test]
fn whiteouts_opaque_dirs_and_owners_survive_a_snapshot() {
    require!(need::CONTAINERS);
    let f = Fixture::new(&[("web", vec![])]);
    let plan = f.plan("web");
    f.up("web");
    let root_mode = std::fs::metadata(upper(&plan)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(f.sh("web", CHANGES), 0);
    assert_upper_has_the_changes(&upper(&plan), root_mode);
    // Saved running: the upper layer is copied into the snapshot's layer.
    f.provider.snapshot_save(&plan, "s1", false, &f.ui).unwrap();
    assert_eq!(f.sh("web", UNDO), 0);
    f.provider.snapshot_restore(&plan, "s1", &f.ui).unwrap();
    let chain: Vec<u32> = serde_json::from_slice(&std::fs::read(plan.dir.join("layers.json")).unwrap()).unwrap();
    assert_upper_has_the_changes(&plan.dir.join("layers").join(chain[0].to_string()), root_mode);
    assert_eq!(std::fs::metadata(upper(&plan)).unwrap().permissions().mode() & 0o7777, root_mode, "the new upper layer's own mode");
    assert_machine_has_the_changes(&f);
}

/// Installs `archive` as snapshot `name` the way `snapshot save` records one.
fn plant_snapshot(plan: &MachinePlan, name: &str, archive: &[u8]) {
    let snapshots = plan.dir.join("snapshots");
    envy::fsutil::create_private_dir(&snapshots).unwrap();
    let sha256 = sha256_hex(archive);
    envy::fsutil::write_atomic(&snapshots.join(format!("{sha256}.tar.zst")), archive).unwrap();
    let record = serde_json::json!({"format": 2, "name": name, "created": 1, "size": archive.len(), "sha256": sha256});
    envy::fsutil::write_atomic(&snapshots.join(format!("{name}.json")), record.to_string().as_bytes()).unwrap();
}

#[test]
fn a_snapshot_gnu_tar_wrote_still_restores() {
    // Older envys saved snapshots with GNU tar and zstd; this test makes one the same way.
    require!(need::CONTAINERS, [Need::Tool("tar", "tar"), Need::Tool("zstd", "zstd")]);
    let f = Fixture::new(&[("web", vec![])]);
    let plan = f.plan("web");
    f.up("web");
    let root_mode = std::fs::metadata(upper(&plan)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(f.sh("web", CHANGES), 0);
    f.provider.halt(&plan, false, &f.ui).unwrap();
    // overlayfs's binary bookkeeping, as a copied-up dir carries it: a file handle that
    // may hold a newline, which the tar crate's PAX reader cannot take. The restore
    // skips it and still reads the opaque mark after it.
    xattr::set(upper(&plan).join("usr"), "trusted.overlay.origin", b"\x00\xfb\n\x21handle\nwith newlines").unwrap();
    // What envy ran before the tar crate took over.
    let old = f.root().join("old.tar.zst");
    let tar = std::process::Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=trusted.overlay.*", "--zstd", "--create", "--file"])
        .arg(&old)
        .arg("--directory")
        .arg(upper(&plan))
        .arg(".")
        .status()
        .expect("this test needs GNU tar and zstd; install them with `apt-get install tar zstd`");
    assert!(tar.success());
    plant_snapshot(&plan, "old", &std::fs::read(&old).unwrap());
    f.up("web");
    assert_eq!(f.sh("web", UNDO), 0);
    f.provider.snapshot_restore(&plan, "old", &f.ui).unwrap();
    assert_upper_has_the_changes(&upper(&plan), root_mode);
    assert_machine_has_the_changes(&f);
}

#[test]
fn a_snapshot_with_an_escaping_entry_is_refused_and_changes_nothing() {
    require!(need::CONTAINERS);
    let f = Fixture::new(&[("web", vec![])]);
    let plan = f.plan("web");
    f.up("web");
    assert_eq!(f.sh("web", "echo kept > /root/state"), 0);
    // One regular file named `../escape`: the tar crate's builder refuses such names, so
    // the header is written by hand.
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..9].copy_from_slice(b"../escape");
    header.set_size(1);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut raw = header.as_bytes().to_vec();
    raw.extend_from_slice(b"x");
    raw.resize(512 * 2 + 1024, 0);
    plant_snapshot(&plan, "bad", &zstd::encode_all(&raw[..], 3).unwrap());
    let err = f.provider.snapshot_restore(&plan, "bad", &f.ui).unwrap_err();
    assert_eq!(
        err.to_string(),
        "refusing snapshot bad of machine web: entry `../escape` has a `..` component; nothing was stored"
    );
    assert!(!plan.dir.join("escape").exists() && !plan.dir.join("upper.restoring").exists(), "nothing was left");
    let (out, code) = f.exec_captured("web", &["cat", "/root/state"]);
    assert_eq!((out.as_str(), code), ("kept\n", 0), "the machine runs untouched");
}
