//! Following upstream: a catalog entry that names an index instead of a fixed build is
//! resolved here to the newest build's URL and upstream digest. Two kinds of index:
//! a simplestreams mirror (the LXC/Incus image servers: `streams/v1/index.json`, then
//! the products file it names) and a "latest"/"current" directory with a checksum list
//! (Debian's and Ubuntu's cloud images). Nothing here downloads a box: the store does,
//! checking the digest found here.

use serde::Deserialize;

use super::digest::{parse_sha256, parse_sha512, Pin};
use super::download::{is_http_url, Downloader, MAX_TEXT_BYTES};
use super::Error;

/// Where a catalog entry's builds are listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A simplestreams mirror (its root URL), a product (its key, e.g.
    /// `debian:bookworm:amd64:default`, or an alias such as `debian/12`, taken for the
    /// host's architecture) and the item type to fetch (`root.tar.xz`).
    Simplestreams { url: String, product: String, ftype: String },
    /// A directory whose content follows the newest build, its checksum list (a file
    /// name in it, or a URL), and the file to fetch: a name, or a pattern with one `*`
    /// (the newest of the names the list holds that fit, by name order).
    Latest { dir: String, file: String, checksums: String },
}

/// A build a box's source offers: the newest of an upstream index, a catalog's fixed
/// version, or a Vagrant Cloud version. It is also a stored box's provenance, what
/// Envfile.lock records beside envy's own sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    /// The build's version: the simplestreams version key, the part of the file name
    /// the pattern's `*` matched, the directory's name (`latest`), the catalog's or
    /// Vagrant Cloud's version.
    pub version: String,
    pub url: String,
    /// The digest upstream publishes for the file; None when it publishes none (a
    /// Vagrant Cloud box may not).
    pub pin: Option<Pin>,
}

/// The simplestreams index (`streams/v1/index.json`).
#[derive(Deserialize)]
struct Index {
    index: std::collections::BTreeMap<String, IndexEntry>,
}

#[derive(Deserialize)]
struct IndexEntry {
    path: String,
    #[serde(default)]
    datatype: Option<String>,
    #[serde(default)]
    products: Vec<String>,
}

/// A simplestreams products file (`images.json`): only what envy reads.
#[derive(Deserialize)]
struct Products {
    products: std::collections::BTreeMap<String, Product>,
}

#[derive(Deserialize)]
struct Product {
    #[serde(default)]
    arch: Option<String>,
    /// Comma-separated (`debian/12,debian/bookworm`).
    #[serde(default)]
    aliases: Option<String>,
    #[serde(default)]
    versions: std::collections::BTreeMap<String, ProductVersion>,
}

#[derive(Deserialize)]
struct ProductVersion {
    #[serde(default)]
    items: std::collections::BTreeMap<String, Item>,
}

#[derive(Clone, Deserialize)]
struct Item {
    ftype: String,
    path: String,
    #[serde(default)]
    sha256: Option<String>,
}

impl Upstream {
    /// The newest build (or, for a simplestreams product, the build `version`) of box
    /// `what`, with every URL fetched listed in the error when upstream cannot be read.
    pub fn resolve(&self, downloader: &Downloader, what: &str, version: Option<&str>) -> Result<Build, Error> {
        let mut tried = Vec::new();
        let result = match self {
            Upstream::Simplestreams { url, product, ftype } => {
                simplestreams(downloader, url, product, ftype, version, &mut tried)
            }
            Upstream::Latest { dir, file, checksums } => match version {
                Some(v) => Err(format!(
                    "{dir} offers only its newest build, not a chosen version `{v}`; name the box without @VERSION"
                )),
                None => latest(downloader, dir, file, checksums, &mut tried),
            },
        };
        result.map_err(|message| Error::Upstream { what: what.to_string(), tried: tried.join(", "), message })
    }
}

fn simplestreams(
    downloader: &Downloader,
    base: &str,
    product: &str,
    ftype: &str,
    version: Option<&str>,
    tried: &mut Vec<String>,
) -> Result<Build, String> {
    let index_url = join(base, "streams/v1/index.json");
    let index: Index = fetch_json(downloader, &index_url, tried)?;
    // The products file that lists the product, else the image list.
    let entry = index
        .index
        .values()
        .find(|e| e.products.iter().any(|p| p == product))
        .or_else(|| index.index.values().find(|e| e.datatype.as_deref() == Some("image-downloads")))
        .ok_or_else(|| format!("{index_url} lists no image-downloads products file"))?;
    let products_url = join(base, &relative(&entry.path, &index_url)?);
    let products: Products = fetch_json(downloader, &products_url, tried)?;
    let arch = host_arch();
    let (key, found) = products
        .products
        .iter()
        .find(|(key, _)| *key == product)
        .or_else(|| {
            products.products.iter().find(|(_, p)| {
                p.arch.as_deref() == Some(arch)
                    && p.aliases.as_deref().is_some_and(|a| a.split(',').any(|a| a.trim() == product))
            })
        })
        .ok_or_else(|| format!("{products_url} has no product `{product}` for {arch}; the catalog entry may be out of date"))?;
    // Version keys are build dates (`20250210_05:24`): the greatest is the newest.
    let with_item = |v: &ProductVersion| v.items.values().find(|i| i.ftype == ftype).cloned();
    let (version, item) = match version {
        Some(want) => {
            let v = found.versions.get(want).ok_or_else(|| {
                format!("{products_url}: product {key} has no version `{want}`; it has {}", found.versions.keys().cloned().collect::<Vec<_>>().join(", "))
            })?;
            (want.to_string(), with_item(v).ok_or_else(|| format!("{products_url}: {key} version {want} has no {ftype} item"))?)
        }
        None => found
            .versions
            .iter()
            .rev()
            .find_map(|(name, v)| with_item(v).map(|i| (name.clone(), i)))
            .ok_or_else(|| format!("{products_url}: no version of {key} has a {ftype} item"))?,
    };
    let sha256 = item.sha256.as_deref().ok_or_else(|| format!("{products_url}: {key} version {version} gives no sha256 for its {ftype} item"))?;
    let pin = Pin::Sha256(parse_sha256(sha256).map_err(|e| format!("{products_url}: {e}"))?);
    Ok(Build { version, url: join(base, &relative(&item.path, &products_url)?), pin: Some(pin) })
}

