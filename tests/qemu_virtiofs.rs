//! VM sync folders over virtiofs (Debian 12's /usr/lib/qemu/virtiofsd, started by envy)
//! and over 9p when virtiofsd is absent (ENVY_VIRTIOFSD=none): host writes show in the
//! guest and guest writes on the host, `envy status` says which is used, and halt stops
//! the virtiofsd. Under TCG (ENVY_ACCEL=tcg), with the tiny VM box.

use crate::common::{self, need, require, Need, TestEnv};

fn vm_status(env: &TestEnv) -> serde_json::Value {
    env.status()["machines"][0].clone()
}

/// Virtiofsd processes serving this test's machine (by their socket in its state).
fn virtiofsd_pids(env: &TestEnv) -> Vec<u32> {
    let home = env.home.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("virtiofsd") && String::from_utf8_lossy(&c).contains(&home))
        })
        .collect()
}

/// Boots a VM syncing the project to /project (`virtiofsd` sets ENVY_VIRTIOFSD for
/// `up`), checks both directions, and returns with the machine running.
fn sync_both_ways(env: &TestEnv, virtiofsd: &str, transport: &str) {
    let tiny = common::tiny_vm_box(env);
    std::fs::write(
        env.project.join("Envfile"),
        format!(
            "[machine.vm]\nbox = {{ path = \"{}\" }}\nprovider = \"qemu\"\nmemory = \"256MiB\"\ncpus = 1\nsync = [\".:/project\"]\n",
            tiny.display()
        ),
    )
    .unwrap();
    env.envy().env("ENVY_VIRTIOFSD", virtiofsd).arg("up").assert().success();
    let vm = vm_status(env);
    assert_eq!(vm["sync_transport"], serde_json::json!([transport]), "{vm}");
    assert!(env.out(&["status"]).contains(&format!("sync folders over {transport}")));
    let mounts = env.out(&["exec", "--", "cat", "/proc/mounts"]);
    let fstype = if transport == "9p" { "9p" } else { "virtiofs" };
    assert!(mounts.lines().any(|l| l.contains(" /project ") && l.contains(&format!(" {fstype} "))), "{mounts}");

    std::fs::write(env.project.join("from-host.txt"), "written on the host\n").unwrap();
    assert_eq!(env.out(&["exec", "--", "cat", "/project/from-host.txt"]), "written on the host\n");
    env.out(&["exec", "--", "sh", "-c", "mkdir -p /project/sub && echo written in the guest > /project/sub/from-guest.txt"]);
    assert_eq!(std::fs::read_to_string(env.project.join("sub/from-guest.txt")).unwrap(), "written in the guest\n");
    std::fs::write(env.project.join("from-host.txt"), "changed on the host\n").unwrap();
    // cache=auto lets the guest keep attributes for a second.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(env.out(&["exec", "--", "cat", "/project/from-host.txt"]), "changed on the host\n");
}

#[test]
fn a_virtiofs_sync_folder_works_both_ways_and_its_virtiofsd_stops_with_the_machine() {
    require!(need::VMS, [Need::Tool("/usr/lib/qemu/virtiofsd", "qemu-system-common")]);
    let env = TestEnv::new();
    let _cleanup = common::DestroyOnDrop(&env);
    sync_both_ways(&env, "/usr/lib/qemu/virtiofsd", "virtiofs");
    // virtiofsd forks into its namespace sandbox: a parent and the serving child.
    assert!(!virtiofsd_pids(&env).is_empty(), "virtiofsd serves the folder");

    // QEMU 7.2 cannot migrate vhost-user-fs, so a running machine's snapshot is disk-only.
    let saved = env.envy().args(["snapshot", "save", "s1"]).output().unwrap();
    assert!(saved.status.success(), "{}", String::from_utf8_lossy(&saved.stderr));
    assert!(String::from_utf8_lossy(&saved.stderr).contains("holds its disk only"), "{}", String::from_utf8_lossy(&saved.stderr));
    let list: serde_json::Value = serde_json::from_str(&env.out(&["snapshot", "list", "--json"])).unwrap();
    assert_eq!(list["snapshots"][0]["memory"], false);
    assert_eq!(env.out(&["exec", "--", "cat", "/project/from-host.txt"]), "changed on the host\n", "the machine runs on");

    env.envy().arg("halt").assert().success();
    assert!(virtiofsd_pids(&env).is_empty(), "halt stops virtiofsd");
    assert_eq!(vm_status(&env)["sync_transport"], serde_json::json!(["virtiofs"]), "the last start's transport stays");
}

#[test]
fn without_virtiofsd_the_sync_folder_uses_9p_and_status_says_so() {
    require!(need::VMS);
    let env = TestEnv::new();
    let _cleanup = common::DestroyOnDrop(&env);
    sync_both_ways(&env, "none", "9p");
    assert!(virtiofsd_pids(&env).is_empty());
}
