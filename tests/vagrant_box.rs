//! Vagrant boxes of the libvirt format given to `envy box add` as a file or URL: told
//! from a rootfs tarball by their metadata.json, stored as qemu boxes that boot by
//! firmware, their Vagrantfile ignored (and said so); other providers and disks that
//! are not qcow2 are refused with nothing stored.

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use crate::common::{need, require, sha256_hex, DestroyOnDrop, Need, Server, TestEnv};
use predicates::str::contains;

/// A box's files in tar order: a name and its text, or None for a qcow2.
type Files<'a> = Vec<(&'a str, Option<&'a str>)>;

const TOOLS: &[Need] = &[Need::Tool("qemu-img", "qemu-utils"), Need::Tool("tar", "tar"), Need::Tool("gzip", "gzip")];

/// A small qcow2 made by `qemu-img create`.
fn qcow2(path: &Path) {
    let status = StdCommand::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(path).arg("64M").status().unwrap();
    assert!(status.success(), "qemu-img create {}", path.display());
}

/// `NAME.box`: a gzip'd tar of `files` (written into a folder of their own first), in
/// the order given, as Vagrant's packers write them.
fn vagrant_box(env: &TestEnv, name: &str, files: &[(&str, Option<&str>)]) -> PathBuf {
    let dir = env.path(&format!("{name}-content"));
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in files {
        match text {
            Some(text) => std::fs::write(dir.join(file), text).unwrap(),
            None => qcow2(&dir.join(file)),
        }
    }
    pack_vagrant_box(env, name, &dir, &files.iter().map(|(f, _)| *f).collect::<Vec<_>>())
}

/// `NAME.box`: a gzip'd tar of `names` in `dir`, in that order.
fn pack_vagrant_box(env: &TestEnv, name: &str, dir: &Path, names: &[&str]) -> PathBuf {
    let out = env.path(&format!("{name}.box"));
    let status = StdCommand::new("tar").arg("-czf").arg(&out).arg("-C").arg(dir).args(names).status().unwrap();
    assert!(status.success());
    out
}

const METADATA_V1: &str = r#"{"provider": "libvirt", "format": "qcow2", "virtual_size": 1}"#;
const VAGRANTFILE: &str = "Vagrant.configure(\"2\") do |config|\n  config.vm.provider :libvirt do |l|\n    l.driver = \"kvm\"\n  end\nend\n";

