//! Unpacking what `envy box add` is given: hostile archives are refused with the
//! entry named and nothing left behind; bare qcow2 images and rootfs tarballs get a
//! generated manifest; rootfs unpacking keeps owners, modes and links.


use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::{require, sha256_hex, Need, TestEnv};
use predicates::str::contains;

/// A tar written header by header, so tests can say things `tar::Builder` refuses to.
/// Entries belong to the user running the test (root in the full tier): unpacking a
/// rootfs owned by someone else takes root, and these tests are about what is refused.
#[derive(Default)]
struct RawTar {
    data: Vec<u8>,
}

impl RawTar {
    fn entry(mut self, name: &str, kind: u8, mode: u32, size: u64, body: &[u8], link: &str) -> Self {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(nix::unistd::geteuid().as_raw().into());
        h.set_gid(nix::unistd::getegid().as_raw().into());
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::new(kind));
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        self.data.extend_from_slice(h.as_bytes());
        self.data.extend_from_slice(body);
        self.data.resize(self.data.len().div_ceil(512) * 512, 0);
        self
    }
    fn file(self, name: &str, body: &[u8]) -> Self {
        self.entry(name, b'0', 0o644, body.len() as u64, body, "")
    }
    fn dir(self, name: &str) -> Self {
        self.entry(name, b'5', 0o755, 0, b"", "")
    }
    fn finish(mut self) -> Vec<u8> {
        self.data.extend_from_slice(&[0u8; 1024]);
        self.data
    }
}

/// A box.toml for a container box whose rootfs payload has this digest.
fn manifest(rootfs_sha256: &str) -> Vec<u8> {
    format!(
        "format = 1\nname = \"evil\"\nversion = \"1\"\narch = \"x86_64\"\nproviders = [\"container\"]\n\n\
         [container]\nrootfs = \"rootfs.tar\"\n\n[files]\n\"rootfs.tar\" = \"{rootfs_sha256}\"\n"
    )
    .into_bytes()
}

/// Writes `bytes` as a file and runs `envy box add` on it, expecting a refusal that
/// names `entry`; then checks the store holds nothing.
fn assert_refused(env: &TestEnv, bytes: Vec<u8>, entry: &str, reason: &str) {
    let path = env.path("hostile.box");
    std::fs::write(&path, bytes).unwrap();
    env.envy()
        .args(["box", "add"])
        .arg(&path)
        .assert()
        .code(4)
        .stderr(contains(format!("entry `{entry}` {reason}")));
    assert!(env.store_entries().is_empty(), "store must stay empty: {:?}", env.store_entries());
}

/// A directory outside the store that a hostile archive aims at.
fn outside(env: &TestEnv) -> PathBuf {
    let dir = env.path("outside");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("target"), b"precious").unwrap();
    dir
}

#[test]
fn absolute_path_is_refused() {
    let env = TestEnv::new();
    let target = outside(&env).join("abs");
    let name = target.to_str().unwrap();
    let tar = RawTar::default().file("box.toml", &manifest(&"a".repeat(64))).file(name, b"x").finish();
    assert_refused(&env, tar, name, "has an absolute path");
    assert!(!target.exists());
}

#[test]
fn dotdot_is_refused() {
    let env = TestEnv::new();
    let tar = RawTar::default().file("box.toml", &manifest(&"a".repeat(64))).file("../escape", b"x").finish();
    assert_refused(&env, tar, "../escape", "has a `..` component");
    assert!(!env.home.join("boxes/escape").exists() && !env.home.join("escape").exists());
    // In a rootfs tarball too.
    let tar = RawTar::default().dir("etc").file("etc/../../escape", b"x").finish();
    assert_refused(&env, tar, "etc/../../escape", "has a `..` component");
}

#[test]
fn symlink_escaping_then_a_file_through_it_is_refused() {
    let env = TestEnv::new();
    let out = outside(&env);
    let tar = RawTar::default()
        .dir("etc")
        .entry("evil", b'2', 0o777, 0, b"", out.to_str().unwrap())
        .file("evil/pwned", b"owned")
        .finish();
    assert_refused(&env, tar, "evil/pwned", "would be written through symlink `evil`");
    assert!(!out.join("pwned").exists());
    // A directory entry over that symlink would change the outside folder's mode.
    let tar = RawTar::default()
        .entry("evil", b'2', 0o777, 0, b"", out.to_str().unwrap())
        .entry("evil", b'5', 0o777, 0, b"", "")
        .finish();
    assert_refused(&env, tar, "evil", "is a directory over an earlier symlink of the same name");
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o755);
    // A box archive holds no symlinks at all.
    let tar = RawTar::default()
        .file("box.toml", &manifest(&"a".repeat(64)))
        .entry("link", b'2', 0o777, 0, b"", "/")
        .finish();
    assert_refused(&env, tar, "link", "is a symlink; a box holds only regular files");
}

