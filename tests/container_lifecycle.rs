//! The container provider against real runc, overlayfs and slirp4netns: up, exec,
//! forwards, machines by name, halt, a killed init, destroy, and recovery from a
//! killed `envy up`. Run as root.

use envy::provider::{ExecRequest, MachineState, Provider};

use crate::common::container::{forward, send_all, Fixture};
use crate::common::{eventually, free_port, http_get, need, require, Need};

#[test]
fn up_syncs_the_project_passes_stdio_and_exit_codes_and_forwards_a_port() {
    require!(need::CONTAINERS);
    let (port, upload_port) = (free_port(), free_port());
    let f = Fixture::new(&[("web", vec![forward(port, 8080), forward(upload_port, 9000)])]);
    std::fs::write(f.project_dir.join("hello.txt"), "hello from the host\n").unwrap();
    std::fs::create_dir_all(f.project_dir.join("www")).unwrap();
    std::fs::write(f.project_dir.join("www/index.html"), "served from web\n").unwrap();
    assert_eq!(f.state("web"), MachineState::NotCreated);

    f.up("web");
    let (out, code) = f.exec_captured("web", &["cat", "/project/hello.txt"]);
    assert_eq!((out.as_str(), code), ("hello from the host\n", 0));
    let (out, code) = f.exec_captured("web", &["sh", "-c", "echo $ENVY_TEST $(hostname) $(pwd); exit 7"]);
    assert_eq!((out.as_str(), code), ("yes web /project\n", 7));

    // The machine writes into the synced folder; the host sees it.
    assert_eq!(f.sh("web", "echo from-guest > /project/guest.txt"), 0);
    assert_eq!(std::fs::read_to_string(f.project_dir.join("guest.txt")).unwrap(), "from-guest\n");

    assert_eq!(f.sh("web", "httpd -p 8080 -h /project/www"), 0);
    let reply = http_get(port, "/");
    assert!(reply.ends_with("served from web\n"), "{reply}");
    // Full-size segments from the machine through the bridge and slirp4netns (an MTU
    // slirp's tap cannot take would stall here, as it stalls outbound downloads).
    let big: String = (0..200_000).map(|i| format!("{i:09}\n")).collect();
    std::fs::write(f.project_dir.join("www/big.txt"), &big).unwrap();
    let reply = http_get(port, "/big.txt");
    assert!(reply.ends_with(&big), "a 2 MB reply arrives whole ({} bytes came)", reply.len());
    // And full-size segments from slirp4netns into the machine (the way downloads come in).
    f.provider.exec(&f.plan("web"), &envy::provider::ExecRequest {
        command: vec!["sh".into(), "-c".into(), "nc -l -p 9000 > /project/upload.txt 2>/dev/null </dev/null &".into()],
        ..Default::default()
    }).unwrap();
    // slirp4netns accepts on the host at once and drops the data if nothing listens in
    // the machine yet: send only once nc listens, on IPv4 or IPv6 (port 9000 is 2328,
    // LISTEN is 0A).
    let listening = "for i in $(seq 100); do grep -q ':2328 [0-9A-F]*:0000 0A' /proc/net/tcp /proc/net/tcp6 && exit 0; sleep 0.1; done; exit 1";
    assert_eq!(f.sh("web", listening), 0, "nc never listened in the machine");
    send_all(upload_port, big.as_bytes());
    eventually("the upload to land", || std::fs::metadata(f.project_dir.join("upload.txt")).is_ok_and(|m| m.len() == big.len() as u64));

    let info = f.provider.info(&f.plan("web")).unwrap();
    assert_eq!(info.ip.as_deref(), Some("10.0.4.20"));
    let pid = info.pid.unwrap();
    // The Envfile's memory and cpus become cgroup limits (cgroup v1 on this host).
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let memory = cgroups.lines().find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string())).unwrap();
    let limit = std::fs::read_to_string(format!("/sys/fs/cgroup/memory{memory}/memory.limit_in_bytes")).unwrap();
    assert_eq!(limit.trim(), (256u64 << 20).to_string());

    // A second up on a running machine changes nothing.
    f.up("web");
    assert_eq!(info.pid, f.provider.info(&f.plan("web")).unwrap().pid);
}

