//! Boxes from OCI registries against a real registry (Debian's docker-registry on
//! 127.0.0.1) with images made by umoci and pushed by skopeo: layers and whiteouts,
//! platform choice, credentials, tampering, a moved tag, and every refusal leaving
//! nothing stored. Run as root (machines are runc containers).

use std::path::Path;

use crate::common::registry::{add_layer, busybox_image, LayerTar, Registry, REGISTRY, WITH_PASSWORDS, WITH_TOKENS};
use crate::common::{self, free_port, need, require, sha256_hex, DestroyOnDrop, Need, TestEnv};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Box directories in the store (temp and trash dirs would show here too).
fn stored(env: &TestEnv) -> Vec<String> {
    env.store_entries()
}

/// `envy box add REF` expected to fail with exit 4; returns stderr.
fn add_fails(env: &TestEnv, reference: &str) -> String {
    let out = env.envy().args(["box", "add", reference]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "box add {reference}: {}", stderr(&out));
    stderr(&out)
}

/// The digest (hex) the OCI layout's `tag` points at, and the parsed manifest.
fn layout_manifest(layout: &Path, tag: &str) -> (String, serde_json::Value) {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in {}", layout.display()));
    let hex = entry["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap().to_string();
    let manifest = serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&hex)).unwrap()).unwrap();
    (hex, manifest)
}

/// Writes a blob into the layout; returns its descriptor fields (digest, size).
fn write_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let hex = sha256_hex(bytes);
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

/// Points `tag` of the layout at a new manifest (or index) document.
fn retag(layout: &Path, tag: &str, media_type: &str, document: &serde_json::Value) {
    let (digest, size) = write_blob(layout, &serde_json::to_vec(document).unwrap());
    let path = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let list = index["manifests"].as_array_mut().unwrap();
    list.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag);
    list.push(serde_json::json!({
        "mediaType": media_type, "digest": digest, "size": size,
        "annotations": {"org.opencontainers.image.ref.name": tag}
    }));
    std::fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Rewrites the image config of `layout:tag` with `edit` (manifest updated to match).