#[test]
fn hardlink_escaping_is_refused() {
    let env = TestEnv::new();
    let out = outside(&env);
    let target = out.join("target");
    let tar = RawTar::default()
        .dir("etc")
        .entry("etc/link", b'1', 0o644, 0, b"", target.to_str().unwrap())
        .finish();
    assert_refused(&env, tar, "etc/link", "is a hardlink to");
    let tar = RawTar::default()
        .dir("etc")
        .entry("etc/link", b'1', 0o644, 0, b"", "../../../../outside/target")
        .finish();
    assert_refused(
        &env,
        tar,
        "etc/link",
        "is a hardlink to `../../../../outside/target`, which has a `..` component",
    );
    assert_eq!(std::fs::metadata(&target).unwrap().nlink(), 1, "no new link to the outside file");
}

#[test]
fn device_nodes_are_refused() {
    let env = TestEnv::new();
    let tar = RawTar::default()
        .file("box.toml", &manifest(&"a".repeat(64)))
        .entry("null", b'3', 0o666, 0, b"", "")
        .finish();
    assert_refused(&env, tar, "null", "is a character device; a box holds only regular files");
    let tar = RawTar::default().dir("etc").entry("etc/evil", b'3', 0o666, 0, b"", "").finish();
    assert_refused(&env, tar, "etc/evil", "is a character device outside dev/");
    let tar = RawTar::default().dir("etc").entry("etc/fifo", b'6', 0o666, 0, b"", "").finish();
    assert_refused(&env, tar, "etc/fifo", "is a fifo outside dev/");
}

#[test]
fn setuid_payload_is_refused() {
    let env = TestEnv::new();
    let payload = RawTar::default().dir("etc").finish();
    let tar = RawTar::default()
        .file("box.toml", &manifest(&sha256_hex(&payload)))
        .entry("rootfs.tar", b'0', 0o4755, payload.len() as u64, &payload, "")
        .finish();
    assert_refused(&env, tar, "rootfs.tar", "has setuid/setgid/sticky bits");
}

#[test]
fn oversized_entry_claim_is_refused() {
    let env = TestEnv::new();
    let claim: u64 = 300 << 30;
    let tar = RawTar::default()
        .file("box.toml", &manifest(&"a".repeat(64)))
        .entry("rootfs.tar", b'0', 0o644, claim, b"", "")
        .finish();
    assert_refused(&env, tar, "rootfs.tar", &format!("claims {claim} bytes"));
}

#[test]
fn payload_with_wrong_digest_is_refused() {
    let env = TestEnv::new();
    let payload = RawTar::default().dir("etc").finish();
    let tar =
        RawTar::default().file("box.toml", &manifest(&"a".repeat(64))).file("rootfs.tar", &payload).finish();
    let path = env.path("bad.box");
    std::fs::write(&path, tar).unwrap();
    env.envy().args(["box", "add"]).arg(&path).assert().code(4).stderr(contains(format!(
        "expected {}, got {}",
        "a".repeat(64),
        sha256_hex(&payload)
    )));
    assert!(env.store_entries().is_empty());
}

/// Format 2's box.toml: everything but the digests, which box.sums gives last.
fn manifest_v2() -> Vec<u8> {
    b"format = 2\nname = \"late\"\nversion = \"1\"\narch = \"x86_64\"\nproviders = [\"container\"]\n\n\
      [container]\nrootfs = \"rootfs.tar\"\n\n[files]\n"
        .to_vec()
}

/// Adds `bytes` as a box and expects a refusal saying `message`, with nothing stored.
fn assert_bad_box(env: &TestEnv, bytes: Vec<u8>, message: &str) {
    let path = env.path("bad.box");
    std::fs::write(&path, bytes).unwrap();
    env.envy().args(["box", "add"]).arg(&path).assert().code(4).stderr(contains(message));
    assert!(env.store_entries().is_empty(), "store must stay empty: {:?}", env.store_entries());
}

