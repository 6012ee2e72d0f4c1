#[path = "qemu_support/mod.rs"]
mod support;
use envy::provider::Provider;
use std::time::Instant;
#[test]
fn scratch() {
    let m = support::TestMachine::new("bench", vec![], false);
    let b = support::tiny_box();
    m.provider.up(&m.plan, &b, &m.ui).unwrap();
    m.provider.halt(&m.plan, false, &m.ui).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let log = m.plan.dir.join("console.log");
        let _ = std::fs::remove_file(&log);
        let th = std::thread::spawn(move || { loop { if std::fs::read_to_string(&log).unwrap_or_default().contains("envy-guest: ready") { eprintln!("BENCH console ready {:?}", t.elapsed()); break; } std::thread::sleep(std::time::Duration::from_millis(20)); } });
        m.provider.up(&m.plan, &b, &m.ui).unwrap();
        th.join().unwrap();
        eprintln!("BENCH up {:?}", t.elapsed());
        let t = Instant::now();
        for _ in 0..20 { assert_eq!(m.sh("true"), 0); }
        eprintln!("BENCH exec {:?}", t.elapsed() / 20);
        let t = Instant::now();
        m.provider.halt(&m.plan, false, &m.ui).unwrap();
        eprintln!("BENCH halt {:?}", t.elapsed());
    }
    std::fs::copy(m.plan.dir.join("seed.img"), "/tmp/bench-seed.img").unwrap();
    std::fs::copy(m.plan.dir.join("id_ed25519"), "/tmp/bench-key").unwrap();
    std::fs::write("/tmp/bench-box", support::tiny_box_dir().display().to_string()).unwrap();
}
