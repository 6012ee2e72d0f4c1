//! The store after boxes are in: corruption caught by `box verify` and before use,
//! listing as JSON, removing by name or digest prefix, pruning what no lock pins.


use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::common::{build_container_box, need, require, TestEnv};
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

/// Flips one byte in the middle of a file (in place: same inode and size).
fn flip_byte(path: &Path) {
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mid = f.metadata().unwrap().len() / 2;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(mid)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(mid)).unwrap();
    f.write_all(&[b[0] ^ 0xff]).unwrap();
}

fn added_box(env: &TestEnv, name: &str) -> String {
    let (path, digest) = build_container_box(env, name);
    env.envy().args(["box", "add"]).arg(path).assert().success();
    digest
}

#[test]
fn verify_reports_a_flipped_byte() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let digest = added_box(&env, "web");
    env.envy().args(["box", "verify"]).assert().success().stderr(contains("ok web@1"));
    let file = env.home.join("boxes").join(&digest).join("rootfs.tar");
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    flip_byte(&file);
    // Even with the timestamp put back (the stamp then matches), verify re-hashes.
    std::fs::File::options().write(true).open(&file).unwrap().set_modified(mtime).unwrap();
    env.envy()
        .args(["box", "verify", "web"])
        .assert()
        .code(4)
        .stderr(contains("box web@1").and(contains("is corrupt: rootfs.tar should have sha256")));
}

#[test]
fn a_flipped_byte_is_caught_before_use() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let (path, digest) = build_container_box(&env, "web");
    env.envy().args(["box", "add"]).arg(&path).assert().success();
    flip_byte(&env.home.join("boxes").join(&digest).join("rootfs.tar"));
    // `box add` of a stored box goes through Store::ensure -> get: the changed stamp
    // triggers a re-hash, which fails before the box could be used.
    env.envy().args(["box", "add"]).arg(&path).assert().code(4).stderr(
        contains(format!("stored box {digest} is corrupt: rootfs.tar"))
            .and(contains(format!("envy box remove {}", &digest[..12]))),
    );
    // A changed stamp with unchanged bytes is re-hashed, found good and trusted again.
    let env = TestEnv::new();
    let digest = added_box(&env, "web");
    let file = env.home.join("boxes").join(&digest).join("box.toml");
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
    env.envy().args(["box", "add"]).arg(env.path("web.box")).assert().success();
}

#[test]
fn list_json_remove_and_ambiguity() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let web = added_box(&env, "web");
    let db = added_box(&env, "db");
    let out = env.envy().args(["box", "list", "--json"]).assert().success().get_output().stdout.clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["version"], 1);
    let boxes = v["boxes"].as_array().unwrap();
    assert_eq!(boxes.len(), 2);
    let names: Vec<&str> = boxes.iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["db", "web"]);
    assert_eq!(boxes[1]["digest"], web.as_str());
    assert_eq!(boxes[1]["providers"], serde_json::json!(["container"]));
    assert!(boxes[1]["size"].as_u64().unwrap() > 1 << 20);

    env.envy()
        .args(["box", "remove", "nosuch"])
        .assert()
        .code(4)
        .stderr(contains("no box `nosuch` in the store"));
    env.envy().args(["box", "remove", &db[..10]]).assert().success().stderr(contains("removed db@1"));
    env.envy().args(["box", "remove", "web"]).assert().success();
    assert!(env.store_entries().is_empty(), "{:?}", env.store_entries());

    // Two versions under one name: the name alone is ambiguous, name@version is not.
    let (p1, _) = build_container_box(&env, "app");
    let rootfs = env.path("app-rootfs");
    std::fs::write(rootfs.join("etc/version"), "2").unwrap();
    let p2 = env.path("app2.box");
    env.envy()
        .args(["box", "build", "--rootfs"])
        .arg(&rootfs)
        .args(["--name", "app", "--version", "2", "--add", "-o"])
        .arg(&p2)
        .assert()
        .success();
    env.envy().args(["box", "add"]).arg(&p1).assert().success();
    env.envy()
        .args(["box", "remove", "app"])
        .assert()
        .code(4)
        .stderr(contains("`app` matches several boxes"));
    env.envy().args(["box", "remove", "app@2"]).assert().success();
    assert_eq!(env.store_entries().len(), 1);
}

#[test]
fn prune_keeps_what_a_lock_pins() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    let pinned = added_box(&env, "web");
    let loose = added_box(&env, "db");
    std::fs::write(
        env.project.join("Envfile.lock"),
        format!("version = 1\n\n[machine.web]\nsource = \"web\"\nsha256 = \"{pinned}\"\n"),
    )
    .unwrap();
    std::fs::write(env.home.join("projects.json"), serde_json::to_vec(&[&env.project]).unwrap()).unwrap();

    // What a killed `envy box add` / `box remove` leaves behind.
    let boxes = env.home.join("boxes");
    std::fs::create_dir_all(boxes.join(format!(".tmp-{loose}-x1y2/rootfs"))).unwrap();
    std::fs::create_dir_all(boxes.join(format!(".trash-{loose}-123/rootfs"))).unwrap();

    env.envy().args(["box", "prune", "--dry-run"]).assert().success().stderr(contains("would remove db@1"));
    assert_eq!(env.store_entries().len(), 4, "a dry run removes nothing, leftovers included");
    let out = env.envy().args(["box", "prune", "--json"]).assert().success().get_output().stdout.clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["removed"], serde_json::json!([loose]));
    assert_eq!(v["kept"], serde_json::json!([pinned.clone()]));
    assert_eq!(env.store_entries(), vec![pinned]);
}

#[test]
fn a_damaged_project_registry_stops_prune_and_deletes_nothing() {
    require!(need::BUSYBOX);
    let env = TestEnv::new();
    added_box(&env, "web");
    std::fs::write(env.home.join("projects.json"), b"[\"/some/project\", ").unwrap();
    let before = env.store_entries();
    let out = env.envy().args(["box", "prune"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("projects.json") && err.contains("is damaged"), "{err}");
    assert_eq!(env.store_entries(), before, "nothing was pruned");
}
