//! The one way envy runs a host tool (runc, ip, slirp4netns, qemu-img, qemu-system,
//! ssh, tar, mkfs.ext4, ...): a `Process` builder, and one `ProcessError` for what can
//! go wrong. A missing tool names the Debian package that installs it (the one table
//! of them, which `envy doctor` and scripts/deps.sh share); a failed one shows its exit
//! status and the last lines of its stderr, framed. Nothing here knows envy's other
//! modules.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::FileExt as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;
use std::os::fd::AsRawFd as _;

/// Lines of a failed tool's stderr shown in its error.
const STDERR_TAIL_LINES: usize = 20;

/// Each tool envy runs, and the Debian package that ships it. scripts/deps.sh installs
/// the same packages (a test checks the two agree).
pub const PACKAGES: &[(&str, &str)] = &[
    ("runc", "runc"),
    ("slirp4netns", "slirp4netns"),
    ("tar", "tar"),
    ("zstd", "zstd"),
    ("qemu-img", "qemu-utils"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("ssh", "openssh-client"),
    ("mkfs.ext4", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("dmesg", "util-linux"),
    ("newuidmap", "uidmap"),
    ("newgidmap", "uidmap"),
];

/// The Debian package that ships `tool` (a name or a path), if envy knows it.
pub fn package_of(tool: &str) -> Option<&'static str> {
    let name = Path::new(tool).file_name().and_then(OsStr::to_str).unwrap_or(tool);
    PACKAGES.iter().find(|(t, _)| *t == name).map(|(_, p)| *p)
}

/// What the install advice for a missing tool says.
pub fn install_advice(tool: &str) -> String {
    match package_of(tool) {
        Some(package) => format!("install it with `apt-get install {package}` and try again"),
        None => "install it, or put it on PATH, and try again".to_string(),
    }
}

/// The last `STDERR_TAIL_LINES` lines of a tool's output, each behind a `  | ` frame
/// so they stand apart from envy's own words.
pub fn frame(text: &str) -> String {
    crate::model::last_lines(text, STDERR_TAIL_LINES).lines().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n")
}

/// A host tool could not be run, or ran and failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The tool is not installed (or not on PATH); `advice` says how to install it.
    #[error("{tool} is not installed or not on PATH: {advice}")]
    Missing { tool: String, advice: String },
    /// The tool is there but could not be started (permissions, a bad stdin file, ...).
    #[error("cannot start {tool} while {doing}: {source}")]
    CouldNotStart { tool: String, doing: String, source: std::io::Error },
    /// The tool ran and exited unsuccessfully; its stderr tail is framed in `stderr`.
    #[error("{tool} failed ({}) while {doing}{}", describe(*.status), if .stderr.is_empty() { String::new() } else { format!(":\n{}", .stderr) })]
    Failed { tool: String, doing: String, status: ExitStatus, stderr: String },
}

/// A command's exit code as a shell reports it: its own, or 128 + the signal that
/// ended it.
pub fn exit_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// "exit status 2" or "killed by signal 9", for messages.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Where a tool's stdin comes from.
#[derive(Debug)]
enum Input {
    Null,
    Inherit,
    Bytes(Vec<u8>),
    File(File),
}

/// Where a tool's stdout or stderr goes.
#[derive(Debug)]
enum Sink {
    Capture,
    Inherit,
    Null,
    /// Appended to a file opened for reading and appending; on failure, what the tool
    /// wrote there is its framed stderr.
    File(File),
}

/// Code run in the child between fork and exec.
type PreExec = Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// A host tool to run: program, arguments, stdio and what it is doing (which completes
/// "failed while ..." in its error). Each way to run it consumes the builder.
#[must_use]
pub struct Process {
    program: OsString,
    args: Vec<OsString>,
    doing: String,
    stdin: Option<Input>,
    stdout: Option<Sink>,
    stderr: Option<Sink>,
    pre_exec: Option<PreExec>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.program.to_string_lossy())?;
        self.args.iter().try_for_each(|a| write!(f, " {}", a.to_string_lossy()))
    }
}

