//! Catalog entries that follow upstream, against real HTTP servers on 127.0.0.1: a
//! simplestreams mirror (index.json, images.json and the rootfs files) that gains a
//! newer build, a Debian-style "latest" directory with SHA512SUMS, and no server at
//! all. `envy box outdated` shows the newer build, `envy box update` moves the pin and
//! `envy up` runs it.

use std::path::Path;
use std::process::Command as StdCommand;

use crate::common::{busybox_rootfs, free_port, need, require, sha256_hex, Need, Server, TestEnv};
use envy::model::BoxFormat;
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
use sha2::{Digest, Sha512};

/// `tar` and `xz`, which make the rootfs tarballs upstream serves.
const TARBALLS: &[Need] = &[Need::Tool("tar", "tar"), Need::Tool("xz", "xz-utils")];

/// A busybox root filesystem as the LXC image server ships one: a plain `rootfs.tar.xz`
/// whose /etc/box-release says which build it is.
fn rootfs_tarball(env: &TestEnv, build: &str) -> Vec<u8> {
    let dir = env.path(&format!("rootfs-{build}"));
    busybox_rootfs(&dir);
    std::fs::write(dir.join("etc/box-release"), format!("build {build}\n")).unwrap();
    let out = env.path(&format!("rootfs-{build}.tar.xz"));
    let status = StdCommand::new("tar")
        .args(["--numeric-owner", "-cJf"])
        .arg(&out)
        .arg("-C")
        .arg(&dir)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar -cJf {}", out.display());
    std::fs::read(out).unwrap()
}

/// A simplestreams mirror in the shape of images.linuxcontainers.org: builds of one
/// product, each with its rootfs and (ignored by envy) an incus metadata tarball.
struct Mirror<'a> {
    server: &'a Server,
    builds: Vec<(String, Vec<u8>)>,
}

const PRODUCT: &str = "busybox:1:amd64:default";

impl Mirror<'_> {
    fn add(&mut self, version: &str, rootfs: Vec<u8>) {
        let dir = format!("images/busybox/1/amd64/default/{version}");
        self.server.serve(&format!("{dir}/rootfs.tar.xz"), rootfs.clone());
        self.builds.push((version.to_string(), rootfs));
        let versions: serde_json::Map<String, serde_json::Value> = self
            .builds
            .iter()
            .map(|(v, bytes)| {
                let dir = format!("images/busybox/1/amd64/default/{v}");
                let items = serde_json::json!({
                    "incus.tar.xz": { "ftype": "incus.tar.xz", "sha256": "0".repeat(64), "size": 1, "path": format!("{dir}/incus.tar.xz") },
                    "root.tar.xz": { "ftype": "root.tar.xz", "sha256": sha256_hex(bytes), "size": bytes.len(), "path": format!("{dir}/rootfs.tar.xz") },
                });
                (v.clone(), serde_json::json!({ "items": items }))
            })
            .collect();
        let images = serde_json::json!({
            "content_id": "images",
            "datatype": "image-downloads",
            "format": "products:1.0",
            "products": {
                "alpine:3.22:amd64:default": { "arch": "amd64", "aliases": "alpine/3.22", "versions": {} },
                PRODUCT: { "arch": "amd64", "aliases": "busybox/1/default,busybox/1", "os": "Busybox", "release": "1", "variant": "default", "versions": versions },
            },
        });
        let index = serde_json::json!({
            "format": "index:1.0",
            "index": { "images": { "datatype": "image-downloads", "format": "products:1.0", "path": "streams/v1/images.json", "products": ["alpine:3.22:amd64:default", PRODUCT] } },
        });
        self.server.serve("streams/v1/index.json", index.to_string().into_bytes());
        self.server.serve("streams/v1/images.json", images.to_string().into_bytes());
    }
}

/// A catalog directory with one entry, `bb`, following `upstream` for containers.
fn write_catalog(env: &TestEnv, upstream: &str) -> std::path::PathBuf {
    let dir = env.path("catalog");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("bb.toml"),
        format!("[[box]]\nname = \"bb\"\ndescription = \"busybox\"\n\n[[box.upstream]]\nprovider = \"container\"\n{upstream}\n"),
    )
    .unwrap();
    dir
}

