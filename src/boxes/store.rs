//! The content-addressed store `$ENVY_HOME/boxes/<sha256>/`: how boxes get in (fetched,
//! verified, unpacked in a temp dir, renamed into place under a lock) and how they are
//! trusted afterwards (a stamp per file; a changed stamp means re-hash before use).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::fsutil::FileLock;
use serde::{Deserialize, Serialize};

use super::archive::{self, Artifact};
use super::catalog::{Catalog, Resolved};
use super::digest::{copy_hashing, sha256_bytes, sha256_file, Hasher, Pin};
use super::download::{is_http_url, plain_http_allowed, plain_http_host, remove_part, Downloader};
use super::manifest::{self, Manifest};
use super::source::{listed_name, name_from_file, BoxSource};
use super::upstream::Build;
use super::Error;
use crate::config::Config;
use crate::state::Home;
use crate::model::{BoxFormat, BoxRef};
use crate::ui::Ui;

/// Per-box record beside `box.toml`: where it came from and the stamps of its files.
pub const RECORD_FILE: &str = "record.json";
/// The unpacked root filesystem of container boxes.
pub const ROOTFS_DIR: &str = "rootfs";
const RECORD_VERSION: u32 = 1;

/// What envy remembers about a stored box (`record.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub version: u32,
    /// The name the box is listed under (`--name`, else the manifest's).
    pub name: String,
    /// Where it came from: URL, catalog entry or file path.
    pub source: String,
    /// Seconds since the epoch when it entered the store.
    pub added: u64,
    /// The pin the box file was verified against (`sha256:HEX`, or `sha512:HEX` from
    /// a Debian-style list); None when it was added unpinned (--insecure).
    pub pin: Option<String>,
    /// sha256 of `box.toml` as stored.
    pub manifest_sha256: String,
    /// (size, mtime, inode) of `box.toml` and every payload file at verification.
    pub stamps: BTreeMap<String, Stamp>,
}

/// A file's identity at verification time; while it holds, the bytes are trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stamp {
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> Result<Stamp, Error> {
        let m = std::fs::symlink_metadata(path).map_err(Error::io("cannot read", path))?;
        Ok(Stamp { size: m.len(), mtime: m.mtime(), mtime_nsec: m.mtime_nsec(), inode: m.ino() })
    }
}

/// A box `Store::ensure` made sure of, and where it came from.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub stored: StoredBox,
    /// For a catalog or `vagrant://` box: the build it is (its URL and the digest
    /// upstream gives it), what Envfile.lock records. None for a URL, file or image the
    /// reference names itself.
    pub build: Option<Build>,
    /// For an `oci://` image whose reference named an index (multi-platform): the
    /// index's sha256.
    pub index: Option<String>,
}

