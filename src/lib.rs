//! envy: reproducible dev environments from verified boxes, booted as QEMU/KVM
//! machines or OCI containers. `run` is the whole program; `main.rs` only calls it.

pub mod autoforward;
pub mod boxes;
pub mod cli;
pub mod commands;
pub mod config;
pub mod context;
pub mod copy_in;
pub mod doctor;
pub mod envfile;
pub mod error;
pub mod fsutil;
pub mod lifecycle;
pub mod model;
pub mod plan;
pub mod process;
pub mod provider;
pub mod ready;
pub mod signals;
pub mod state;
pub mod terminal;
pub mod ui;
pub mod userns;
pub mod vagrantfile;
pub mod workspace;

/// Parses the command line, runs the command and returns the process exit code.
pub fn run() -> i32 {
    use clap::Parser;
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { error::code::USAGE } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    ui::init_logging(cli.global.verbose, cli.global.quiet);
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            error::report(&err);
            error::exit_code(&err)
        }
    }
}
