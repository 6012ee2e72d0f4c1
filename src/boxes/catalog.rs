//! The catalog: box names → versions → URL and pinned digest. Entries live in
//! `boxes/*.toml` (compiled in as the default) or wherever `--catalog`, ENVY_CATALOG
//! or config `catalog` point: a directory of `*.toml`, one `.toml` file, or a URL.

use std::path::Path;

use serde::Deserialize;

use super::digest::{parse_sha256, parse_sha512, Pin};
use super::download::Downloader;
use super::Error;
use crate::model::BoxFormat;

/// The catalog shipped in the binary (the repository's `boxes/*.toml`).
const BUILTIN: &[(&str, &str)] = &[("debian-12.toml", include_str!("../../boxes/debian-12.toml"))];

/// One catalog file: any number of `[[box]]` entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(rename = "box", default)]
    boxes: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    /// One line for people choosing a box (shown when a name is not found).
    description: Option<String>,
    /// Newest first.
    #[serde(rename = "version")]
    versions: Vec<Version>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Version {
    version: String,
    /// The provider this artifact serves (a version may list one artifact per provider).
    provider: Option<BoxFormat>,
    url: String,
    sha256: Option<String>,
    sha512: Option<String>,
    /// URL of an upstream SHA256SUMS/SHA512SUMS-style list holding the file's digest.
    checksums: Option<String>,
    /// The name to look up in `checksums` (default: the URL's last path segment).
    file: Option<String>,
}

/// A catalog entry resolved to something downloadable.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    pub version: String,
    pub url: String,
    /// Where the pin comes from: a checksums URL, or the catalog itself.
    checksums: Option<(String, String)>,
    pin: Option<Pin>,
}

impl Resolved {
    /// The digest the download must match, fetching the upstream checksum list if the
    /// entry points at one.
    pub fn pin(&self, downloader: &Downloader) -> Result<Pin, Error> {
        if let Some(pin) = &self.pin {
            return Ok(pin.clone());
        }
        let (list_url, file) =
            self.checksums.as_ref().expect("a catalog version has a pin or a checksums URL");
        let text = downloader.fetch_text(list_url)?;
        find_in_checksums(&text, file).ok_or_else(|| Error::Catalog {
            location: list_url.clone(),
            message: format!("the checksum list has no sha256 or sha512 line for `{file}`; the catalog entry {}@{} may be out of date", self.name, self.version),
        })
    }
}

/// A loaded catalog.
pub struct Catalog {
    location: String,
    entries: Vec<Entry>,
}

impl Catalog {
    /// Loads the catalog at `location` (None: the built-in one).
    pub fn load(location: Option<&str>, downloader: &Downloader) -> Result<Catalog, Error> {
        let Some(loc) = location else {
            let mut entries = Vec::new();
            for (name, text) in BUILTIN {
                entries.extend(parse(text, &format!("built-in {name}"))?);
            }
            return Ok(Catalog { location: "built-in".into(), entries });
        };
        let entries = if loc.starts_with("http://") || loc.starts_with("https://") {
            parse(&downloader.fetch_text(loc)?, loc)?
        } else {
            let path = Path::new(loc);
            if path.is_dir() {
                let mut files: Vec<_> = std::fs::read_dir(path)
                    .map_err(Error::io("cannot read catalog", path))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                    .collect();
                files.sort();
                let mut entries = Vec::new();
                for file in files {
                    entries.extend(parse(&read(&file)?, &file.display().to_string())?);
                }
                entries
            } else {
                parse(&read(path)?, loc)?
            }
        };
        Ok(Catalog { location: loc.to_string(), entries })
    }

