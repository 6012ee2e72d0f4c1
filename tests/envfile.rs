//! The Envfile parser against real files: what it accepts, and the file:line:col
//! of everything it refuses.



use envy::envfile::{self, BoxRef, Protocol, ProviderKind, ProvisionStep};

fn parse(text: &str) -> Result<envfile::Envfile, envfile::Error> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("setup.sh"), "echo hi\n").unwrap();
    let path = dir.path().join("Envfile");
    std::fs::write(&path, text).unwrap();
    envfile::load(&path, ProviderKind::Container)
}

fn error(text: &str) -> String {
    let err = parse(text).expect_err("the Envfile should be refused").to_string();
    // Drop the temp dir prefix so assertions read "Envfile:line:col: ...".
    let at = err.find("Envfile:").expect("error names the Envfile");
    err[at..].to_string()
}

#[test]
fn a_full_envfile_reads_in_declaration_order_with_defaults_applied() {
    let envfile = parse(
        r#"
[defaults]
box = "debian-12"
memory = "512MiB"

[machine.web]
forward = ["8080:80", "127.0.0.1:5353:53/udp", { host = 9000, guest = 90, auto = true }]
sync = [".:/project", "docs:/docs:ro"]
provision = ["apt-get install -y nginx", { script = "setup.sh" }]
env = { MODE = "dev" }

[machine.db]
box = { url = "http://127.0.0.1:1/db.box", sha256 = "AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12AB12" }
provider = "qemu"
cpus = 4
disk = "10GiB"
accel = "tcg"
"#,
    )
    .unwrap();
    let names: Vec<_> = envfile.machines.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["web", "db"]);
    let web = &envfile.machines[0];
    assert_eq!(web.box_ref, BoxRef::Catalog { name: "debian-12".into(), version: None });
    assert_eq!(web.memory, 512 << 20);
    assert_eq!(web.cpus, 2);
    assert_eq!(web.provider, ProviderKind::Container);
    assert_eq!(web.forwards.len(), 3);
    assert_eq!((web.forwards[0].host_port, web.forwards[0].guest_port), (8080, 80));
    assert_eq!(web.forwards[0].host_ip.to_string(), "127.0.0.1");
    assert_eq!(web.forwards[1].protocol, Protocol::Udp);
    assert!(web.forwards[2].auto);
    assert_eq!(web.sync[0].host, envfile.project_dir);
    assert_eq!(web.sync[0].guest, "/project");
    assert!(web.sync[1].readonly);
    assert!(matches!(&web.provision[1], ProvisionStep::Script(p) if p.ends_with("setup.sh")));
    assert_eq!(web.env["MODE"], "dev");
    let db = &envfile.machines[1];
    assert_eq!(db.provider, ProviderKind::Qemu);
    assert_eq!(db.disk, Some(10 << 30));
    assert!(matches!(&db.box_ref, BoxRef::Url { sha256: Some(d), .. } if d.starts_with("ab12")));
    assert_eq!(db.memory, 512 << 20, "defaults apply to every machine");
}

#[test]
fn defaults_alone_describe_one_machine_named_default() {
    let envfile = parse("[defaults]\nbox = \"busybox\"\n").unwrap();
    assert_eq!(envfile.machines.len(), 1);
    assert_eq!(envfile.machines[0].name, envfile::DEFAULT_MACHINE);
}

#[test]
fn url_fragment_pins_the_digest() {
    let d = "0".repeat(64);
    let envfile = parse(&format!("[defaults]\nbox = \"https://example.invalid/x.box#sha256={d}\"\n")).unwrap();
    assert_eq!(envfile.machines[0].box_ref, BoxRef::Url { url: "https://example.invalid/x.box".into(), sha256: Some(d) });
}

#[test]
fn unknown_keys_are_errors_with_their_position() {
    let err = error("[defaults]\nbox = \"b\"\n\n[machine.web]\nmemroy = \"1GiB\"\n");
    assert!(err.starts_with("Envfile:5:1:"), "{err}");
    assert!(err.contains("memroy"), "{err}");
}

