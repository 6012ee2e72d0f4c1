//! A guest that never answers SSH: `up` gives up with a NotReady error carrying the
//! console's last lines, and leaves no QEMU running. A boot that visibly cannot go on
//! (a kernel panic) fails as soon as the console shows it; one that just stays silent
//! fails after ENVY_BOOT_TIMEOUT (given to the `envy` process it runs: the test
//! threads share this process's environment, so no test sets a variable in it).

use envy::provider::{MachineState, Provider};

use crate::common::qemu::{qemu_processes, tiny_box, with_cmdline, TestMachine, GOOD_CMDLINE};
use crate::common::{need, require, tiny_vm_box_variant, DestroyOnDrop, TestEnv};

/// `up` of the tiny box booted with `init=INIT`, which must fail from what the console
/// shows (the default boot timeout, 300 s, applies) and leave the machine stopped.
/// Returns the error's text.
fn up_fails_from_the_console(machine: &str, init: &str) -> String {
    let m = TestMachine::new(machine, vec![], false);
    let stored = with_cmdline(tiny_box(), &format!("{GOOD_CMDLINE} init={init}"));
    let err = m.provider.up(&m.plan, &stored, &m.ui).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains(&format!("machine {machine} did not become ready within")), "{text}");
    assert!(matches!(err.downcast_ref::<envy::provider::Error>(), Some(envy::provider::Error::NotReady { .. })));
    assert_eq!(m.qemu_processes(), 0, "QEMU was left running");
    assert_eq!(m.provider.state(&m.plan).unwrap(), MachineState::Stopped);
    text
}

#[test]
fn a_guest_whose_kernel_panics_is_not_ready_at_once_and_shows_its_console() {
    require!(need::VMS);
    // The initramfs hands over to /bin/false: the kernel panics, SSH never comes.
    let text = up_fails_from_the_console("mute", "/bin/false");
    assert!(text.contains("its console shows a boot that cannot go on: the guest kernel panicked"), "{text}");
    assert!(text.contains("Kernel panic") || text.contains("Attempted to kill init"), "no console tail in: {text}");
}

#[test]
fn a_guest_that_drops_to_an_initramfs_shell_is_not_ready_at_once() {
    require!(need::VMS);
    // The root filesystem has no such init: the initramfs says so and opens its rescue shell.
    let text = up_fails_from_the_console("lost", "/sbin/no-such-init");
    assert!(text.contains("its console shows a boot that cannot go on: the guest dropped to an initramfs shell"), "{text}");
    assert!(text.contains("Target filesystem doesn't have requested /sbin/no-such-init."), "no console tail in: {text}");
}

#[test]
fn a_silent_guest_is_not_ready_after_the_boot_timeout() {
    require!(need::VMS);
    // A box whose init never starts its SSH server (box build sees one installed):
    // nothing says it is stuck, so the wait ends at the boot timeout.
    let env = TestEnv::new();
    let _cleanup = DestroyOnDrop(&env);
    let silent = tiny_vm_box_variant(&env, None, |rootfs| {
        let inittab = rootfs.join("etc/inittab");
        let text = std::fs::read_to_string(&inittab).unwrap().replace("::once:/sbin/envy-services\n", "");
        std::fs::write(inittab, text).unwrap();
    });
    std::fs::write(
        env.project.join("Envfile"),
        format!("[machine.silent]\nbox = {{ path = \"{}\" }}\nprovider = \"qemu\"\nmemory = \"256MiB\"\ncpus = 1\n", silent.display()),
    )
    .unwrap();
    let out = env.envy().env("ENVY_BOOT_TIMEOUT", "20").arg("up").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("machine silent did not become ready within 2"), "{err}");
    assert!(err.contains("SSH on 127.0.0.1") && err.contains("never answered"), "{err}");
    let runtime_id = format!("envy-{}-silent", envy::plan::project_id(&env.project));
    assert_eq!(qemu_processes(&runtime_id), 0, "QEMU was left running");
    assert_eq!(env.status()["machines"][0]["state"], "stopped");
}
