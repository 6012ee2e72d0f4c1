//! envy's own container runtime: it makes a machine's container itself (create.rs)
//! and keeps its state, so `envy up` starts no Go program per machine (`runc run` is
//! two: runc and runc's init, most of the time of an up). It serves where it is
//! tested: root on a cgroup v1 or hybrid host (cgroups.rs), and a normal user whose
//! containers have no cgroup (bundle::Limits::NotApplied). Elsewhere runc runs the
//! container, and runtime.rs sends each command to whichever made it.
//!
//! Its state is a folder per container under the runtime dir holding a state file of
//! runc's form (runtime::StateFile): the init's pid and start time, and its cgroups.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use nix::sys::signal::Signal;

use super::bundle::Limits;
use super::runtime::{open_pidfd, read_state, ContainerState, Recorded, StateFile};
use crate::process::Pidfd;
use super::{cgroups, create};

/// How long a killed container's init may take to end.
const KILL_WAIT: Duration = Duration::from_secs(10);

pub struct Native {
    root: PathBuf,
}

impl Native {
    pub fn with_root(root: PathBuf) -> Native {
        Native { root }
    }

    /// Whether envy's runtime makes this user's containers on this host.
    pub fn serves_this_host() -> bool {
        match Limits::for_this_user() {
            Limits::Root => cgroups::has_v1_devices(cgroups::hierarchies()),
            Limits::NotApplied => true,
            Limits::Delegated(_) => false,
        }
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Whether this runtime made container `id` (and has not deleted it).
    pub fn has(&self, id: &str) -> bool {
        self.dir(id).symlink_metadata().is_ok()
    }

    pub fn state(&self, id: &str) -> Result<Option<ContainerState>> {
        match read_state(&self.dir(id))? {
            Recorded::Absent => Ok(None),
            Recorded::Known(state) => Ok(Some(state)),
            Recorded::Unknown => bail!(
                "envy's state file {} is not one envy wrote; run `envy destroy` and `envy up` to make the machine again",
                self.dir(id).join("state.json").display()
            ),
        }
    }

    /// The state file, when there is one.
    fn recorded(&self, id: &str) -> Result<Option<StateFile>> {
        let path = self.dir(id).join("state.json");
        let Some(text) = crate::fsutil::read_private(&path)? else { return Ok(None) };
        serde_json::from_slice(&text).map(Some).with_context(|| format!("envy's state file {} is not one envy wrote", path.display()))
    }

    /// Makes and starts the container of `bundle` (its config.json), started from
    /// envy's sealed binary `exe`; the init's stdio goes to `log`.
    pub fn start(&self, id: &str, bundle: &Path, log: &Path, exe: &OwnedFd) -> Result<()> {
        crate::fsutil::create_private_dir_of_trees(&self.root)?;
        let dir = self.dir(id);
        crate::fsutil::create_private_dir(&dir)?;
        let started = create::start(bundle, log, exe);
        let recorded = started.and_then(|state| {
            let json = serde_json::to_vec(&state)?;
            crate::fsutil::write_atomic(&dir.join("state.json"), &json).inspect_err(|_| {
                let _ = kill_and_wait(&state);
                let _ = cgroups::remove(&state.cgroup_paths);
            })
        });
        if recorded.is_err() {
            let _ = crate::fsutil::remove_path(&dir);
        }
        recorded
    }

    /// Sends `signal` to the container's init.
    pub fn kill(&self, id: &str, signal: Signal) -> Result<()> {
        let state = self.recorded(id)?.with_context(|| format!("container {id} has no state file"))?;
        let pidfd = init_pidfd(&state).with_context(|| format!("container {id} is not running"))?;
        pidfd.signal(signal).with_context(|| format!("cannot send {signal} to container {id}"))
    }

    /// Kills the container if it still runs, waits for its init to end, and removes
    /// its cgroups and state.
    pub fn delete(&self, id: &str) -> Result<()> {
        if let Some(state) = self.recorded(id)? {
            // A frozen process cannot die (a container without a freezer has nothing to thaw).
            let _ = cgroups::set_frozen(&state.cgroup_paths, false);
            kill_and_wait(&state).with_context(|| format!("cannot stop container {id}"))?;
            cgroups::remove(&state.cgroup_paths)?;
        }
        crate::fsutil::remove_path(&self.dir(id))
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        self.set_frozen(id, true)
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        self.set_frozen(id, false)
    }

    fn set_frozen(&self, id: &str, frozen: bool) -> Result<()> {
        let state = self.recorded(id)?.with_context(|| format!("container {id} has no state file"))?;
        cgroups::set_frozen(&state.cgroup_paths, frozen).with_context(|| format!("cannot {} container {id}", if frozen { "pause" } else { "resume" }))
    }
}

/// A pidfd of the container's init, if it still runs.
fn init_pidfd(state: &StateFile) -> Option<Pidfd> {
    open_pidfd(state.init_process_pid, state.init_process_start)
}

/// SIGKILLs the init (the kernel then kills every process of its pid namespace) and
/// waits until it has ended.
fn kill_and_wait(state: &StateFile) -> Result<()> {
    let Some(pidfd) = init_pidfd(state) else { return Ok(()) };
    match pidfd.signal(Signal::SIGKILL) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
        Err(e) => return Err(e).context("cannot kill the container's init"),
    }
    if !pidfd.wait_for_end(KILL_WAIT) {
        bail!("the container's init (pid {}) did not end within {} s of SIGKILL", state.init_process_pid, KILL_WAIT.as_secs());
    }
    Ok(())
}