/// A verified box in the store.
#[derive(Debug, Clone)]
pub struct StoredBox {
    pub digest: String,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl StoredBox {
    /// Path of a payload file in the store.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The unpacked root filesystem (container boxes), the overlay's lower layer.
    pub fn rootfs(&self) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join(ROOTFS_DIR);
        if self.manifest.container.is_none() {
            anyhow::bail!(
                "box {} ({}) has no container root filesystem; it serves {}",
                self.manifest.name,
                &self.digest[..12],
                self.manifest.providers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        if !dir.is_dir() {
            return Err(Error::Incomplete { path: dir, digest: self.digest.clone() }.into());
        }
        Ok(dir)
    }

    /// Fails unless the box serves `format`, the provider machine `machine` uses.
    pub fn check_serves(&self, format: BoxFormat, machine: &str) -> Result<(), Error> {
        if self.manifest.providers.contains(&format) {
            return Ok(());
        }
        Err(Error::WrongProvider {
            name: self.manifest.name.clone(),
            digest: self.digest.clone(),
            providers: self.manifest.providers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
            wanted: format.to_string(),
            machine: machine.to_string(),
        })
    }

    /// What the store remembers about the box (name it is listed under, source, stamps).
    pub fn record(&self) -> anyhow::Result<Record> {
        read_record(&self.dir)
    }
}

impl Record {
    /// Total size of `box.toml` and the payload files, in bytes.
    pub fn size(&self) -> u64 {
        self.stamps.values().map(|s| s.size).sum()
    }
}

/// A file whose bytes no longer match the digest it was verified with.
#[derive(Debug, Clone, Serialize)]
pub struct Corruption {
    pub file: String,
    pub expected: String,
    pub got: String,
}

pub struct Store {
    pub home: Home,
    config: Config,
    /// Made on first use and kept, so a command reads each index or list once.
    downloader: OnceLock<Downloader>,
}

impl Store {
    /// Opens the store in `home`; `config` gives the proxy, catalog and registries
    /// that fetching uses.
    pub fn open(home: &Home, config: &Config) -> anyhow::Result<Store> {
        Ok(Store { home: home.clone(), config: config.clone(), downloader: OnceLock::new() })
    }

    /// The user's config (proxy, insecure registries).
    pub(super) fn config(&self) -> &Config {
        &self.config
    }

    pub(super) fn box_dir(&self, digest: &str) -> PathBuf {
        self.home.boxes_dir().join(digest)
    }

    /// Makes sure the box is in the store (fetching and verifying it) and returns it,
    /// with the build a catalog or `vagrant://` reference resolved to.
    pub fn ensure(&self, source: &BoxSource, ui: &Ui) -> anyhow::Result<Fetched> {
        let fetched = |stored: StoredBox, build: Option<Build>| Fetched { stored, build, index: None };
        match &source.reference {
            BoxRef::Catalog { .. } => {
                let downloader = self.downloader()?;
                let entry = self.resolve_catalog(source, downloader)?;
                // A fixed catalog URL names an immutable build: a box verified from it
                // before is the one, and needs no fetch of the checksum list. A URL
                // found through an upstream index was just checked against it instead.
                if !entry.follows_upstream {
                    if let Some(found) = self.find_pinned_source(&entry.url)? {
                        return self.with_provenance(self.get(&found)?);
                    }
                }
                let build = entry.build(downloader)?;
                let hint = Hint {
                    name: source.name.clone().unwrap_or_else(|| entry.name.clone()),
                    version: entry.version.clone(),
                    explicit: source.name.is_some(),
                };
                let stored = self.fetch_url(downloader, &build.url, build.pin.clone(), hint, ui)?;
                Ok(fetched(stored, Some(build)))
            }
            BoxRef::Vagrant { vagrant, version } => {
                let downloader = self.downloader()?;
                let build = self.resolve_vagrant(vagrant, version.as_deref(), downloader)?;
                if build.pin.is_none() && !source.insecure {
                    return Err(Error::Catalog {
                        location: build.url,
                        message: format!("{} publishes no checksum for this file; pass --insecure to accept whatever arrives", source.reference),
                    }
                    .into());
                }
                let hint = Hint {
                    name: source.name.clone().or_else(|| listed_name(&source.reference)).unwrap_or_default(),
                    version: build.version.clone(),
                    explicit: source.name.is_some(),
                };
                let stored = self.fetch_url(downloader, &build.url, build.pin.clone(), hint, ui)?;
                Ok(fetched(stored, Some(build)))
            }
            BoxRef::Url { url, sha256 } => {
                let pin = match sha256 {
                    Some(h) => Some(Pin::Sha256(super::digest::parse_sha256(h)?)),
                    None if source.insecure => None,
                    None => return Err(Error::Unpinned { url: url.clone() }.into()),
                };
                let hint = Hint {
                    name: source.name.clone().unwrap_or_else(|| name_from_file(url)),
                    version: "0".into(),
                    explicit: source.name.is_some(),
                };
                Ok(fetched(self.fetch_url(self.downloader()?, url, pin, hint, ui)?, None))
            }
            BoxRef::Oci { image, sha256 } => {
                let pulled = super::oci::pull(self, image, sha256.as_deref(), source.name.clone(), ui)?;
                Ok(Fetched { stored: pulled.stored, build: None, index: pulled.index })
            }
            BoxRef::Path { path, sha256 } => {
                let hint = Hint {
                    name: source.name.clone().unwrap_or_else(|| name_from_file(&path.to_string_lossy())),
                    version: "0".into(),
                    explicit: source.name.is_some(),
                };
                Ok(fetched(self.add_file(path, sha256.as_deref(), hint, ui)?, None))
            }
        }
    }

    /// What a catalog or `vagrant://` reference means today: the build its source
    /// offers now (for an upstream entry, the newest), with the digest upstream gives
    /// it. Nothing is fetched but the catalog and the index, checksum list or API answer.
    pub fn newest(&self, source: &BoxSource) -> anyhow::Result<Build> {
        let downloader = self.downloader()?;
        if let BoxRef::Vagrant { vagrant, version } = &source.reference {
            return Ok(self.resolve_vagrant(vagrant, version.as_deref(), downloader)?);
        }
        Ok(self.resolve_catalog(source, downloader)?.build(downloader)?)
    }

    /// A stored box a catalog or `vagrant://` reference names, found without the
    /// network, as in Vagrant: the box listed under its name (`USER-BOX` for Vagrant
    /// Cloud) for `format`, at the reference's version, else the one stored last (a
    /// newer build `box update` added). None for other references, or none stored.
    pub fn find_named(&self, reference: &BoxRef, format: BoxFormat) -> anyhow::Result<Option<Fetched>> {
        let (Some(name), BoxRef::Catalog { version, .. } | BoxRef::Vagrant { version, .. }) = (listed_name(reference), reference) else {
            return Ok(None);
        };
        let found = match version.as_deref() {
            None => self
                .list()?
                .into_iter()
                .filter(|(b, r)| b.manifest.providers.contains(&format) && (r.name == name || b.manifest.name == name))
                .max_by_key(|(_, r)| r.added)
                .map(|(b, _)| b),
            Some(v) => match self.find_for(&format!("{name}@{v}"), Some(format)) {
                Ok(stored) => Some(stored),
                Err(e) if matches!(e.downcast_ref(), Some(Error::Missing { .. })) => None,
                Err(e) => return Err(e),
            },
        };
        found.map(|stored| self.with_provenance(self.get(&stored.digest)?)).transpose()
    }

    /// A box stored earlier with the build its record says it came from: the URL it
    /// was fetched from and the pin it was verified against (none for a file).
    fn with_provenance(&self, stored: StoredBox) -> anyhow::Result<Fetched> {
        let record = stored.record()?;
        let pin = match record.pin.as_deref().and_then(|p| p.split_once(':')) {
            Some((algorithm, hex)) => Some(Pin::parse(algorithm, hex)?),
            None => None,
        };
        let build = is_http_url(&record.source).then(|| Build { version: stored.manifest.version.clone(), url: record.source, pin });
        Ok(Fetched { stored, build, index: None })
    }

    /// Before a catalog box pinned in Envfile.lock is fetched again from `url`, the URL
    /// the lock recorded with the `upstream` digest: when `url` is the fixed file name
    /// of the entry's "latest" directory, it serves whatever build is newest, so its
    /// checksum list is read first and a build that moved on fails here, before its
    /// bytes are downloaded. Any other URL names one build and is not asked.
    pub fn check_pinned_url(&self, source: &BoxSource, url: &str, upstream: &str) -> anyhow::Result<()> {
        let BoxRef::Catalog { name, .. } = &source.reference else { return Ok(()) };
        let downloader = self.downloader()?;
        let catalog = self.catalog(source, downloader)?;
        let Some(latest) = catalog.fixed_latest(name, source.format) else { return Ok(()) };
        let build = latest.resolve(downloader, name, None)?;
        let now = build.pin.map(|p| p.to_string()).unwrap_or_default();
        if build.url == url && now != upstream {
            return Err(Error::UpstreamMoved { url: url.to_string(), pinned: upstream.to_string(), now }.into());
        }
        Ok(())
    }

    /// A `vagrant://USER/BOX` reference through the API config `vagrant_api` names;
    /// the file it gives goes over plain HTTP only to this host or a host config
    /// `insecure_registries` lists.
    fn resolve_vagrant(&self, tag: &str, version: Option<&str>, downloader: &Downloader) -> Result<Build, Error> {
        let base = self.config.vagrant_api.as_deref().unwrap_or(super::vagrant_cloud::DEFAULT_API);
        let build = super::vagrant_cloud::resolve(downloader, base, tag, version)?;
        match plain_http_host(&build.url) {
            Some(host) if !plain_http_allowed(host, &self.config.insecure_registries) => Err(Error::PlainHttp {
                what: format!("vagrant://{tag} (version {})", build.version),
                host: host.to_string(),
                url: build.url.clone(),
            }),
            _ => Ok(build),
        }
    }

    /// The catalog a catalog reference is looked up in: `source.catalog`, else
    /// ENVY_CATALOG, else config `catalog`, else the built-in one.
    fn catalog(&self, source: &BoxSource, downloader: &Downloader) -> Result<Catalog, Error> {
        let from_env = std::env::var("ENVY_CATALOG").ok().filter(|v| !v.is_empty());
        let location = source.catalog.as_deref().or(from_env.as_deref()).or(self.config.catalog.as_deref());
        Catalog::load(location, downloader)
    }

    /// The catalog entry a catalog reference names, for `source.format`.
    fn resolve_catalog(&self, source: &BoxSource, downloader: &Downloader) -> anyhow::Result<Resolved> {
        let BoxRef::Catalog { name, version } = &source.reference else {
            anyhow::bail!("{} is not a catalog box; only catalog names follow a source that offers newer builds", source.reference);
        };
        let catalog = self.catalog(source, downloader)?;
        Ok(catalog.resolve(name, version.as_deref(), source.format, downloader)?)
    }

    /// The store's HTTP client, made on first use.
    pub(super) fn downloader(&self) -> anyhow::Result<&Downloader> {
        if let Some(downloader) = self.downloader.get() {
            return Ok(downloader);
        }
        let made = Downloader::new(self.config.proxy.as_deref())?;
        Ok(self.downloader.get_or_init(|| made))
    }

    /// Downloads, verifies and stores a URL. One process per URL downloads at a time;
    /// others wait on the lock and then find the box stored.
    fn fetch_url(
        &self,
        downloader: &Downloader,
        url: &str,
        pin: Option<Pin>,
        hint: Hint,
        ui: &Ui,
    ) -> anyhow::Result<StoredBox> {
        if let Some(found) = self.find_pinned(pin.as_ref())? {
            return self.get(&found);
        }
        let key = &sha256_bytes(url.as_bytes())[..32];
        let _lock = self.lock(&format!("download-{key}"), ui, &format!("fetching {url}"))?;
        if let Some(found) = self.find_pinned(pin.as_ref())? {
            return self.get(&found);
        }
        let downloads = self.home.downloads_dir();
        std::fs::create_dir_all(&downloads).map_err(Error::io("cannot create", &downloads))?;
        let part = downloads.join(format!("{key}.part"));
        ui.step(format!("fetching {url}"));
        // On failure the part file stays, so the next run resumes it.
        let hashes = downloader.fetch(url, &Default::default(), &part, pin.as_ref(), ui, &hint.name)?;
        match &pin {
            Some(p) => {
                if let Err(e) = p.check(url, &hashes) {
                    remove_part(&part)?;
                    return Err(e.into());
                }
            }
            None => ui
                .warn(format!("{url} was not pinned (--insecure); it arrived with sha256 {}", hashes.sha256)),
        }
        let origin = Origin { source: url.to_string(), pin: pin.as_ref().map(Pin::to_string) };
        let result = self.install(&part, &hashes.sha256, &origin, hint, ui);
        remove_part(&part)?;
        result
    }

    /// Hashes a local file, checks the optional pin and stores it.
    fn add_file(&self, path: &Path, sha256: Option<&str>, hint: Hint, ui: &Ui) -> anyhow::Result<StoredBox> {
        let pin = sha256.map(super::digest::parse_sha256).transpose()?.map(Pin::Sha256);
        // A pinned box already stored is the box, whatever became of the file since.
        if let Some(found) = self.find_pinned(pin.as_ref())? {
            return self.get(&found);
        }
        if path.is_dir() {
            return Err(Error::NotABox {
                archive: path.display().to_string(),
                reason: format!(
                    "it is a directory; make a box of a root filesystem with `envy box build --rootfs {}`",
                    path.display()
                ),
            }
            .into());
        }
        // Copy first, hashing while copying: what is verified is what gets stored,
        // even if the user's file changes meanwhile.
        let downloads = self.home.downloads_dir();
        std::fs::create_dir_all(&downloads).map_err(Error::io("cannot create", &downloads))?;
        let staged = tempfile::Builder::new()
            .prefix("local-")
            .suffix(".part")
            .tempfile_in(&downloads)
            .map_err(Error::io("cannot create a file in", &downloads))?;
        let src = File::open(path).map_err(Error::io("cannot read", path))?;
        let hashes = copy_hashing(src, staged.as_file(), Hasher::new())
            .and_then(|h| staged.as_file().sync_all().map(|()| h))
            .map_err(Error::io("cannot copy", path))?;
        if let Some(pin) = &pin {
            pin.check(&path.display().to_string(), &hashes)?;
        }
        let digest = hashes.sha256;
        if self.box_dir(&digest).is_dir() {
            return self.get(&digest);
        }
        let origin =
            Origin { source: path.display().to_string(), pin: Some(Pin::Sha256(digest.clone()).to_string()) };
        // `install` moves the staged file into the store or leaves it to be deleted here.
        self.install(staged.path(), &digest, &origin, hint, ui)
    }

    /// A stored box that satisfies `pin` without downloading anything.
    fn find_pinned(&self, pin: Option<&Pin>) -> anyhow::Result<Option<String>> {
        match pin {
            Some(Pin::Sha256(d)) => Ok(self.box_dir(d).is_dir().then(|| d.clone())),
            Some(p) => {
                let pin = p.to_string();
                Ok(self.records()?.into_iter().find(|(_, r)| r.pin.as_ref() == Some(&pin)).map(|(d, _)| d))
            }
            None => Ok(None),
        }
    }

    /// A stored payload file with this sha256 (an image layer another box holds), its
    /// box re-checked against its stamps first; a corrupt box offers nothing.
    pub(super) fn find_payload(&self, sha256: &str) -> anyhow::Result<Option<PathBuf>> {
        for (stored, _) in self.list()? {
            let Some(name) = stored.manifest.files.iter().find(|(_, d)| *d == sha256).map(|(n, _)| n.clone()) else {
                continue;
            };
            if let Ok(checked) = self.get(&stored.digest) {
                return Ok(Some(checked.file(&name)));
            }
        }
        Ok(None)
    }

    /// A stored box fetched from `source` and verified against a pin (never one that
    /// was added with --insecure).
    fn find_pinned_source(&self, source: &str) -> anyhow::Result<Option<String>> {
        Ok(self.records()?.into_iter().find(|(_, r)| r.source == source && r.pin.is_some()).map(|(d, _)| d))
    }

    /// Takes `locks/<key>.lock`, waiting (and saying so) while another process holds it.
    pub(super) fn lock(&self, key: &str, ui: &Ui, doing: &str) -> anyhow::Result<FileLock> {
        FileLock::acquire(&self.lock_path(key), |holder| ui.step(format!("waiting for another envy process (pid {holder}) {doing}")))
    }

    /// Unpacks a verified box file (in `downloads/`, ours to move) into a temp dir inside
    /// `boxes/` and renames it into place. Any error removes the temp dir: nothing
    /// half-made stays in the store.
    fn install(
        &self,
        file: &Path,
        digest: &str,
        origin: &Origin,
        hint: Hint,
        ui: &Ui,
    ) -> anyhow::Result<StoredBox> {
        let boxes = self.home.boxes_dir();
        std::fs::create_dir_all(&boxes).map_err(Error::io("cannot create", &boxes))?;
        // Held while the temp dir exists, so `prune` can tell a live one from a leftover.
        let _lock = self.lock(&format!("box-{digest}"), ui, &format!("storing {digest}"))?;
        let final_dir = self.box_dir(digest);
        if final_dir.is_dir() {
            let stored = self.get(digest)?;
            let mut record = stored.record()?;
            if record.pin.is_none() && origin.pin.is_some() {
                // Added unpinned before, verified against a pin now: remember the pin.
                record.pin = origin.pin.clone();
                write_record(&stored.dir, &record)?;
            }
            return Ok(stored);
        }
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".tmp-{digest}-"))
            .tempdir_in(&boxes)
            .map_err(Error::io("cannot create a temp dir in", &boxes))?;
        let label = origin.source.as_str();
        let artifact = archive::sniff(file, label)?;
        // The verified file is ours (a download or a staged copy): move it (copied only
        // when the cache dir is on another filesystem than the store).
        let place = |name: &str| -> Result<PathBuf, Error> {
            let dest = tmp.path().join(name);
            crate::fsutil::move_file(file, &dest).map_err(Error::io("cannot move into the store", file))?;
            Ok(dest)
        };
        let manifest = match artifact {
            Artifact::Qcow2 => {
                place("disk.qcow2")?;
                Manifest::for_qcow2(&hint.name, &hint.version, "disk.qcow2", digest)
            }
            Artifact::VagrantBox(compression) => {
                ui.step(format!("unpacking the disk of Vagrant box {}", hint.name));
                let sha256 = super::vagrant::unpack(file, compression, tmp.path(), label, ui)?;
                Manifest::for_vagrant_box(&hint.name, &hint.version, super::vagrant::DISK, &sha256)
            }
            Artifact::RootfsTarball(compression) => {
                let name = format!("rootfs.{}", compression.tar_extension());
                let stored = place(&name)?;
                ui.step(format!("unpacking root filesystem of {}", hint.name));
                unpack_rootfs_into(&stored, tmp.path(), label, ui)?;
                Manifest::for_rootfs(&hint.name, &hint.version, &name, digest)
            }
            Artifact::BoxArchive(compression) => {
                ui.step(format!("unpacking {}", hint.name));
                let mut progress = ui.progress(&format!("unpacking {}", hint.name), file_size(file));
                let manifest = archive::unpack_box(file, compression, tmp.path(), label, &mut progress)?;
                drop(progress);
                if manifest.image.is_some() {
                    return Err(Error::BadManifest {
                        archive: label.into(),
                        reason: "[image] is for boxes pulled from a registry (oci://…), not for box files".into(),
                    }
                    .into());
                }
                if let Some(rootfs) = manifest.container.as_ref().and_then(|c| c.rootfs.as_ref()) {
                    unpack_rootfs_into(&tmp.path().join(rootfs), tmp.path(), label, ui)?;
                }
                manifest
            }
        };
        let manifest_path = tmp.path().join(manifest::FILE_NAME);
        let from_archive = matches!(artifact, Artifact::BoxArchive(_));
        if !from_archive {
            crate::fsutil::write_atomic(&manifest_path, manifest.to_toml().as_bytes())?;
        }
        // A box's own manifest names it, unless the user chose a name.
        let listed_name =
            if from_archive && !hint.explicit { manifest.name.clone() } else { hint.name.clone() };
        self.commit(tmp, digest, &manifest, listed_name, origin, ui)
    }

