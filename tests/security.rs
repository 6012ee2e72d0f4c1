//! The guest is untrusted: every way a machine could reach back into the host,
//! played the way a guest would play it, through the real `envy` binary. Each attack
//! ends with the same checks: a canary folder on the host is byte-for-byte as it was,
//! and nothing of the test is left mounted. See docs/security.md.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::{self, machine, need, require, DestroyOnDrop, TestEnv};

/// A host folder the guest must never reach: what it holds, to compare after an attack.
struct Canary {
    dir: PathBuf,
}

impl Canary {
    fn new(env: &TestEnv) -> Canary {
        let dir = env.path("canary");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("secret"), "host secret\n").unwrap();
        std::fs::write(dir.join("hosts"), "host file named like envy's\n").unwrap();
        std::fs::write(dir.join("sub/data"), "more\n").unwrap();
        Canary { dir }
    }

    /// Every entry below the folder: path -> (mode, size, content or link target).
    fn contents(&self) -> BTreeMap<PathBuf, (u32, u64, Vec<u8>)> {
        fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, (u32, u64, Vec<u8>)>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                let content = if meta.is_file() {
                    std::fs::read(&path).unwrap()
                } else if meta.is_symlink() {
                    std::fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes()
                } else {
                    walk(&path, root, out);
                    Vec::new()
                };
                out.insert(path.strip_prefix(root).unwrap().to_path_buf(), (meta.mode(), meta.size(), content));
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.dir, &self.dir, &mut out);
        out
    }
}

/// A container project of one or more machines syncing the project, with a canary
/// beside it; checks after each attack that the canary and the mount table are clean.
struct Attack {
    env: TestEnv,
    canary: Canary,
    before: BTreeMap<PathBuf, (u32, u64, Vec<u8>)>,
}

impl Attack {
    /// An attack on a project of `envfile`; its tests require `need::CONTAINERS`.
    fn new(envfile: &str) -> Attack {
        let env = TestEnv::new();
        let (box_path, _) = common::build_container_box(&env, "busybox");
        let canary = Canary::new(&env);
        let envfile = envfile.replace("BOX", &box_path.display().to_string()).replace("CANARY", &canary.dir.display().to_string());
        std::fs::write(env.project.join("Envfile"), envfile).unwrap();
        let before = canary.contents();
        Attack { env, canary, before }
    }

    fn envy(&self) -> assert_cmd::Command {
        self.env.envy()
    }

