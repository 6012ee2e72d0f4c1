//! What every command needs, built once: where envy keeps its data, the user's
//! global settings and how to talk to the terminal.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::config::Config;
use crate::state::Home;
use crate::ui::Ui;

/// Built once per command invocation.
pub struct Context {
    pub home: Home,
    pub config: Config,
    pub ui: Ui,
    /// The directory the command runs in (where the Envfile is looked for).
    pub cwd: PathBuf,
    /// `--no-wait`: fail instead of queueing behind another command.
    pub no_wait: bool,
}

impl Context {
    pub fn new(global: &crate::cli::GlobalArgs) -> Result<Context> {
        let home = Home::locate()?;
        let config = Config::load(&home.config_file())?;
        let ui = Ui::detect(global.json, global.quiet);
        let cwd = match &global.project {
            Some(dir) => std::path::absolute(dir)
                .with_context(|| format!("cannot use project folder {}", dir.display()))?,
            None => std::env::current_dir().context("cannot read the current directory")?,
        };
        Ok(Context { home, config, ui, cwd, no_wait: global.no_wait })
    }
}