    /// Records a box assembled in `tmp` (its box.toml written) and renames it into
    /// place as `boxes/<digest>/`. The caller holds the box lock.
    pub(super) fn commit(
        &self,
        tmp: tempfile::TempDir,
        digest: &str,
        manifest: &Manifest,
        name: String,
        origin: &Origin,
        ui: &Ui,
    ) -> anyhow::Result<StoredBox> {
        let manifest_path = tmp.path().join(manifest::FILE_NAME);
        let final_dir = self.box_dir(digest);
        let record = Record {
            version: RECORD_VERSION,
            name,
            source: origin.source.clone(),
            added: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            pin: origin.pin.clone(),
            manifest_sha256: sha256_file(&manifest_path)?,
            stamps: stamps(tmp.path(), manifest)?,
        };
        write_record(tmp.path(), &record)?;
        let tmp_path = tmp.keep();
        if let Err(e) = std::fs::rename(&tmp_path, &final_dir) {
            let _ = std::fs::remove_dir_all(&tmp_path);
            if !final_dir.is_dir() {
                return Err(Error::io("cannot move into place", &final_dir)(e).into());
            }
        }
        ui.step(format!("stored {} as {digest}", record.name));
        self.get(digest)
    }

    /// A stored box by digest, re-hashed first if its files changed since verification.
    pub fn get(&self, digest: &str) -> anyhow::Result<StoredBox> {
        let (stored, record) = self.load(digest)?;
        let changed: Vec<String> = record
            .stamps
            .iter()
            .filter(|(name, stamp)| Stamp::of(&stored.dir.join(name)).ok().as_ref() != Some(*stamp))
            .map(|(name, _)| name.clone())
            .collect();
        if changed.is_empty() {
            return Ok(stored);
        }
        tracing::debug!("files of box {digest} changed since verification ({changed:?}); re-hashing");
        self.rehash(stored, record, Some(&changed))
    }

