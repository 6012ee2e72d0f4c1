//! The Envfile parser against real files: what it accepts, and the file:line:col
//! of everything it refuses.

use envy::envfile::{self, ProvisionAction};
use envy::model::{BoxRef, Protocol};

fn parse(text: &str) -> Result<envfile::Envfile, envfile::Error> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("setup.sh"), "echo hi\n").unwrap();
    let path = dir.path().join("Envfile");
    std::fs::write(&path, text).unwrap();
    // As `envy` reads it: parsed, then checked by each machine's provider.
    let envfile = envfile::load(&path, envy::provider::container::KIND)?;
    envy::provider::validate(&envfile)?;
    Ok(envfile)
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
cpus = 1
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
    assert_eq!(web.provider, envy::provider::container::KIND);
    assert_eq!(web.forwards.len(), 3);
    assert_eq!((web.forwards[0].host_port, web.forwards[0].guest_port), (8080, 80));
    assert_eq!(web.forwards[0].host_ip.to_string(), "127.0.0.1");
    assert_eq!(web.forwards[1].protocol, Protocol::Udp);
    assert!(web.forwards[2].auto);
    assert_eq!(web.sync[0].host, envfile.project_dir);
    assert_eq!(web.sync[0].guest, "/project");
    assert!(web.sync[1].readonly);
    assert!(matches!(&web.provision[1].action, ProvisionAction::Script(p) if p.ends_with("setup.sh")));
    assert_eq!(web.env["MODE"], "dev");
    let db = &envfile.machines[1];
    assert_eq!(db.provider, envy::provider::qemu::KIND);
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
        ("[defaults]\nbox = \"b\"\nmemory = \"0MiB\"\n", "Envfile:3:10:", "memory = \"0MiB\" is too small: at least 16 MiB"),
        ("[defaults]\nbox = \"b\"\ndisk = \"0GiB\"\n", "Envfile:3:8:", "disk = \"0GiB\" is too small"),
        ("[defaults]\nbox = \"b\"\nforward = [\"203.0.113.5:8080:80\"]\n", "Envfile:3:12:", "203.0.113.5 is not an address of this host"),
        ("[defaults]\nbox = \"b\"\nforward = [{ host = 8080, guest = 80, host_ip = \"203.0.113.5\" }]\n", "Envfile:3:12:", "not an address of this host"),
        ("[defaults]\nbox = \"b\"\ncpus = 0\n", "Envfile:3:8:", "out of range"),
        ("[defaults]\nbox = \"b\"\nforward = [\"99999:80\"]\n", "Envfile:3:12:", "not a port"),
        ("[defaults]\nbox = \"b\"\nforward = [\"80\"]\n", "Envfile:3:12:", "not HOST:GUEST"),
        ("[defaults]\nbox = \"b\"\nprovider = \"docker\"\n", "Envfile:3:12:", "machine default: provider \"docker\" is not known: this envy has container, qemu"),
        ("[defaults]\nbox = \"b\"\nsync = [\"../elsewhere:/x\"]\n", "Envfile:3:9:", "outside the project"),
        ("[defaults]\nbox = \"b\"\nsync = [\".:relative\"]\n", "Envfile:3:9:", "must be absolute"),
        ("[defaults]\nbox = { url = \"http://x\", sha256 = \"abc\" }\n", "Envfile:2:7:", "not a sha256"),
        ("[machine.Web]\nbox = \"b\"\n", "Envfile:1:10:", "not valid"),
        ("[machine.web]\ncpus = 1\n", "Envfile:1:1:", "has no box"),
        ("[defaults]\nbox = \"b\"\nprovision = [{ script = \"../outside.sh\" }]\n", "Envfile:3:14:", "outside the project"),
        ("[defaults]\nbox = \"b\"\nmemory = \n", "Envfile:3:10:", ""),
        ("[defaults]\nbox = \"b\"\nenv = { MY-VAR = \"x\" }\n", "Envfile:3:", "env key \"MY-VAR\" is not a valid variable name"),
    ];
    for (text, at, words) in cases {
        let err = error(text);
        assert!(err.starts_with(at), "expected {at} for {text:?}, got: {err}");
        assert!(err.contains(words), "expected {words:?} for {text:?}, got: {err}");
    }
}

/// MemTotal of /proc/meminfo, in bytes, read here as a user would read it.
fn host_memory() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap();
    kib << 10
}