#[test]
fn machines_of_a_project_reach_each_other_by_name() {
    require!(need::CONTAINERS);
    let f = Fixture::new(&[("db", vec![]), ("web", vec![])]);
    std::fs::create_dir_all(f.project_dir.join("dbroot")).unwrap();
    std::fs::write(f.project_dir.join("dbroot/index.html"), "rows from db\n").unwrap();
    f.up("db");
    f.up("web");
    assert_eq!(f.sh("db", "httpd -p 5432 -h /project/dbroot"), 0);
    let (out, code) = f.exec_captured("web", &["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://db:5432/ && exit 0; sleep 0.2; done; exit 1"]);
    assert_eq!((out.as_str(), code), ("rows from db\n", 0));
    let (hosts, _) = f.exec_captured("db", &["cat", "/etc/hosts"]);
    assert!(hosts.contains("10.0.4.20\tdb") && hosts.contains("10.0.4.21\tweb"), "{hosts}");
}

#[test]
fn halt_keeps_the_machine_layer_and_up_brings_it_back() {
    require!(need::CONTAINERS);
    let f = Fixture::new(&[("web", vec![])]);
    f.up("web");
    assert_eq!(f.sh("web", "echo kept > /root/note"), 0);
    f.provider.halt(&f.plan("web"), false, &f.ui).unwrap();
    assert_eq!(f.state("web"), MachineState::Stopped);
    assert!(f.mounts().is_empty(), "halt unmounts: {:?}", f.mounts());
    assert!(f.namespaces().is_empty(), "halt frees the network: {:?}", f.namespaces());
    assert_eq!(f.slirp_pid(), None);
    let err = f.provider.exec(&f.plan("web"), &ExecRequest { command: vec!["true".into()], ..Default::default() }).unwrap_err();
    assert_eq!(err.to_string(), "machine web is stopped; run `envy up web` first");

    f.up("web");
    let (out, code) = f.exec_captured("web", &["cat", "/root/note"]);
    assert_eq!((out.as_str(), code), ("kept\n", 0));
}

#[test]
fn a_killed_init_reads_as_stopped_and_up_restarts_it() {
    require!(need::CONTAINERS);
    let port = free_port();
    let f = Fixture::new(&[("web", vec![forward(port, 8080)])]);
    std::fs::write(f.project_dir.join("index.html"), "back again\n").unwrap();
    f.up("web");
    let pid = f.provider.info(&f.plan("web")).unwrap().pid.unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    eventually("the container to stop", || f.state("web") == MachineState::Stopped);

    f.up("web");
    assert_eq!(f.sh("web", "httpd -p 8080 -h /project"), 0);
    assert!(http_get(port, "/").ends_with("back again\n"));
}

