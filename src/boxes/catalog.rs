//! The catalog: box names → per provider, an upstream index to follow (resolved by
//! `upstream`) or fixed versions with a URL and pinned digest. Entries live in
//! `boxes/*.toml` (compiled in as the default) or wherever `--catalog`, ENVY_CATALOG
//! or config `catalog` point: a directory of `*.toml`, one `.toml` file, or a URL.

use std::path::Path;

use serde::Deserialize;

use super::digest::{parse_sha256, parse_sha512, Pin};
use super::download::Downloader;
use super::download::is_http_url;
use super::upstream::{checksum_entries, Build, Upstream};
use super::Error;
use crate::model::BoxFormat;

/// The catalog shipped in the binary (the repository's `boxes/*.toml`).
const BUILTIN: &[(&str, &str)] = &[
    ("alpine.toml", include_str!("../../boxes/alpine.toml")),
    ("archlinux.toml", include_str!("../../boxes/archlinux.toml")),
    ("debian-12.toml", include_str!("../../boxes/debian-12.toml")),
    ("debian-13.toml", include_str!("../../boxes/debian-13.toml")),
    ("fedora.toml", include_str!("../../boxes/fedora.toml")),
    ("ubuntu-24.04.toml", include_str!("../../boxes/ubuntu-24.04.toml")),
];

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
    /// Per provider, the upstream index whose newest build the name means.
    #[serde(default)]
    upstream: Vec<UpstreamSpec>,
    /// Fixed builds, newest first.
    #[serde(rename = "version", default)]
    versions: Vec<Version>,
}

/// `[[box.upstream]]` as written: a simplestreams mirror, or a "latest" directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamSpec {
    provider: BoxFormat,
    /// Root URL of a simplestreams mirror (it has `streams/v1/index.json`).
    simplestreams: Option<String>,
    /// With `simplestreams`: product key or alias (`debian/12`).
    product: Option<String>,
    /// With `simplestreams`: the item type to fetch (default `root.tar.xz`).
    ftype: Option<String>,
    /// URL of a directory that follows the newest build.
    latest: Option<String>,
    /// With `latest`: the file name, or a pattern with one `*`.
    file: Option<String>,
    /// With `latest`: the checksum list's name in the directory (or its URL).
    checksums: Option<String>,
}

impl UpstreamSpec {
    fn to_upstream(&self, what: &str) -> Result<Upstream, String> {
        match (&self.simplestreams, &self.latest) {
            (Some(url), None) => {
                if self.file.is_some() || self.checksums.is_some() {
                    return Err(format!("{what}: `file` and `checksums` go with `latest`, not `simplestreams`"));
                }
                let product = self.product.clone().ok_or_else(|| format!("{what}: `simplestreams` needs a `product` (e.g. \"debian/12\")"))?;
                Ok(Upstream::Simplestreams {
                    url: url.clone(),
                    product,
                    ftype: self.ftype.clone().unwrap_or_else(|| "root.tar.xz".into()),
                })
            }
            (None, Some(dir)) => {
                if self.product.is_some() || self.ftype.is_some() {
                    return Err(format!("{what}: `product` and `ftype` go with `simplestreams`, not `latest`"));
                }
                match (&self.file, &self.checksums) {
                    (Some(file), Some(checksums)) if file.matches('*').count() <= 1 => {
                        Ok(Upstream::Latest { dir: dir.clone(), file: file.clone(), checksums: checksums.clone() })
                    }
                    (Some(_), Some(_)) => Err(format!("{what}: `file` may hold one `*`, not more")),
                    _ => Err(format!("{what}: `latest` needs `file` (a name or NAME-*.qcow2 pattern) and `checksums` (e.g. \"SHA512SUMS\")")),
                }
            }
            _ => Err(format!("{what}: an upstream is either `simplestreams = URL` or `latest = URL`, one of the two")),
        }
    }
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
    /// Where the pin comes from: a checksums URL, or the catalog itself (or the
    /// upstream index).
    checksums: Option<(String, String)>,
    pin: Option<Pin>,
    /// Resolved through an upstream index: the URL may serve other bytes tomorrow
    /// (a "latest" directory), so a box stored from it is no proof of the newest.
    pub follows_upstream: bool,
}

impl Resolved {
    /// The build to download, with the digest it must match, fetching the upstream
    /// checksum list if the entry points at one.
    pub fn build(&self, downloader: &Downloader) -> Result<Build, Error> {
        let pin = self.pin(downloader)?;
        Ok(Build { version: self.version.clone(), url: self.url.clone(), pin: Some(pin) })
    }