#[test]
fn memory_beyond_the_host_is_refused_naming_what_it_has_and_cpus_may_exceed_it() {
    let err = error("[defaults]\nbox = \"b\"\nmemory = \"999999TiB\"\n");
    assert!(err.starts_with("Envfile:3:10: memory = \"999999TiB\" is more than this host's memory"), "{err}");
    assert!(err.contains(&format!("give at most {}MiB", host_memory() >> 20)), "{err}");

    // Exactly the host's memory is fine, and CPUs are shared, so more than the host has is too.
    let envfile = parse(&format!("[defaults]\nbox = \"b\"\ncpus = 64\nmemory = \"{}MiB\"\n", host_memory() >> 20)).unwrap();
    assert_eq!(envfile.machines[0].cpus, 64);
}

#[test]
fn forwards_may_listen_on_loopback_wildcard_or_a_host_address() {
    let envfile = parse("[defaults]\nbox = \"b\"\nforward = [\"0.0.0.0:8080:80\", { host = 8081, guest = 81, host_ip = \"127.0.0.1\" }]\n").unwrap();
    assert_eq!(envfile.machines[0].forwards[0].host_ip.to_string(), "0.0.0.0");
}

#[test]
fn a_host_port_claimed_twice_is_refused_naming_both_machines() {
    let err = error("[defaults]\nbox = \"b\"\n[machine.a]\nforward = [\"8080:80\"]\n[machine.b]\nforward = [\"8080:81\"]\n");
    assert!(err.starts_with("Envfile:6:"), "{err}");
    assert!(err.contains("8080") && err.contains("machines a and b"), "{err}");
}

#[test]
fn sizes_parse_in_binary_and_decimal_units() {
    assert_eq!(envy::model::parse_size("1GiB"), Some(1 << 30));
    assert_eq!(envy::model::parse_size("1.5G"), Some(3 << 29));
    assert_eq!(envy::model::parse_size("500MB"), Some(500_000_000));
    assert_eq!(envy::model::parse_size("0MiB"), Some(0), "zero is a size (the caller says it is too small)");
    assert_eq!(envy::model::parse_size("12"), None);
    assert_eq!(envy::model::parse_size("1 parsec"), None);
}

#[test]
fn a_missing_envfile_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let err = envfile::find(dir.path()).unwrap_err().to_string();
    assert!(err.contains("envy init"), "{err}");
}

#[test]
fn ready_takes_a_command_a_port_or_a_url_with_a_timeout() {
    use envy::envfile::{Ready, ReadyCheck, DEFAULT_READY_TIMEOUT};
    use std::time::Duration;
    let envfile = parse(
        "[defaults]\nbox = \"b\"\nready = \"pg_isready\"\n[machine.a]\n[machine.b]\nready = { tcp = 5432, timeout = \"2m\" }\n\
         [machine.c]\nready = { http = \"http://127.0.0.1:8000/health\", timeout = 30 }\n[machine.d]\nready = { cmd = \"true\" }\n",
    )
    .unwrap();
    let ready: Vec<Option<Ready>> = envfile.machines.iter().map(|m| m.ready.clone()).collect();
    assert_eq!(
        ready,
        [
            Some(Ready { check: ReadyCheck::Command("pg_isready".into()), timeout: DEFAULT_READY_TIMEOUT }),
            Some(Ready { check: ReadyCheck::Tcp(5432), timeout: Duration::from_secs(120) }),
            Some(Ready { check: ReadyCheck::Http("http://127.0.0.1:8000/health".into()), timeout: Duration::from_secs(30) }),
            Some(Ready { check: ReadyCheck::Command("true".into()), timeout: DEFAULT_READY_TIMEOUT }),
        ]
    );
}

#[test]
fn a_bad_ready_is_refused_with_its_place() {
    let base = "[defaults]\nbox = \"b\"\n";
    for (ready, message) in [
        ("ready = { tcp = 70000 }", "Envfile:3:9: ready tcp = 70000 is not a port: give 1 to 65535"),
        ("ready = { http = \"db:7000\" }", "Envfile:3:9: ready http = \"db:7000\" is not an http:// or https:// URL"),
        ("ready = { tcp = 80, timeout = \"soon\" }", "Envfile:3:9: ready timeout \"soon\" is not a duration"),
        ("ready = { tcp = 80, http = \"http://x/\" }", "Envfile:3:9: ready is a command string, or a table with one of"),
        ("ready = { port = 80 }", "Envfile:3:9: unknown key `port` in ready"),
        ("ready = 5", "Envfile:3:9: ready is a command string"),
    ] {
        let err = error(&format!("{base}{ready}\n"));
        assert!(err.starts_with(message), "{ready}: {err}");
    }
}