#[test]
fn a_libvirt_vagrant_box_is_stored_as_a_firmware_booted_qemu_box() {
    require!(TOOLS);
    let env = TestEnv::new();
    let file = vagrant_box(&env, "lv", &[("metadata.json", Some(METADATA_V1)), ("Vagrantfile", Some(VAGRANTFILE)), ("box.img", None)]);
    let disk_sha = sha256_hex(&std::fs::read(env.path("lv-content/box.img")).unwrap());
    let out = env.envy().args(["box", "add", "--json"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("its Vagrantfile is ignored"), "{}", String::from_utf8_lossy(&out.stderr));
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(added["providers"], serde_json::json!(["qemu"]), "{added}");
    let digest = sha256_hex(&std::fs::read(&file).unwrap());
    assert_eq!(added["digest"], digest.as_str());
    let dir = env.home.join("boxes").join(&digest);
    let manifest: toml::Value = toml::from_str(&std::fs::read_to_string(dir.join("box.toml")).unwrap()).unwrap();
    assert_eq!(manifest["qemu"]["boot"].as_str(), Some("firmware"), "{manifest}");
    assert_eq!(manifest["qemu"]["disk"].as_str(), Some("disk.qcow2"));
    assert_eq!(sha256_hex(&std::fs::read(dir.join("disk.qcow2")).unwrap()), disk_sha, "the box's disk, as it was");
    assert!(!dir.join("rootfs").exists() && !dir.join("Vagrantfile").exists(), "not misread as a rootfs");

    // Format v2 names its disk in `disks`; metadata.json may come after it. Over HTTP too.
    let v2 = vagrant_box(
        &env,
        "v2",
        &[("box_1.img", None), ("metadata.json", Some(r#"{"provider":"libvirt","format":"qcow2","disks":[{"path":"box_1.img"}]}"#))],
    );
    let server = Server::start();
    server.serve("v2.box", std::fs::read(&v2).unwrap());
    let v2_digest = sha256_hex(&std::fs::read(&v2).unwrap());
    env.envy()
        .args(["box", "add", &format!("{}#sha256={v2_digest}", server.url("v2.box"))])
        .assert()
        .success()
        .stdout(contains(&v2_digest));
    assert!(env.home.join("boxes").join(&v2_digest).join("disk.qcow2").is_file());

    // The disk first and metadata.json last, after a Vagrantfile and an info.json: the
    // first entry tells a Vagrant box, and the one pass over it finds metadata.json.
    let late = vagrant_box(
        &env,
        "late",
        &[("box.img", None), ("Vagrantfile", Some(VAGRANTFILE)), ("info.json", Some("{}")), ("metadata.json", Some(METADATA_V1))],
    );
    let late_digest = sha256_hex(&std::fs::read(&late).unwrap());
    let out = env.envy().args(["box", "add", "--json"]).arg(&late).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(added["providers"], serde_json::json!(["qemu"]), "{added}");
    let files = crate::common::list_dir(&env.home.join("boxes").join(&late_digest));
    assert_eq!(files, ["box.toml", "disk.qcow2", "record.json"], "the disk alone is written");
}

#[test]
fn vagrant_boxes_envy_cannot_run_are_refused_with_nothing_stored() {
    require!(TOOLS);
    let env = TestEnv::new();
    let cases: [(&str, Files, &str); 6] = [
        (
            "vbox",
            vec![("metadata.json", Some(r#"{"provider": "virtualbox"}"#)), ("box.ovf", Some("<ovf/>"))],
            "a Vagrant box for the virtualbox provider",
        ),
        ("stray", vec![("metadata.json", Some(METADATA_V1)), ("setup.sh", Some("echo hi"))], "entry `setup.sh` is not part of a libvirt Vagrant box"),
        ("raw", vec![("metadata.json", Some(METADATA_V1)), ("box.img", Some("not a disk"))], "box.img is not a qcow2 image"),
        ("nodisk", vec![("metadata.json", Some(METADATA_V1)), ("Vagrantfile", Some(VAGRANTFILE))], "names the disk box.img"),
        (
            "twodisks",
            vec![("box.img", None), ("extra.img", None), ("metadata.json", Some(METADATA_V1))],
            "entry `extra.img` is a second disk image beside box.img",
        ),
        (
            "otherdisk",
            vec![("metadata.json", Some(r#"{"provider":"libvirt","disks":[{"path":"box_1.img"}]}"#)), ("box.img", None)],
            "entry `box.img` is not the disk box_1.img that its metadata.json names",
        ),
    ];
    for (name, files, message) in cases {
        let file = vagrant_box(&env, name, &files);
        env.envy().args(["box", "add"]).arg(&file).assert().code(4).stderr(contains(message));
        assert!(env.store_entries().is_empty(), "{name}: {:?}", env.store_entries());
        assert!(env.download_entries().is_empty(), "{name}: {:?}", env.download_entries());
    }
}

/// A Vagrant Cloud API v2 box description: each version with a virtualbox file and a
/// libvirt file served by `server`, the libvirt one with `(checksum_type, checksum)`.
fn api_box(server: &Server, versions: &[(&str, &str, &str, &str)]) -> String {
    let versions: Vec<serde_json::Value> = versions
        .iter()
        .map(|(version, file, kind, checksum)| {
            serde_json::json!({
                "version": version,
                "status": "active",
                "providers": [
                    { "name": "virtualbox", "download_url": server.url("vbox.box"), "checksum": "00", "checksum_type": "md5", "architecture": "amd64" },
                    { "name": "libvirt", "download_url": server.url(file), "checksum": checksum, "checksum_type": kind, "architecture": "amd64", "default_architecture": true },
                ],
            })
        })
        .collect();
    serde_json::json!({ "tag": "team/lv", "username": "team", "name": "lv", "versions": versions }).to_string()
}

#[test]
fn vagrant_cloud_boxes_resolve_through_the_api_and_are_checked_by_its_checksum() {
    require!(TOOLS);
    let env = TestEnv::new();
    let server = Server::start();
    std::fs::write(env.home.join("config.toml"), format!("vagrant_api = {:?}\n", server.url("api/v2"))).unwrap();
    let metadata = [("metadata.json", Some(METADATA_V1)), ("Vagrantfile", Some(VAGRANTFILE)), ("box.img", None)];
    let old = std::fs::read(vagrant_box(&env, "old", &metadata)).unwrap();
    let new = std::fs::read(vagrant_box(&env, "new", &metadata)).unwrap();
    server.serve("old.box", old.clone());
    server.serve("new.box", new.clone());
    let sha1 = hex::encode(<sha1::Sha1 as sha2::Digest>::digest(&new));
    let sha512 = hex::encode(<sha2::Sha512 as sha2::Digest>::digest(&old));
    let two = api_box(&server, &[("1.9.0", "old.box", "sha512", &sha512), ("1.10.0", "new.box", "SHA1", &sha1)]);
    server.serve("api/v2/box/team/lv", two.into_bytes());

    // The newest version (1.10.0 after 1.9.0), its libvirt file, checked by sha1.
    let out = env.envy().args(["box", "add", "vagrant://team/lv", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((added["name"].as_str(), added["box_version"].as_str()), (Some("team-lv"), Some("1.10.0")), "{added}");
    assert_eq!(added["digest"], sha256_hex(&new).as_str());
    assert_eq!(added["providers"], serde_json::json!(["qemu"]));
    env.envy().args(["box", "add", "vagrant://team/lv@1.9.0"]).assert().success().stdout(contains(sha256_hex(&old)));
    assert!(server.requests_for("vbox.box").is_empty(), "the virtualbox file is never fetched");

    // An Envfile names it: update pins it (envy's sha256, upstream's sha1), outdated follows.
    std::fs::write(env.project.join("Envfile"), "[machine.vm]\nbox = \"vagrant://team/lv\"\nprovider = \"qemu\"\n").unwrap();
    env.envy().args(["box", "update"]).assert().success().stdout(contains("pinned to"));
    let lock: toml::Value = toml::from_str(&std::fs::read_to_string(env.project.join("Envfile.lock")).unwrap()).unwrap();
    assert_eq!(lock["machine"]["vm"]["sha256"].as_str(), Some(sha256_hex(&new).as_str()));
    assert_eq!(lock["machine"]["vm"]["upstream"].as_str(), Some(format!("sha1:{sha1}").as_str()));
    let outdated = |env: &TestEnv| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&env.out(&["box", "outdated", "--json"])).unwrap()["machines"][0].clone()
    };
    assert_eq!(outdated(&env)["status"], "current");

    // A newer version whose checksum does not match: outdated shows it, update refuses it.
    let three = api_box(
        &server,
        &[("1.9.0", "old.box", "sha512", &sha512), ("1.10.0", "new.box", "sha1", &sha1), ("1.11.0", "old.box", "md5", &"0".repeat(32))],
    );
    server.serve("api/v2/box/team/lv", three.into_bytes());
    let row = outdated(&env);
    assert_eq!((row["status"].as_str(), row["newest"]["version"].as_str()), (Some("outdated"), Some("1.11.0")), "{row}");
    let before = env.store_entries();
    env.envy().args(["box", "update"]).assert().code(4).stderr(contains("wrong md5 digest"));
    assert_eq!(env.store_entries(), before, "nothing was stored");
    assert!(env.download_entries().is_empty());

    // No libvirt file for a version, or no such box: the error says what was asked.
    env.envy()
        .args(["box", "add", "vagrant://team/lv@0.1"])
        .assert()
        .code(4)
        .stderr(contains("has no libvirt file for amd64 at version 0.1; it offers: 1.9.0 virtualbox (amd64)"))
        .stderr(contains(server.url("api/v2/box/team/lv")));
    env.envy().args(["box", "add", "vagrant://team/nosuch"]).assert().code(4).stderr(contains("HTTP 404"));
    env.envy().args(["box", "add", "vagrant://no-box-name"]).assert().code(4).stderr(contains("vagrant://USER/BOX"));
}

/// The tiny VM made a Vagrant box: its firmware-booted disk (boxes/recipes/tiny-vm-bios.sh)
/// from a rootfs that reads no seed and has what Vagrant's boxes have: a `vagrant` user
/// that Vagrant's insecure key logs in as, and sudo. busybox has no sudo, so `vagrant`
/// is a second name for root and `sudo` runs its command: envy's side of the contract
/// (the login, `sudo -n`, the keys) is what this box tests.
/// `sudo` is the script the box's `/usr/bin/sudo` holds.
fn tiny_vagrant_box(env: &TestEnv, sudo: &str) -> PathBuf {
    let rootfs = crate::common::tiny_vm_rootfs_copy(env, "vagrant-rootfs");
    let edit = |path: &str, change: &dyn Fn(String) -> String| {
        let text = std::fs::read_to_string(rootfs.join(path)).unwrap_or_default();
        std::fs::write(rootfs.join(path), change(text)).unwrap();
    };
    // No agent: the network comes up as the box's own config says.
    edit("etc/inittab", &|t| t.replace("::sysinit:/usr/lib/envy/envy-agent\n", ""));
    std::fs::remove_dir_all(rootfs.join("usr/lib/envy")).unwrap();
    edit("etc/init.d/rcS", &|t| t + "ip link set lo up\nip link set eth0 up\nip addr add 10.0.2.15/24 dev eth0\nip route add default via 10.0.2.2\n");
    edit("etc/passwd", &|t| t + "vagrant:*:0:0:vagrant:/home/vagrant:/bin/sh\n");
    let insecure = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/provider/qemu/vagrant-insecure-ed25519.key");
    let key = env.path("insecure-key");
    std::fs::copy(&insecure, &key).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let public = StdCommand::new("ssh-keygen").arg("-y").arg("-f").arg(&key).output().unwrap();
    assert!(public.status.success());
    std::fs::create_dir_all(rootfs.join("home/vagrant/.ssh")).unwrap();
    std::fs::write(rootfs.join("home/vagrant/.ssh/authorized_keys"), &public.stdout).unwrap();
    std::fs::write(rootfs.join("usr/bin/sudo"), sudo).unwrap();
    std::fs::set_permissions(rootfs.join("usr/bin/sudo"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let content = env.path("tiny-vagrant-content");
    std::fs::create_dir_all(&content).unwrap();
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("boxes/recipes/tiny-vm-bios.sh");
    let built = StdCommand::new(&recipe).arg(content.join("box.img")).arg(&rootfs).output().unwrap();
    assert!(built.status.success(), "tiny-vm-bios.sh failed: {}", String::from_utf8_lossy(&built.stderr));
    std::fs::write(content.join("metadata.json"), METADATA_V1).unwrap();
    std::fs::write(content.join("Vagrantfile"), VAGRANTFILE).unwrap();
    pack_vagrant_box(env, "tiny-vagrant", &content, &["metadata.json", "Vagrantfile", "box.img"])
}

/// A passwordless sudo, as Vagrant boxes have: `-n` taken, the command run.
const SUDO: &str = "#!/bin/sh\n[ \"$1\" = -n ] && shift\nexec \"$@\"\n";

#[test]
fn a_vagrant_box_boots_and_envy_replaces_the_insecure_key_with_the_machines_own() {
    require!(need::VMS, TOOLS, [Need::Tool("sfdisk", "fdisk"), Need::Tool("grub-mkimage", "grub-common"), Need::Tool("ssh-keygen", "openssh-client")]);
    let env = TestEnv::new();
    let server = Server::start();
    let bootable = std::fs::read(tiny_vagrant_box(&env, SUDO)).unwrap();
    server.serve("tiny.box", bootable.clone());
    let other = vagrant_box(&env, "other", &[("metadata.json", Some(METADATA_V1)), ("Vagrantfile", Some(VAGRANTFILE)), ("box.img", None)]);
    server.serve("other.box", std::fs::read(&other).unwrap());
    let sha256 = sha256_hex(&bootable);
    let sha512 = hex::encode(<sha2::Sha512 as sha2::Digest>::digest(std::fs::read(&other).unwrap()));
    server.serve(
        "api/v2/box/team/tiny",
        api_box(&server, &[("1.0.0", "other.box", "sha512", &sha512), ("1.1.0", "tiny.box", "sha256", &sha256)]).into_bytes(),
    );
    std::fs::write(env.home.join("config.toml"), format!("vagrant_api = {:?}\n", server.url("api/v2"))).unwrap();
    std::fs::write(env.project.join("marker"), "from the host\n").unwrap();
    std::fs::write(
        env.project.join("Envfile"),
        "[machine.vm]\nbox = \"vagrant://team/tiny\"\nprovider = \"qemu\"\nmemory = \"256MiB\"\ncpus = 1\nsync = [\".:/project\"]\n",
    )
    .unwrap();
    let _cleanup = DestroyOnDrop(&env);
    env.envy().arg("up").assert().success().stderr(contains("Vagrant's insecure key replaced by the machine's own"));

    // In as root with the machine's key: the agent set the hostname and mounted the project.
    let check = |env: &TestEnv| {
        assert_eq!(env.out(&["exec", "--", "hostname"]).trim(), "vm");
        assert_eq!(env.out(&["exec", "--", "cat", "/project/marker"]), "from the host\n");
        assert_eq!(env.out(&["exec", "--", "id", "-u"]).trim(), "0");
    };
    check(&env);
    // `vagrant` holds the machine's key alone; Vagrant's insecure key no longer logs in.
    let state = env.status();
    let machine = &state["machines"][0];
    let state_dir = envy::plan::Project::state_dir_for(&envy::state::Home::at(env.home.clone()), &env.project);
    let machine_key = std::fs::read_to_string(state_dir.join("machines/vm/id_ed25519.pub")).unwrap();
    let authorized = env.out(&["exec", "--", "cat", "/home/vagrant/.ssh/authorized_keys"]);
    assert_eq!(authorized, machine_key);
    assert!(!authorized.contains("AAAAC3NzaC1lZDI1NTE5AAAAIN1YdxBpNlzxDqfJyw"), "{authorized}");
    let port = machine["ssh_port"].as_u64().expect("the machine's SSH port in status").to_string();
    let login = StdCommand::new("ssh")
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "ConnectTimeout=10", "-i"])
        .arg(env.path("insecure-key"))
        .args(["-p", &port, "vagrant@127.0.0.1", "true"])
        .output()
        .unwrap();
    assert_eq!(login.status.code(), Some(255), "the insecure key still logs in: {}", String::from_utf8_lossy(&login.stderr));
    assert!(String::from_utf8_lossy(&login.stderr).contains("Permission denied"), "{}", String::from_utf8_lossy(&login.stderr));

    // A second boot logs in as root with the machine's key and sets the machine up again.
    env.envy().arg("halt").assert().success();
    env.envy().arg("up").assert().success();
    check(&env);

    // A first login cut short after the agent ran (envy killed before its record said so):
    // the next boot logs in as vagrant again, with the machine's key, which is all it takes.
    env.envy().arg("halt").assert().success();
    let record = state_dir.join("machines/vm/qemu.json");
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(text.contains("\"vagrant_keyed\": true"), "{text}");
    std::fs::write(&record, text.replace("\"vagrant_keyed\": true", "\"vagrant_keyed\": false")).unwrap();
    env.envy().arg("up").assert().success().stderr(contains("Vagrant's insecure key replaced by the machine's own"));
    check(&env);

    // Its disk lets in this machine's key alone: a box made of it could not be entered.
    env.envy().arg("halt").assert().success();
    env.envy()
        .args(["share", "-o"])
        .arg(env.path("shared.box"))
        .assert()
        .failure()
        .stderr(contains("was made from Vagrant box team-tiny"));
    assert!(!env.path("shared.box").exists());
}

/// The API at `server` as config `vagrant_api`.
fn api_config(env: &TestEnv, server: &Server) -> envy::config::Config {
    std::fs::write(env.home.join("config.toml"), format!("vagrant_api = {:?}\n", server.url("api/v2"))).unwrap();
    envy::config::Config { vagrant_api: Some(server.url("api/v2")), ..Default::default() }
}

/// A `vagrant://` box stored here is used without the network, as a catalog name is:
/// at the version the reference gives, else the build stored last; the lock records
/// where it came from.
#[test]
fn stored_vagrant_cloud_boxes_need_no_network() {
    require!(TOOLS);
    let env = TestEnv::new();
    let server = Server::start();
    let config = api_config(&env, &server);
    let metadata = [("metadata.json", Some(METADATA_V1)), ("box.img", None)];
    let old = std::fs::read(vagrant_box(&env, "old", &metadata)).unwrap();
    server.serve("old.box", old.clone());
    let sha512 = hex::encode(<sha2::Sha512 as sha2::Digest>::digest(&old));
    server.serve("api/v2/box/team/lv", api_box(&server, &[("1.9.0", "old.box", "sha512", &sha512)]).into_bytes());
    env.envy().args(["box", "add", "vagrant://team/lv@1.9.0"]).assert().success();
    let old_url = server.url("old.box");
    drop(server);

    std::fs::write(
        env.project.join("Envfile"),
        "[defaults]\nprovider = \"qemu\"\n\n[machine.vm]\nbox = \"vagrant://team/lv@1.9.0\"\n\n[machine.any]\nbox = \"vagrant://team/lv\"\n",
    )
    .unwrap();
    for machine in ["vm", "any"] {
        let stored = crate::common::resolve_box(&env, config.clone(), machine, envy::model::BoxFormat::Qemu)
            .unwrap_or_else(|e| panic!("{machine}: {e:#}"));
        assert_eq!(stored.digest, sha256_hex(&old), "{machine}");
    }
    let lock: toml::Value = toml::from_str(&std::fs::read_to_string(env.project.join("Envfile.lock")).unwrap()).unwrap();
    for machine in ["vm", "any"] {
        assert_eq!(lock["machine"][machine]["url"].as_str(), Some(old_url.as_str()), "{lock}");
        assert_eq!(lock["machine"][machine]["upstream"].as_str(), Some(format!("sha512:{sha512}").as_str()), "{lock}");
    }
}

/// What the API says is held to envy's rules: USER and BOX are names, never path
/// steps, and a file offered over plain HTTP from another host is refused before any
/// download.
#[test]
fn vagrant_cloud_names_and_download_urls_are_checked() {
    require!(TOOLS);
    let env = TestEnv::new();
    let server = Server::start();
    api_config(&env, &server);
    for odd in ["vagrant://../lv", "vagrant://team/..", "vagrant://team/lv/x"] {
        env.envy().args(["box", "add", odd]).assert().code(4).stderr(contains("not `.` or `..`"));
    }
    assert!(server.requests_for("api/v2/lv").is_empty() && server.requests_for("api/v2/box/team").is_empty());

    let far = serde_json::json!({ "versions": [{ "version": "1.0", "status": "active", "providers": [
        { "name": "libvirt", "download_url": "http://192.0.2.7:8080/lv.box", "checksum": "0".repeat(64), "checksum_type": "sha256", "architecture": "amd64" },
    ] }] });
    server.serve("api/v2/box/team/far", far.to_string().into_bytes());
    env.envy()
        .args(["box", "add", "vagrant://team/far"])
        .assert()
        .code(4)
        .stderr(contains("vagrant://team/far (version 1.0) is offered at http://192.0.2.7:8080/lv.box, plain HTTP to 192.0.2.7:8080"))
        .stderr(contains("`insecure_registries`"));
    assert!(env.store_entries().is_empty() && env.download_entries().is_empty());
}

#[test]
fn a_vagrant_box_without_passwordless_sudo_is_refused_and_stopped() {
    require!(need::VMS, TOOLS, [Need::Tool("sfdisk", "fdisk"), Need::Tool("grub-mkimage", "grub-common"), Need::Tool("ssh-keygen", "openssh-client")]);
    let env = TestEnv::new();
    // sudo -n as a box without NOPASSWD answers it.
    let asks = "#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n";
    let path = tiny_vagrant_box(&env, asks);
    std::fs::write(
        env.project.join("Envfile"),
        format!("[machine.vm]\nbox = {{ path = \"{}\" }}\nprovider = \"qemu\"\nmemory = \"256MiB\"\ncpus = 1\n", path.display()),
    )
    .unwrap();
    let _cleanup = DestroyOnDrop(&env);
    let out = env.envy().arg("up").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("machine vm (a Vagrant box) could not be set up over SSH as vagrant"), "{err}");
    assert!(err.contains("passwordless sudo; the machine was stopped"), "{err}");
    let runtime_id = format!("envy-{}-vm", envy::plan::project_id(&env.project));
    assert_eq!(crate::common::qemu::qemu_processes(&runtime_id), 0, "QEMU was left running");
    assert_eq!(env.status()["machines"][0]["state"], "stopped");
}