    /// Finds `name` (at `version`, or its newest) for `provider` (or the first listed).
    pub fn resolve(
        &self,
        name: &str,
        version: Option<&str>,
        provider: Option<BoxFormat>,
    ) -> Result<Resolved, Error> {
        let not_found = |message: String| Error::Catalog { location: self.location.clone(), message };
        let entry = self.entries.iter().find(|e| e.name == name).ok_or_else(|| {
            let names: Vec<String> = self
                .entries
                .iter()
                .map(|e| match &e.description {
                    Some(d) => format!("{} ({d})", e.name),
                    None => e.name.clone(),
                })
                .collect();
            not_found(format!("has no box `{name}`; it has: {}", names.join(", ")))
        })?;
        let fits = |v: &&Version| {
            version.is_none_or(|want| v.version == want)
                && provider.is_none_or(|p| v.provider.is_none_or(|vp| vp == p))
        };
        let v = entry.versions.iter().find(fits).ok_or_else(|| {
            let have: Vec<_> = entry
                .versions
                .iter()
                .map(|v| match v.provider {
                    Some(p) => format!("{} ({p})", v.version),
                    None => v.version.clone(),
                })
                .collect();
            not_found(format!(
                "box `{name}` has no version{}{}; it has: {}",
                version.map(|v| format!(" {v}")).unwrap_or_default(),
                provider.map(|p| format!(" for {p}")).unwrap_or_default(),
                have.join(", ")
            ))
        })?;
        let pin = match (&v.sha256, &v.sha512) {
            (Some(h), _) => Some(Pin::Sha256(parse_sha256(h)?)),
            (None, Some(h)) => Some(Pin::Sha512(parse_sha512(h)?)),
            (None, None) => None,
        };
        let checksums = v.checksums.as_ref().map(|list| {
            let file = v.file.clone().unwrap_or_else(|| {
                v.url.split(['#', '?']).next().unwrap_or(&v.url).rsplit('/').next().unwrap_or("").to_string()
            });
            (list.clone(), file)
        });
        Ok(Resolved {
            name: entry.name.clone(),
            version: v.version.clone(),
            url: v.url.clone(),
            checksums,
            pin,
        })
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(Error::io("cannot read catalog", path))
}

fn parse(text: &str, location: &str) -> Result<Vec<Entry>, Error> {
    let file: CatalogFile = toml::from_str(text)
        .map_err(|e| Error::Catalog { location: location.into(), message: e.to_string() })?;
    for entry in &file.boxes {
        for v in &entry.versions {
            if v.sha256.is_none() && v.sha512.is_none() && v.checksums.is_none() {
                return Err(Error::Catalog {
                    location: location.into(),
                    message: format!("{}@{} has neither sha256, sha512 nor checksums; every catalog version must be pinned", entry.name, v.version),
                });
            }
        }
    }
    Ok(file.boxes)
}

/// Finds `file`'s digest in a checksum list: GNU style (`HEX  name`, `HEX *name`) or
/// BSD style (`SHA256 (name) = HEX`). The digest length tells sha256 from sha512.
fn find_in_checksums(text: &str, file: &str) -> Option<Pin> {
    for line in text.lines() {
        let line = line.trim();
        let (hex, name) =
            if let Some(rest) = line.strip_prefix("SHA256 (").or_else(|| line.strip_prefix("SHA512 (")) {
                // A malformed line is skipped, not the end of the search.
                let Some((name, hex)) = rest.split_once(") = ") else { continue };
                (hex, name)
            } else {
                let Some((hex, name)) = line.split_once(char::is_whitespace) else { continue };
                (hex, name.trim_start().trim_start_matches('*'))
            };
        let name = name.strip_prefix("./").unwrap_or(name);
        if name != file {
            continue;
        }
        if let Ok(h) = parse_sha256(hex) {
            return Some(Pin::Sha256(h));
        }
        if let Ok(h) = parse_sha512(hex) {
            return Some(Pin::Sha512(h));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_lists_in_both_styles() {
        let a = "a".repeat(64);
        let b = "b".repeat(128);
        let text = format!("{a}  other.img\n{a} *disk.qcow2\nSHA512 (rootfs.tar.xz) = {b}\n");
        assert_eq!(find_in_checksums(&text, "disk.qcow2"), Some(Pin::Sha256(a.clone())));
        assert_eq!(find_in_checksums(&text, "rootfs.tar.xz"), Some(Pin::Sha512(b)));
        assert_eq!(find_in_checksums(&text, "missing"), None);
        // A damaged line before the wanted one does not end the search.
        let text = format!("SHA256 (broken.img) {a}
{a}  disk.qcow2
");
        assert_eq!(find_in_checksums(&text, "disk.qcow2"), Some(Pin::Sha256(a)));
    }

    #[test]
    fn builtin_catalog_resolves_per_provider() {
        let catalog = Catalog {
            location: "built-in".into(),
            entries: BUILTIN.iter().flat_map(|(n, t)| parse(t, n).unwrap()).collect(),
        };
        let vm = catalog.resolve("debian-12", None, Some(BoxFormat::Qemu)).unwrap();
        assert!(vm.url.ends_with("generic-amd64-20250210-2019.qcow2") && vm.checksums.is_some());
        let small = catalog.resolve("debian-12", Some("20250210-2019-genericcloud"), None).unwrap();
        assert!(small.url.contains("genericcloud") && matches!(small.pin, Some(Pin::Sha512(_))));
        let ct = catalog.resolve("debian-12", None, Some(BoxFormat::Container)).unwrap();
        assert!(
            ct.url.ends_with("rootfs.tar.xz")
                && ct.checksums.as_ref().is_some_and(|(_, f)| f == "rootfs.tar.xz")
        );
        assert!(catalog.resolve("debian-12", Some("1999"), None).is_err());
    }
}
