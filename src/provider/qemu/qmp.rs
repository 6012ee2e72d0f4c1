//! Talking to a running QEMU over its QMP socket with the qapi crate: handshake,
//! status, power-down, quit, the snapshot commands (jobs, and disk-only internal
//! snapshots), and human monitor commands (host forwards).

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use qapi::qmp;

use crate::provider::Error;

/// How long a quick question (status, power button, quit) may take. QEMU serves one
/// QMP client at a time, so a second client queues behind a long snapshot: a status
/// probe must give up rather than hang.
pub const QUICK: Duration = Duration::from_secs(3);
/// How long a snapshot job may take (saving writes all of the guest's memory).
pub const SLOW: Duration = Duration::from_secs(300);

type Stream = qapi::Stream<BufReader<UnixStream>, UnixStream>;

/// A QMP session that has completed capability negotiation.
pub struct Qmp {
    inner: qapi::Qmp<Stream>,
    socket: String,
}

impl Qmp {
    /// Connects and negotiates; every reply must then arrive within `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp, Error> {
        let name = socket.display().to_string();
        let fail = |e: &dyn std::fmt::Display| Error::QmpUnreachable { socket: name.clone(), problem: e.to_string() };
        let stream = UnixStream::connect(socket).map_err(|e| fail(&e))?;
        stream.set_read_timeout(Some(timeout)).map_err(|e| fail(&e))?;
        let reader = stream.try_clone().map_err(|e| fail(&e))?;
        let mut inner = qapi::Qmp::new(qapi::Stream::new(BufReader::new(reader), stream));
        inner.handshake().map_err(|e| fail(&e))?;
        Ok(Qmp { inner, socket: name })
    }

    fn execute<C: qapi::Command>(&mut self, command: &C) -> Result<C::Ok, Error> {
        self.inner.execute(command).map_err(|e| Error::QmpRefused { command: C::NAME, socket: self.socket.clone(), problem: e.to_string() })
    }

    /// QEMU's run state (`running`, `paused`, `shutdown`, ...).
    pub fn status(&mut self) -> Result<qmp::RunState, Error> {
        Ok(self.execute(&qmp::query_status {})?.status)
    }

    /// Presses the virtual power button: the guest shuts itself down.
    pub fn powerdown(&mut self) -> Result<(), Error> {
        self.execute(&qmp::system_powerdown {}).map(drop)
    }

    /// Ends QEMU at once (like pulling the plug).
    pub fn quit(&mut self) -> Result<(), Error> {
        // QEMU may close the socket before the reply arrives; both mean it is going.
        match self.inner.execute(&qmp::quit {}) {
            Ok(_) => Ok(()),
            Err(qapi::ExecuteError::Io(_)) => Ok(()),
            Err(e) => Err(Error::QmpRefused { command: <qmp::quit as qapi::Command>::NAME, socket: self.socket.clone(), problem: e.to_string() }),
        }
    }

    /// Runs a human monitor (HMP) command and returns the text it printed: HMP commands
    /// that have no QMP form (hostfwd_add) report their errors only there.
    pub fn hmp(&mut self, command_line: &str) -> Result<String, Error> {
        self.execute(&qmp::human_monitor_command { command_line: command_line.to_string(), cpu_index: None })
    }

    /// A disk-only internal snapshot of a running drive (works while 9p blocks snapshot-save).
    pub fn snapshot_disk(&mut self, device: &str, name: &str) -> Result<(), Error> {
        let snapshot = qmp::BlockdevSnapshotInternal { device: device.to_string(), name: name.to_string() };
        self.execute(&qmp::blockdev_snapshot_internal_sync(snapshot)).map(drop)
    }

    /// Runs a snapshot job (snapshot-save/-load/-delete of internal snapshot `tag` on the
    /// block node `node`, which also holds the VM state) and waits until it concludes.
    pub fn snapshot_job(&mut self, job: SnapshotJob, tag: &str, node: &str) -> Result<(), Error> {
        let job_id = format!("envy-{}-{tag}", job.verb());
        let (tag, devices) = (tag.to_string(), vec![node.to_string()]);
        let (vmstate, job_id_) = (node.to_string(), job_id.clone());
        match job {
            SnapshotJob::Save => self.execute(&qmp::snapshot_save { job_id: job_id_, tag, vmstate, devices }),
            SnapshotJob::Load => self.execute(&qmp::snapshot_load { job_id: job_id_, tag, vmstate, devices }),
            SnapshotJob::Delete => self.execute(&qmp::snapshot_delete { job_id: job_id_, tag, devices }),
        }?;
        let deadline = Instant::now() + SLOW;
        loop {
            let jobs = self.execute(&qmp::query_jobs {})?;
            let Some(info) = jobs.into_iter().find(|j| j.id == job_id) else {
                return Err(Error::QmpJob { job: job_id, problem: "is gone from its job list".into() });
            };
            if matches!(info.status, qmp::JobStatus::concluded) {
                self.execute(&qmp::job_dismiss { id: job_id.clone() })?;
                return match info.error {
                    None => Ok(()),
                    Some(why) => Err(Error::QmpJob { job: job_id, problem: format!("could not {} the snapshot: {why}", job.verb()) }),
                };
            }
            if Instant::now() >= deadline {
                return Err(Error::QmpJob {
                    job: job_id,
                    problem: format!("did not finish within {} s; check the machine with `envy status`", SLOW.as_secs()),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The snapshot jobs QEMU runs for envy.
#[derive(Debug, Clone, Copy)]
pub enum SnapshotJob {
    Save,
    Load,
    Delete,
}

impl SnapshotJob {
    fn verb(self) -> &'static str {
        match self {
            SnapshotJob::Save => "save",
            SnapshotJob::Load => "load",
            SnapshotJob::Delete => "delete",
        }
    }
}