fn write_envfile(env: &TestEnv) {
    std::fs::write(env.project.join("Envfile"), "[machine.web]\nbox = \"bb\"\nprovider = \"container\"\nmemory = \"256MiB\"\n").unwrap();
}

fn lock(env: &TestEnv) -> toml::Value {
    toml::from_str(&lock_text(env)).unwrap()
}

fn lock_text(env: &TestEnv) -> String {
    std::fs::read_to_string(env.project.join("Envfile.lock")).unwrap()
}

fn pinned(env: &TestEnv) -> String {
    lock(env)["machine"]["web"]["sha256"].as_str().unwrap().to_string()
}

fn outdated(env: &TestEnv, catalog: &Path) -> serde_json::Value {
    let out = env.envy().env("ENVY_CATALOG", catalog).args(["box", "outdated", "--json"]).output().unwrap();
    assert!(out.status.success(), "box outdated: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["machines"][0].clone()
}

fn release(env: &TestEnv) -> String {
    env.out(&["exec", "web", "--", "cat", "/etc/box-release"])
}

#[test]
fn simplestreams_newer_build_is_outdated_until_update_moves_the_pin() {
    require!(need::CONTAINERS, TARBALLS);
    let env = TestEnv::new();
    let server = Server::start();
    let mut mirror = Mirror { server: &server, builds: Vec::new() };
    let first = rootfs_tarball(&env, "1");
    let second = rootfs_tarball(&env, "2");
    mirror.add("20250101_05:24", first.clone());
    let catalog = write_catalog(&env, &format!("simplestreams = {:?}\nproduct = \"busybox/1\"", server.url("")));
    write_envfile(&env);
    let _destroy = crate::common::DestroyOnDrop(&env);

    env.envy().env("ENVY_CATALOG", &catalog).arg("up").assert().success();
    let old = sha256_hex(&first);
    assert_eq!(pinned(&env), old, "the index's rootfs is pinned");
    assert_eq!(
        lock(&env)["machine"]["web"]["url"].as_str().unwrap(),
        server.url("images/busybox/1/amd64/default/20250101_05:24/rootfs.tar.xz")
    );
    assert_eq!(release(&env), "build 1\n");
    let row = outdated(&env, &catalog);
    assert_eq!((row["status"].as_str(), row["pinned"]["version"].as_str()), (Some("current"), Some("20250101_05:24")), "{row}");

    // Upstream publishes a newer build: `up` keeps the pin, `outdated` shows the new one.
    mirror.add("20250102_05:24", second.clone());
    let new = sha256_hex(&second);
    env.envy().env("ENVY_CATALOG", &catalog).arg("up").assert().success();
    assert_eq!(pinned(&env), old, "up never moves a pin");
    let row = outdated(&env, &catalog);
    assert_eq!(row["status"], "outdated", "{row}");
    assert_eq!(row["newest"]["version"], "20250102_05:24");
    assert_eq!(row["newest"]["digest"], format!("sha256:{new}"));
    assert_eq!(row["pinned"]["sha256"], old.as_str());
    let table = env.envy().env("ENVY_CATALOG", &catalog).args(["box", "outdated"]).output().unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.contains(&old[..12]) && table.contains(&new[..12]) && table.contains("outdated"), "{table}");

    env.envy()
        .env("ENVY_CATALOG", &catalog)
        .args(["box", "update", "web"])
        .assert()
        .success()
        .stdout(contains(format!("{old} -> {new}")))
        .stderr(contains("keeps its base"));
    assert_eq!(pinned(&env), new, "update moved the pin");
    assert_eq!(outdated(&env, &catalog)["status"], "current");

    // Another host with the committed Envfile.lock gets the pinned build from the URL
    // the lock recorded, though upstream has a newer one by then.
    mirror.add("20250103_05:24", rootfs_tarball(&env, "3"));
    let other = TestEnv::new();
    for file in ["Envfile", "Envfile.lock"] {
        std::fs::copy(env.project.join(file), other.project.join(file)).unwrap();
    }
    let _destroy_other = crate::common::DestroyOnDrop(&other);
    other.envy().env("ENVY_CATALOG", &catalog).arg("up").assert().success();
    assert_eq!(release(&other), "build 2\n");
    assert_eq!(pinned(&other), new);
    // When upstream no longer has it, the error says so and what to run.
    let gone = TestEnv::new();
    std::fs::copy(env.project.join("Envfile"), gone.project.join("Envfile")).unwrap();
    let lock_text = std::fs::read_to_string(env.project.join("Envfile.lock")).unwrap();
    std::fs::write(gone.project.join("Envfile.lock"), lock_text.replace("20250102_05:24", "20250102_00:00")).unwrap();
    gone.envy()
        .env("ENVY_CATALOG", &catalog)
        .arg("up")
        .assert()
        .code(3)
        .stderr(contains(format!("machine web is pinned to box {new} from")))
        .stderr(contains("which upstream no longer serves; run `envy box update web`"));
    assert!(gone.store_entries().is_empty(), "{:?}", gone.store_entries());

    // The pinned box is stored: with the mirror gone, a new machine comes up from it.
    drop(mirror);
    drop(server);
    env.envy().args(["destroy", "--force", "web"]).assert().success();
    env.envy().env("ENVY_CATALOG", &catalog).arg("up").assert().success();
    assert_eq!(release(&env), "build 2\n", "up after update runs the new build");
    let status = env.status();
    assert_eq!(crate::common::machine(&status, "web")["box_digest"], new.as_str(), "{status}");

    // A machine added later under the same name takes the build stored last, offline.
    let envfile = std::fs::read_to_string(env.project.join("Envfile")).unwrap();
    std::fs::write(env.project.join("Envfile"), envfile.replace("[machine.web]", "[machine.db]") + &envfile).unwrap();
    env.envy().env("ENVY_CATALOG", &catalog).args(["up", "db"]).assert().success();
    assert_eq!(env.out(&["exec", "db", "--", "cat", "/etc/box-release"]), "build 2\n");
}

