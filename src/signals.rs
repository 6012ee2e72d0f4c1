//! Ctrl-C and SIGTERM for commands that must clean up before they exit (`envy run`,
//! `envy share --serve`): the signal is only noted; the command checks and unwinds.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, Result};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM set a flag instead of killing the process. Children
/// still get the terminal's Ctrl-C themselves (exec resets handlers).
pub fn catch_interrupts() -> Result<()> {
    let action = SigAction::new(SigHandler::Handler(note), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("cannot install the {signal} handler"))?;
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived since `catch_interrupts`.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// A long step (a download, a boot, a ready check) stopped because the user or CI
/// asked; envy exits 130, as shells do after Ctrl-C.
#[derive(Debug, thiserror::Error)]
#[error("interrupted while {doing}")]
pub struct Interrupted {
    pub doing: String,
}

/// `Interrupted` when a signal arrived; long loops call this between steps.
pub fn check(doing: impl FnOnce() -> String) -> Result<(), Interrupted> {
    match interrupted() {
        true => Err(Interrupted { doing: doing() }),
        false => Ok(()),
    }
}