    /// Re-hashes every file of a stored box, whatever its stamps say.
    pub fn verify(&self, digest: &str) -> anyhow::Result<Vec<Corruption>> {
        let (stored, record) = self.load(digest)?;
        match self.rehash(stored, record, None) {
            Ok(_) => Ok(Vec::new()),
            Err(e) => match e.downcast_ref::<Error>() {
                Some(Error::Corrupt { file, expected, got, .. }) => {
                    let mut all =
                        vec![Corruption { file: file.clone(), expected: expected.clone(), got: got.clone() }];
                    all.extend(self.corruptions(digest)?.into_iter().filter(|c| c.file != *file));
                    Ok(all)
                }
                _ => Err(e),
            },
        }
    }

    /// Every file of the box whose content does not match its expected digest.
    fn corruptions(&self, digest: &str) -> anyhow::Result<Vec<Corruption>> {
        let (stored, record) = self.load(digest)?;
        let mut out = Vec::new();
        for (file, expected) in expected_digests(&stored, &record) {
            let got = sha256_file(&stored.dir.join(&file)).unwrap_or_else(|e| format!("unreadable ({e})"));
            if got != expected {
                out.push(Corruption { file, expected, got });
            }
        }
        Ok(out)
    }

    /// Checks the files named in `only` (or all) against their digests; on success
    /// refreshes the stamps so the next `get` trusts them again.
    fn rehash(&self, stored: StoredBox, mut record: Record, only: Option<&[String]>) -> anyhow::Result<StoredBox> {
        for (file, expected) in expected_digests(&stored, &record) {
            if only.is_some_and(|o| !o.contains(&file)) {
                continue;
            }
            let got = sha256_file(&stored.dir.join(&file)).unwrap_or_else(|e| format!("unreadable ({e})"));
            if got != expected {
                return Err(Error::Corrupt { digest: stored.digest.clone(), file, expected, got }.into());
            }
        }
        record.stamps = stamps(&stored.dir, &stored.manifest)?;
        write_record(&stored.dir, &record)?;
        Ok(stored)
    }