/// A Debian-style "latest" directory: a fixed file name whose bytes change, and a
/// SHA512SUMS beside it.
fn serve_latest(server: &Server, file: &str, bytes: &[u8], sha512: &str) {
    server.serve(&format!("latest/{file}"), bytes.to_vec());
    let sums = format!("{}  other-file.qcow2\n{sha512}  {file}\n", "e".repeat(128));
    server.serve("latest/SHA512SUMS", sums.into_bytes());
}

/// The rootfs file name in the "latest" directory.
const ROOTFS: &str = "bb-rootfs-amd64.tar.xz";

fn sha512_hex(data: &[u8]) -> String {
    hex::encode(Sha512::digest(data))
}

/// A "latest" directory serving `rootfs` as ROOTFS, the catalog entry `bb` following
/// it (returned), and the project's Envfile.
fn latest_project(env: &TestEnv, server: &Server, rootfs: &[u8]) -> std::path::PathBuf {
    serve_latest(server, ROOTFS, rootfs, &sha512_hex(rootfs));
    let catalog = write_catalog(env, &format!("latest = {:?}\nfile = \"{ROOTFS}\"\nchecksums = \"SHA512SUMS\"", server.url("latest/")));
    write_envfile(env);
    catalog
}

#[test]
fn latest_directory_with_sha512sums_pins_and_refuses_a_wrong_digest() {
    require!(need::BUSYBOX, TARBALLS);
    let env = TestEnv::new();
    let server = Server::start();
    let first = rootfs_tarball(&env, "1");
    let catalog = latest_project(&env, &server, &first);

    // `box update` pins a machine that has none yet, without making it.
    env.envy().env("ENVY_CATALOG", &catalog).args(["box", "update"]).assert().success().stdout(contains("pinned to"));
    let old = sha256_hex(&first);
    assert_eq!(pinned(&env), old, "envy pins its own sha256");
    assert_eq!(lock(&env)["machine"]["web"]["upstream"].as_str().unwrap(), format!("sha512:{}", sha512_hex(&first)));
    assert_eq!(env.store_entries(), vec![old.clone()]);
    let row = outdated(&env, &catalog);
    assert_eq!((row["status"].as_str(), row["newest"]["version"].as_str()), (Some("current"), Some("latest")), "{row}");

    // The directory moves on, but its SHA512SUMS line is wrong: refused, nothing kept.
    let second = rootfs_tarball(&env, "2");
    serve_latest(&server, ROOTFS, &second, &sha512_hex(b"something else"));
    assert_eq!(outdated(&env, &catalog)["status"], "outdated");
    env.envy()
        .env("ENVY_CATALOG", &catalog)
        .args(["box", "update", "web"])
        .assert()
        .code(4)
        .stderr(contains("wrong sha512 digest").and(contains("bb-rootfs-amd64.tar.xz")));
    assert_eq!(env.store_entries(), vec![old.clone()], "nothing was stored");
    assert!(env.download_entries().is_empty(), "no partial file: {:?}", env.download_entries());
    assert_eq!(pinned(&env), old, "the pin did not move");

    // With the right line the update goes through.
    serve_latest(&server, ROOTFS, &second, &sha512_hex(&second));
    let new = sha256_hex(&second);
    env.envy()
        .env("ENVY_CATALOG", &catalog)
        .args(["box", "update", "web", "--json"])
        .assert()
        .success()
        .stdout(contains(format!("\"new\": \"{new}\"")).and(contains("\"changed\": true")));
    assert_eq!(pinned(&env), new);
}