fn latest(downloader: &Downloader, dir: &str, file: &str, checksums: &str, tried: &mut Vec<String>) -> Result<Build, String> {
    let list_url = join(dir, checksums);
    tried.push(list_url.clone());
    let text = downloader.fetch_text(&list_url).map_err(|e| e.to_string())?;
    let (prefix, suffix) = file.split_once('*').unwrap_or((file, ""));
    let wildcard = file.contains('*');
    let fits = |name: &str| {
        if wildcard {
            name.len() >= prefix.len() + suffix.len() && name.starts_with(prefix) && name.ends_with(suffix)
        } else {
            name == file
        }
    };
    let (name, pin) = checksum_entries(&text)
        .filter(|(name, _)| fits(name) && !name.contains('/'))
        .max_by(|a, b| a.0.cmp(b.0))
        .ok_or_else(|| format!("{list_url} has no sha256 or sha512 line for `{file}`; the catalog entry may be out of date"))?;
    let version = if wildcard {
        name[prefix.len()..name.len() - suffix.len()].to_string()
    } else {
        dir.trim_end_matches('/').rsplit('/').next().unwrap_or("latest").to_string()
    };
    Ok(Build { version, url: join(dir, name), pin: Some(pin) })
}

/// Largest simplestreams document read: a mirror's products file lists every build of
/// every product (Ubuntu's runs to tens of MiB).
const MAX_INDEX_BYTES: u64 = 16 * MAX_TEXT_BYTES;

fn fetch_json<T: serde::de::DeserializeOwned>(downloader: &Downloader, url: &str, tried: &mut Vec<String>) -> Result<T, String> {
    tried.push(url.to_string());
    let text = downloader.fetch_text_up_to(url, MAX_INDEX_BYTES).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("{url} is not a simplestreams document envy reads: {e}"))
}

/// An index path kept below the mirror: no scheme, no leading `/`, no `..`.
fn relative(path: &str, from: &str) -> Result<String, String> {
    if path.contains("://") || path.starts_with('/') || path.split('/').any(|s| s == "..") {
        return Err(format!("{from} names `{path}`, which is not a path inside the mirror; refusing it"));
    }
    Ok(path.to_string())
}

/// `base` and a relative `path` (or `path` itself when it is a URL).
fn join(base: &str, path: &str) -> String {
    if is_http_url(path) {
        return path.to_string();
    }
    format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches("./"))
}

/// The host's architecture as simplestreams and Vagrant name it.
pub(super) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Every `(file, digest)` line of a checksum list: GNU style (`HEX  name`, `HEX *name`)
/// or BSD style (`SHA256 (name) = HEX`). The digest's length tells sha256 from sha512;
/// malformed lines are skipped.
pub fn checksum_entries(text: &str) -> impl Iterator<Item = (&str, Pin)> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        let (hex, name) = if let Some(rest) = line.strip_prefix("SHA256 (").or_else(|| line.strip_prefix("SHA512 (")) {
            let (name, hex) = rest.split_once(") = ")?;
            (hex, name)
        } else {
            let (hex, name) = line.split_once(char::is_whitespace)?;
            (hex, name.trim_start().trim_start_matches('*'))
        };
        let name = name.strip_prefix("./").unwrap_or(name);
        let pin = parse_sha256(hex).map(Pin::Sha256).or_else(|_| parse_sha512(hex).map(Pin::Sha512)).ok()?;
        Some((name, pin))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_lists_in_both_styles() {
        let a = "a".repeat(64);
        let b = "b".repeat(128);
        let text = format!("{a}  other.img\nSHA256 (broken.img) {a}\n{a} *disk.qcow2\nSHA512 (rootfs.tar.xz) = {b}\n");
        let entries: Vec<_> = checksum_entries(&text).collect();
        assert_eq!(
            entries,
            vec![("other.img", Pin::Sha256(a.clone())), ("disk.qcow2", Pin::Sha256(a)), ("rootfs.tar.xz", Pin::Sha512(b))]
        );
    }

    #[test]
    fn index_paths_stay_inside_the_mirror() {
        for bad in ["/etc/passwd", "images/../../x", "https://elsewhere.example/x"] {
            assert!(relative(bad, "index.json").is_err(), "{bad}");
        }
        assert_eq!(relative("images/debian/rootfs.tar.xz", "i").unwrap(), "images/debian/rootfs.tar.xz");
        assert_eq!(join("https://m.example/", "streams/v1/index.json"), "https://m.example/streams/v1/index.json");
        assert_eq!(join("https://m.example/latest", "https://o.example/SUMS"), "https://o.example/SUMS");
    }
}