    /// Reads a stored box's manifest and record, without checking its files.
    fn load(&self, digest: &str) -> anyhow::Result<(StoredBox, Record)> {
        let digest = super::digest::parse_sha256(digest)?;
        let dir = self.box_dir(&digest);
        if !dir.is_dir() {
            return Err(Error::Missing { what: digest, store: self.home.boxes_dir() }.into());
        }
        let record = read_record(&dir)?;
        let manifest_path = dir.join(manifest::FILE_NAME);
        let text =
            std::fs::read_to_string(&manifest_path).map_err(Error::io("cannot read", &manifest_path))?;
        let manifest = Manifest::parse(&text, &dir.display().to_string())?;
        Ok((StoredBox { digest, dir, manifest }, record))
    }

    /// (digest, record) of every stored box.
    fn records(&self) -> anyhow::Result<Vec<(String, Record)>> {
        let mut out = Vec::new();
        for digest in self.digests()? {
            if let Ok(record) = read_record(&self.box_dir(&digest)) {
                out.push((digest, record));
            }
        }
        Ok(out)
    }

    /// Digests of every stored box (temp and trash dirs skipped).
    pub fn digests(&self) -> anyhow::Result<Vec<String>> {
        let mut out: Vec<String> = list_names(&self.home.boxes_dir())?
            .into_iter()
            .filter(|n| super::digest::parse_sha256(n).is_ok())
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every stored box with its record, by name and version (not re-hashed: listing
    /// must stay cheap).
    pub fn list(&self) -> anyhow::Result<Vec<(StoredBox, Record)>> {
        let mut out = Vec::new();
        for digest in self.digests()? {
            out.push(self.load(&digest)?);
        }
        out.sort_by(|(a, ra), (b, rb)| (&ra.name, &a.manifest.version).cmp(&(&rb.name, &b.manifest.version)));
        Ok(out)
    }

    /// Finds one stored box by name, `name@version`, or digest prefix (8+ hex digits).
    pub fn find(&self, query: &str) -> anyhow::Result<StoredBox> {
        self.find_for(query, None)
    }

    /// `find` among the boxes with `format`: one box name may stand for a container
    /// box and a VM box, as a Vagrant box has one name and several providers.
    pub fn find_for(&self, query: &str, format: Option<BoxFormat>) -> anyhow::Result<StoredBox> {
        let mut all = self.list()?;
        if let Some(format) = format {
            all.retain(|(b, _)| b.manifest.providers.contains(&format));
        }
        let is_prefix = query.len() >= 8 && query.bytes().all(|b| b.is_ascii_hexdigit());
        let (name, version) = match query.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (query, None),
        };
        let matches: Vec<&(StoredBox, Record)> = all
            .iter()
            .filter(|(b, r)| {
                (is_prefix && b.digest.starts_with(&query.to_ascii_lowercase()))
                    || ((r.name == name || b.manifest.name == name)
                        && version.is_none_or(|v| v == b.manifest.version))
            })
            .collect();
        match matches.as_slice() {
            [(one, _)] => Ok(one.clone()),
            [] => Err(Error::Missing {
                what: match format {
                    Some(f) => format!("`{query}` for the {f} provider"),
                    None => format!("`{query}`"),
                },
                store: self.home.boxes_dir(),
            }
            .into()),
            many => Err(Error::Ambiguous {
                what: query.to_string(),
                candidates: many
                    .iter()
                    .map(|(b, r)| format!("{}@{} {}", r.name, b.manifest.version, &b.digest[..12]))
                    .collect::<Vec<_>>()
                    .join(", "),
            }
            .into()),
        }
    }

    /// Removes what crashed envy processes left: temp dirs of unfinished adds (their
    /// box lock is free), half-deleted boxes, and staged local files older than a day.
    /// Partial URL downloads stay: the next add resumes them. Returns what was removed.
    pub fn remove_leftovers(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        let boxes = self.home.boxes_dir();
        for name in list_names(&boxes)? {
            let path = boxes.join(&name);
            let stale = if let Some(rest) = name.strip_prefix(".tmp-") {
                let digest = rest.split('-').next().unwrap_or("");
                self.try_lock(&format!("box-{digest}"))?.is_some()
            } else {
                name.starts_with(".trash-")
            };
            if stale && std::fs::remove_dir_all(&path).is_ok() {
                removed.push(path);
            }
        }
        let downloads = self.home.downloads_dir();
        let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86400);
        for name in list_names(&downloads)? {
            let path = downloads.join(&name);
            let old = std::fs::metadata(&path).and_then(|m| m.modified()).is_ok_and(|t| t < day_ago);
            if name.starts_with("local-") && old && std::fs::remove_file(&path).is_ok() {
                removed.push(path);
            }
        }
        Ok(removed)
    }