#[test]
fn an_unpinned_catalog_name_without_upstream_fails_saying_what_was_tried() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let port = free_port();
    let mirror = format!("http://127.0.0.1:{port}/");
    let catalog = write_catalog(&env, &format!("simplestreams = {mirror:?}\nproduct = \"busybox/1\""));
    write_envfile(&env);
    for args in [&["box", "add", "bb"][..], &["box", "outdated"], &["box", "update"]] {
        env.envy()
            .env("ENVY_CATALOG", &catalog)
            .args(args)
            .assert()
            .code(4)
            .stderr(contains("cannot find the newest build of box bb (container) upstream"))
            .stderr(contains(format!("tried {mirror}streams/v1/index.json")));
    }
    assert!(env.store_entries().is_empty() && env.download_entries().is_empty());
    assert!(!env.project.join("Envfile.lock").exists(), "no pin was written");

    // An index that names a products file outside the mirror is refused as such.
    let server = Server::start();
    let index = serde_json::json!({ "index": { "images": { "datatype": "image-downloads", "path": "../../etc/images.json", "products": [PRODUCT] } } });
    server.serve("streams/v1/index.json", index.to_string().into_bytes());
    let catalog = write_catalog(&env, &format!("simplestreams = {:?}\nproduct = \"busybox/1\"", server.url("")));
    env.envy()
        .env("ENVY_CATALOG", &catalog)
        .args(["box", "add", "bb"])
        .assert()
        .code(4)
        .stderr(contains("not a path inside the mirror"));
    assert!(env.store_entries().is_empty());

    // A document larger than envy reads is refused whole, not parsed cut short.
    server.serve("huge.toml", format!("# {}\n", "x".repeat(9 << 20)).into_bytes());
    env.envy()
        .args(["box", "add", "bb", "--catalog", &server.url("huge.toml")])
        .assert()
        .code(4)
        .stderr(contains("the document is larger than 8 MiB"));
}

/// A catalog entry `bb` offering both providers, and the README's Envfile (a container
/// and a VM, one box name) in the project: the container's rootfs from a simplestreams
/// mirror, the VM's `disk` from a "latest" directory with SHA512SUMS.
fn catalog_offering_both(env: &TestEnv, server: &Server, rootfs: Vec<u8>, disk: &[u8]) -> std::path::PathBuf {
    let mut mirror = Mirror { server, builds: Vec::new() };
    mirror.add("20250101_05:24", rootfs);
    serve_latest(server, "bb-amd64.qcow2", disk, &sha512_hex(disk));
    std::fs::write(
        env.project.join("Envfile"),
        "[defaults]\nbox = \"bb\"\nmemory = \"256MiB\"\n\n[machine.web]\nprovider = \"container\"\n\n[machine.db]\nprovider = \"qemu\"\ncpus = 1\n",
    )
    .unwrap();
    write_catalog(
        env,
        &format!(
            "simplestreams = {:?}\nproduct = \"busybox/1\"\n\n[[box.upstream]]\nprovider = \"qemu\"\nlatest = {:?}\nfile = \"bb-*.qcow2\"\nchecksums = \"SHA512SUMS\"",
            server.url(""),
            server.url("latest/")
        ),
    )
}

