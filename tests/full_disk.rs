//! A full disk: adding a box to an ENVY_HOME that runs out of space fails with a clear
//! error, leaves no half-stored box, and the boxes already there stay intact.

mod common;

use std::process::Command;

use common::TestEnv;

/// A small tmpfs mounted over a folder for the test's lifetime.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path, size: &str) -> SmallDisk {
        assert!(nix::unistd::geteuid().is_root(), "this test mounts a small tmpfs: run it as root");
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
    env.envy().args(["box", "prune"]).assert().success();
    let used: u64 = walk_size(&env.home.join("boxes"));
    let small_size: u64 = walk_size(&env.home.join("boxes").join(&small_digest));
    assert_eq!(used, small_size, "no leftovers of the failed add in the store");
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