/// Format 2 (what envy writes since its boxes are packed front to back): the digests
/// come last, in box.sums; the store keeps the whole manifest. Whatever is wrong with
/// box.sums, or its place, is refused and nothing is stored.
#[test]
fn a_format_2_box_is_checked_against_its_last_entry() {
    let env = TestEnv::new();
    let payload = RawTar::default().dir("etc").file("etc/hostname", b"late\n").finish();
    let digest = sha256_hex(&payload);
    let sums = format!("{digest}  rootfs.tar\n");
    let good = || RawTar::default().file("box.toml", &manifest_v2()).file("rootfs.tar", &payload);

    let wrong = "b".repeat(64);
    assert_bad_box(&env, good().file("box.sums", format!("{wrong}  rootfs.tar\n").as_bytes()).finish(), &format!("expected {wrong}, got {digest}"));
    assert_bad_box(&env, good().finish(), "it ends without box.sums, the payloads' digests: the box was cut short");
    assert_refused(&env, good().file("box.sums", sums.as_bytes()).file("extra", b"x").finish(), "extra", "comes after box.sums, which must be the box's last entry");
    assert_bad_box(&env, good().file("box.sums", format!("{digest} rootfs.tar\n").as_bytes()).finish(), "box.sums line 1: expected `SHA256  NAME`");
    assert_bad_box(&env, good().file("box.sums", format!("{sums}{digest}  rootfs.tar\n").as_bytes()).finish(), "box.sums line 2: `rootfs.tar` is listed twice");
    assert_bad_box(&env, good().file("box.sums", format!("{}  rootfs.tar\n", digest.to_uppercase()).as_bytes()).finish(), "is not a lowercase sha256 hex digest");
    assert_bad_box(&env, good().file("box.sums", format!("{sums}{digest}  other.img\n").as_bytes()).finish(), "`files` lists `other.img`, which no section of box.toml names");
    assert_bad_box(&env, RawTar::default().file("box.toml", &manifest_v2()).file("box.sums", sums.as_bytes()).finish(), "`files` lists rootfs.tar, which the archive does not contain");
    assert_refused(&env, good().file("other.img", b"x").finish(), "other.img", "is not a payload box.toml names");
    let with_digests = [&manifest_v2()[..], format!("\"rootfs.tar\" = \"{digest}\"\n").as_bytes()].concat();
    assert_bad_box(&env, RawTar::default().file("box.toml", &with_digests).file("rootfs.tar", &payload).finish(), "format 2 keeps the payloads' digests in box.sums");
    let future = String::from_utf8(manifest_v2()).unwrap().replace("format = 2", "format = 3");
    assert_bad_box(&env, RawTar::default().file("box.toml", future.as_bytes()).finish(), "format 3 is not one this envy reads (1 and 2); upgrade envy");

    let bytes = good().file("box.sums", sums.as_bytes()).finish();
    let path = env.path("late.box");
    std::fs::write(&path, &bytes).unwrap();
    let box_digest = sha256_hex(&bytes);
    env.envy().args(["box", "add"]).arg(&path).assert().success().stdout(contains(&box_digest));
    let stored = env.home.join("boxes").join(&box_digest);
    assert_eq!(std::fs::read(stored.join("rootfs/etc/hostname")).unwrap(), b"late\n");
    // The store's box.toml is the whole manifest, digests and all.
    let kept = std::fs::read_to_string(stored.join("box.toml")).unwrap();
    assert!(kept.contains("format = 2") && kept.contains(&format!("\"rootfs.tar\" = \"{digest}\"")), "{kept}");
    env.envy().args(["box", "verify"]).assert().success();
}

/// A valid hand-made box in every compression envy reads.
#[test]
fn box_archives_in_every_compression() {
    let env = TestEnv::new();
    let payload = RawTar::default().dir("etc").file("etc/hostname", b"box\n").finish();
    let tar = RawTar::default()
        .file("box.toml", &manifest(&sha256_hex(&payload)))
        .file("rootfs.tar", &payload)
        .finish();
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut e, &tar).unwrap();
        e.finish().unwrap()
    };
    let xz = {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
        std::io::Write::write_all(&mut e, &tar).unwrap();
        e.finish().unwrap()
    };
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    for (ext, bytes) in [("tar", tar.clone()), ("gz", gz), ("xz", xz), ("zst", zst)] {
        let path = env.path(&format!("ok-{ext}.box"));
        std::fs::write(&path, &bytes).unwrap();
        let digest = sha256_hex(&bytes);
        env.envy().args(["box", "add"]).arg(&path).assert().success().stdout(contains(&digest));
        let hostname = env.home.join("boxes").join(&digest).join("rootfs/etc/hostname");
        assert_eq!(std::fs::read(hostname).unwrap(), b"box\n", "{ext}");
    }
}