impl Process {
    pub fn new(program: impl AsRef<OsStr>) -> Process {
        let program = program.as_ref().to_owned();
        Process { doing: format!("running {}", program.to_string_lossy()), program, args: Vec::new(), stdin: None, stdout: None, stderr: None, pre_exec: None }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Process {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Process {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// What the tool is doing, for its error: "creating the machine disk /x".
    pub fn doing(mut self, doing: impl Into<String>) -> Process {
        self.doing = doing.into();
        self
    }

    /// Writes `bytes` to the tool's stdin (then closes it); for `run` and `output`.
    pub fn stdin_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Process {
        self.stdin = Some(Input::Bytes(bytes.into()));
        self
    }

    /// The tool reads `file` as its stdin.
    pub fn stdin_file(mut self, file: File) -> Process {
        self.stdin = Some(Input::File(file));
        self
    }

    /// The tool's stdin is empty (`status` would give it the caller's).
    pub fn stdin_null(mut self) -> Process {
        self.stdin = Some(Input::Null);
        self
    }

    /// The tool's stdout and stderr are discarded.
    pub fn quiet(mut self) -> Process {
        self.stdout = Some(Sink::Null);
        self.stderr = Some(Sink::Null);
        self
    }

    /// The tool's stdout and stderr are appended to `log`, which must be open for
    /// reading too: a failure's error frames what the tool wrote there.
    pub fn output_to(mut self, log: &File) -> std::io::Result<Process> {
        self.stdout = Some(Sink::File(log.try_clone()?));
        self.stderr = Some(Sink::File(log.try_clone()?));
        Ok(self)
    }

    /// Only stderr goes to `log` (stdout stays as the way of running it sets it).
    /// Hands the tool's stdout to the caller as a pipe (`spawn`), to read as it comes.
    pub fn stdout_piped(mut self) -> Process {
        self.stdout = Some(Sink::Capture);
        self
    }

    pub fn stderr_to(mut self, log: File) -> Process {
        self.stderr = Some(Sink::File(log));
        self
    }

    /// Runs `hook` in the child between fork and exec (setsid, umask, fd numbers).
    ///
    /// # Safety
    /// `hook` runs in a forked child of a possibly multi-threaded process: it may only
    /// make async-signal-safe calls (see `CommandExt::pre_exec`).
    pub unsafe fn pre_exec(mut self, hook: impl Fn() -> std::io::Result<()> + Send + Sync + 'static) -> Process {
        self.pre_exec = Some(Arc::new(hook));
        self
    }

    /// The `std::process::Command` every way of running goes through; stdio not chosen
    /// falls back to the given defaults. Logged at debug level.
    fn build(&mut self, stdin: Input, stdout: Sink, stderr: Sink) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        command.stdin(match self.stdin.take().unwrap_or(stdin) {
            Input::Null => Stdio::null(),
            Input::Inherit => Stdio::inherit(),
            Input::Bytes(_) => Stdio::piped(),
            Input::File(f) => Stdio::from(f),
        });
        let sink = |s: Sink| match s {
            Sink::Capture => Stdio::piped(),
            Sink::Inherit => Stdio::inherit(),
            Sink::Null => Stdio::null(),
            Sink::File(f) => Stdio::from(f),
        };
        command.stdout(sink(self.stdout.take().unwrap_or(stdout)));
        command.stderr(sink(self.stderr.take().unwrap_or(stderr)));
        if let Some(hook) = self.pre_exec.clone() {
            // SAFETY: the hook's own contract (`Process::pre_exec`) is async-signal-safety.
            unsafe {
                command.pre_exec(move || hook());
            }
        }
        tracing::debug!(command = ?self, doing = %self.doing, "running");
        command
    }

    /// The configured `std::process::Command` as `status` would run it, for callers that
    /// read its arguments (a detached tool needs none: `pre_exec` and `spawn` cover it).
    pub fn command(mut self) -> Command {
        self.build(Input::Inherit, Sink::Inherit, Sink::Inherit)
    }

    fn tool(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }

    fn start_error(&self, e: std::io::Error) -> ProcessError {
        let tool = self.tool();
        if e.kind() == ErrorKind::NotFound {
            ProcessError::Missing { advice: install_advice(&tool), tool }
        } else {
            ProcessError::CouldNotStart { tool, doing: self.doing.clone(), source: e }
        }
    }

    fn spawn_command(&self, command: &mut Command) -> Result<Child, ProcessError> {
        command.spawn().map_err(|e| self.start_error(e))
    }

    /// Runs the tool to the end, its output captured (unless sent elsewhere), whatever
    /// its exit status; stdin is empty unless given.
    pub fn output(mut self) -> Result<Output, ProcessError> {
        let input = match &mut self.stdin {
            Some(Input::Bytes(bytes)) => Some(std::mem::take(bytes)),
            _ => None,
        };
        let mut command = self.build(Input::Null, Sink::Capture, Sink::Capture);
        let mut child = self.spawn_command(&mut command)?;
        let stdin = child.stdin.take();
        let talk = |e: std::io::Error| ProcessError::CouldNotStart { tool: self.tool(), doing: self.doing.clone(), source: e };
        // Written from a thread while the output is read, so a chatty tool cannot block on
        // a full pipe while envy blocks on its stdin.
        std::thread::scope(|scope| {
            let writer = scope.spawn(move || match (stdin, input) {
                (Some(mut stdin), Some(bytes)) => match stdin.write_all(&bytes) {
                    // A tool may exit without reading all of its input; its status tells.
                    Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
                    other => other,
                },
                _ => Ok(()),
            });
            let output = child.wait_with_output().map_err(talk)?;
            writer.join().unwrap_or(Ok(())).map_err(talk)?;
            Ok(output)
        })
    }

    /// Runs the tool and returns its stdout; a non-zero exit is `ProcessError::Failed`
    /// with the tail of its stderr (or of the log its stderr went to).
    pub fn run(self) -> Result<String, ProcessError> {
        let log = match &self.stderr {
            Some(Sink::File(f)) => Some((f.try_clone().map_err(|e| self.start_error(e))?, f.metadata().map_or(0, |m| m.len()))),
            _ => None,
        };
        let (tool, doing) = (self.tool(), self.doing.clone());
        let out = self.output()?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = match log {
            Some((file, start)) => read_from(&file, start),
            None => String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        Err(ProcessError::Failed { tool, doing, status: out.status, stderr: frame(&stderr) })
    }

    /// Runs the tool with the caller's stdio (unless set otherwise) and returns its exit
    /// status, whatever it is.
    pub fn status(mut self) -> Result<ExitStatus, ProcessError> {
        let mut command = self.build(Input::Inherit, Sink::Inherit, Sink::Inherit);
        let mut child = self.spawn_command(&mut command)?;
        child.wait().map_err(|e| ProcessError::CouldNotStart { tool: self.tool(), doing: self.doing.clone(), source: e })
    }

    /// Starts the tool and leaves it running (stdio null unless set): for what outlives
    /// the command, like slirp4netns or virtiofsd.
    pub fn spawn(mut self) -> Result<Child, ProcessError> {
        let mut command = self.build(Input::Null, Sink::Null, Sink::Null);
        self.spawn_command(&mut command)
    }
}

/// What was appended to `file` from byte `start` on (empty when it cannot be read).
fn read_from(file: &File, start: u64) -> String {
    let end = file.metadata().map_or(start, |m| m.len());
    let mut bytes = vec![0; end.saturating_sub(start) as usize];
    match file.read_exact_at(&mut bytes, start) {
        Ok(()) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    }
}

/// A process named by a pidfd: unlike its pid, the descriptor can never come to name
/// another process that reuses the number.
#[derive(Debug)]
pub struct Pidfd(std::os::fd::OwnedFd);

impl Pidfd {
    /// The process `pid`, if there is one (it may have ended and wait to be reaped).
    pub fn open(pid: u32) -> Option<Pidfd> {
        // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let fd = libc::c_int::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: a descriptor the kernel just returned, owned by no one else.
        Some(Pidfd(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    /// Sends `signal` to the process; ESRCH once it has ended.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> std::io::Result<()> {
        // SAFETY: a pidfd we own, a signal number, no siginfo, no flags.
        let sent = unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, self.as_raw_fd(), signal as libc::c_int, std::ptr::null::<libc::siginfo_t>(), 0)
        };
        if sent != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `limit` for the process to end; whether it has. A process has ended
    /// once it is a zombie: the pidfd turns readable then, whenever its parent (perhaps
    /// not envy, perhaps a slow PID 1) reaps it.
    pub fn wait_for_end(&self, limit: Duration) -> bool {
        wait_readable(self.as_raw_fd(), limit)
    }
}

impl std::os::fd::AsRawFd for Pidfd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// Waits until `fd` is readable (or its writer closed), at most `limit`.
pub fn wait_readable(fd: std::os::fd::RawFd, limit: Duration) -> bool {
    let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let millis = libc::c_int::try_from(limit.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut poll, 1, millis) > 0 }
}

/// Ends the process `pid`: SIGTERM, then SIGKILL if it is still there after 3 s; waits
/// up to 3 s more, and reaps it if it is envy's child.
pub fn stop(pid: u32) {
    let Some(process) = Pidfd::open(pid) else { return };
    for signal in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGKILL] {
        if process.signal(signal).is_err() || process.wait_for_end(Duration::from_secs(3)) {
            break;
        }
    }
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_its_package() {
        let err = Process::new("/nonexistent/qemu-img").run().unwrap_err();
        assert!(matches!(err, ProcessError::Missing { .. }), "{err:?}");
        assert_eq!(err.to_string(), "/nonexistent/qemu-img is not installed or not on PATH: install it with `apt-get install qemu-utils` and try again");

        let err = Process::new("envy-no-such-tool").run().unwrap_err();
        assert_eq!(err.to_string(), "envy-no-such-tool is not installed or not on PATH: install it, or put it on PATH, and try again");
    }

    #[test]
    fn a_failure_frames_the_stderr_tail_and_names_the_status() {
        let script = "for i in $(seq 1 30); do echo line$i >&2; done; echo out; exit 3";
        let err = Process::new("sh").args(["-c", script]).doing("counting").run().unwrap_err();
        assert!(matches!(&err, ProcessError::Failed { status, .. } if status.code() == Some(3)), "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with("sh failed (exit status 3) while counting:\n  | line11\n"), "{text}");
        assert!(text.ends_with("  | line30"), "{text}");
        assert!(!text.contains("line10\n") && !text.contains("out"), "{text}");

        let err = Process::new("false").run().unwrap_err();
        assert_eq!(err.to_string(), "false failed (exit status 1) while running false");

        let err = Process::new("sh").args(["-c", "kill -9 $$"]).run().unwrap_err();
        assert!(matches!(&err, ProcessError::Failed { status, .. } if status.signal() == Some(9)), "{err:?}");
        assert!(err.to_string().starts_with("sh failed (killed by signal 9)"), "{err}");
    }

    #[test]
    fn input_reaches_stdin_and_stdout_comes_back() {
        let out = Process::new("sh").args(["-c", "tr a-z A-Z"]).stdin_bytes("hello\n").run().unwrap();
        assert_eq!(out, "HELLO\n");
        // More than a pipe holds, both ways: neither side may block the other.
        let big = "x".repeat(1 << 20);
        let out = Process::new("cat").stdin_bytes(big.clone()).run().unwrap();
        assert_eq!(out.len(), big.len());
        // Without input, stdin is empty rather than the caller's.
        assert_eq!(Process::new("cat").run().unwrap(), "");
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(b"from a file", 0).unwrap();
        assert_eq!(Process::new("cat").stdin_file(file).run().unwrap(), "from a file");
    }

    #[test]
    fn output_returns_whatever_the_status_and_status_passes_the_code() {
        let out = Process::new("sh").args(["-c", "echo o; echo e >&2; exit 4"]).output().unwrap();
        assert_eq!((out.status.code(), &out.stdout[..], &out.stderr[..]), (Some(4), &b"o\n"[..], &b"e\n"[..]));
        let status = Process::new("sh").args(["-c", "exit 5"]).quiet().status().unwrap();
        assert_eq!(status.code(), Some(5));
    }

    #[test]
    fn a_failure_logged_to_a_file_frames_only_the_new_part() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tool.log");
        std::fs::write(&path, "old run\n").unwrap();
        let log = File::options().read(true).append(true).open(&path).unwrap();
        let err = Process::new("sh").args(["-c", "echo said; echo broke >&2; exit 1"]).output_to(&log).unwrap().run().unwrap_err();
        assert_eq!(err.to_string(), "sh failed (exit status 1) while running sh:\n  | said\n  | broke");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old run\nsaid\nbroke\n");
    }

    #[test]
    fn a_spawned_tool_runs_the_pre_exec_hook() {
        // SAFETY: setsid is async-signal-safe.
        let mut child = unsafe {
            Process::new("sleep").arg("5").pre_exec(|| {
                libc::setsid();
                Ok(())
            })
        }
        .spawn()
        .unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        assert_eq!(nix::unistd::getsid(Some(pid)).unwrap(), pid, "the child leads its own session");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn deps_sh_installs_the_package_of_every_tool() {
        let deps = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/deps.sh")).unwrap();
        for (tool, package) in PACKAGES {
            assert!(deps.contains(&format!("[{tool}]={package}\n")), "scripts/deps.sh lacks [{tool}]={package}");
        }
    }
}