    /// Takes a lock only if it is free.
    fn try_lock(&self, key: &str) -> anyhow::Result<Option<FileLock>> {
        Ok(FileLock::try_acquire(&self.lock_path(key))?.ok())
    }

    fn lock_path(&self, key: &str) -> PathBuf {
        self.home.locks_dir().join(format!("{key}.lock"))
    }

    /// Removes a box: renamed out of sight first, so no reader sees it half-deleted.
    pub fn remove(&self, digest: &str) -> anyhow::Result<()> {
        let dir = self.box_dir(digest);
        let trash = self.home.boxes_dir().join(format!(".trash-{digest}-{}", std::process::id()));
        std::fs::rename(&dir, &trash).map_err(Error::io("cannot remove", &dir))?;
        std::fs::remove_dir_all(&trash).map_err(Error::io("cannot remove", &trash))?;
        Ok(())
    }
}

/// What a box is named and versioned as when its file does not say.
struct Hint {
    name: String,
    version: String,
    /// The name came from --name (it then wins over a manifest's).
    explicit: bool,
}

/// Where a box file came from.
pub(super) struct Origin {
    pub(super) source: String,
    pub(super) pin: Option<String>,
}

fn unpack_rootfs_into(tarball: &Path, box_dir: &Path, label: &str, ui: &Ui) -> Result<(), Error> {
    let compression = match archive::sniff(tarball, label)? {
        Artifact::RootfsTarball(c) | Artifact::BoxArchive(c) => c,
        Artifact::Qcow2 | Artifact::VagrantBox(_) => {
            return Err(Error::NotABox {
                archive: label.into(),
                reason: "its rootfs payload is a qcow2 image or a Vagrant box, not a root filesystem tarball".into(),
            })
        }
    };
    let dest = box_dir.join(ROOTFS_DIR);
    std::fs::create_dir(&dest).map_err(Error::io("cannot create", &dest))?;
    let started = std::time::Instant::now();
    let mut progress = ui.progress("unpacking root filesystem", file_size(tarball));
    let report = archive::unpack_rootfs(tarball, compression, &dest, label, &mut progress)?;
    drop(progress);
    // benches/box_add.sh reads this line to time the unpack alone.
    tracing::debug!("unpacked rootfs of {label} in {:.3} s", started.elapsed().as_secs_f64());
    if report.skipped_devices > 0 {
        ui.step(format!(
            "skipped {} device nodes under /dev (the container runtime provides /dev)",
            report.skipped_devices
        ));
    }
    Ok(())
}

