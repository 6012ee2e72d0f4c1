//! Envfile errors: each names the file, the line and column, and the key.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No Envfile in the folder or any parent.
    #[error("no Envfile in {} or any parent folder; run `envy init` to write one", .dir.display())]
    NotFound { dir: PathBuf },
    #[error("cannot read {}", .path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// A problem at a place in the file.
    #[error("{}:{line}:{column}: {message}", .path.display())]
    At { path: PathBuf, line: usize, column: usize, message: String },
    /// A problem with the lock file.
    #[error("{}: {message}", .path.display())]
    Lock { path: PathBuf, message: String },
    /// A host path the Envfile names (sync folder, provision script) resolved to
    /// something envy refuses, checked when it is used, not only when it is parsed.
    #[error("{}: machine {machine}: {key} {}: {problem}", .envfile.display(), .path.display())]
    HostPath { envfile: PathBuf, machine: String, key: &'static str, path: PathBuf, problem: String },
    /// A machine named on the command line is not in the Envfile.
    #[error("no machine named {name:?} in {}; it has: {known}", .path.display())]
    UnknownMachine { path: PathBuf, name: String, known: String },
}