    /// Runs `script` in machine `machine` (as the guest's root) and returns its stdout.
    fn guest(&self, machine: &str, script: &str) -> String {
        let out = self.envy().args(["exec", machine, "--", "sh", "-c", script]).output().unwrap();
        assert!(out.status.success(), "guest script {script:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// envy's exit code and stderr for a command.
    fn fails(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = self.envy().args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Mount points below the test's temp dir (the canary, project, ENVY_HOME).
    fn mounts(&self) -> Vec<String> {
        common::mounts_below(self.env.dir.path())
    }

    /// The canary is as it was, and after destroy nothing is mounted.
    fn assert_host_untouched(&self) {
        assert_eq!(self.canary.contents(), self.before, "the canary folder changed");
        self.envy().args(["destroy", "--force"]).assert().success();
        assert_eq!(self.mounts(), Vec::<String>::new(), "left mounted");
        assert_eq!(self.canary.contents(), self.before, "the canary folder changed during destroy");
    }
}

#[test]
fn envys_state_is_out_of_the_guests_reach_and_a_planted_state_dir_does_nothing() {
    require!(need::CONTAINERS);
    let a = Attack::new("[defaults]\nbox = { path = \"BOX\" }\nsync = [\".:/project\"]\n[machine.a]\n[machine.b]\n");
    let _cleanup = DestroyOnDrop(&a.env);
    a.envy().args(["up", "a"]).assert().success();
    // No state of envy's in what the guest sees of the project, nor anywhere in its root.
    assert_eq!(a.guest("a", "ls -A /project"), "Envfile\nEnvfile.lock\n");
    assert_eq!(a.guest("a", "find / -name machine.json 2>/dev/null | wc -l").trim(), "0");
    // The old attack: a guest plants the state dir of machine b as a link to a host dir.
    let canary = a.canary.dir.display().to_string();
    a.guest("a", &format!("mkdir -p /project/.envy/machines && ln -s {canary} /project/.envy/machines/b"));
    a.envy().args(["up", "b"]).assert().success();
    assert!(a.env.machine_dir("b").join("machine.json").is_file(), "b's state lives in ENVY_HOME");
    a.envy().args(["destroy", "b", "--force"]).assert().success();
    // The state folders are private to the user.
    for dir in [a.env.state_dir(), a.env.machine_dir("a")] {
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700, "{}", dir.display());
    }
    a.assert_host_untouched();
}

#[test]
fn a_symlink_in_envys_own_state_is_refused_not_followed() {
    require!(need::CONTAINERS);
    let a = Attack::new("[defaults]\nbox = { path = \"BOX\" }\n");
    let _cleanup = DestroyOnDrop(&a.env);
    a.envy().arg("up").assert().success();
    a.envy().args(["destroy", "--force"]).assert().success();
    // Whoever put it there, a link where a machine dir belongs is never followed.
    let machine_dir = a.env.machine_dir("default");
    std::fs::create_dir_all(machine_dir.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&a.canary.dir, &machine_dir).unwrap();
    for args in [&["up"][..], &["destroy", "--force"], &["status"]] {
        let (code, err) = a.fails(args);
        assert_eq!(code, Some(7), "envy {args:?}: {err}");
        assert!(err.contains("without following a symlink"), "{err}");
    }
    std::fs::remove_file(&machine_dir).unwrap();
    a.assert_host_untouched();
}

#[test]
fn the_lower_layer_and_snapshots_come_from_records_the_guest_cannot_reach() {
    require!(need::CONTAINERS);
    let a = Attack::new("[defaults]\nbox = { path = \"BOX\" }\nsync = [\".:/project\"]\n");
    let _cleanup = DestroyOnDrop(&a.env);
    a.envy().arg("up").assert().success();
    let canary = a.canary.dir.display().to_string();
    // The old attack: name a host dir as the machine's lower layer, then restore.
    a.guest("default", &format!("mkdir -p /project/.envy/machines/default && echo {canary} > /project/.envy/machines/default/lower"));
    a.envy().args(["snapshot", "save", "s1"]).assert().success();
    a.envy().args(["snapshot", "restore", "s1"]).assert().success();
    assert_eq!(a.guest("default", "test -e /secret && echo exposed || echo safe"), "safe\n");
    assert_eq!(a.guest("default", "cat /etc/box-release"), "busybox test box\n");

    // A snapshot whose frozen layer is gone is refused before anything changes. (An
    // archive an older envy saved is checked against its digest: snapshot_archive.rs.)
    let machine_dir = a.env.machine_dir("default");
    assert_eq!(std::fs::metadata(machine_dir.join("layers")).unwrap().permissions().mode() & 0o777, 0o700);
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(machine_dir.join("snapshots/s1.json")).unwrap()).unwrap();
    let layer = machine_dir.join("layers").join(record["layers"][0].to_string());
    // The machine runs on that layer: keep it for the machine, and take it from the snapshot.
    std::fs::rename(&layer, machine_dir.join("layers/kept")).unwrap();
    std::os::unix::fs::symlink("kept", &layer).unwrap();
    a.guest("default", "echo after > /root/mark");
    let (code, err) = a.fails(&["snapshot", "restore", "s1"]);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("is damaged") && err.contains("is gone") && err.contains("it was not restored"), "{err}");
    assert_eq!(a.guest("default", "cat /root/mark"), "after\n", "the machine is untouched");
    a.assert_host_untouched();
}