#[test]
fn a_dead_slirp_leaves_the_machine_running_and_up_restores_the_forwards() {
    require!(need::CONTAINERS);
    let (port, db_port) = (free_port(), free_port());
    let f = Fixture::new(&[("web", vec![forward(port, 8080)]), ("db", vec![forward(db_port, 8080)])]);
    std::fs::write(f.project_dir.join("index.html"), "still here\n").unwrap();
    f.up("web");
    f.up("db");
    assert_eq!(f.sh("web", "httpd -p 8080 -h /project"), 0);
    assert_eq!(f.sh("db", "httpd -p 8080 -h /project"), 0);
    let slirp = f.slirp_pid().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(slirp as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    eventually("slirp4netns to die", || !crate::common::running(slirp));
    // The machine runs on without its network to the host: it reads running, and
    // commands still work in it.
    assert_eq!(f.state("web"), MachineState::Running);
    assert_eq!(f.sh("web", "test -e /project/index.html"), 0);

    f.up("web");
    assert_ne!(f.slirp_pid(), Some(slirp));
    assert!(http_get(port, "/").ends_with("still here\n"), "the running httpd is reachable again");
    assert_eq!(f.state("db"), MachineState::Running);
    assert!(http_get(db_port, "/").ends_with("still here\n"), "the other machine's forwards come back too");

    // An up killed right after starting slirp4netns leaves its tap off the bridge.
    let project_netns = f.home.runtime_dir().join("netns").join(format!("envy-{}", f.project.id));
    let loose = std::process::Command::new("nsenter")
        .arg(format!("--net={}", project_netns.display()))
        .args(["ip", "link", "set", "tap0", "nomaster"])
        .status()
        .unwrap();
    assert!(loose.success());
    f.up("web");
    assert!(http_get(port, "/").ends_with("still here\n"));
}

#[test]
fn destroy_leaves_no_process_mount_namespace_or_file() {
    require!(need::CONTAINERS);
    let f = Fixture::new(&[("web", vec![forward(free_port(), 80)]), ("db", vec![])]);
    std::fs::write(f.project_dir.join("keep.txt"), "project data\n").unwrap();
    f.up("web");
    f.up("db");
    assert_eq!(f.sh("web", "echo x > /project/from-web; echo y > /root/layer"), 0);
    let slirp = f.slirp_pid().unwrap();
    let init = f.provider.info(&f.plan("web")).unwrap().pid.unwrap();
    // A mount someone made inside the machine's root on the host: destroy must
    // unmount it, never delete through it.
    let inside = f.plan("web").dir.join("rootfs/mnt");
    std::fs::create_dir_all(&inside).unwrap();
    let bound = std::process::Command::new("mount").arg("--bind").arg(&f.project_dir).arg(&inside).status().unwrap();
    assert!(bound.success());

    f.provider.destroy(&f.plan("web"), &f.ui).unwrap();
    assert_eq!(f.state("web"), MachineState::NotCreated);
    assert_eq!(f.state("db"), MachineState::Running, "the other machine keeps running");
    eventually("the container's init to end", || !crate::common::running(init));

    f.provider.destroy(&f.plan("db"), &f.ui).unwrap();
    assert!(f.container_ids().is_empty(), "{:?}", f.container_ids());
    assert!(!crate::common::running(slirp), "slirp4netns goes with the last machine");
    assert!(f.mounts().is_empty(), "{:?}", f.mounts());
    assert!(f.namespaces().is_empty(), "{:?}", f.namespaces());
    for machine in ["web", "db"] {
        let dir = f.project.machine_dir(machine);
        let left: Vec<_> = std::fs::read_dir(&dir).into_iter().flatten().collect();
        assert!(left.is_empty(), "{} still holds {left:?}", dir.display());
    }
    assert_eq!(std::fs::read_to_string(f.project_dir.join("keep.txt")).unwrap(), "project data\n");
    assert_eq!(std::fs::read_to_string(f.project_dir.join("from-web")).unwrap(), "x\n");
    assert!(f.stored.dir.join("rootfs/bin/busybox").exists(), "the box is untouched");
}

#[test]
fn up_recovers_from_an_up_killed_halfway() {
    require!(need::CONTAINERS);
    let f = Fixture::new(&[("web", vec![])]);
    let plan = f.plan("web");
    // What a killed `envy up` may leave: the overlay mounted, the machine's namespace
    // made without its link, the project namespace without slirp4netns.
    for dir in ["upper", "work", "rootfs"] {
        std::fs::create_dir_all(plan.dir.join(dir)).unwrap();
    }
    let lower = f.stored.rootfs().unwrap();
    let options = format!("lowerdir={},upperdir={},workdir={}", lower.display(), plan.dir.join("upper").display(), plan.dir.join("work").display());
    let mounted = std::process::Command::new("mount").args(["-t", "overlay", "overlay", "-o", &options]).arg(plan.dir.join("rootfs")).status().unwrap();
    assert!(mounted.success());
    for netns in [format!("envy-{}", f.project.id), plan.runtime_id.clone()] {
        assert!(std::process::Command::new("ip").args(["netns", "add", &netns]).status().unwrap().success());
    }
    assert_eq!(f.state("web"), MachineState::Stopped);

    f.up("web");
    let (out, code) = f.exec_captured("web", &["cat", "/etc/box-release"]);
    assert_eq!((out.as_str(), code), ("busybox test box\n", 0));
    let overlays = f.mounts().into_iter().filter(|m| m.ends_with("/rootfs")).count();
    assert_eq!(overlays, 1, "one overlay, not two: {:?}", f.mounts());
}

#[test]
fn a_missing_box_rootfs_is_a_clear_error_and_creates_nothing() {
    require!(need::CONTAINERS);
    let f = Fixture::new(&[("web", vec![])]);
    let mut stored = f.stored.clone();
    stored.dir = f.root().join("no-such-box");
    let err = f.provider.up(&f.plan("web"), &stored, &f.ui).unwrap_err();
    assert!(err.to_string().contains(&format!("no-such-box/rootfs is missing; run `envy box verify {}`", &f.stored.digest[..12])), "{err}");
    assert_eq!(f.state("web"), MachineState::NotCreated);
    assert!(f.namespaces().is_empty() && f.mounts().is_empty() && f.slirp_pid().is_none());
    assert!(!f.plan("web").dir.exists());

    let err = f.provider.exec(&f.plan("web"), &ExecRequest { command: vec!["true".into()], ..Default::default() }).unwrap_err();
    assert_eq!(err.to_string(), "machine web has not been created; run `envy up web` first");
}

#[test]
fn a_taken_host_port_names_the_port() {
    require!(need::CONTAINERS);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let f = Fixture::new(&[("web", vec![forward(port, 80)])]);
    let err = f.provider.up(&f.plan("web"), &f.stored, &f.ui).unwrap_err();
    assert!(err.to_string().contains(&format!("cannot forward 127.0.0.1:{port} to machine web port 80")), "{err}");
}

#[test]
fn a_box_without_a_shell_fails_with_runcs_reason_and_leaves_nothing() {
    require!(need::CONTAINERS);
    let f = Fixture::new(&[("web", vec![forward(free_port(), 80)])]);
    std::fs::remove_file(f.stored.dir.join("rootfs/bin/sh")).unwrap();
    let err = f.provider.up(&f.plan("web"), &f.stored, &f.ui).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("runc failed") && text.contains("starting container") && text.contains("/bin/sh"), "{text}");
    assert_eq!(f.state("web"), MachineState::NotCreated);
    assert!(f.container_ids().is_empty(), "{:?}", f.container_ids());
    assert!(f.namespaces().is_empty() && f.mounts().is_empty() && f.slirp_pid().is_none());
    let left: Vec<_> = std::fs::read_dir(f.plan("web").dir).into_iter().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// envy's netlink requests in a namespace the test made: a refusal names what was
/// asked, the link and the namespace, and changes nothing; deleting a link that is not
/// there is not an error (a machine's veth goes with its namespace).
#[test]
fn netlink_changes_name_what_the_kernel_refused_and_a_missing_link_is_already_deleted() {
    require!([Need::Root, Need::Tool("ip", "iproute2")]);
    let name = format!("envy-nltest-{}", std::process::id());
    assert!(std::process::Command::new("ip").args(["netns", "add", &name]).status().unwrap().success());
    struct Remove<'a>(&'a str);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["netns", "delete", self.0]).status();
        }
    }
    let _netns = Remove(&name);
    let path = std::path::PathBuf::from("/run/netns").join(&name);
    let changes = envy::provider::netlink::Changes::in_namespace(&path).unwrap();
    let names = || changes.links().unwrap().into_iter().map(|l| l.name).collect::<Vec<_>>();

    changes.add_bridge("br-t", 1500).unwrap();
    changes.set_up("lo").unwrap();
    assert_eq!(names(), ["lo", "br-t"]);
    let again = format!("{:#}", changes.add_bridge("br-t", 1500).unwrap_err());
    assert!(again.contains(&format!("cannot add bridge br-t in network namespace {}", path.display())) && again.contains("File exists"), "{again}");
    let missing = format!("{:#}", changes.set_up("no-such").unwrap_err());
    assert!(missing.contains("cannot set link no-such up") && missing.contains("No such device"), "{missing}");
    let unknown = format!("{:#}", changes.join_bridge("lo", 1500, "no-bridge").unwrap_err());
    assert!(unknown.contains("cannot find link no-bridge in network namespace"), "{unknown}");
    assert_eq!(names(), ["lo", "br-t"], "the refusals changed nothing");

    changes.delete_link("br-t").unwrap();
    changes.delete_link("br-t").unwrap();
    assert_eq!(names(), ["lo"]);
}
