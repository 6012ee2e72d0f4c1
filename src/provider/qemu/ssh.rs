//! SSH into a machine with the system OpenSSH client: a key pair per machine, a
//! per-machine known_hosts, and one ControlMaster connection kept warm so an `exec`
//! costs a local socket round trip instead of a handshake.

use std::ffi::OsString;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, LineEnding, PrivateKey};

use crate::model::shell_quote;
use crate::process::Process;
use crate::provider::{Error, ExecRequest};

/// How long the shared connection outlives its last user.
const CONTROL_PERSIST: &str = "600";
/// Per-attempt connect timeout while waiting for the guest.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between readiness attempts.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How long to wait for the server's banner before trying again: ssh's own connect
/// timeout. A forwarded port accepts at once even while the guest's network is down,
/// so ssh is started only once a banner came. A busy guest under TCG
/// (cloud-init's later stages) took 1.5 s to send it, and a shorter wait drops the
/// connection its sshd is still starting only to open another; a guest that refuses
/// closes the connection at once, so the wait costs nothing then.
const BANNER_TIMEOUT: Duration = PROBE_CONNECT_TIMEOUT;

/// Where and how to reach one machine's SSH server.
#[derive(Debug, Clone)]
pub struct SshTarget {
    pub port: u16,
    pub user: String,
    /// The private keys tried, in order (the machine's own; Vagrant's at a first login).
    pub keys: Vec<PathBuf>,
    pub known_hosts: PathBuf,
    /// ControlMaster socket.
    pub control: PathBuf,
    /// stderr of background connections (the master outlives the command that made it).
    pub log: PathBuf,
}

/// Creates the machine's known_hosts empty and 0600 (or makes an existing one 0600):
/// ssh appends to the file it finds and keeps its mode.
pub fn ensure_known_hosts(path: &Path) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", path.display()))?;
    Ok(())
}

/// Creates the machine's ed25519 key pair unless both halves exist: `key` in OpenSSH's
/// private key format (unencrypted, as `ssh -i` reads it) and `key.pub` as an
/// authorized_keys line, both 0600. Made in-process (ssh-key crate, OS randomness), so
/// bringing up a VM needs no ssh-keygen. The public half is written last: when it is
/// there, the private half was written whole before it.
pub fn ensure_key(key: &Path, comment: &str) -> Result<()> {
    let public_path = key.with_extension("pub");
    if key.exists() && public_path.exists() {
        return Ok(());
    }
    let mut private = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
        .with_context(|| format!("cannot make an ed25519 key pair for {}", key.display()))?;
    private.set_comment(comment);
    let encode = |e: ssh_key::Error| anyhow::anyhow!("cannot encode the machine key {}: {e}", key.display());
    let private_text = private.to_openssh(LineEnding::LF).map_err(encode)?;
    let public_line = private.public_key().to_openssh().map_err(encode)?;
    crate::fsutil::write_atomic(key, private_text.as_bytes())?;
    crate::fsutil::write_atomic(&public_path, format!("{public_line}\n").as_bytes())?;
    Ok(())
}