#[test]
fn a_provision_step_runs_once_or_always() {
    let envfile = parse("[defaults]\nbox = \"b\"\nprovision = [\"a\", { shell = \"b\", run = \"always\" }, { script = \"setup.sh\", run = \"once\" }]\n").unwrap();
    let always: Vec<bool> = envfile.machines[0].provision.iter().map(|p| p.always).collect();
    assert_eq!(always, [false, true, false]);
    let err = error("[defaults]\nbox = \"b\"\nprovision = [{ shell = \"b\", run = \"sometimes\" }]\n");
    assert!(err.starts_with("Envfile:3:14: provision run = \"sometimes\" is not known"), "{err}");
}

#[test]
fn registry_images_read_like_the_command_line_and_bad_ones_point_at_the_value() {
    let envfile = parse("[machine.m]\nbox = \"oci://127.0.0.1:5000/team/app:dev\"\n").unwrap();
    assert_eq!(envfile.machines[0].box_ref, envy::boxes::parse_box_ref("oci://127.0.0.1:5000/team/app:dev", None, std::path::Path::new("/")).unwrap());
    assert_eq!(
        parse("[defaults]\nbox = \"oci://debian\"\n").unwrap().machines[0].box_ref.to_string(),
        "oci://docker.io/library/debian:latest"
    );
    let err = error("[machine.m]\nbox = \"oci://ghcr.io/Team/app\"\n");
    assert!(err.starts_with("Envfile:2:7:") && err.contains("is not an image reference"), "{err}");
}

#[test]
fn a_file_step_copies_a_project_path_to_an_absolute_guest_path() {
    let envfile = parse("[defaults]\nbox = \"b\"\nprovision = [{ file = \"conf/app.conf\", to = \"/etc/app.conf\", mode = \"0640\" }, { file = \"site\", to = \"/srv/site/\" }]\n").unwrap();
    let steps: Vec<_> = envfile.machines[0].provision.iter().map(|p| p.action.clone()).collect();
    let dir = &envfile.project_dir;
    assert_eq!(steps, [
        ProvisionAction::File { from: dir.join("conf/app.conf"), to: "/etc/app.conf".into(), mode: Some(0o640) },
        ProvisionAction::File { from: dir.join("site"), to: "/srv/site".into(), mode: None },
    ]);
    let base = "[defaults]\nbox = \"b\"\nprovision = [";
    for (step, message) in [
        ("{ file = \"a\", to = \"etc/a\" }", "Envfile:3:14: provision file `to = \"etc/a\"` must be an absolute path in the machine"),
        ("{ file = \"a\", to = \"/\" }", "Envfile:3:14: provision file `to = \"/\"` must be an absolute path in the machine, not /"),
        ("{ file = \"a\", to = \"/x/../etc\" }", "Envfile:3:14: provision file `to = \"/x/../etc\"` must be"),
        ("{ file = \"a\" }", "Envfile:3:14: provision file needs `to`"),
        ("{ file = \"a\", to = \"/a\", mode = \"0999\" }", "Envfile:3:14: provision file mode \"0999\" is not an octal mode"),
        ("{ file = \"a\", to = \"/a\", mode = 644 }", "Envfile:3:14: provision file mode = 644 is not an octal mode: write it as a string"),
        ("{ file = \"../a\", to = \"/a\" }", "Envfile:3:14: provision file \"../a\" is outside the project"),
        ("{ file = \"a\", to = \"/a\", shell = \"true\" }", "Envfile:3:14: a provision step is one of shell, script or file"),
        ("{ shell = \"true\", to = \"/a\" }", "Envfile:3:14: `to` belongs to a file step"),
    ] {
        let err = error(&format!("{base}{step}]\n"));
        assert!(err.starts_with(message), "{step}: {err}");
    }
}

