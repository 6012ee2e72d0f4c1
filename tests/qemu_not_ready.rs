//! A guest that never answers SSH: `up` gives up after ENVY_BOOT_TIMEOUT with a
//! NotReady error carrying the console's last lines, and leaves no QEMU running.
//! (Its own test binary: it sets ENVY_BOOT_TIMEOUT for the whole process.)

#[path = "qemu_support/mod.rs"]
mod support;

use envy::provider::{MachineState, Provider};
use support::TestMachine;

#[test]
fn a_guest_without_ssh_is_not_ready_and_shows_its_console() {
    std::env::set_var("ENVY_BOOT_TIMEOUT", "20");
    let m = TestMachine::new("mute", vec![], false);
    // The initramfs hands over to /bin/false: the kernel panics, SSH never comes.
    let stored = support::with_cmdline(support::tiny_box(), &format!("{} init=/bin/false", support::GOOD_CMDLINE));
    let err = m.provider.up(&m.plan, &stored, &m.ui).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("machine mute did not become ready within 20 s"), "{text}");
    assert!(text.contains("Kernel panic") || text.contains("Attempted to kill init"), "no console tail in: {text}");
    assert!(matches!(err.downcast_ref::<envy::provider::Error>(), Some(envy::provider::Error::NotReady { .. })));
    assert_eq!(m.qemu_processes(), 0, "QEMU was left running");
    assert_eq!(m.provider.state(&m.plan).unwrap(), MachineState::Stopped);
}