fn edit_config(layout: &Path, tag: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let (_, mut manifest) = layout_manifest(layout, tag);
    let config_hex = manifest["config"]["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap().to_string();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(config_hex)).unwrap()).unwrap();
    edit(&mut config);
    let (digest, size) = write_blob(layout, &serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = digest.into();
    manifest["config"]["size"] = size.into();
    retag(layout, tag, "application/vnd.oci.image.manifest.v1+json", &manifest);
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[test]
fn upper_layers_delete_and_make_opaque_and_a_second_machine_unpacks_nothing() {
    require!(need::CONTAINERS, REGISTRY);
    let registry = Registry::start(None);
    let env = TestEnv::new();
    let layout = env.path("layout");
    busybox_image(&layout, "base", &[]);
    // Layer 2 adds files the top layer then hides.
    add_layer(
        &layout,
        "base",
        "mid",
        &LayerTar::new()
            .dir("var/www/")
            .file("var/www/old.html", b"old")
            .file("etc/keep", b"kept\n")
            .dir("etc/swap/")
            .file("etc/swap/inner", b"x")
            .symlink("etc/link", "/")
            .finish(),
    );
    // The top layer hides, empties, and replaces a directory by a file and a symlink
    // by a directory (written inside the tree, not where the symlink pointed).
    add_layer(
        &layout,
        "mid",
        "top",
        &LayerTar::new()
            .file("etc/.wh.box-release", b"")
            .dir("var/www/")
            .file("var/www/new.html", b"new")
            .file("var/www/.wh..wh..opq", b"")
            .file("etc/swap", b"now a file\n")
            .dir("etc/link/")
            .file("etc/link/envy-layer-test", b"inside\n")
            .finish(),
    );
    registry.push(&layout, "top", "team/app:1", &[]);
    let (manifest_hex, _) = layout_manifest(&layout, "top");

    let image = format!("oci://{}/team/app:1", registry.host());
    std::fs::write(
        env.project.join("Envfile"),
        format!("[machine.a]\nbox = \"{image}\"\n\n[machine.b]\nbox = \"{image}\"\n"),
    )
    .unwrap();
    let _destroy = DestroyOnDrop(&env);
    let out = env.envy().args(["up", "a"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out).matches("applying layer").count(), 3, "{}", stderr(&out));
    let script = "ls /var/www; cat /etc/keep; test -e /etc/box-release || echo gone; cat /etc/swap /etc/link/envy-layer-test; test -L /etc/link || echo real-dir";
    let listing = env.envy().args(["exec", "a", "--", "sh", "-c", script]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&listing.stdout), "new.html\nkept\ngone\nnow a file\ninside\nreal-dir\n", "{}", stderr(&listing));
    assert!(!Path::new("/envy-layer-test").exists(), "nothing was written through the old symlink");
    // No whiteout file is ever written.
    let box_dir = env.home.join("boxes").join(&manifest_hex);
    assert!(box_dir.join("rootfs/etc").is_dir());
    assert!(!box_dir.join("rootfs/etc/.wh.box-release").exists() && !box_dir.join("rootfs/var/www/.wh..wh..opq").exists());

    // The box is named by the manifest digest; the lock pins it.
    let lock = std::fs::read_to_string(env.project.join("Envfile.lock")).unwrap();
    assert!(lock.contains(&format!("sha256 = \"{manifest_hex}\"")), "{lock}");
    assert_eq!(stored(&env), vec![manifest_hex.clone()]);

    // A second machine from the same image unpacks nothing.
    let out = env.envy().args(["up", "b"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("applying layer") && !stderr(&out).contains("downloading"), "{}", stderr(&out));
    env.envy().args(["box", "verify"]).assert().success();
}

#[test]
fn an_index_gives_this_hosts_platform_or_names_the_platforms_it_has() {
    require!(need::CONTAINERS, REGISTRY);
    let registry = Registry::start(None);
    let env = TestEnv::new();
    let layout = env.path("layout");
    let mut entries = Vec::new();
    for arch in ["arm64", "amd64", "s390x"] {
        busybox_image(&layout, arch, &["--architecture", arch]);
        add_layer(&layout, arch, &format!("{arch}-marked"), &LayerTar::new().file("etc/arch", arch.as_bytes()).finish());
        let (hex, _) = layout_manifest(&layout, &format!("{arch}-marked"));
        let size = std::fs::metadata(layout.join("blobs/sha256").join(&hex)).unwrap().len();
        entries.push(serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": format!("sha256:{hex}"), "size": size,
            "platform": {"os": "linux", "architecture": arch}
        }));
    }
    let index = |list: Vec<serde_json::Value>| {
        serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": list})
    };
    retag(&layout, "multi", "application/vnd.oci.image.index.v1+json", &index(entries.clone()));
    // zstd layers on the way, so both compressions are read.
    registry.push(&layout, "multi", "team/multi:1", &["--all", "--dest-compress-format", "zstd"]);
    let get = |reference: &str, accept: &str| -> serde_json::Value {
        let url = format!("http://{}/v2/team/multi/manifests/{reference}", registry.host());
        reqwest::blocking::Client::new().get(url).header("Accept", accept).send().unwrap().bytes().map(|b| serde_json::from_slice(&b).unwrap()).unwrap()
    };
    let pushed_index = get("1", "application/vnd.oci.image.index.v1+json");
    let amd64 = pushed_index["manifests"].as_array().unwrap().iter().find(|m| m["platform"]["architecture"] == "amd64").unwrap();
    let pushed = get(amd64["digest"].as_str().unwrap(), OCI_MANIFEST);
    assert!(
        pushed["layers"].as_array().unwrap().iter().all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"),
        "skopeo pushed zstd layers: {pushed}"
    );
    let not_here = vec![entries[0].clone(), entries[2].clone()];
    retag(&layout, "foreign", "application/vnd.oci.image.index.v1+json", &index(not_here));
    registry.push(&layout, "foreign", "team/multi:foreign", &["--all"]);

    let err = add_fails(&env, &format!("oci://{}/team/multi:foreign", registry.host()));
    assert!(err.contains("has no image for linux/amd64; it has linux/arm64, linux/s390x"), "{err}");
    assert!(stored(&env).is_empty(), "{:?}", stored(&env));

    std::fs::write(env.project.join("Envfile"), format!("[machine.m]\nbox = \"oci://{}/team/multi:1\"\n", registry.host())).unwrap();
    let _destroy = DestroyOnDrop(&env);
    let out = env.envy().arg("up").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let arch = env.envy().args(["exec", "--", "cat", "/etc/arch"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&arch.stdout), "amd64");
    // The lock pins the picked manifest and the index it came from.
    let lock = std::fs::read_to_string(env.project.join("Envfile.lock")).unwrap();
    assert!(lock.contains("index = \"") && lock.contains("sha256 = \""), "{lock}");
}

#[test]
fn credentials_come_from_the_docker_config_and_a_401_says_which_were_tried() {
    require!(need::CONTAINERS, REGISTRY, WITH_PASSWORDS);
    let registry = Registry::start(Some("alice:s3cret-pw"));
    let env = TestEnv::new();
    let layout = env.path("layout");
    busybox_image(&layout, "base", &[]);
    registry.push(&layout, "base", "private/app:1", &[]);
    let image = format!("oci://{}/private/app:1", registry.host());
    let docker = env.path("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let config = docker.join("config.json");
    let write_auth = |creds: &str| {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(creds);
        std::fs::write(&config, format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.host())).unwrap();
        auth
    };
    let add = |expect: Option<i32>| {
        let out = env.envy().env("DOCKER_CONFIG", &docker).args(["box", "add", &image]).output().unwrap();
        assert_eq!(out.status.code(), expect, "{}", stderr(&out));
        stderr(&out)
    };

    std::fs::write(&config, r#"{"auths":{}}"#).unwrap();
    let err = add(Some(4));
    assert!(err.contains(&format!("tried no credentials (none for {} in {})", registry.host(), config.display())), "{err}");

    let auth = write_auth("alice:wrong-pw");
    let err = add(Some(4));
    assert!(err.contains("HTTP 401") && err.contains(&format!("the credentials for {} in {}", registry.host(), config.display())), "{err}");
    assert!(!err.contains("wrong-pw") && !err.contains(&auth), "credentials are never printed: {err}");
    assert!(stored(&env).is_empty());

    write_auth("alice:s3cret-pw");
    add(Some(0));
    assert_eq!(stored(&env).len(), 1);
}

#[test]
fn a_tampered_blob_or_a_wrong_diff_id_is_refused_and_nothing_is_stored() {
    require!(need::CONTAINERS, REGISTRY);
    let registry = Registry::start(None);
    let env = TestEnv::new();
    let layout = env.path("layout");
    busybox_image(&layout, "base", &[]);
    registry.push(&layout, "base", "team/app:1", &[]);
    let (_, manifest) = layout_manifest(&layout, "base");
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap().to_string();
    let blob = registry.blob_path(&layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();

    let err = add_fails(&env, &format!("oci://{}/team/app:1", registry.host()));
    assert!(err.contains(&format!("blob sha256:{layer}")) && err.contains("wrong sha256 digest"), "{err}");
    assert!(stored(&env).is_empty(), "{:?}", stored(&env));
    assert!(env.download_entries().is_empty(), "{:?}", env.download_entries());

    // The blob restored, a config whose diff_id does not match the layer's content.
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    edit_config(&layout, "base", |c| c["rootfs"]["diff_ids"][0] = format!("sha256:{}", "0".repeat(64)).into());
    registry.push(&layout, "base", "team/lying:1", &[]);
    let err = add_fails(&env, &format!("oci://{}/team/lying:1", registry.host()));
    assert!(err.contains("rootfs.diff_ids") && err.contains(&"0".repeat(64)), "{err}");
    assert!(stored(&env).is_empty(), "{:?}", stored(&env));
}

#[test]
fn a_tag_moved_after_pinning_is_the_lock_error() {
    require!(need::CONTAINERS, REGISTRY);
    let registry = Registry::start(None);
    let env = TestEnv::new();
    let layout = env.path("layout");
    busybox_image(&layout, "v1", &[]);
    add_layer(&layout, "v1", "v2", &LayerTar::new().file("etc/version", b"2").finish());
    registry.push(&layout, "v1", "team/app:stable", &[]);
    let (first, _) = layout_manifest(&layout, "v1");
    let (second, _) = layout_manifest(&layout, "v2");
    std::fs::write(env.project.join("Envfile"), format!("[machine.m]\nbox = \"oci://{}/team/app:stable\"\n", registry.host())).unwrap();
    let _destroy = DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();
    env.envy().args(["destroy", "--force"]).assert().success();
    env.envy().args(["box", "remove", &first]).assert().success();

    registry.push(&layout, "v2", "team/app:stable", &[]);
    let out = env.envy().arg("up").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("is pinned to box {first} but oci://{}/team/app:stable now gives {second}", registry.host())),
        "{err}"
    );
    assert!(err.contains("run `envy box update m`"), "{err}");
    assert!(stored(&env).is_empty(), "{:?}", stored(&env));

    // As it says: the update takes the tag's new manifest on purpose, and `up` runs it.
    env.envy().args(["box", "update", "m"]).assert().success().stdout(predicates::str::contains(format!("{first} -> {second}")));
    env.envy().arg("up").assert().success();
    assert_eq!(env.out(&["exec", "m", "--", "cat", "/etc/version"]), "2");
}

#[test]
fn unknown_media_types_missing_tags_and_a_registry_that_is_down() {
    require!(need::CONTAINERS, REGISTRY);
    let registry = Registry::start(None);
    let env = TestEnv::new();
    let layout = env.path("layout");
    busybox_image(&layout, "base", &[]);
    registry.push(&layout, "base", "team/app:1", &[]);
    // The same blobs, the layer declared as something envy cannot apply.
    let (_, mut manifest) = layout_manifest(&layout, "base");
    manifest["layers"][0]["mediaType"] = "application/vnd.example.unknown".into();
    let put = reqwest::blocking::Client::new()
        .put(format!("http://{}/v2/team/app/manifests/odd", registry.host()))
        .header("Content-Type", OCI_MANIFEST)
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .unwrap();
    assert!(put.status().is_success(), "registry took the manifest: {}", put.status());
    let err = add_fails(&env, &format!("oci://{}/team/app:odd", registry.host()));
    assert!(err.contains("media type `application/vnd.example.unknown`"), "{err}");

    let err = add_fails(&env, &format!("oci://{}/team/app:nope", registry.host()));
    assert!(err.contains("manifest `nope` was not found in the registry (HTTP 404)"), "{err}");

    let port = free_port();
    let err = add_fails(&env, &format!("oci://127.0.0.1:{port}/team/app:1"));
    assert!(err.contains(&format!("registry 127.0.0.1:{port} does not answer")), "{err}");
    assert!(stored(&env).is_empty(), "{:?}", stored(&env));
}

#[test]
fn hostile_layer_paths_are_refused_and_nothing_is_stored() {
    require!(need::CONTAINERS, REGISTRY);
    let registry = Registry::start(None);
    let env = TestEnv::new();
    let layout = env.path("layout");
    busybox_image(&layout, "base", &[]);
    let outside = env.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    add_layer(&layout, "base", "dotdot", &LayerTar::new().raw_file("../escape", b"x").finish());
    add_layer(&layout, "base", "link", &LayerTar::new().symlink("evil", &outside.display().to_string()).finish());
    add_layer(&layout, "link", "through", &LayerTar::new().file("evil/pwned", b"x").finish());
    add_layer(&layout, "link", "whiteout", &LayerTar::new().file("evil/.wh.victim", b"").finish());
    std::fs::write(outside.join("victim"), "keep me").unwrap();
    for (tag, reason) in [
        ("dotdot", "entry `../escape` has a `..` component"),
        ("through", "entry `evil/pwned` would be written through symlink `evil`"),
        ("whiteout", "entry `evil/.wh.victim` is a whiteout under symlink `evil`"),
    ] {
        registry.push(&layout, tag, &format!("team/bad:{tag}"), &[]);
        let err = add_fails(&env, &format!("oci://{}/team/bad:{tag}", registry.host()));
        assert!(err.contains(reason) && err.contains("nothing was stored"), "{tag}: {err}");
        assert!(stored(&env).is_empty(), "{tag}: {:?}", stored(&env));
    }
    assert!(!outside.join("pwned").exists() && !env.path("escape").exists());
    assert_eq!(std::fs::read_to_string(outside.join("victim")).unwrap(), "keep me");
}

#[test]
fn the_image_config_gives_env_workdir_and_user_and_the_envfile_env_wins() {
    require!(need::CONTAINERS, REGISTRY);
    let registry = Registry::start(None);
    let env = TestEnv::new();
    let layout = env.path("layout");
    busybox_image(
        &layout,
        "base",
        &["--config.env", "FROM_IMAGE=yes", "--config.env", "BOTH=image", "--config.workingdir", "/srv/app", "--config.user", "nobody", "--config.cmd", "false"],
    );
    registry.push(&layout, "base", "team/app:1", &[]);
    std::fs::write(
        env.project.join("Envfile"),
        format!("[machine.m]\nbox = \"oci://{}/team/app:1\"\nenv = {{ BOTH = \"envfile\" }}\nprovision = [\"id -u > /tmp/provisioned-as\"]\n", registry.host()),
    )
    .unwrap();
    let _destroy = DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();
    let out = env.envy().args(["exec", "--", "sh", "-c", "echo $FROM_IMAGE $BOTH $HOME $(pwd) $(id -u):$(id -g)"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "yes envfile / /srv/app 65534:65534\n", "{}", stderr(&out));
    let out = env.envy().args(["exec", "--workdir", "/tmp", "--", "cat", "provisioned-as"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n", "provisioning runs as root, in any directory asked for: {}", stderr(&out));
}

#[test]
fn a_pushed_machine_reaches_a_teammate_who_downloads_only_its_delta() {
    require!(need::CONTAINERS, REGISTRY);
    let registry = Registry::start(None);
    let me = TestEnv::new();
    let layout = me.path("layout");
    busybox_image(&layout, "plain", &["--config.env", "FROM_IMAGE=yes"]);
    add_layer(&layout, "plain", "base", &LayerTar::new().dir("var/www/").file("var/www/old.html", b"old").finish());
    registry.push(&layout, "base", "team/base:1", &[]);
    let (_, base_manifest) = layout_manifest(&layout, "base");
    let base_layers: Vec<String> = base_manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap()["sha256:".len()..][..12].to_string())
        .collect();

    std::fs::write(me.project.join("Envfile"), format!("[machine.web]\nbox = \"oci://{}/team/base:1\"\n", registry.host())).unwrap();
    let _mine = DestroyOnDrop(&me);
    me.envy().arg("up").assert().success();
    me.envy()
        .args(["exec", "--", "sh", "-c", "echo made-by-me > /root/state.txt; rm /etc/box-release; rm -r /var/www; mkdir /var/www; echo fresh > /var/www/new.html"])
        .assert()
        .success();
    let out = me.envy().args(["share", "--push", &format!("oci://{}/team/app:dev", registry.host())]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = stdout.lines().find(|l| l.starts_with("box = ")).unwrap_or_else(|| panic!("no Envfile line in {stdout}"));
    let digest = stdout.split_whitespace().next().unwrap().strip_prefix("sha256:").unwrap().to_string();
    assert!(line.contains(&format!("/team/app:dev@sha256:{digest}\"")), "{line}");

    // The teammate has the base already; only the line is passed on.
    let mate = TestEnv::new();
    mate.envy().args(["box", "add", &format!("oci://{}/team/base:1", registry.host())]).assert().success();
    std::fs::write(mate.project.join("Envfile"), format!("[machine.copy]\n{line}\n")).unwrap();
    let _theirs = DestroyOnDrop(&mate);
    let out = mate.envy().arg("up").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    let downloads: Vec<&str> = log.lines().filter(|l| l.contains("downloading") && l.ends_with(": 0%")).collect();
    for base in &base_layers {
        assert!(!downloads.iter().any(|l| l.contains(base.as_str())), "base layer {base} was downloaded again:\n{log}");
    }
    // The config and the delta layer, nothing else.
    assert_eq!(downloads.len(), 2, "{log}");
    let state = mate
        .envy()
        .args(["exec", "--", "sh", "-c", "cat /root/state.txt; ls /var/www; test -e /etc/box-release || echo gone; echo $FROM_IMAGE"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&state.stdout), "made-by-me\nnew.html\ngone\nyes\n", "{}", stderr(&state));
    let lock = std::fs::read_to_string(mate.project.join("Envfile.lock")).unwrap();
    assert!(lock.contains(&format!("sha256 = \"{digest}\"")), "{lock}");
}

#[test]
fn a_machine_from_a_box_file_is_pushed_as_its_tree_plus_its_changes() {
    require!(need::CONTAINERS, REGISTRY);
    let registry = Registry::start(None);
    let me = TestEnv::new();
    let (box_path, _) = common::build_container_box(&me, "busybox");
    std::fs::write(me.project.join("Envfile"), format!("[machine.web]\nbox = {{ path = \"{}\" }}\n", box_path.display())).unwrap();
    let _mine = DestroyOnDrop(&me);
    me.envy().arg("up").assert().success();
    me.envy().args(["exec", "--", "sh", "-c", "echo from-a-box-file > /root/state.txt"]).assert().success();
    me.envy().args(["halt"]).assert().success();
    let out = me.envy().args(["--json", "share", "--push", &format!("oci://{}/team/frombox:1", registry.host())]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let pushed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let image = pushed["image"].as_str().unwrap();
    assert!(image.ends_with(pushed["digest"].as_str().unwrap()), "{pushed}");

    let mate = TestEnv::new();
    std::fs::write(mate.project.join("Envfile"), format!("[machine.copy]\nbox = \"{image}\"\n")).unwrap();
    let _theirs = DestroyOnDrop(&mate);
    let out = mate.envy().arg("up").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out).matches("applying layer").count(), 2, "the box's tree, then the machine's changes: {}", stderr(&out));
    let state = mate.envy().args(["exec", "--", "cat", "/root/state.txt", "/etc/box-release"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&state.stdout), "from-a-box-file\nbusybox test box\n", "{}", stderr(&state));
}

#[test]
fn a_container_disk_boots_by_firmware_and_a_halted_vm_is_pushed_as_one() {
    require!(need::CONTAINERS, REGISTRY, need::VMS, [Need::Tool("sfdisk", "fdisk"), Need::Tool("grub-mkimage", "grub-common")]);
    let registry = Registry::start(None);
    let env = TestEnv::new();
    common::tiny_vm_box(&env);
    // KubeVirt's layout: one disk image under /disk/, owned by qemu's uid 107.
    let tree = env.path("containerdisk");
    std::fs::create_dir_all(tree.join("disk")).unwrap();
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("boxes/recipes/tiny-vm-bios.sh");
    let built = std::process::Command::new(&recipe).arg(tree.join("disk/vm.qcow2")).output().unwrap();
    assert!(built.status.success(), "tiny-vm-bios.sh failed: {}", String::from_utf8_lossy(&built.stderr));
    let tar = env.path("disk-layer.tar");
    let packed = std::process::Command::new("tar")
        .args(["--owner=107", "--group=107", "-C"])
        .arg(&tree)
        .arg("-cf")
        .arg(&tar)
        .arg("disk")
        .output()
        .unwrap();
    assert!(packed.status.success(), "{}", String::from_utf8_lossy(&packed.stderr));
    let layout = env.path("layout");
    common::registry::umoci(&["init", "--layout", &layout.display().to_string()]);
    common::registry::umoci(&["new", "--image", &format!("{}:empty", layout.display())]);
    common::registry::add_layer_tar(&layout, "empty", "disk", &tar);
    registry.push(&layout, "disk", "vm/tiny:1", &[]);

    std::fs::write(
        env.project.join("Envfile"),
        format!("[machine.vm]\nbox = \"oci://{}/vm/tiny:1\"\nprovider = \"qemu\"\nmemory = \"256MiB\"\ncpus = 1\n", registry.host()),
    )
    .unwrap();
    let _destroy = DestroyOnDrop(&env);
    let out = env.envy().arg("up").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("is a containerDisk"), "{}", stderr(&out));
    let cmdline = env.envy().args(["exec", "--", "cat", "/proc/cmdline"]).output().unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline.stdout);
    assert!(cmdline.starts_with("BOOT_IMAGE=/boot/vmlinuz-"), "GRUB on the disk booted it: {cmdline}");
    let hostname = env.envy().args(["exec", "--", "hostname"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&hostname.stdout).trim(), "vm");

    // The halted VM pushed back as a containerDisk, and booted by a teammate.
    env.envy().args(["exec", "--", "sh", "-c", "echo vm-state > /root/note; sync"]).assert().success();
    let out = env.envy().args(["share", "--push", &format!("oci://{}/vm/shared:1", registry.host())]).output().unwrap();
    assert_eq!(out.status.code(), Some(7), "a running VM is not pushed (the machine is in the wrong state: 7): {}", stderr(&out));
    assert!(stderr(&out).contains("run `envy halt vm` first"), "{}", stderr(&out));
    env.envy().arg("halt").assert().success();
    let out = env.envy().args(["share", "--push", &format!("oci://{}/vm/shared:1", registry.host())]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = stdout.lines().find(|l| l.starts_with("box = ")).unwrap_or_else(|| panic!("no Envfile line in {stdout}"));
    env.envy().args(["destroy", "--force"]).assert().success();
    let mate = TestEnv::new();
    std::fs::write(mate.project.join("Envfile"), format!("[machine.copy]\n{line}\nprovider = \"qemu\"\nmemory = \"256MiB\"\ncpus = 1\n")).unwrap();
    let _theirs = DestroyOnDrop(&mate);
    let out = mate.envy().arg("up").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let note = mate.envy().args(["exec", "--", "cat", "/root/note"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&note.stdout), "vm-state\n", "{}", stderr(&note));
    mate.envy().args(["destroy", "--force"]).assert().success();

    // The same image for a container is refused by provider, naming what it serves.
    std::fs::write(env.project.join("Envfile"), format!("[machine.c]\nbox = \"oci://{}/vm/tiny:1\"\n", registry.host())).unwrap();
    let out = env.envy().arg("up").output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("is made for qemu, not for the container provider"), "{}", stderr(&out));
}

#[test]
fn a_bearer_challenge_gets_a_token_anonymously_or_with_the_docker_config_credentials() {
    require!(need::CONTAINERS, REGISTRY, WITH_TOKENS);
    let registry = Registry::start_with_tokens();
    let env = TestEnv::new();
    let layout = env.path("layout");
    busybox_image(&layout, "base", &[]);
    registry.push(&layout, "base", "team/app:1", &[]);
    let tokens = registry.tokens.as_ref().unwrap();
    let image = format!("oci://{}/team/app:1", registry.host());
    let docker = env.path("docker");
    std::fs::create_dir_all(&docker).unwrap();

    std::fs::write(docker.join("config.json"), r#"{"auths":{}}"#).unwrap();
    tokens.seen.lock().unwrap().clear();
    env.envy().env("DOCKER_CONFIG", &docker).args(["box", "add", &image]).assert().success();
    let seen = tokens.seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|(line, auth)| line.contains("scope=repository%3Ateam%2Fapp%3Apull") && line.contains("service=envy-test") && auth.is_empty()),
        "an anonymous token for pulling team/app was asked for: {seen:?}"
    );

    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("bob:tok3n-pw");
    std::fs::write(docker.join("config.json"), format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.host())).unwrap();
    let other = TestEnv::new();
    tokens.seen.lock().unwrap().clear();
    other.envy().env("DOCKER_CONFIG", &docker).args(["box", "add", &image]).assert().success();
    let seen = tokens.seen.lock().unwrap().clone();
    assert!(seen.iter().any(|(_, a)| *a == format!("Basic {auth}")), "the credentials went to the token service: {seen:?}");
    assert_eq!(other.store_entries(), env.store_entries(), "the same image, the same box");
}
