//! Two machines of one project reach each other by name over the project segment
//! (a loopback multicast socket network), while each keeps its own NAT and SSH.

#[path = "qemu_support/mod.rs"]
mod support;

use envy::provider::Provider;
use support::TestMachine;

#[test]
fn machines_of_a_project_reach_each_other_by_name() {
    let mut web = TestMachine::new("web", vec![], false);
    let db = web.peer("db");
    let stored = support::tiny_box();
    web.provider.up(&web.plan, &stored, &web.ui).unwrap();
    db.provider.up(&db.plan, &stored, &db.ui).unwrap();

    assert_eq!(web.provider.info(&web.plan).unwrap().ip.as_deref(), Some("192.168.76.10"));
    assert_eq!(db.provider.info(&db.plan).unwrap().ip.as_deref(), Some("192.168.76.11"));
    assert_eq!(db.sh("httpd -p 8080 -h /srv/www"), 0);
    assert_eq!(web.sh("wget -q -O - http://db:8080/ | grep -q 'hello from the tiny vm'"), 0);
    assert_eq!(db.sh("ping -c 1 -W 5 web"), 0);
}