#[test]
fn sync_folders_that_resolve_outside_the_project_are_refused() {
    require!(need::CONTAINERS);
    // A folder symlink and a file symlink in the project, both pointing out of it.
    let a = Attack::new("[defaults]\nbox = { path = \"BOX\" }\nsync = [\"outlink:/x\"]\n");
    std::os::unix::fs::symlink(&a.canary.dir, a.env.project.join("outlink")).unwrap();
    let (code, err) = a.fails(&["up"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("sync folder") && err.contains("resolves outside the project") && err.contains("allow_outside"), "{err}");
    assert_eq!(a.mounts(), Vec::<String>::new());

    std::fs::write(a.env.project.join("Envfile"), "[defaults]\nbox = { path = \"BOX\" }\nsync = [\"secret:/x\"]\n".replace("BOX", &common_box(&a))).unwrap();
    std::os::unix::fs::symlink(a.canary.dir.join("secret"), a.env.project.join("secret")).unwrap();
    let (code, err) = a.fails(&["up"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("resolves outside the project"), "{err}");
    a.assert_host_untouched();
}

/// The box path the Attack's Envfile was written with.
fn common_box(a: &Attack) -> String {
    a.env.path("busybox.box").display().to_string()
}

#[test]
fn a_synced_folder_the_guest_swaps_for_a_symlink_is_refused_at_reload() {
    require!(need::CONTAINERS);
    let a = Attack::new("[defaults]\nbox = { path = \"BOX\" }\nsync = [\".:/project\", \"data:/data\"]\n");
    let _cleanup = DestroyOnDrop(&a.env);
    std::fs::create_dir(a.env.project.join("data")).unwrap();
    a.envy().arg("up").assert().success();
    let canary = a.canary.dir.display().to_string();
    a.guest("default", &format!("rm -rf /project/data && ln -s {canary} /project/data"));
    let (code, err) = a.fails(&["reload"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("data") && err.contains("resolves outside the project"), "{err}");
    a.assert_host_untouched();
}

#[test]
fn the_guest_cannot_rewrite_the_envfile_that_decides_what_it_sees() {
    require!(need::CONTAINERS);
    let a = Attack::new("[defaults]\nbox = { path = \"BOX\" }\nsync = [\".:/project\"]\n");
    let _cleanup = DestroyOnDrop(&a.env);
    a.envy().arg("up").assert().success();
    let envfile = std::fs::read_to_string(a.env.project.join("Envfile")).unwrap();
    let lock = std::fs::read_to_string(a.env.project.join("Envfile.lock")).unwrap();
    let attempt = format!("echo 'sync = [{{ host = \"{}\", guest = \"/h\", allow_outside = true }}]' >> /project/Envfile", a.canary.dir.display());
    let out = a.envy().args(["exec", "--", "sh", "-c", &attempt]).output().unwrap();
    assert!(!out.status.success(), "the Envfile is read-only in the guest");
    let out = a.envy().args(["exec", "--", "sh", "-c", "echo x > /project/Envfile.lock"]).output().unwrap();
    assert!(!out.status.success(), "Envfile.lock is read-only in the guest");
    // The rest of the project stays writable.
    a.guest("default", "echo ok > /project/written");
    assert_eq!(std::fs::read_to_string(a.env.project.join("Envfile")).unwrap(), envfile);
    assert_eq!(std::fs::read_to_string(a.env.project.join("Envfile.lock")).unwrap(), lock);
    assert_eq!(std::fs::read_to_string(a.env.project.join("written")).unwrap(), "ok\n");
    a.assert_host_untouched();
}

#[test]
fn provision_scripts_are_read_only_from_inside_the_project() {
    require!(need::CONTAINERS);
    // Named outside the project: refused when the Envfile is read.
    let a = Attack::new("[defaults]\nbox = { path = \"BOX\" }\nprovision = [{ script = \"../canary/secret\" }]\n");
    let (code, err) = a.fails(&["up"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("Envfile:") && err.contains("outside the project"), "{err}");

    // A script the guest replaced with a symlink out of the project, or with a FIFO
    // that would block envy: refused, never read from the host.
    std::fs::write(a.env.project.join("setup.sh"), "echo provisioned > /root/done\n").unwrap();
    std::fs::write(
        a.env.project.join("Envfile"),
        format!("[defaults]\nbox = {{ path = \"{}\" }}\nsync = [\".:/project\"]\nprovision = [{{ script = \"setup.sh\" }}]\n", common_box(&a)),
    )
    .unwrap();
    let _cleanup = DestroyOnDrop(&a.env);
    a.envy().arg("up").assert().success();
    assert_eq!(a.guest("default", "cat /root/done"), "provisioned\n");
    let canary = a.canary.dir.display().to_string();
    a.guest("default", &format!("rm /project/setup.sh && ln -s {canary}/secret /project/setup.sh"));
    let (code, err) = a.fails(&["provision"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("provision script") && err.contains("resolves outside the project"), "{err}");
    a.guest("default", "rm /project/setup.sh && mkfifo /project/setup.sh");
    let (code, err) = a.fails(&["provision"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
    // What the guest did to the script does not lock the user out: status and destroy work.
    a.envy().arg("status").assert().success();
    a.assert_host_untouched();
    // A script that is missing stops `up` before anything is made.
    std::fs::remove_file(a.env.project.join("setup.sh")).unwrap();
    let (code, err) = a.fails(&["up"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("setup.sh") && err.contains("does not exist"), "{err}");
    assert!(!a.env.machine_dir("default").join("upper").exists(), "nothing was created");
    // A folder where the script should be is named as a folder.
    std::fs::create_dir(a.env.project.join("setup.sh")).unwrap();
    let (code, err) = a.fails(&["up"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("setup.sh is a directory, not a file"), "{err}");
}

#[test]
fn a_vm_sees_no_state_of_envys_and_cannot_swap_a_synced_folder_out_of_the_project() {
    require!(need::VMS);
    let env = TestEnv::new();
    let tiny = common::tiny_vm_box(&env);
    let canary = Canary::new(&env);
    let before = canary.contents();
    std::fs::create_dir(env.project.join("data")).unwrap();
    std::fs::write(
        env.project.join("Envfile"),
        format!(
            "[machine.vm]\nbox = {{ path = \"{}\" }}\nprovider = \"qemu\"\nmemory = \"256MiB\"\ncpus = 1\nsync = [\".:/project\", \"data:/data\"]\n",
            tiny.display()
        ),
    )
    .unwrap();
    let _cleanup = DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();
    let guest = |script: &str| {
        let out = env.envy().args(["exec", "--", "sh", "-c", script]).output().unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(guest("ls -A /project"), "Envfile\nEnvfile.lock\ndata\n");
    // The guest replaces the synced folder with a link to a host folder and waits for
    // the next start; through 9p (mapped-xattr) the link is not even a host symlink.
    guest(&format!("rm -rf /project/data && ln -s {} /project/data", canary.dir.display()));
    let out = env.envy().arg("reload").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("sync folder") && err.contains("data"), "{err}");
    assert_eq!(canary.contents(), before);
    env.envy().args(["destroy", "--force"]).assert().success();
    assert_eq!(canary.contents(), before);
}

#[test]
fn provision_files_come_only_from_the_project_and_land_only_in_the_guest() {
    require!(need::CONTAINERS);
    // A source named outside the project: refused when the Envfile is read.
    let a = Attack::new("[defaults]\nbox = { path = \"BOX\" }\nprovision = [{ file = \"../canary/secret\", to = \"/root/secret\" }]\n");
    let (code, err) = a.fails(&["up"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("provision file") && err.contains("outside the project"), "{err}");
    // A source that is a symlink out of the project: refused at `envy up`, nothing made.
    let canary = a.canary.dir.display().to_string();
    std::os::unix::fs::symlink(&a.canary.dir, a.env.project.join("out")).unwrap();
    let envfile = |from: &str, to: &str| {
        std::fs::write(
            a.env.project.join("Envfile"),
            format!("[defaults]\nbox = {{ path = \"{}\" }}\nsync = [\".:/project\"]\nprovision = [{{ file = \"{from}\", to = \"{to}\" }}]\n", common_box(&a)),
        )
        .unwrap()
    };
    envfile("out/secret", "/root/secret");
    let (code, err) = a.fails(&["up"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("provision file") && err.contains("resolves outside the project"), "{err}");
    assert!(!a.env.machine_dir("default").join("upper").exists(), "nothing was created");
    // A link out of the project inside a copied folder is copied as a link, and the
    // host file it names is not read.
    std::fs::create_dir(a.env.project.join("conf")).unwrap();
    std::fs::write(a.env.project.join("conf/app.conf"), "mine\n").unwrap();
    std::os::unix::fs::symlink(a.canary.dir.join("secret"), a.env.project.join("conf/leak")).unwrap();
    envfile("conf", "/etc/app");
    let _cleanup = DestroyOnDrop(&a.env);
    a.envy().arg("up").assert().success();
    assert_eq!(a.guest("default", "cat /etc/app/app.conf; readlink /etc/app/leak; cat /etc/app/leak 2>&1 || true"),
        format!("mine\n{canary}/secret\ncat: can't open '/etc/app/leak': No such file or directory\n"));
    // The guest plants links at the destination that name the host's canary folder: the
    // copy is unpacked inside the machine, so it lands in the guest's own tree, and the
    // host's canary is as it was.
    a.guest("default", &format!("rm -rf /etc/app && ln -s {canary} /etc/app && mkdir -p {canary}"));
    a.envy().arg("provision").assert().success();
    assert_eq!(a.guest("default", &format!("cat {canary}/app.conf")), "mine\n");
    // A FIFO the guest plants in a copied folder (through the sync) is named, not read.
    a.guest("default", "mkfifo /project/conf/pipe");
    let (code, err) = a.fails(&["provision"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("conf/pipe: is a FIFO, socket or device"), "{err}");
    a.assert_host_untouched();
}

/// CVE-2019-5736: a guest replaces a command with `#!/proc/self/exe`, so that running
/// it makes the kernel run the binary that started it inside the container, which the
/// guest's root then reopens for writing. `envy exec` starts commands from a read-only
/// view of its binary: the guest gets it, running (here as envy's own holder, blocked
/// on its stdin, with the host's libraries copied in so it can start), and cannot open
/// it for writing; the host binary is byte for byte as it was.
#[test]
fn a_guest_command_that_runs_envys_own_binary_cannot_write_it() {
    require!(need::CONTAINERS, &[need::Need::Tool("ldd", "libc-bin")]);
    let a = Attack::new("[defaults]\nbox = { path = \"BOX\" }\nsync = [\".:/project\"]\n[machine.a]\n");
    let _cleanup = DestroyOnDrop(&a.env);
    a.envy().arg("up").assert().success();
    let binary = assert_cmd::cargo::cargo_bin("envy");
    let before = std::fs::read(&binary).unwrap();
    let ldd = std::process::Command::new("ldd").arg(&binary).output().expect("ldd (libc-bin) runs");
    for lib in String::from_utf8_lossy(&ldd.stdout).split_whitespace().filter(|w| w.starts_with('/')) {
        let copy = a.env.project.join("hostlibs").join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        std::fs::copy(lib, &copy).unwrap();
    }
    a.guest("a", "cp -a /project/hostlibs/. / && printf '#!/proc/self/exe __userns-holder\\n' > /bin/probe && chmod +x /bin/probe");

    let mut probe = a.env.envy_std();
    probe.args(["exec", "a", "--", "/bin/probe"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut probe = probe.spawn().unwrap();
    let mut stdout = probe.stdout.take().unwrap();
    let (said, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut byte = [0u8];
        let _ = said.send(std::io::Read::read_exact(&mut stdout, &mut byte).map(|()| byte[0]));
    });
    let first = heard.recv_timeout(std::time::Duration::from_secs(60));
    if !matches!(first, Ok(Ok(b'u'))) {
        let _ = probe.kill();
        let out = probe.wait_with_output().unwrap();
        panic!("envy's binary did not start inside the container as the probe: {first:?} {}", String::from_utf8_lossy(&out.stderr));
    }
    // The probe now waits on its stdin. The guest's root finds it and opens its binary.
    let script = r#"for p in /proc/[0-9]*; do case "$(tr '\0' ' ' < $p/cmdline)" in "/proc/self/exe __userns-holder"*) pid=${p#/proc/};; esac; done
        test -n "$pid" || { echo no probe; exit 1; }
        cmp -s /proc/$pid/exe /project/envy && echo same-binary
        (exec 3>>/proc/$pid/exe) 2>&1; echo "open for writing: $?""#;
    std::fs::copy(&binary, a.env.project.join("envy")).unwrap();
    let seen = a.guest("a", script);
    drop(probe.stdin.take());
    let _ = probe.wait();
    assert!(seen.contains("same-binary"), "the probe runs envy's binary: {seen}");
    assert!(seen.contains("Read-only file system") && !seen.contains("open for writing: 0"), "{seen}");
    assert!(std::fs::read(&binary).unwrap() == before, "the host's envy binary changed");
    a.assert_host_untouched();
}

/// A hostile box makes the places envy mounts on into links to host paths: `/etc`,
/// `/dev` and `/proc` point at folders of the canary that exist only inside the box.
/// Every mount point is resolved inside the machine's root, so the host gets nothing
/// (no hosts file, no device nodes, no folders), the machine starts with its mounts
/// where the links lead in its own root, and /proc's read-only and masked paths hold.
#[test]
fn a_box_whose_mount_points_link_to_host_paths_gets_its_mounts_inside_its_root() {
    require!(need::CONTAINERS);
    let env = TestEnv::new();
    let canary = Canary::new(&env);
    let before = canary.contents();
    let rootfs = env.path("hostile-rootfs");
    common::busybox_rootfs(&rootfs);
    for name in ["etc", "dev", "proc"] {
        let host_path = canary.dir.join(format!("{name}-from-the-box"));
        let inside = rootfs.join(host_path.strip_prefix("/").unwrap());
        std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
        std::fs::rename(rootfs.join(name), &inside).unwrap();
        std::os::unix::fs::symlink(&host_path, rootfs.join(name)).unwrap();
    }
    let box_path = env.path("hostile.box");
    env.envy().args(["box", "build", "--rootfs"]).arg(&rootfs).args(["--name", "hostile", "--version", "1", "-o"]).arg(&box_path).assert().success();
    std::fs::write(env.project.join("Envfile"), format!("[machine.m]\nbox = {{ path = \"{}\" }}\n", box_path.display())).unwrap();
    let _cleanup = DestroyOnDrop(&env);
    env.envy().arg("up").assert().success();

    let script = "grep -w m /etc/hosts; test -c /dev/null && echo null-is-a-device; \
                  (echo 1 > /proc/sys/vm/drop_caches) 2>&1; echo timer_list=$(wc -c < /proc/timer_list); cat /proc/self/comm";
    let seen = env.out(&["exec", "m", "--", "sh", "-c", script]);
    assert!(seen.contains("\tm\n"), "envy's hosts file is the machine's /etc/hosts: {seen}");
    assert!(seen.contains("null-is-a-device"), "{seen}");
    assert!(seen.contains("Read-only file system"), "/proc/sys is read-only through the link: {seen}");
    assert!(seen.contains("timer_list=0\n"), "/proc/timer_list is masked through the link: {seen}");
    assert!(seen.contains("cat\n"), "the machine's /proc is its own: {seen}");
    assert_eq!(canary.contents(), before, "envy made something on the host where the box's links point");
    env.envy().args(["destroy", "--force"]).assert().success();
    assert_eq!(common::mounts_below(env.dir.path()), Vec::<String>::new(), "left mounted");
    assert_eq!(canary.contents(), before);

    // A link to a host folder that the box does not hold cannot be followed anywhere:
    // the start fails naming the mount point, and nothing is left.
    std::fs::remove_dir_all(rootfs.join(canary.dir.join("proc-from-the-box").strip_prefix("/").unwrap())).unwrap();
    let dangling = env.path("dangling.box");
    env.envy().args(["box", "build", "--rootfs"]).arg(&rootfs).args(["--name", "dangling", "--version", "1", "-o"]).arg(&dangling).assert().success();
    std::fs::write(env.project.join("Envfile"), format!("[machine.m]\nbox = {{ path = \"{}\" }}\n", dangling.display())).unwrap();
    let out = env.envy().arg("up").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("/proc"), "names the mount point: {err}");
    assert_eq!(machine(&env.status(), "m")["state"], "not-created", "{err}");
    assert_eq!(common::mounts_below(env.dir.path()), Vec::<String>::new(), "left mounted");
    assert_eq!(common::container_ids(&env.home), Vec::<String>::new());
    assert_eq!(canary.contents(), before);
}

/// A guest's root may make device nodes (CAP_MKNOD is in docker's set) but opens only
/// the default devices: a node for the host's loop-control (which the host's root opens,
/// and which needs no other capability to open) is refused by the container's device
/// cgroup, while /dev/null still works.
#[test]
fn a_guests_root_cannot_open_a_host_device_through_a_node_it_makes() {
    require!(need::CONTAINERS);
    let a = Attack::new("[defaults]\nbox = { path = \"BOX\" }\n[machine.a]\n");
    let _cleanup = DestroyOnDrop(&a.env);
    a.envy().arg("up").assert().success();
    let seen = a.guest("a", "mknod /tmp/loop-control c 10 237 && echo made; (exec 3</tmp/loop-control) 2>&1; echo x > /dev/null && echo null-works");
    assert!(seen.contains("made") && seen.contains("null-works"), "{seen}");
    assert!(seen.contains("Operation not permitted"), "the node the guest made opened: {seen}");
    a.assert_host_untouched();
}
