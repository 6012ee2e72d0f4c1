//! Two VMs of one project reach each other by name over the project network (a tap on
//! the project's bridge, inside the project's network namespace), while each keeps its
//! own NAT and SSH; and nothing on the host can join that segment.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use envy::provider::Provider;

use crate::common::qemu::{tiny_box, TestMachine};
use crate::common::{need, require, Need};

#[test]
fn machines_of_a_project_reach_each_other_by_name_and_the_host_cannot_join() {
    // The project network is a network namespace.
    require!(need::VMS, [Need::Root, Need::Tool("ip", "iproute2"), Need::Tool("ssh-keygen", "openssh-client")]);
    let mut web = TestMachine::new("web", vec![], false);
    let db = web.peer("db");
    let stored = tiny_box();

    // Where the old design met: a loopback multicast group any local process could join.
    let id = u32::from_str_radix(&web.plan.project.id, 16).unwrap();
    let old_port = 20000 + (id % 20000) as u16;
    let group = Ipv4Addr::new(230, 0, 0, 1);
    let listener = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, old_port)).unwrap();
    listener.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST).unwrap();
    listener.set_read_timeout(Some(Duration::from_secs(3))).unwrap();

    web.provider.up(&web.plan, &stored, &web.ui).unwrap();
    db.provider.up(&db.plan, &stored, &db.ui).unwrap();

    assert_eq!(web.provider.info(&web.plan).unwrap().ip.as_deref(), Some("10.0.4.20"));
    assert_eq!(db.provider.info(&db.plan).unwrap().ip.as_deref(), Some("10.0.4.21"));
    assert_eq!(db.sh("httpd -p 8080 -h /srv/www"), 0);
    assert_eq!(web.sh("wget -q -O - http://db:8080/ | grep -q 'hello from the tiny vm'"), 0);
    assert_eq!(db.sh("ping -c 3 -W 5 web"), 0);

    // Nothing of that traffic reached the old group, and the segment is not routed
    // from the host: db's server is out of the host's reach.
    let mut buf = [0u8; 2048];
    let heard = listener.recv_from(&mut buf);
    assert!(heard.is_err(), "a host process heard {:?} on the old multicast group", heard);
    // (This host's network may accept any connection itself, so the answer is what counts.)
    let answer = TcpStream::connect_timeout(&"10.0.4.21:8080".parse().unwrap(), Duration::from_secs(2))
        .and_then(|mut stream| {
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
            stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply).map(|_| reply)
        })
        .unwrap_or_default();
    assert!(!answer.contains("hello from the tiny vm"), "the host reached db's server on the project segment: {answer}");
    for machine in [&web, &db] {
        let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", machine.provider.info(&machine.plan).unwrap().pid.unwrap())).unwrap();
        assert!(cmdline.contains("tap,id=net1,fd=") && !cmdline.contains("mcast"), "{cmdline}");
    }

    // The host key was recorded on first contact, in a private per-machine file.
    let known_hosts = web.plan.dir.join("known_hosts");
    assert_eq!(std::fs::metadata(&known_hosts).unwrap().permissions().mode() & 0o777, 0o600);
    let recorded = std::fs::read_to_string(&known_hosts).unwrap();
    assert_eq!(recorded.lines().count(), 1, "one key, whatever the SSH port: {recorded}");
    // Another key on the machine's port (another process took it) is refused, not
    // learnt: with the shared connection closed, exec fails and the record stays.
    let other = web.tmp.path().join("other-key");
    envy::provider::qemu::ssh::ensure_key(&other, "other").unwrap();
    let other_key = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let planted = format!("envy-machine {}", other_key.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
    std::fs::write(&known_hosts, format!("{planted}\n")).unwrap();
    let control = web.plan.dir.join("ssh.ctl");
    std::process::Command::new("ssh").arg("-o").arg(format!("ControlPath={}", control.display())).args(["-O", "exit", "127.0.0.1"]).output().unwrap();
    assert_ne!(web.sh("true"), 0, "exec went through to a machine whose host key changed");
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), format!("{planted}\n"));
    std::fs::write(&known_hosts, &recorded).unwrap();
    assert_eq!(web.sh("true"), 0);

    // The project network goes with its last machine.
    let netns = web.plan.home.runtime_dir().join("netns").join(format!("envy-{}", web.plan.project.id));
    web.provider.halt(&web.plan, true, &web.ui).unwrap();
    assert!(netns.exists(), "db still uses the project network");
    db.provider.halt(&db.plan, true, &db.ui).unwrap();
    assert!(!netns.exists(), "the project network is gone with its last machine");
}
