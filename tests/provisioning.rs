//! Provisioning beyond shell, through the real `envy` binary: `{ file, to, mode }`
//! steps in a container (runc) and a VM (QEMU, TCG, the tiny box), and `user_data`
//! merged into the VM's NoCloud seed, with its refusals.

use std::path::Path;

use crate::common::{self, need, require, DestroyOnDrop, TestEnv};

/// A project file, a folder with a subfolder, an executable and a link inside it.
fn project_files(project: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(project.join("app.conf"), "key = \"value\"\n").unwrap();
    std::fs::create_dir_all(project.join("site/sub")).unwrap();
    std::fs::write(project.join("site/index.html"), "<h1>hi</h1>\n").unwrap();
    std::fs::write(project.join("site/sub/run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(project.join("site/sub/run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("../index.html", project.join("site/sub/link")).unwrap();
}

const FILE_STEPS: &str = "provision = [\n  { file = \"app.conf\", to = \"/etc/app/app.conf\", mode = \"0640\" },\n  \
                          { file = \"site\", to = \"/srv/site\" },\n  \
                          \"cat /etc/app/app.conf > /root/seen && /srv/site/sub/run.sh >> /root/seen\",\n]\n";

/// What the steps above must have left in the machine: modes, root:root, contents,
/// the link kept as a link, and the shell step after them saw the copies.
fn check_copies(guest: impl Fn(&str) -> String) {
    assert_eq!(guest("stat -c '%a %u:%g %s' /etc/app/app.conf"), "640 0:0 14\n");
    assert_eq!(guest("cat /etc/app/app.conf"), "key = \"value\"\n");
    assert_eq!(guest("cd /srv/site && find . | sort"), ".\n./index.html\n./sub\n./sub/link\n./sub/run.sh\n");
    assert_eq!(guest("stat -c '%a %u:%g' /srv/site/sub/run.sh /srv/site/index.html"), "755 0:0\n644 0:0\n");
    assert_eq!(guest("readlink /srv/site/sub/link && cat /srv/site/sub/link"), "../index.html\n<h1>hi</h1>\n");
    assert_eq!(guest("cat /root/seen"), "key = \"value\"\nran\n");
}

fn guest_of(env: &TestEnv) -> impl Fn(&str) -> String + '_ {
    move |script: &str| {
        let out = env.envy().args(["exec", "--", "sh", "-c", script]).output().unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

#[test]
fn a_file_with_its_mode_and_a_folder_land_in_a_container() {
    require!(need::CONTAINERS);
    let env = TestEnv::new();
    let (box_path, _) = common::build_container_box(&env, "busybox");
    project_files(&env.project);
    std::fs::write(env.project.join("Envfile"), format!("[defaults]\nbox = {{ path = \"{}\" }}\n{FILE_STEPS}", box_path.display())).unwrap();
    let _cleanup = DestroyOnDrop(&env);
    env.envy().arg("up").assert().success().stderr(predicates::str::contains("provision 1/3: copy"));
    check_copies(guest_of(&env));
    // `envy provision` copies again over what is there (a changed file arrives).
    std::fs::write(env.project.join("app.conf"), "key = \"new\"\n").unwrap();
    env.envy().arg("provision").assert().success();
    assert_eq!(guest_of(&env)("cat /etc/app/app.conf"), "key = \"new\"\n");
    // `mode` is a file's: on a folder it is an error naming the folder.
    std::fs::write(
        env.project.join("Envfile"),
        format!("[defaults]\nbox = {{ path = \"{}\" }}\nprovision = [{{ file = \"site\", to = \"/srv/site\", mode = \"0600\" }}]\n", box_path.display()),
    )
    .unwrap();
    let out = env.envy().arg("provision").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("provision file") && err.contains("site: is a folder; `mode` applies to a file"), "{err}");
}

#[test]
fn files_and_user_data_reach_a_vm() {
    require!(need::VMS);
    let env = TestEnv::new();
    let tiny = common::tiny_vm_box(&env);
    project_files(&env.project);
    std::fs::write(
        env.project.join("cloud-init.yaml"),
        "#cloud-config\nwrite_files:\n  - path: /etc/from-user-data\n    content: |\n      written by cloud-init\n    permissions: '0600'\nruncmd:\n  - [touch, /root/runcmd-ran]\n",
    )
    .unwrap();
    std::fs::write(
        env.project.join("Envfile"),
        format!(
            "[machine.vm]\nbox = {{ path = \"{}\" }}\nprovider = \"qemu\"\nmemory = \"256MiB\"\ncpus = 1\nuser_data = \"cloud-init.yaml\"\n{FILE_STEPS}",
            tiny.display()
        ),
    )
    .unwrap();
    let _cleanup = DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();
    let guest = guest_of(&env);
    check_copies(&guest);
    // The tiny box has no cloud-init (envy's agent reads envy's keys only, see
    // docs/box-format.md), so what is checked end to end is the contract: the seed the
    // agent read holds envy's keys, which it still applied (hostname, the login envy
    // just used), followed by the user's write_files and runcmd, as one YAML file.
    assert_eq!(guest("hostname"), "vm\n");
    let seen = guest("cat /run/envy-agent/user-data");
    let value: serde_yaml::Value = serde_yaml::from_str(&seen).unwrap();
    assert_eq!(value["hostname"].as_str(), Some("vm"), "{seen}");
    assert!(value["ssh_authorized_keys"][0].as_str().unwrap().starts_with("ssh-ed25519 "), "{seen}");
    let file = &value["write_files"][0];
    assert_eq!(file["path"].as_str(), Some("/etc/from-user-data"), "{seen}");
    assert_eq!(file["content"].as_str(), Some("written by cloud-init\n"), "{seen}");
    assert_eq!(file["permissions"].as_str(), Some("0600"), "{seen}");
    assert_eq!(value["runcmd"][0][1].as_str(), Some("/root/runcmd-ran"), "{seen}");
    assert!(seen.starts_with("#cloud-config\nhostname: \"vm\"\n"), "envy's part comes first, as written:\n{seen}");
}

#[test]
fn user_data_that_sets_a_key_envy_manages_is_refused_by_name() {
    let env = TestEnv::new();
    // No box is needed: each refusal comes before envy looks for one.
    let head = "[machine.vm]\nbox = { path = \"vm.box\" }\nprovider = \"qemu\"\nmemory = \"256MiB\"\n";
    // Inline: refused when the Envfile is read, before anything is fetched.
    std::fs::write(env.project.join("Envfile"), format!("{head}user_data = \"\"\"#cloud-config\nhostname: other\n\"\"\"\n")).unwrap();
    let out = env.envy().arg("up").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("Envfile:5:") && err.contains("user_data sets `hostname`, which envy manages"), "{err}");
    assert!(env.store_entries().is_empty(), "nothing was fetched");
    // From a file: refused at `envy up`, naming the file and the key, before any box.
    std::fs::write(env.project.join("cloud-init.yaml"), "#cloud-config\nwrite_files: []\nssh_authorized_keys: [\"ssh-ed25519 AAAA mine\"]\n").unwrap();
    std::fs::write(env.project.join("Envfile"), format!("{head}user_data = \"cloud-init.yaml\"\n")).unwrap();
    let out = env.envy().arg("up").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("cloud-init.yaml") && err.contains("sets `ssh_authorized_keys`, which envy manages"), "{err}");
    assert!(env.store_entries().is_empty(), "nothing was fetched");
    assert!(!env.machine_dir("vm").join("disk.qcow2").exists(), "no machine was made");
    // A container has no cloud-init: refused when the Envfile is read.
    std::fs::write(env.project.join("Envfile"), "[machine.c]\nbox = \"x\"\nprovider = \"container\"\nuser_data = \"cloud-init.yaml\"\n").unwrap();
    let out = env.envy().arg("status").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("a container machine has no cloud-init"), "{err}");
}

/// A script step is streamed to the machine's shell, so one larger than Linux's 128 KiB
/// limit on a single argument runs (it used to be passed as `sh -c SCRIPT`).
#[test]
fn a_script_of_any_size_runs_in_a_container() {
    require!(need::CONTAINERS);
    let env = TestEnv::new();
    let (box_path, _) = common::build_container_box(&env, "busybox");
    let mut script = String::from("#!/bin/sh\nset -e\n");
    while script.len() < 300 << 10 {
        script += "# padding that makes the script larger than one argument may be\n";
    }
    script += "echo \"ran as $(id -u) from $0\" > /root/big\n";
    std::fs::write(env.project.join("setup.sh"), &script).unwrap();
    std::fs::write(
        env.project.join("Envfile"),
        format!("[defaults]\nbox = {{ path = \"{}\" }}\nprovision = [{{ script = \"setup.sh\" }}]\n", box_path.display()),
    )
    .unwrap();
    let _cleanup = DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();
    assert_eq!(guest_of(&env)("cat /root/big"), "ran as 0 from /bin/sh\n");
}