/// A file's size, for progress totals (None when unknown).
pub(super) fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

/// Entry names in a directory (none when it does not exist).
fn list_names(dir: &Path) -> Result<Vec<String>, Error> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io("cannot read", dir)(e)),
    }
}

/// Stamps of `box.toml` and every payload file.
fn stamps(dir: &Path, manifest: &Manifest) -> Result<BTreeMap<String, Stamp>, Error> {
    let mut out = BTreeMap::new();
    for name in std::iter::once(manifest::FILE_NAME).chain(manifest.files.keys().map(String::as_str)) {
        out.insert(name.to_string(), Stamp::of(&dir.join(name))?);
    }
    Ok(out)
}

/// (file, expected sha256) for `box.toml` and every payload file.
fn expected_digests(stored: &StoredBox, record: &Record) -> Vec<(String, String)> {
    std::iter::once((manifest::FILE_NAME.to_string(), record.manifest_sha256.clone()))
        .chain(stored.manifest.files.iter().map(|(f, d)| (f.clone(), d.clone())))
        .collect()
}

impl crate::fsutil::Record for Record {
    const VERSION: u32 = RECORD_VERSION;
    const REMEDY: &'static str = "remove the box with `envy box remove` and add it again";
}

fn write_record(dir: &Path, record: &Record) -> anyhow::Result<()> {
    crate::fsutil::write_record(&dir.join(RECORD_FILE), record)
}

fn read_record(dir: &Path) -> anyhow::Result<Record> {
    let path = dir.join(RECORD_FILE);
    crate::fsutil::read_record(&path)?.ok_or_else(|| Error::io("cannot read", &path)(std::io::ErrorKind::NotFound.into()).into())
}
