//! `envy box add` over HTTP against a real server on 127.0.0.1: pinned digests,
//! resume after a cut connection, retries, error statuses, catalogs, two at once.


use std::time::Duration;

use crate::common::{build_container_box, free_port, need, require, Fault, Server, TestEnv};
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
use sha2::{Digest, Sha512};

fn served_box(env: &TestEnv, server: &Server, name: &str) -> (String, String, Vec<u8>) {
    let (path, digest) = build_container_box(env, name);
    let bytes = std::fs::read(path).unwrap();
    let file = format!("{name}.box");
    server.serve(&file, bytes.clone());
    (file, digest, bytes)
}

#[test]
fn add_by_url_with_digest_stores_verified_box() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let server = Server::start();
    let (file, digest, _) = served_box(&env, &server, "web");
    env.envy()
        .args(["box", "add", &server.url(&file), "--sha256", &digest])
        .assert()
        .success()
        .stdout(contains(&digest));
    let dir = env.home.join("boxes").join(&digest);
    assert!(dir.join("box.toml").is_file());
    assert!(dir.join("rootfs/bin/busybox").is_file(), "rootfs unpacked at add time");
    assert!(env.download_entries().is_empty(), "no partial file left: {:?}", env.download_entries());

    // The `#sha256=` fragment pins as well; the box is already there, nothing is fetched.
    let before = server.requests_for(&file).len();
    env.envy().args(["box", "add", &format!("{}#sha256={digest}", server.url(&file))]).assert().success();
    assert_eq!(server.requests_for(&file).len(), before);
}

#[test]
fn wrong_digest_is_refused_and_nothing_is_stored() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let server = Server::start();
    let (file, digest, _) = served_box(&env, &server, "web");
    let wrong = "0".repeat(64);
    env.envy()
        .args(["box", "add", &server.url(&file), "--sha256", &wrong])
        .assert()
        .code(4)
        .stderr(contains(format!("expected {wrong}, got {digest}")));
    assert!(env.store_entries().is_empty(), "store: {:?}", env.store_entries());
    assert!(env.download_entries().is_empty(), "downloads: {:?}", env.download_entries());
}

#[test]
fn cut_download_resumes_with_range_and_verifies() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let server = Server::start();
    let (file, digest, bytes) = served_box(&env, &server, "web");
    let half = bytes.len() / 2;
    server.faults(&file, vec![Fault::Cut(half)]);
    env.envy().args(["box", "add", &server.url(&file), "--sha256", &digest]).assert().success();
    let requests = server.requests_for(&file);
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].range, None);
    assert_eq!(requests[1].range.as_deref(), Some(format!("bytes={half}-").as_str()));
    assert!(env.home.join("boxes").join(&digest).is_dir());
}

#[test]
fn server_ignoring_range_gets_a_fresh_download() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let server = Server::start();
    let (file, digest, bytes) = served_box(&env, &server, "web");
    server.faults(&file, vec![Fault::Cut(bytes.len() / 2), Fault::IgnoreRange]);
    env.envy().args(["box", "add", &server.url(&file), "--sha256", &digest]).assert().success();
    let requests = server.requests_for(&file);
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests[1].range.is_some(), "envy asked to resume");
    assert!(env.home.join("boxes").join(&digest).is_dir(), "the full 200 answer replaced the part");
}

#[test]
fn interrupted_download_resumes_in_the_next_run() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let server = Server::start();
    let (file, digest, bytes) = served_box(&env, &server, "web");
    let third = bytes.len() / 3;
    // First run: cut, then the server fails until envy gives up, keeping the part file.
    let mut faults = vec![Fault::Cut(third)];
    faults.extend(std::iter::repeat_n(Fault::Status(503), 4));
    server.faults(&file, faults);
    env.envy()
        .args(["box", "add", &server.url(&file), "--sha256", &digest])
        .assert()
        .code(4)
        .stderr(contains("HTTP 503"));
    assert_eq!(env.download_entries().len(), 1, "the partial file is kept for resuming");
    // Second run: the part is re-hashed and the rest fetched with a Range request.
    env.envy().args(["box", "add", &server.url(&file), "--sha256", &digest]).assert().success();
    let last = server.requests_for(&file).pop().unwrap();
    assert_eq!(last.range.as_deref(), Some(format!("bytes={third}-").as_str()));
    assert!(env.home.join("boxes").join(&digest).is_dir());
    assert!(env.download_entries().is_empty());
}