/// The remote command line for a request: a single argument is a shell command line,
/// several are an argv (each quoted).
pub fn remote_command(request: &ExecRequest, default_workdir: &str, env: &[(String, String)]) -> Result<String, Error> {
    let workdir = request.workdir.as_deref().unwrap_or(default_workdir);
    let mut line = format!("cd {} && ", shell_quote(workdir));
    for (key, value) in env.iter().chain(&request.env) {
        // The name is pasted unquoted into `export`.
        if !crate::model::is_env_name(key) {
            return Err(Error::BadEnvName { key: key.clone() });
        }
        line += &format!("export {}={}; ", key, shell_quote(value));
    }
    match request.command.as_slice() {
        [] => line += "exec ${SHELL:-/bin/sh} -l",
        [single] => line += single,
        argv => line += &format!("exec {}", argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")),
    }
    Ok(line)
}

impl SshTarget {
    /// Options shared by every connection.
    fn options(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut opt = |o: String| {
            args.push("-o".into());
            args.push(o.into());
        };
        // The keys are envy's; no agent keys or passwords are tried.
        for key in &self.keys {
            opt(format!("IdentityFile={}", key.display()));
        }
        opt("IdentitiesOnly=yes".into());
        opt("BatchMode=yes".into());
        // Each machine makes its host key at first boot: the first connection records
        // it in the machine's own known_hosts, and from then on a different key (another
        // process on the forwarded port) is refused. The alias keys the entry to the
        // machine, not to its SSH port, which can change between boots.
        opt("StrictHostKeyChecking=accept-new".into());
        opt(format!("UserKnownHostsFile={}", self.known_hosts.display()));
        opt("HostKeyAlias=envy-machine".into());
        opt("LogLevel=ERROR".into());
        opt(format!("ControlPath={}", self.control.display()));
        opt(format!("Port={}", self.port));
        opt(format!("User={}", self.user));
        args
    }

    fn ssh(&self) -> Process {
        Process::new("ssh").args(self.options())
    }

    /// Whether the shared connection's socket is there (a stale one only costs a
    /// direct connection: ssh falls back by itself).
    pub fn master_exists(&self) -> bool {
        self.control.exists()
    }

    /// Opens the shared connection and runs `true` through it. All stdio is detached so
    /// the backgrounded master holds no pipe of ours open.
    pub fn probe(&self) -> bool {
        let probe = self
            .ssh()
            .args(["-o", "ControlMaster=auto", "-o"])
            .arg(format!("ControlPersist={CONTROL_PERSIST}"))
            .args(["-o"])
            .arg(format!("ConnectTimeout={}", PROBE_CONNECT_TIMEOUT.as_secs()))
            .args(["127.0.0.1", "true"])
            .doing("waiting for the machine's SSH server")
            .quiet();
        let probe = match std::fs::OpenOptions::new().create(true).append(true).open(&self.log) {
            Ok(log) => probe.stderr_to(log),
            Err(_) => probe,
        };
        probe.stdin_null().status().is_ok_and(|s| s.success())
    }

    /// Waits until the guest answers `true` over SSH, at most `timeout`. `alive` is asked
    /// between attempts and ends the wait early with its error (e.g. QEMU exited).
    pub fn wait_ready(&self, timeout: Duration, mut alive: impl FnMut() -> Result<(), String>) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.banner_seen() && self.probe() {
                return Ok(());
            }
            alive()?;
            if Instant::now() >= deadline {
                return Err(format!("SSH on 127.0.0.1:{} never answered", self.port));
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
    }

    /// Whether an SSH server answers on the port with its banner (`SSH-`).
    fn banner_seen(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, BANNER_TIMEOUT) else { return false };
        let mut banner = [0u8; 4];
        stream.set_read_timeout(Some(BANNER_TIMEOUT)).is_ok()
            && stream.read_exact(&mut banner).is_ok()
            && &banner == b"SSH-"
    }

    /// Runs a remote command line with the caller's stdio (stdin from the file `stdin`
    /// when given); returns its exit code (255 when ssh itself failed).
    pub fn run(&self, remote: &str, tty: bool, stdin: Option<&Path>) -> Result<i32> {
        if !self.master_exists() {
            // Make the master first, detached, so it never holds the caller's stdio.
            self.probe();
        }
        let mut ssh = self
            .ssh()
            .args(["-o", "ControlMaster=no"])
            .arg(if tty { "-tt" } else { "-T" })
            .args(["127.0.0.1", "--", remote])
            .doing("running a command in the machine");
        if let Some(path) = stdin {
            ssh = ssh.stdin_file(std::fs::File::open(path).with_context(|| format!("cannot open {} to send it over ssh", path.display()))?);
        }
        let status = ssh.status()?;
        Ok(status.code().unwrap_or(255))
    }

    /// Runs a remote command line through the shared connection (its stdin the file
    /// `stdin`, else empty) and returns its stdout. What it prints is the guest's doing:
    /// more than `max` bytes, or no end within `limit`, is an error and ssh is ended.
    /// Its stderr goes to the SSH log.
    pub fn output(&self, remote: &str, stdin: Option<&Path>, max: usize, limit: Duration) -> Result<Vec<u8>> {
        if !self.master_exists() {
            self.probe();
        }
        let doing = format!("running `{remote}` in the machine on SSH port {}", self.port);
        let mut ssh = self
            .ssh()
            .args(["-o", "ControlMaster=no", "-T", "127.0.0.1", "--", remote])
            .doing(doing.clone())
            .stdout_piped();
        ssh = match stdin {
            Some(path) => ssh.stdin_file(std::fs::File::open(path).with_context(|| format!("cannot open {} to send it over ssh", path.display()))?),
            None => ssh.stdin_null(),
        };
        if let Ok(log) = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&self.log) {
            ssh = ssh.stderr_to(log);
        }
        let mut child = ssh.spawn().map_err(Error::from)?;
        let mut stdout = child.stdout.take().expect("piped stdout");
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        let mut chunk = [0u8; 64 << 10];
        let read = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut poll = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&stdout), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd for the duration of the call.
            if unsafe { libc::poll(&mut poll, 1, left.as_millis().min(i32::MAX as u128) as i32) } <= 0 {
                break Err(format!("`{remote}` gave no end within {} s", limit.as_secs()));
            }
            match stdout.read(&mut chunk) {
                Ok(0) => break Ok(()),
                Ok(n) if out.len() + n > max => break Err(format!("`{remote}` printed more than {max} bytes")),
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(format!("cannot read what `{remote}` printed: {e}")),
            }
        };
        if read.is_err() {
            let _ = child.kill();
        }
        let status = child.wait().context("cannot wait for ssh")?;
        if let Err(problem) = read {
            return Err(Error::GuestOutput { port: self.port, problem, log: self.log.clone() }.into());
        }
        if !status.success() {
            let stderr = format!("  | (ssh's stderr is in {})", self.log.display());
            return Err(Error::Process(crate::process::ProcessError::Failed { tool: "ssh".into(), doing, status, stderr }).into());
        }
        Ok(out)
    }

    /// Closes the shared connection (before the machine stops or is destroyed).
    pub fn close_master(&self) {
        if self.master_exists() {
            let _ = self.ssh().args(["-O", "exit", "127.0.0.1"]).doing("closing the shared SSH connection").quiet().stdin_null().status();
            let _ = std::fs::remove_file(&self.control);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_is_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        ensure_known_hosts(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, "envy-machine ssh-ed25519 AAAA\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        ensure_known_hosts(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "envy-machine ssh-ed25519 AAAA\n");
    }

    #[test]
    fn the_key_pair_is_private_matching_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        ensure_key(&key, "envy test").unwrap();
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        for path in [&key, &key.with_extension("pub")] {
            assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o600, "{}", path.display());
        }
        let private = PrivateKey::from_openssh(std::fs::read_to_string(&key).unwrap()).unwrap();
        assert!(!private.is_encrypted());
        assert_eq!(format!("{}\n", private.public_key().to_openssh().unwrap()), public);
        assert!(public.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5") && public.ends_with(" envy test\n"), "{public}");
        // Both halves there: kept. The public half lost: a new pair replaces the old.
        ensure_key(&key, "envy test").unwrap();
        assert_eq!(std::fs::read_to_string(key.with_extension("pub")).unwrap(), public);
        std::fs::remove_file(key.with_extension("pub")).unwrap();
        ensure_key(&key, "envy test").unwrap();
        let renewed = PrivateKey::from_openssh(std::fs::read_to_string(&key).unwrap()).unwrap();
        assert_ne!(renewed.public_key(), private.public_key());
        assert_eq!(format!("{}\n", renewed.public_key().to_openssh().unwrap()), std::fs::read_to_string(key.with_extension("pub")).unwrap());
    }

    #[test]
    fn quoting_survives_a_shell() {
        assert_eq!(shell_quote("plain-word"), "plain-word");
        assert_eq!(shell_quote("it's a $HOME"), "'it'\\''s a $HOME'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn argv_is_quoted_and_a_single_argument_is_a_shell_line() {
        let request = ExecRequest { command: vec!["echo".into(), "a b".into()], ..Default::default() };
        assert_eq!(remote_command(&request, "/", &[]).unwrap(), "cd / && exec echo 'a b'");
        let request = ExecRequest {
            command: vec!["echo $HOME | wc -c".into()],
            workdir: Some("/project dir".into()),
            env: vec![("A".into(), "x y".into())],
            ..Default::default()
        };
        assert_eq!(
            remote_command(&request, "/", &[]).unwrap(),
            "cd '/project dir' && export A='x y'; echo $HOME | wc -c"
        );
    }

    #[test]
    fn a_bad_variable_name_is_refused() {
        let request = ExecRequest { command: vec!["true".into()], env: vec![("A;rm".into(), "x".into())], ..Default::default() };
        let err = remote_command(&request, "/", &[]).unwrap_err().to_string();
        assert!(err.contains("environment variable name \"A;rm\" is not valid"), "{err}");
    }
}
