//! Where a box comes from, as the user or an Envfile names it: a catalog name, a URL
//! pinned by digest, a local file, or an image in an OCI registry (`oci://`).

use std::path::Path;

use super::digest::parse_sha256;
use super::download::is_http_url;
use super::Error;
use crate::model::{BoxFormat, BoxRef, OciRef};

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
    /// Payload the box is wanted with, to pick between a catalog version's artifacts.
    pub format: Option<BoxFormat>,
}

impl BoxSource {
    /// The source for an Envfile's box reference.
    pub fn from_ref(
        reference: &BoxRef,
        catalog: Option<String>,
        format: Option<BoxFormat>,
    ) -> BoxSource {
        BoxSource { reference: reference.clone(), insecure: false, catalog, name: None, format }
    }
}

/// The file extensions that make a box reference a file, not a catalog name.
const FILE_EXTENSIONS: [&str; 8] = [".box", ".qcow2", ".img", ".tar", ".gz", ".zst", ".xz", ".tgz"];

/// Reads a box as a user types it, on the command line or as an Envfile's `box =`
/// string (one rule for both): `oci://...` is a registry image, `vagrant://USER/BOX`
/// a Vagrant Cloud box, `http(s)://...`
/// (optionally `#sha256=HEX`) is a URL, anything with a `/` or a box-like extension
/// is a file (relative to `base`: the working folder, or the project), the rest is a
/// catalog `name` or `name@version`. `sha256` is the --sha256 flag.
pub fn parse_box_ref(text: &str, sha256: Option<&str>, base: &Path) -> Result<BoxRef, Error> {
    if let Some(image) = text.strip_prefix(OCI_SCHEME) {
        if sha256.is_some() {
            return Err(Error::BadReference {
                reference: text.to_string(),
                reason: "--sha256 names a box file; pin an image with `@sha256:DIGEST` instead".into(),
            });
        }
        return Ok(BoxRef::Oci { image: parse_oci_ref(image)?, sha256: None });
    }
    if let Some(tag) = text.strip_prefix(VAGRANT_SCHEME) {
        return parse_vagrant_ref(text, tag, sha256);
    }
    let flag = sha256.map(parse_sha256).transpose()?;
    if is_http_url(text) {
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
    if text.contains('/') || FILE_EXTENSIONS.iter().any(|e| text.ends_with(e)) {
        let path = base.join(text);
        let abs = std::path::absolute(&path).unwrap_or(path);
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
    if name.is_empty() || version.as_deref() == Some("") {
        return Err(Error::BadReference {
            reference: text.to_string(),
            reason: "a catalog box is written NAME or NAME@VERSION; a file needs a `/` or a box extension (./NAME)".into(),
        });
    }
    Ok(BoxRef::Catalog { name, version })
}

/// The name a catalog or `vagrant://USER/BOX` box is listed under in the store (the
/// catalog name; `USER-BOX`); None for a URL, file or image, listed under their own.
pub fn listed_name(reference: &BoxRef) -> Option<String> {
    match reference {
        BoxRef::Catalog { name, .. } => Some(name.clone()),
        BoxRef::Vagrant { vagrant, .. } => Some(vagrant.replace('/', "-")),
        _ => None,
    }
}

/// The scheme of Vagrant Cloud boxes.
const VAGRANT_SCHEME: &str = "vagrant://";

/// `USER/BOX[@VERSION]`, the part after `vagrant://`.
fn parse_vagrant_ref(text: &str, tag: &str, sha256: Option<&str>) -> Result<BoxRef, Error> {
    let bad = |reason: &str| Error::BadReference { reference: text.to_string(), reason: reason.to_string() };
    if sha256.is_some() {
        return Err(bad("--sha256 names a box file; a Vagrant Cloud box is checked by the checksum its API gives"));
    }
    let (tag, version) = match tag.split_once('@') {
        Some((t, v)) => (t, Some(v.to_string())),
        None => (tag, None),
    };
    // USER and BOX become path segments of the API URL: names only, never `.` or `..`.
    let part_ok = |p: &str| {
        !p.is_empty() && p != "." && p != ".." && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    let valid = matches!(tag.split_once('/'), Some((user, name)) if part_ok(user) && part_ok(name));
    if !valid || version.as_deref().is_some_and(|v| !part_ok(v)) {
        return Err(bad(
            "a Vagrant Cloud box is written vagrant://USER/BOX or vagrant://USER/BOX@VERSION, each part letters, digits, `.`, `_` or `-`, and not `.` or `..`",
        ));
    }
    Ok(BoxRef::Vagrant { vagrant: tag.to_string(), version })
}

/// The scheme of registry references.
pub const OCI_SCHEME: &str = "oci://";

/// Reads `REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]` (the part after `oci://`) as
/// Docker does: a first component without `.`, `:` or `localhost` is a Docker Hub
/// repository (`debian` is `docker.io/library/debian`), and with neither tag nor
/// digest the tag is `latest`.
pub fn parse_oci_ref(text: &str) -> Result<OciRef, Error> {
    let bad = |reason: &str| Error::BadReference { reference: format!("{OCI_SCHEME}{text}"), reason: reason.to_string() };
    let (rest, digest) = match text.split_once('@') {
        Some((rest, d)) => {
            let hex = d.strip_prefix("sha256:").ok_or_else(|| bad("the digest must be written `@sha256:HEX`"))?;
            (rest, Some(parse_sha256(hex)?))
        }
        None => (text, None),
    };
    // A `:` after the last `/` starts the tag; one before it is the registry's port.
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_string())),
        _ => (rest, None),
    };
    if let Some(t) = &tag {
        let valid = !t.is_empty()
            && t.len() <= 128
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            && !t.starts_with(['.', '-']);
        if !valid {
            return Err(bad("a tag is 1-128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`"));
        }
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => (first.to_string(), path.to_string()),
        _ => ("docker.io".to_string(), name.to_string()),
    };
    let repository =
        if registry == "docker.io" && !repository.contains('/') { format!("library/{repository}") } else { repository };
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.as_bytes()[0].is_ascii_alphanumeric()
    };
    if !repository.split('/').all(component_ok) {
        return Err(bad("a repository is `/`-separated lower-case names (letters, digits, `.`, `_`, `-`)"));
    }
    if registry.is_empty() || registry.contains(['@', '?', '#']) {
        return Err(bad("the registry must be a host name, optionally with :PORT"));
    }
    let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
    Ok(OciRef { registry, repository, tag, digest })
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
        let r = parse_box_ref(&format!("https://example.org/x.box#sha256={hex}"), None, Path::new("/b")).unwrap();
        assert_eq!(
            r,
            BoxRef::Url { url: "https://example.org/x.box".into(), sha256: Some(hex.to_lowercase()) }
        );
        assert!(matches!(parse_box_ref("https://e.org/x.box#sha256=12", None, Path::new("/b")), Err(Error::BadDigest { .. })));
        assert!(matches!(
            parse_box_ref(&format!("https://e.org/x#sha256={hex}"), Some(&"0".repeat(64)), Path::new("/b")),
            Err(Error::PinConflict { .. })
        ));
        assert_eq!(parse_box_ref("./web.box", None, Path::new("/b")).unwrap(), BoxRef::Path { path: "/b/web.box".into(), sha256: None });
        // The Envfile and the command line read a disk image the same way: a file.
        assert_eq!(parse_box_ref("disk.qcow2", None, Path::new("/b")).unwrap(), BoxRef::Path { path: "/b/disk.qcow2".into(), sha256: None });
        for bad in ["@1", "debian-12@"] {
            assert!(matches!(parse_box_ref(bad, None, Path::new("/b")), Err(Error::BadReference { .. })), "{bad}");
        }
        assert_eq!(
            parse_box_ref("debian-12@20250210", None, Path::new("/b")).unwrap(),
            BoxRef::Catalog { name: "debian-12".into(), version: Some("20250210".into()) }
        );
        assert!(parse_box_ref("debian-12", Some(&hex), Path::new("/b")).is_err(), "--sha256 goes with URLs and files only");
    }

    #[test]
    fn vagrant_cloud_user_and_box_are_names() {
        assert_eq!(
            parse_box_ref("vagrant://team/lv@1.10.0", None, Path::new("/b")).unwrap(),
            BoxRef::Vagrant { vagrant: "team/lv".into(), version: Some("1.10.0".into()) }
        );
        for bad in ["vagrant://../x", "vagrant://team/..", "vagrant://./lv", "vagrant://a/b/c", "vagrant://team/lv@..", "vagrant://team/l%2Fv", "vagrant://lv"] {
            let err = parse_box_ref(bad, None, Path::new("/b")).unwrap_err();
            assert!(err.to_string().contains("not `.` or `..`"), "{bad}: {err}");
        }
    }

    #[test]
    fn registry_references_with_dockers_defaults() {
        let r = |t: &str| match parse_box_ref(t, None, Path::new("/b")).unwrap() {
            BoxRef::Oci { image, sha256: None } => image,
            other => panic!("{other:?}"),
        };
        let hex = "ab".repeat(32);
        assert_eq!(r("oci://debian").to_string(), "oci://docker.io/library/debian:latest");
        assert_eq!(r("oci://docker.io/debian:12").to_string(), "oci://docker.io/library/debian:12");
        assert_eq!(r("oci://ghcr.io/o/r/x:1.0").repository, "o/r/x");
        let local = r(&format!("oci://127.0.0.1:5000/team/web@sha256:{hex}"));
        assert_eq!((local.registry.as_str(), local.tag, local.digest), ("127.0.0.1:5000", None, Some(hex.clone())));
        let both = r(&format!("oci://localhost:5000/web:v2@sha256:{hex}"));
        assert_eq!((both.tag.as_deref(), both.digest.is_some()), (Some("v2"), true));
        for bad in ["oci://x.io/Upper:1", "oci://x.io/web:", "oci://x.io/web@md5:00", "oci://x.io/web:-x"] {
            assert!(matches!(parse_box_ref(bad, None, Path::new("/b")), Err(Error::BadReference { .. })), "{bad}");
        }
        assert!(parse_box_ref("oci://x.io/web@sha256:12", None, Path::new("/b")).is_err());
        assert!(parse_box_ref("oci://x.io/web", Some(&hex), Path::new("/b")).is_err(), "--sha256 is for box files");
    }

    #[test]
    fn names_from_files() {
        assert_eq!(name_from_file("https://e.org/a/debian-12-genericcloud.qcow2"), "debian-12-genericcloud");
        assert_eq!(name_from_file("/x/rootfs.tar.xz"), "rootfs");
        assert_eq!(name_from_file("web.box"), "web");
    }
}