#[test]
fn server_errors_are_retried_then_reported() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let server = Server::start();
    let (file, digest, _) = served_box(&env, &server, "web");
    server.faults(&file, vec![Fault::Status(500), Fault::Status(500)]);
    env.envy().args(["box", "add", &server.url(&file), "--sha256", &digest]).assert().success();
    assert_eq!(server.requests_for(&file).len(), 3);

    let env = TestEnv::new();
    server.faults(&file, vec![Fault::Status(500); 10]);
    let url = server.url(&file);
    env.envy()
        .args(["box", "add", &url, "--sha256", &digest])
        .assert()
        .code(4)
        .stderr(contains(format!("{url} answered HTTP 500 (after 5 attempts)")));
    assert!(env.store_entries().is_empty());
}

#[test]
fn not_found_is_a_clear_error_without_retries() {
    let env = TestEnv::new();
    let server = Server::start();
    let url = server.url("missing.box");
    env.envy()
        .args(["box", "add", &url, "--sha256", &"a".repeat(64)])
        .assert()
        .code(4)
        .stderr(contains(format!("{url} answered HTTP 404; check the URL")));
    assert_eq!(server.requests_for("missing.box").len(), 1);
    assert!(env.store_entries().is_empty());
}

#[test]
fn unpinned_url_needs_insecure() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let server = Server::start();
    let (file, digest, _) = served_box(&env, &server, "web");
    env.envy()
        .args(["box", "add", &server.url(&file)])
        .assert()
        .code(4)
        .stderr(contains("has no digest to check").and(contains("--insecure")));
    assert!(server.requests_for(&file).is_empty(), "nothing fetched without a pin");
    env.envy()
        .args(["box", "add", &server.url(&file), "--insecure"])
        .assert()
        .success()
        .stdout(contains(&digest))
        .stderr(contains(format!("arrived with sha256 {digest}")));
}