#[test]
fn bare_qcow2_gets_a_firmware_manifest() {
    require!([Need::Tool("qemu-img", "qemu-utils")]);
    let env = TestEnv::new();
    let image = env.path("cloud.qcow2");
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("64M")
        .status()
        .unwrap();
    assert!(status.success());
    let digest = sha256_hex(&std::fs::read(&image).unwrap());
    env.envy()
        .args(["box", "add"])
        .arg(&image)
        .args(["--name", "cloud"])
        .assert()
        .success()
        .stdout(contains(&digest));
    let dir = env.home.join("boxes").join(&digest);
    let manifest = std::fs::read_to_string(dir.join("box.toml")).unwrap();
    assert!(manifest.contains("providers = [\"qemu\"]"), "{manifest}");
    assert!(
        manifest.contains("disk = \"disk.qcow2\"") && manifest.contains("boot = \"firmware\""),
        "{manifest}"
    );
    assert!(manifest.contains(&format!("\"disk.qcow2\" = \"{digest}\"")), "{manifest}");
    assert!(dir.join("disk.qcow2").is_file());
    assert!(image.is_file(), "the user's file is copied, not moved");
}

#[test]
fn bare_rootfs_tarball_keeps_owners_modes_and_links() {
    // Files owned by another user are made only by root.
    require!([Need::Root]);
    let env = TestEnv::new();
    let mut tar = RawTar::default()
        .dir("etc")
        .dir("dev")
        .entry("dev/null", b'3', 0o666, 0, b"", "")
        .file("etc/data", b"shared")
        .entry("etc/data-link", b'1', 0o644, 0, b"", "etc/data")
        .entry("etc/abs-link", b'2', 0o777, 0, b"", "/etc/data")
        .entry("etc/suid", b'0', 0o4755, 2, b"#!", "");
    // An entry owned by someone else than root.
    let mut h = tar::Header::new_gnu();
    h.set_path("etc/owned").unwrap();
    h.set_size(1);
    h.set_mode(0o600);
    h.set_uid(1234);
    h.set_gid(4321);
    h.set_cksum();
    tar.data.extend_from_slice(h.as_bytes());
    tar.data.extend_from_slice(b"o");
    tar.data.resize(tar.data.len().div_ceil(512) * 512, 0);
    let bytes = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut e, &tar.finish()).unwrap();
        e.finish().unwrap()
    };
    let path = env.path("rootfs.tar.gz");
    std::fs::write(&path, &bytes).unwrap();
    let digest = sha256_hex(&bytes);
    env.envy()
        .args(["box", "add"])
        .arg(&path)
        .assert()
        .success()
        .stderr(contains("skipped 1 device nodes under /dev"));
    let dir = env.home.join("boxes").join(&digest);
    let manifest = std::fs::read_to_string(dir.join("box.toml")).unwrap();
    assert!(manifest.contains("rootfs = \"rootfs.tar.gz\""), "{manifest}");
    let root = dir.join("rootfs");
    let meta = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap();
    assert_eq!(meta("etc/data").ino(), meta("etc/data-link").ino(), "hardlink kept");
    assert_eq!(std::fs::read_link(root.join("etc/abs-link")).unwrap(), Path::new("/etc/data"));
    assert_eq!(meta("etc/suid").permissions().mode() & 0o7777, 0o4755);
    assert_eq!((meta("etc/owned").uid(), meta("etc/owned").gid()), (1234, 4321));
    assert!(!root.join("dev/null").exists(), "device nodes are left to the runtime");
}

#[test]
fn not_a_box_is_a_clear_error() {
    let env = TestEnv::new();
    let path = env.path("notes.txt");
    std::fs::write(&path, b"just some text, clearly not an archive").unwrap();
    env.envy()
        .args(["box", "add"])
        .arg(&path)
        .assert()
        .code(4)
        .stderr(contains("is not a box: it is neither a qcow2 image nor a tar archive"));
    assert!(env.store_entries().is_empty());
}