#[test]
fn user_data_is_a_project_file_or_inline_cloud_config_for_vms_only() {
    let envfile = parse("[machine.a]\nbox = \"b\"\nprovider = \"qemu\"\nuser_data = \"cloud/init.yaml\"\n\
                         [machine.b]\nbox = \"b\"\nprovider = \"qemu\"\nuser_data = \"\"\"#cloud-config\nruncmd: [[touch, /x]]\n\"\"\"\n").unwrap();
    assert_eq!(envfile.machines[0].user_data, Some(envfile::UserData::File(envfile.project_dir.join("cloud/init.yaml"))));
    assert_eq!(envfile.machines[1].user_data, Some(envfile::UserData::Inline("#cloud-config\nruncmd: [[touch, /x]]\n".into())));
    let qemu = "[defaults]\nbox = \"b\"\nprovider = \"qemu\"\n";
    for (value, message) in [
        ("\"../init.yaml\"", "Envfile:4:13: user_data \"../init.yaml\" is neither a file in the project"),
        ("\"#cloud-config\\nusers: []\\n\"", "Envfile:4:13: user_data sets `users`, which envy manages for every VM"),
        ("\"#cloud-config\\nruncmd: [\\n\"", "Envfile:4:13: user_data is not valid YAML"),
    ] {
        let err = error(&format!("{qemu}user_data = {value}\n"));
        assert!(err.starts_with(message), "{value}: {err}");
    }
    let err = error("[defaults]\nbox = \"b\"\nuser_data = \"init.yaml\"\n");
    assert!(err.starts_with("Envfile:3:13: machine default: user_data is cloud-init's") && err.contains("a container machine has no cloud-init"), "{err}");
}

#[test]
fn forward_auto_is_off_by_default_and_taken_from_defaults_or_a_machine() {
    let envfile = parse(
        "[defaults]\nbox = \"b\"\nforward_auto = true\n\n[machine.web]\n\n[machine.api]\nforward_auto = { min_port = 80 }\n\n\
         [machine.db]\nforward_auto = false\n\n[machine.vm]\nprovider = \"qemu\"\nforward_auto = { enabled = false }\n\n\
         [machine.vm2]\nprovider = \"qemu\"\n",
    )
    .unwrap();
    let auto = |name: &str| envfile.machine(name).unwrap().forward_auto.map(|a| a.min_port);
    assert_eq!((auto("web"), auto("api"), auto("db"), auto("vm")), (Some(1025), Some(80), None, None));
    assert_eq!(auto("vm2"), Some(1025), "VMs take forward_auto too");
    assert_eq!(parse("[defaults]\nbox = \"b\"\n").unwrap().machines[0].forward_auto, None);
}

#[test]
fn a_bad_forward_auto_is_refused_with_its_place() {
    for (text, want) in [
        ("[defaults]\nbox = \"b\"\nforward_auto = \"yes\"\n", "Envfile:3:16: forward_auto is true, false, or a table"),
        ("[defaults]\nbox = \"b\"\nforward_auto = { min = 80 }\n", "Envfile:3:16: unknown key `min` in forward_auto"),
        ("[defaults]\nbox = \"b\"\nforward_auto = { min_port = 0 }\n", "Envfile:3:16: forward_auto.min_port = 0 is not a port"),
        ("[defaults]\nbox = \"b\"\nforward_auto = { min_port = 70000 }\n", "forward_auto.min_port = 70000 is not a port"),
        ("[defaults]\nbox = \"b\"\nforward_auto = { enabled = 1 }\n", "forward_auto.enabled = 1 must be true or false"),
    ] {
        let err = error(text);
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn placement_keys_are_for_providers_that_place_machines() {
    let ok = parse("[machine.a]\nbox = \"b\"\nprovider = \"lxd\"\nremote = \"staging\"\ntarget = \"node2\"\n").unwrap();
    assert_eq!(ok.machines[0].placement.remote.as_deref(), Some("staging"));
    assert_eq!(ok.machines[0].placement.target.as_deref(), Some("node2"));
    for (text, wanted) in [
        (
            "[machine.a]\nbox = \"b\"\nremote = \"staging\"\n",
            "Envfile:3:10: machine a: remote = \"staging\" places a machine on another host, but the container provider runs machines on this one",
        ),
        ("[machine.a]\nbox = \"b\"\nprovider = \"lxd\"\ntarget = \"no/de\"\n", "Envfile:4:10: target \"no/de\" is not a valid name"),
        ("[machine.a]\nbox = \"b\"\nprovider = \"lxc\"\n", "Envfile:3:12: machine a: provider \"lxc\" is not known: this envy has container, qemu, lxd"),
    ] {
        let err = error(text);
        assert!(err.starts_with(wanted), "{err}");
    }
}