#[test]
fn catalog_entry_pinned_by_upstream_checksum_lists() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let server = Server::start();
    let (file, digest, bytes) = served_box(&env, &server, "tiny");
    server.serve("SHA256SUMS", format!("{}  other.box\n{digest}  {file}\n", "b".repeat(64)).into_bytes());
    let sha512 = hex::encode(Sha512::digest(&bytes));
    server.serve("SHA512SUMS", format!("{sha512}  {file}\n").into_bytes());
    let catalog = env.path("catalog");
    std::fs::create_dir_all(&catalog).unwrap();
    std::fs::write(
        catalog.join("tiny.toml"),
        format!(
            "[[box]]\nname = \"tiny\"\n\n[[box.version]]\nversion = \"2\"\nurl = \"{}\"\nchecksums = \"{}\"\n\n\
             [[box.version]]\nversion = \"1\"\nurl = \"{}\"\nchecksums = \"{}\"\n",
            server.url(&file),
            server.url("SHA256SUMS"),
            server.url(&file),
            server.url("SHA512SUMS"),
        ),
    )
    .unwrap();
    env.envy()
        .args(["box", "add", "tiny", "--catalog"])
        .arg(&catalog)
        .assert()
        .success()
        .stdout(contains(format!("{digest}  tiny@1")));
    assert_eq!(server.requests_for("SHA256SUMS").len(), 1);
    // Verified from this catalog URL once: used again without fetching list or box.
    env.envy().args(["box", "add", "tiny@2", "--catalog"]).arg(&catalog).assert().success();
    assert_eq!(server.requests_for("SHA256SUMS").len(), 1);
    assert_eq!(server.requests_for(&file).len(), 1);

    // sha512 lists (Debian publishes only those) verify too; ENVY_CATALOG names a file.
    let env2 = TestEnv::new();
    env2.envy()
        .env("ENVY_CATALOG", catalog.join("tiny.toml"))
        .args(["box", "add", "tiny@1"])
        .assert()
        .success()
        .stdout(contains(&digest));
    assert_eq!(server.requests_for("SHA512SUMS").len(), 1);

    // A catalog served over HTTP; a wrong line in the list is refused.
    let env3 = TestEnv::new();
    server.serve("SHA256SUMS", format!("{}  {file}\n", "c".repeat(64)).into_bytes());
    server.serve("catalog.toml", std::fs::read(catalog.join("tiny.toml")).unwrap());
    env3.envy()
        .args(["box", "add", "tiny@2", "--catalog", &server.url("catalog.toml")])
        .assert()
        .code(4)
        .stderr(contains(format!("expected {}, got {digest}", "c".repeat(64))));
    assert!(env3.store_entries().is_empty());

    env3.envy()
        .args(["box", "add", "nosuch", "--catalog", &server.url("catalog.toml")])
        .assert()
        .code(4)
        .stderr(contains("has no box `nosuch`; it has: tiny"));

    // The config's catalog; a box added unpinned (--insecure) from the same URL is not
    // taken for the catalog's: the checksum list is fetched and the bytes verified.
    let env4 = TestEnv::new();
    std::fs::write(env4.home.join("config.toml"), format!("catalog = {:?}\n", catalog.join("tiny.toml")))
        .unwrap();
    env4.envy().args(["box", "add", &server.url(&file), "--insecure"]).assert().success();
    let lists = server.requests_for("SHA512SUMS").len();
    env4.envy().args(["box", "add", "tiny@1"]).assert().success().stdout(contains(&digest));
    assert_eq!(server.requests_for("SHA512SUMS").len(), lists + 1);
    // Now it is verified against the catalog's pin, and reused as such.
    env4.envy().args(["box", "add", "tiny@1"]).assert().success();
    assert_eq!(server.requests_for("SHA512SUMS").len(), lists + 1);
}

#[test]
fn two_adds_at_once_download_once() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let server = Server::start();
    let (file, digest, _) = served_box(&env, &server, "web");
    // A slow body keeps the first download going while the second process starts.
    server.throttle(&file, 256 << 10, Duration::from_millis(100));
    let url = server.url(&file);
    let children: Vec<_> = (0..2)
        .map(|_| {
            env.envy_std()
                .args(["box", "add", &url, "--sha256", &digest])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&digest));
    }
    let requests = server.requests_for(&file);
    assert_eq!(requests.len(), 1, "one download: {requests:?}");
    assert_eq!(env.store_entries(), vec![digest.clone()]);
    env.envy().args(["box", "verify"]).assert().success();
}

#[test]
fn downloads_go_through_the_configured_proxy() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let proxy = Server::start();
    let (path, digest) = build_container_box(&env, "web");
    // Nothing listens on the origin's port: only the proxy can answer.
    let url = "http://127.0.0.1:9/web.box";
    proxy.serve(url, std::fs::read(path).unwrap());
    std::fs::write(env.home.join("config.toml"), format!("proxy = \"{}\"\n", proxy.url(""))).unwrap();
    env.envy().args(["box", "add", url, "--sha256", &digest]).assert().success();
    assert_eq!(proxy.requests_for(url).len(), 1);
}

#[test]
fn connection_refused_is_retried_then_reported() {
    let env = TestEnv::new();
    // A port that was free a moment ago: nothing listens there.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/web.box");
    env.envy()
        .args(["box", "add", &url, "--sha256", &"a".repeat(64)])
        .assert()
        .code(4)
        .stderr(contains(format!("cannot download {url} after 5 attempts")));
    assert!(env.store_entries().is_empty());
}
