//! Talking to the person (or CI job) at the other end: progress and messages on
//! stderr, data on stdout, prompts only on a terminal.

use std::io::IsTerminal;

use anyhow::{bail, Result};

/// How this invocation may talk to its user.
#[derive(Debug, Clone)]
pub struct Ui {
    /// Prompts are allowed: stdin and stderr are terminals and CI is not set.
    pub interactive: bool,
    /// Progress bars may be drawn (stderr is a terminal and CI is not set).
    pub fancy: bool,
    /// Print machine-readable JSON on stdout instead of tables.
    pub json: bool,
    /// Only errors on stderr.
    pub quiet: bool,
}

impl Ui {
    pub fn detect(json: bool, quiet: bool) -> Ui {
        let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
        let stderr_tty = std::io::stderr().is_terminal();
        Ui {
            interactive: !ci && std::io::stdin().is_terminal() && stderr_tty,
            fancy: !ci && stderr_tty && !quiet,
            json,
            quiet,
        }
    }

    /// A one-line step on stderr (`==> web: starting`).
    pub fn step(&self, msg: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("==> {msg}");
        }
    }

    /// A warning the user should read even when things go on.
    pub fn warn(&self, msg: impl std::fmt::Display) {
        eprintln!("warning: {msg}");
    }

    /// Asks yes/no on a terminal. Without one, fails and names the flag that answers it.
    pub fn confirm(&self, question: &str, flag: &str) -> Result<bool> {
        if !self.interactive {
            bail!("{question} Not asking without a terminal; pass {flag} to confirm.");
        }
        Ok(dialoguer::Confirm::new()
            .with_prompt(question)
            .default(false)
            .interact()?)
    }

    /// A byte-progress indicator: a bar on a terminal, a few plain lines otherwise.
    pub fn progress(&self, what: &str, total: Option<u64>) -> Progress {
        Progress::new(self, what, total)
    }
}

/// Progress of one transfer; finishes (and clears the bar) when dropped.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    what: String,
    total: Option<u64>,
    done: u64,
    next_report: u64,
    quiet: bool,
}

impl Progress {
    fn new(ui: &Ui, what: &str, total: Option<u64>) -> Progress {
        let bar = ui.fancy.then(|| {
            let bar = match total {
                Some(n) => indicatif::ProgressBar::new(n),
                None => indicatif::ProgressBar::new_spinner(),
            };
            let style = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(what.to_string());
            bar
        });
        Progress {
            bar,
            what: what.to_string(),
            total,
            done: 0,
            next_report: 0,
            quiet: ui.quiet,
        }
    }

    /// Sets the position (e.g. after resuming a download from byte N).
    pub fn set(&mut self, done: u64) {
        self.done = done;
        self.tick();
    }

    pub fn add(&mut self, n: u64) {
        self.done += n;
        self.tick();
    }

    fn tick(&mut self) {
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
            return;
        }
        // Plain mode: a line at each quarter (or each 256 MiB when the size is unknown).
        if self.quiet || self.done < self.next_report {
            return;
        }
        let step = match self.total {
            Some(t) if t > 0 => (t / 4).max(1),
            _ => 256 << 20,
        };
        match self.total {
            Some(t) if t > 0 => eprintln!("    {}: {}%", self.what, self.done * 100 / t),
            _ => eprintln!("    {}: {} MiB", self.what, self.done >> 20),
        }
        self.next_report = (self.done / step + 1) * step;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Sets up `tracing` on stderr: warnings by default, debug with `-v`, trace with `-vv`;
/// `ENVY_LOG` (an EnvFilter string) overrides.
pub fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "envy=debug",
        _ => "envy=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ENVY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}
