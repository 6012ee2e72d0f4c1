//! A full disk: adding a box to an ENVY_HOME that runs out of space fails with a clear
//! error, leaves no half-stored box, and the boxes already there stay intact; a
//! snapshot that does not fit leaves the one it was to replace; a share that does not
//! fit leaves no box, whole or half, where it was to go.

use std::process::Command;

use crate::common::{self, need, require, Need, TestEnv};

/// A small tmpfs mounted over a folder for the test's lifetime (its tests require root).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).status().unwrap();
        assert!(status.success(), "cannot mount a tmpfs at {}", at.display());
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_box_that_does_not_fit_is_refused_and_the_store_stays_whole() {
    require!(need::BUSYBOX, [Need::Root]);
    let env = TestEnv::new();
    let (small_box, small_digest) = common::build_container_box(&env, "small");
    // A box whose rootfs holds 12 MiB of incompressible data.
    let rootfs = env.path("big-rootfs");
    common::busybox_rootfs(&rootfs);
    let noise: Vec<u8> = (0..12u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(rootfs.join("noise"), noise).unwrap();
    let big_box = env.path("big.box");
    env.envy().args(["box", "build", "--rootfs"]).arg(&rootfs).args(["--name", "big", "-o"]).arg(&big_box).assert().success();

    let _disk = SmallDisk::mount(&env.home, "12m");
    env.envy().args(["box", "add"]).arg(&small_box).assert().success();

    let out = env.envy().args(["box", "add"]).arg(&big_box).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the disk is full") && err.contains("No space left on device"), "{err}");
    assert!(err.contains(&env.home.display().to_string()), "the error names where: {err}");

    // Only the small box is stored, whole; nothing of the big one stays behind.
    assert_eq!(env.store_entries().iter().filter(|e| !e.starts_with('.')).collect::<Vec<_>>(), vec![&small_digest]);
    env.envy().args(["box", "verify"]).assert().success();
    let used: u64 = walk_size(&env.home.join("boxes"));
    let small_size: u64 = walk_size(&env.home.join("boxes").join(&small_digest));
    assert!(small_size > 0);
    assert_eq!(used, small_size, "no leftovers of the failed add in the store");
}

#[test]
fn replacing_a_snapshot_on_a_full_disk_keeps_the_old_one() {
    require!(need::CONTAINERS, [Need::Tool("zstd", "zstd")]);
    let env = TestEnv::new();
    common::busybox_project(&env);
    let _disk = SmallDisk::mount(&env.home, "24m");
    let _cleanup = common::DestroyOnDrop(&env);
    let sh = |script: &str| env.envy().args(["exec", "--", "sh", "-c", script]).assert().success();
    env.envy().arg("up").assert().success();
    sh("echo saved > /root/mark");
    env.envy().args(["snapshot", "save", "s1"]).assert().success();

    // The machine's layer now holds more than the disk has left for a snapshot of it.
    sh("echo changed > /root/mark; dd if=/dev/urandom of=/root/big bs=1M count=10 2>/dev/null");
    let out = env.envy().args(["snapshot", "save", "s1", "--force"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("No space left on device"), "{err}");

    // The old snapshot is still there, whole, and restores.
    let list = env.envy().args(["snapshot", "list", "--json"]).output().unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains("\"s1\""), "{}", String::from_utf8_lossy(&list.stdout));
    sh("rm /root/big");
    env.envy().args(["snapshot", "restore", "s1"]).assert().success();
    let mark = env.envy().args(["exec", "--", "cat", "/root/mark"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&mark.stdout), "saved\n");
    env.envy().args(["destroy", "--force"]).assert().success();
}

#[test]
fn a_share_that_does_not_fit_leaves_no_box_behind() {
    require!(need::CONTAINERS);
    let env = TestEnv::new();
    common::busybox_project(&env);
    let _cleanup = common::DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();
    // More incompressible data than the output's disk holds.
    env.envy().args(["exec", "--", "sh", "-c", "dd if=/dev/urandom of=/root/big bs=1M count=10 2>/dev/null"]).assert().success();
    let out_dir = env.path("out");
    let _disk = SmallDisk::mount(&out_dir, "4m");
    let out = env.envy().args(["share", "-o"]).arg(out_dir.join("default.box")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("the disk is full") && err.contains(&out_dir.join("default.box.part").display().to_string()), "{err}");
    assert!(common::list_dir(&out_dir).is_empty(), "nothing left: {:?}", common::list_dir(&out_dir));
    // The machine was let go (thawed, unlocked): it runs, and a share with room works.
    env.envy().args(["exec", "--", "true"]).assert().success();
    env.envy().args(["share", "-o"]).arg(env.path("room.box")).assert().success();
}

fn walk_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| {
            let meta = e.metadata().unwrap();
            if meta.is_dir() { walk_size(&e.path()) } else { meta.len() }
        })
        .sum()
}