#[test]
fn bad_values_point_at_the_value() {
    let cases = [
        ("[defaults]\nbox = \"b\"\nmemory = \"lots\"\n", "Envfile:3:10:", "not a size"),
        ("[defaults]\nbox = \"b\"\nmemory = \"1MiB\"\n", "Envfile:3:10:", "too small"),
        ("[defaults]\nbox = \"b\"\ncpus = 0\n", "Envfile:3:8:", "out of range"),
        ("[defaults]\nbox = \"b\"\nforward = [\"99999:80\"]\n", "Envfile:3:12:", "not a port"),
        ("[defaults]\nbox = \"b\"\nforward = [\"80\"]\n", "Envfile:3:12:", "not HOST:GUEST"),
        ("[defaults]\nbox = \"b\"\nprovider = \"docker\"\n", "Envfile:3:12:", "\"docker\" is not known"),
        ("[defaults]\nbox = \"b\"\nsync = [\"../elsewhere:/x\"]\n", "Envfile:3:9:", "outside the project"),
        ("[defaults]\nbox = \"b\"\nsync = [\".:relative\"]\n", "Envfile:3:9:", "must be absolute"),
        ("[defaults]\nbox = { url = \"http://x\", sha256 = \"abc\" }\n", "Envfile:2:7:", "not a sha256"),
        ("[machine.Web]\nbox = \"b\"\n", "Envfile:1:10:", "not valid"),
        ("[machine.web]\ncpus = 1\n", "Envfile:1:1:", "has no box"),
        ("[defaults]\nbox = \"b\"\nprovision = [{ script = \"missing.sh\" }]\n", "Envfile:3:14:", "does not exist"),
        ("[defaults]\nbox = \"b\"\nmemory = \n", "Envfile:3:10:", ""),
    ];
    for (text, at, words) in cases {
        let err = error(text);
        assert!(err.starts_with(at), "expected {at} for {text:?}, got: {err}");
        assert!(err.contains(words), "expected {words:?} for {text:?}, got: {err}");
    }
}

#[test]
fn a_host_port_claimed_twice_is_refused_naming_both_machines() {
    let err = error("[defaults]\nbox = \"b\"\n[machine.a]\nforward = [\"8080:80\"]\n[machine.b]\nforward = [\"8080:81\"]\n");
    assert!(err.starts_with("Envfile:6:"), "{err}");
    assert!(err.contains("8080") && err.contains("machines a and b"), "{err}");
}

#[test]
fn sizes_parse_in_binary_and_decimal_units() {
    assert_eq!(envfile::parse_size("1GiB"), Some(1 << 30));
    assert_eq!(envfile::parse_size("1.5G"), Some(3 << 29));
    assert_eq!(envfile::parse_size("500MB"), Some(500_000_000));
    assert_eq!(envfile::parse_size("12"), None);
    assert_eq!(envfile::parse_size("1 parsec"), None);
}

#[test]
fn a_missing_envfile_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let err = envfile::find(dir.path()).unwrap_err().to_string();
    assert!(err.contains("envy init"), "{err}");
}

#[test]
fn registry_images_read_like_the_command_line_and_bad_ones_point_at_the_value() {
    let envfile = parse("[machine.m]\nbox = \"oci://127.0.0.1:5000/team/app:dev\"\n").unwrap();
    assert_eq!(envfile.machines[0].box_ref, envy::boxes::parse_box_ref("oci://127.0.0.1:5000/team/app:dev", None).unwrap());
    assert_eq!(
        parse("[defaults]\nbox = \"oci://debian\"\n").unwrap().machines[0].box_ref.to_string(),
        "oci://docker.io/library/debian:latest"
    );
    let err = error("[machine.m]\nbox = \"oci://ghcr.io/Team/app\"\n");
    assert!(err.starts_with("Envfile:2:7:") && err.contains("is not an image reference"), "{err}");
}
