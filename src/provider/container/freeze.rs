//! Holding a running container still while its files are copied (snapshots, share):
//! the cgroup freezer where the container has a cgroup; otherwise (a normal user's
//! container on a host that delegates no cgroup, bundle::Limits::NotApplied) every
//! process in its pid namespace is stopped with SIGSTOP and continued after. A
//! process the guest had stopped itself is continued too.

use std::os::unix::fs::MetadataExt as _;
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::bundle::Limits;
use super::runtime::Runtime;

/// How a container was held.
pub enum Frozen {
    Cgroup,
    Signals { init: u32 },
}

/// Freezes the running container `id` whose init is `init`.
pub fn freeze(runtime: &Runtime, id: &str, init: u32) -> Result<Frozen> {
    if !matches!(Limits::for_this_user(), Limits::NotApplied) {
        runtime.pause(id)?;
        return Ok(Frozen::Cgroup);
    }
    // A fork between two passes is caught by the next; a pass that stops nothing new
    // and finds every process stopped ends it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut settled = true;
        for pid in processes_of(init) {
            match crate::state::proc_stat(pid).map(|s| s.state) {
                Some('T' | 't' | 'Z' | 'X') | None => {}
                Some(_) => {
                    settled = false;
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGSTOP);
                }
            }
        }
        if settled {
            return Ok(Frozen::Signals { init });
        }
        if Instant::now() >= deadline {
            thaw(runtime, id, &Frozen::Signals { init })?;
            anyhow::bail!(crate::provider::Error::Host {
                doing: format!("stop the processes of container {id} to copy its files"),
                cause: std::io::Error::other("they kept starting new ones for 10 seconds"),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Undoes `freeze`.
pub fn thaw(runtime: &Runtime, id: &str, frozen: &Frozen) -> Result<()> {
    match frozen {
        Frozen::Cgroup => runtime.resume(id),
        Frozen::Signals { init } => {
            for pid in processes_of(*init) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
            }
            Ok(())
        }
    }
}

/// The processes in `init`'s pid namespace (init included), as /proc lists them.
fn processes_of(init: u32) -> Vec<u32> {
    let ns = |pid: u32| std::fs::metadata(format!("/proc/{pid}/ns/pid")).ok().map(|m| (m.dev(), m.ino()));
    let Some(target) = ns(init) else { return Vec::new() };
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| ns(*pid) == Some(target))
        .collect()
}
