//! What envy remembers between commands, and how it stays honest: each project's
//! records under `$ENVY_HOME/projects/` (versioned, written atomically), the per-project lock, and
//! pid files tied to the boot id so a record from before a reboot reads as stale.

mod home;
mod lock;
mod pidfile;
pub mod record;
pub mod registry;

pub use home::Home;
pub use lock::ProjectLock;
pub use pidfile::{boot_id, proc_stat, start_time, PidFile, ProcStat};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another command holds the project lock and the caller asked not to wait.
    #[error("another envy command is working on {} (pid {holder}); wait for it, or run again without --no-wait to queue behind it", .project.display())]
    Busy { project: PathBuf, holder: String },
    /// The machine has never been brought up.
    #[error("machine {machine} has not been created; run `envy up {machine}` first")]
    NotCreated { machine: String },
    /// The machine exists but is not running.
    #[error("machine {machine} is {state}; run `envy up {machine}` first")]
    NotRunning { machine: String, state: String },
    /// A record is unreadable or from an unknown format version.
    #[error("{}: {message}", .path.display())]
    BadRecord { path: PathBuf, message: String },
    /// envy's runtime dir (sockets, pid files) is not safely the user's own.
    #[error("envy's runtime folder {} {problem}; envy keeps its sockets there and uses only a folder this user owns and no one else can open: remove it, or set XDG_RUNTIME_DIR (or ENVY_HOME) to a private folder", .path.display())]
    RuntimeDir { path: PathBuf, problem: String },
}