    fn pin(&self, downloader: &Downloader) -> Result<Pin, Error> {
        if let Some(pin) = &self.pin {
            return Ok(pin.clone());
        }
        let (list_url, file) =
            self.checksums.as_ref().expect("a catalog version has a pin or a checksums URL");
        let text = downloader.fetch_text(list_url)?;
        let found = checksum_entries(&text).find(|(name, _)| name == file).map(|(_, pin)| pin);
        found.ok_or_else(|| Error::Catalog {
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
        let entries = if is_http_url(loc) {
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

    /// The upstream of box `name` for `provider` when it is a "latest" directory with
    /// a fixed file name: one URL whose bytes change with every upstream build.
    pub fn fixed_latest(&self, name: &str, provider: Option<BoxFormat>) -> Option<Upstream> {
        let entry = self.entries.iter().find(|e| e.name == name)?;
        let spec = entry.upstream.iter().find(|u| provider.is_none_or(|p| u.provider == p))?;
        match spec.to_upstream(name).ok()? {
            Upstream::Latest { file, .. } if file.contains('*') => None,
            latest @ Upstream::Latest { .. } => Some(latest),
            Upstream::Simplestreams { .. } => None,
        }
    }

    /// Finds `name` (at `version`, or its newest) for `provider` (or the first listed):
    /// a fixed version named by `version`, else the entry's upstream for the provider
    /// (asked for its newest build, or `version`), else its first fixed version.
    pub fn resolve(
        &self,
        name: &str,
        version: Option<&str>,
        provider: Option<BoxFormat>,
        downloader: &Downloader,
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
        let fixed = entry.versions.iter().find(fits);
        let upstream = entry.upstream.iter().find(|u| provider.is_none_or(|p| u.provider == p));
        if let (Some(spec), false) = (upstream, version.is_some() && fixed.is_some()) {
            let what = format!("{name} ({})", spec.provider);
            let up = spec.to_upstream(&what).map_err(not_found)?;
            let build = up.resolve(downloader, &what, version)?;
            return Ok(Resolved {
                name: entry.name.clone(),
                version: build.version,
                url: build.url,
                checksums: None,
                pin: build.pin,
                follows_upstream: true,
            });
        }
        let v = fixed.ok_or_else(|| {
            let mut have: Vec<_> = entry.upstream.iter().map(|u| format!("the newest upstream build ({})", u.provider)).collect();
            have.extend(entry.versions.iter().map(|v| match v.provider {
                Some(p) => format!("{} ({p})", v.version),
                None => v.version.clone(),
            }));
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
            follows_upstream: false,
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
        if entry.upstream.is_empty() && entry.versions.is_empty() {
            return Err(Error::Catalog {
                location: location.into(),
                message: format!("{} has neither [[box.upstream]] nor [[box.version]]; give it one", entry.name),
            });
        }
        for u in &entry.upstream {
            u.to_upstream(&format!("{} ({})", entry.name, u.provider))
                .map_err(|message| Error::Catalog { location: location.into(), message })?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_follows_upstream_per_provider() {
        let entries: Vec<Entry> = BUILTIN.iter().flat_map(|(n, t)| parse(t, n).unwrap()).collect();
        let upstream = |name: &str, provider: BoxFormat| {
            let entry = entries.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("no {name}"));
            entry.upstream.iter().find(|u| u.provider == provider).map(|u| u.to_upstream(name).unwrap())
        };
        for name in ["debian-12", "debian-13", "ubuntu-24.04", "alpine-3.22", "fedora-42", "archlinux"] {
            assert!(
                matches!(upstream(name, BoxFormat::Container), Some(Upstream::Simplestreams { ref ftype, .. }) if ftype == "root.tar.xz"),
                "{name}"
            );
        }
        assert!(matches!(
            upstream("debian-12", BoxFormat::Qemu),
            Some(Upstream::Latest { ref dir, ref checksums, .. }) if dir.ends_with("/bookworm/latest/") && checksums == "SHA512SUMS"
        ));
        assert!(upstream("alpine-3.22", BoxFormat::Qemu).is_none());
    }

    #[test]
    fn upstream_entries_are_checked_when_read() {
        let bad = [
            "provider = \"qemu\"\nlatest = \"https://x/\"\nfile = \"a.qcow2\"",
            "provider = \"container\"\nsimplestreams = \"https://x/\"",
            "provider = \"qemu\"\nlatest = \"https://x/\"\nsimplestreams = \"https://y/\"\nproduct = \"p\"",
            "provider = \"qemu\"\nlatest = \"https://x/\"\nfile = \"a-*-*.qcow2\"\nchecksums = \"SUMS\"",
        ];
        for body in bad {
            let text = format!("[[box]]\nname = \"x\"\n[[box.upstream]]\n{body}\n");
            assert!(matches!(parse(&text, "t.toml"), Err(Error::Catalog { .. })), "{body}");
        }
        assert!(parse("[[box]]\nname = \"x\"\n", "t.toml").is_err(), "an entry with nothing to fetch");
    }
}
