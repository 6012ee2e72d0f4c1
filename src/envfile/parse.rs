//! Reading an Envfile (skeleton).
use std::path::{Path, PathBuf};

use super::{Envfile, Error};

pub fn find(dir: &Path) -> Result<PathBuf, Error> {
    Err(Error::NotFound { dir: dir.to_path_buf() })
}
pub fn load(path: &Path) -> Result<Envfile, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
    parse_str(path, &text)
}
pub fn parse_str(path: &Path, _text: &str) -> Result<Envfile, Error> {
    Err(Error::At { path: path.into(), line: 1, column: 1, message: "not built yet".into() })
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
