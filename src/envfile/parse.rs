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
