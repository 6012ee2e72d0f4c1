//! A guest that never answers SSH: `up` gives up with a NotReady error carrying the
//! console's last lines, and leaves no QEMU running. A boot that visibly cannot go on
//! (a kernel panic) fails as soon as the console shows it; one that just stays silent
//! fails after ENVY_BOOT_TIMEOUT. (Its own test binary, one test: it sets
//! ENVY_BOOT_TIMEOUT for the whole process, between its two cases.)

#[path = "qemu_support/mod.rs"]
mod support;

use envy::provider::{MachineState, Provider};
use support::TestMachine;

#[test]
fn a_guest_without_ssh_is_not_ready_and_shows_its_console() {
    // The initramfs hands over to /bin/false: the kernel panics, SSH never comes. The
    // default boot timeout (300 s) applies: the failure comes from the console.
    let m = TestMachine::new("mute", vec![], false);
    let stored = support::with_cmdline(support::tiny_box(), &format!("{} init=/bin/false", support::GOOD_CMDLINE));
    let err = m.provider.up(&m.plan, &stored, &m.ui).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("machine mute did not become ready within"), "{text}");
    assert!(text.contains("its console shows a boot that cannot go on: the guest kernel panicked"), "{text}");
    assert!(text.contains("Kernel panic") || text.contains("Attempted to kill init"), "no console tail in: {text}");
    assert!(matches!(err.downcast_ref::<envy::provider::Error>(), Some(envy::provider::Error::NotReady { .. })));
    assert_eq!(m.qemu_processes(), 0, "QEMU was left running");
    assert_eq!(m.provider.state(&m.plan).unwrap(), MachineState::Stopped);

    // A shell on the console instead of an SSH server: nothing says it is stuck, so
    // the wait ends at the boot timeout.
    std::env::set_var("ENVY_BOOT_TIMEOUT", "20");
    let m = TestMachine::new("silent", vec![], false);
    let stored = support::with_cmdline(support::tiny_box(), &format!("{} init=/bin/sh", support::GOOD_CMDLINE));
    let err = m.provider.up(&m.plan, &stored, &m.ui).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("machine silent did not become ready within 2"), "{text}");
    assert!(text.contains("SSH on 127.0.0.1") && text.contains("never answered"), "{text}");
    assert_eq!(m.qemu_processes(), 0, "QEMU was left running");
}
