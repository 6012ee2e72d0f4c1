//! Where a box comes from, as the user or an Envfile names it: a catalog name, a URL
//! pinned by digest, or a local file.

use std::path::{Path, PathBuf};

use super::digest::parse_sha256;
use super::Error;
use crate::envfile::{BoxRef, ProviderKind};

/// Where to get a box, and how strictly.
#[derive(Debug, Clone)]
pub struct BoxSource {
    pub reference: BoxRef,
    /// Accept a URL with no pinned digest (the digest that arrived is recorded).
    pub insecure: bool,
    /// Catalog location (directory, .toml file or URL); None: config, then built-in.
    pub catalog: Option<String>,
    /// Name to list the box under (default: its manifest's or the file's name).
    pub name: Option<String>,
    /// Provider the box is wanted for, to pick between a catalog version's artifacts.
    pub provider: Option<ProviderKind>,
}

impl BoxSource {
    /// The source for an Envfile's box reference.
    pub fn from_ref(
        reference: &BoxRef,
        catalog: Option<String>,
        provider: Option<ProviderKind>,
    ) -> BoxSource {
        BoxSource { reference: reference.clone(), insecure: false, catalog, name: None, provider }
    }
}

/// Reads a box as a user types it: `http(s)://...` (optionally `#sha256=HEX`) is a URL,
/// an existing path or anything with a `/` or a box-like extension is a file, the rest
/// is a catalog `name` or `name@version`. `sha256` is the --sha256 flag.
pub fn parse_box_ref(text: &str, sha256: Option<&str>) -> Result<BoxRef, Error> {
    let flag = sha256.map(parse_sha256).transpose()?;
    if text.starts_with("http://") || text.starts_with("https://") {
        let (url, fragment) = match text.split_once('#') {
            Some((u, f)) => (u, Some(f)),
            None => (text, None),
        };
        let from_url = match fragment {
            Some(f) => match f.strip_prefix("sha256=") {
                Some(hex) => Some(parse_sha256(hex)?),
                None => {
                    return Err(Error::BadDigest {
                        value: f.to_string(),
                        algorithm: "sha256 (URL fragment `#sha256=HEX`)",
                        len: 64,
                    })
                }
            },
            None => None,
        };
        let sha256 = agree(text, flag, from_url)?;
        return Ok(BoxRef::Url { url: url.to_string(), sha256 });
    }
    let path = Path::new(text);
    let looks_like_file = path.exists()
        || text.contains('/')
        || [".box", ".qcow2", ".img", ".tar", ".gz", ".zst", ".xz", ".tgz"].iter().any(|e| text.ends_with(e));
    if looks_like_file {
        let abs = std::path::absolute(path).unwrap_or_else(|_| PathBuf::from(path));
        return Ok(BoxRef::Path { path: abs, sha256: flag });
    }
    if flag.is_some() {
        return Err(Error::Catalog {
            location: "--sha256".into(),
            message: format!("`{text}` is a catalog name; the catalog pins its digest, so --sha256 only goes with a URL or a file"),
        });
    }
    let (name, version) = match text.split_once('@') {
        Some((n, v)) => (n.to_string(), Some(v.to_string())),
        None => (text.to_string(), None),
    };
    Ok(BoxRef::Catalog { name, version })
}

fn agree(text: &str, flag: Option<String>, fragment: Option<String>) -> Result<Option<String>, Error> {
    match (flag, fragment) {
        (Some(flag), Some(fragment)) if flag != fragment => {
            Err(Error::PinConflict { url: text.to_string(), flag, fragment })
        }
        (a, b) => Ok(a.or(b)),
    }
}

/// A short name for a file: its name without directory and box-ish extensions.
pub fn name_from_file(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    let mut stem = base;
    for ext in [".gz", ".zst", ".xz", ".tgz", ".tar", ".box", ".qcow2", ".img"] {
        stem = stem.strip_suffix(ext).unwrap_or(stem);
    }
    if stem.is_empty() {
        "box".to_string()
    } else {
        stem.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_paths_and_catalog_names() {
        let hex = "AB".repeat(32);
        let r = parse_box_ref(&format!("https://example.org/x.box#sha256={hex}"), None).unwrap();
        assert_eq!(
            r,
            BoxRef::Url { url: "https://example.org/x.box".into(), sha256: Some(hex.to_lowercase()) }
        );
        assert!(matches!(parse_box_ref("https://e.org/x.box#sha256=12", None), Err(Error::BadDigest { .. })));
        assert!(matches!(
            parse_box_ref(&format!("https://e.org/x#sha256={hex}"), Some(&"0".repeat(64))),
            Err(Error::PinConflict { .. })
        ));
        assert!(
            matches!(parse_box_ref("./web.box", None).unwrap(), BoxRef::Path { path, .. } if path.is_absolute())
        );
        assert_eq!(
            parse_box_ref("debian-12@20250210", None).unwrap(),
            BoxRef::Catalog { name: "debian-12".into(), version: Some("20250210".into()) }
        );
        assert!(parse_box_ref("debian-12", Some(&hex)).is_err(), "--sha256 goes with URLs and files only");
    }

    #[test]
    fn names_from_files() {
        assert_eq!(name_from_file("https://e.org/a/debian-12-genericcloud.qcow2"), "debian-12-genericcloud");
        assert_eq!(name_from_file("/x/rootfs.tar.xz"), "rootfs");
        assert_eq!(name_from_file("web.box"), "web");
    }
}