#[test]
fn one_name_resolves_per_provider_from_a_catalog_offering_both() {
    require!(need::BUSYBOX, TARBALLS, [Need::Tool("qemu-img", "qemu-utils")]);
    let env = TestEnv::new();
    let server = Server::start();
    let rootfs = rootfs_tarball(&env, "1");
    let disk = env.path("disk.qcow2");
    let status = StdCommand::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&disk).arg("64M").status().unwrap();
    assert!(status.success());
    let disk = std::fs::read(disk).unwrap();
    let catalog = catalog_offering_both(&env, &server, rootfs.clone(), &disk);
    env.envy().env("ENVY_CATALOG", &catalog).args(["box", "update"]).assert().success();
    let lock = lock(&env);
    assert_eq!(lock["machine"]["web"]["sha256"].as_str(), Some(sha256_hex(&rootfs).as_str()));
    assert_eq!(lock["machine"]["db"]["sha256"].as_str(), Some(sha256_hex(&disk).as_str()));
    let out = env.envy().env("ENVY_CATALOG", &catalog).args(["box", "outdated", "--json"]).output().unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status: Vec<(&str, &str)> = rows["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["machine"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(status, vec![("web", "current"), ("db", "current")], "{rows}");
    assert_eq!(rows["machines"][1]["newest"]["version"], "amd64", "the part the pattern's `*` matched");
    let list: serde_json::Value = serde_json::from_str(&env.out(&["box", "list", "--json"])).unwrap();
    let mut providers: Vec<String> = list["boxes"].as_array().unwrap().iter().map(|b| b["providers"][0].as_str().unwrap().to_string()).collect();
    providers.sort();
    assert_eq!(providers, ["container", "qemu"]);
}

/// The README's Envfile, a container and a VM under one box name, comes up from a
/// catalog whose entry offers both providers: the container from a simplestreams
/// mirror, the VM from a "latest" directory serving a disk that boots by firmware, as a
/// stock cloud image does.
#[test]
fn the_readme_envfile_comes_up_from_a_catalog_offering_both_providers() {
    require!(need::CONTAINERS, need::VMS, TARBALLS, [Need::Tool("sfdisk", "fdisk"), Need::Tool("grub-mkimage", "grub-common")]);
    let env = TestEnv::new();
    let server = Server::start();
    // The tiny VM's root filesystem, made a GRUB-booted disk by its recipe.
    crate::common::tiny_vm_box(&env);
    let disk_path = env.path("cloudlike.qcow2");
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("boxes/recipes/tiny-vm-bios.sh");
    let built = StdCommand::new(&recipe).arg(&disk_path).output().unwrap();
    assert!(built.status.success(), "tiny-vm-bios.sh failed: {}", String::from_utf8_lossy(&built.stderr));
    let disk = std::fs::read(&disk_path).unwrap();
    let catalog = catalog_offering_both(&env, &server, rootfs_tarball(&env, "1"), &disk);
    let _cleanup = crate::common::DestroyOnDrop(&env);
    env.envy().env("ENVY_CATALOG", &catalog).arg("up").assert().success();
    assert_eq!(env.out(&["exec", "web", "--", "cat", "/etc/box-release"]), "build 1\n");
    let cmdline = env.out(&["exec", "db", "--", "cat", "/proc/cmdline"]);
    assert!(cmdline.starts_with("BOOT_IMAGE=/boot/vmlinuz-"), "GRUB booted the VM's kernel: {cmdline}");
    assert_eq!(env.out(&["exec", "db", "--", "hostname"]).trim(), "db");
    let lock = lock(&env);
    assert_eq!(lock["machine"]["db"]["sha256"].as_str(), Some(sha256_hex(&disk).as_str()));
}

/// The project's Envfile and Envfile.lock, as committed, in another host's project.
fn clone_project(from: &TestEnv) -> TestEnv {
    let to = TestEnv::new();
    for file in ["Envfile", "Envfile.lock"] {
        std::fs::copy(from.project.join(file), to.project.join(file)).unwrap();
    }
    to
}

/// A catalog box pinned in Envfile.lock but not stored on this host is fetched again
/// through the lock's URL, even when another build of that name is stored here, and
/// the lock stays as committed. When that "latest" URL serves another build by then,
/// its checksum list says so, and `up` fails before a byte of the new build arrives.
#[test]
fn a_pinned_catalog_box_comes_from_the_lock_and_a_moved_latest_url_fails_before_downloading() {
    require!(need::BUSYBOX, TARBALLS);
    let env = TestEnv::new();
    let server = Server::start();
    let first = rootfs_tarball(&env, "1");
    let second = rootfs_tarball(&env, "2");
    let catalog = latest_project(&env, &server, &first);
    env.envy().env("ENVY_CATALOG", &catalog).args(["box", "update"]).assert().success();
    let committed = lock_text(&env);
    assert!(committed.contains(&format!("upstream = \"sha512:{}\"", sha512_hex(&first))), "{committed}");
    let config = envy::config::Config { catalog: Some(catalog.display().to_string()), ..Default::default() };

    // Another host stored a newer build of `bb` while upstream served it; then the
    // committed lock arrives, and upstream serves the pinned build again.
    let other = clone_project(&env);
    serve_latest(&server, ROOTFS, &second, &sha512_hex(&second));
    other.envy().env("ENVY_CATALOG", &catalog).args(["box", "add", "bb"]).assert().success();
    serve_latest(&server, ROOTFS, &first, &sha512_hex(&first));
    let stored = crate::common::resolve_box(&other, config.clone(), "web", BoxFormat::Container).unwrap();
    assert_eq!(stored.digest, sha256_hex(&first), "the pinned build, not the newer one stored under its name");
    assert_eq!(lock_text(&other), committed, "the lock keeps its URL and upstream digest");
    let mut stored_here = vec![sha256_hex(&first), sha256_hex(&second)];
    stored_here.sort();
    assert_eq!(other.store_entries(), stored_here);

    // Upstream moves on: a host without the pinned build learns it from SHA512SUMS.
    serve_latest(&server, ROOTFS, &second, &sha512_hex(&second));
    let third = clone_project(&env);
    let downloads = server.requests_for(&format!("latest/{ROOTFS}")).len();
    let err = crate::common::resolve_box(&third, config, "web", BoxFormat::Container).unwrap_err();
    let message = format!("{err:#}");
    let url = server.url(&format!("latest/{ROOTFS}"));
    for part in [
        format!("machine web is pinned to box {} from {url}, which upstream no longer serves", sha256_hex(&first)),
        format!("its checksum list gives sha512:{}", sha512_hex(&second)),
        "run `envy box update web`".to_string(),
    ] {
        assert!(message.contains(&part), "{part:?} not in: {message}");
    }
    assert!(matches!(err.downcast_ref(), Some(envy::envfile::Error::Lock { .. })), "a lock error (exit 3): {message}");
    assert_eq!(server.requests_for(&format!("latest/{ROOTFS}")).len(), downloads, "nothing was downloaded");
    assert!(third.store_entries().is_empty() && third.download_entries().is_empty());
    assert_eq!(lock_text(&third), committed);
}

/// `box outdated` and `box update` read a source's index once per command, however
/// many machines name the box.
#[test]
fn outdated_and_update_read_each_upstream_index_once() {
    require!(need::BUSYBOX, TARBALLS);
    let env = TestEnv::new();
    let server = Server::start();
    let mut mirror = Mirror { server: &server, builds: Vec::new() };
    mirror.add("20250101_05:24", rootfs_tarball(&env, "1"));
    let catalog = write_catalog(&env, &format!("simplestreams = {:?}\nproduct = \"busybox/1\"", server.url("")));
    std::fs::write(env.project.join("Envfile"), "[defaults]\nbox = \"bb\"\nprovider = \"container\"\n\n[machine.web]\n\n[machine.api]\n").unwrap();
    let reads = || ["streams/v1/index.json", "streams/v1/images.json"].map(|p| server.requests_for(p).len());
    env.envy().env("ENVY_CATALOG", &catalog).args(["box", "outdated"]).assert().success().stdout(contains("unpinned"));
    assert_eq!(reads(), [1, 1], "outdated");
    env.envy().env("ENVY_CATALOG", &catalog).args(["box", "update"]).assert().success();
    assert_eq!(reads(), [2, 2], "update");
    assert_eq!(server.requests_for("images/busybox/1/amd64/default/20250101_05:24/rootfs.tar.xz").len(), 1);
    let lock = lock(&env);
    assert_eq!(lock["machine"]["web"]["sha256"], lock["machine"]["api"]["sha256"]);
}
