//! Pulling an image into the store: tag → (index →) platform manifest, config and
//! layers fetched by digest and checked against their descriptors, each layer checked
//! against the config's diff_id while it is applied, and the whole stored as a
//! container box (or, for a KubeVirt containerDisk, a VM box) named by the manifest's
//! digest.

use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::boxes::archive;
use crate::boxes::digest::{sha256_file, HashingReader, Pin};
use crate::boxes::download::remove_part;
use crate::boxes::manifest::{self, BootMethod, ContainerPayload, ImagePayload, Manifest, QemuPayload, FORMAT};
use crate::boxes::store::{Origin, Store, StoredBox, ROOTFS_DIR};
use crate::boxes::Error;
use crate::model::{BoxFormat, OciRef};
use crate::process::Process;
use crate::ui::Ui;

use super::image::{self, Descriptor, ImageConfig, ImageManifest, Index, LayerCompression};
use super::registry::{Fetched, Registry};

/// Payload file names of a pulled image in its box directory.
pub const MANIFEST_FILE: &str = "manifest.json";
pub const CONFIG_FILE: &str = "config.json";
/// The VM disk of a containerDisk image.
pub const DISK_FILE: &str = "disk.qcow2";

/// A pulled (or already stored) image, and the index its reference resolved through.
pub struct Pulled {
    pub stored: StoredBox,
    /// sha256 of the index (or Docker manifest list) the tag or digest named, when it
    /// named one rather than a platform manifest.
    pub index: Option<String>,
}

/// Makes sure `image` is in the store. `expect` is the platform manifest digest the
/// lock pins: a reference that now resolves elsewhere fails with `WrongDigest` before
/// a blob is fetched. `name` lists the box under another name than the repository's.
pub fn pull(store: &Store, image: &OciRef, expect: Option<&str>, name: Option<String>, ui: &Ui) -> anyhow::Result<Pulled> {
    // Pinned (by the lock, else by the reference) to a manifest that is stored:
    // nothing to ask the registry. (A reference's digest may name an index instead.)
    if let Some(pinned) = expect.or(image.digest.as_deref()).filter(|d| store.box_dir(d).is_dir()) {
        return Ok(Pulled { stored: store.get(pinned)?, index: None });
    }
    let label = image.to_string();
    let downloader = store.downloader()?;
    let registry = Registry::connect(downloader, image, &store.config().insecure_registries, "pull")?;
    let reference = match (&image.digest, &image.tag) {
        (Some(d), _) => format!("sha256:{d}"),
        (None, Some(t)) => t.clone(),
        (None, None) => "latest".into(),
    };
    let top = registry.manifest(&reference, image::ACCEPT, &label)?;
    let (platform_manifest, index) = match top.media_type.as_str() {
        image::OCI_INDEX | image::DOCKER_LIST => {
            let parsed: Index = parse_json(&top.bytes, &label, "index")?;
            let wanted = image::host_platform();
            let entry = image::pick(&parsed, &wanted).map_err(|available| Error::NoPlatform {
                reference: label.clone(),
                wanted: wanted.to_string(),
                available,
            })?;
            let digest = descriptor_sha256(entry, &label)?;
            let fetched = registry.manifest(&format!("sha256:{digest}"), image::ACCEPT, &label)?;
            check_size(&fetched.bytes, entry.size, &format!("manifest {} of {label}", entry.digest))?;
            (fetched, Some(top.digest))
        }
        image::OCI_MANIFEST | image::DOCKER_MANIFEST => (top, None),
        other => return Err(unknown_type(&label, "manifest", other).into()),
    };
    if !matches!(platform_manifest.media_type.as_str(), image::OCI_MANIFEST | image::DOCKER_MANIFEST) {
        return Err(unknown_type(&label, "platform manifest", &platform_manifest.media_type).into());
    }
    let digest = platform_manifest.digest.clone();
    if let Some(pinned) = expect {
        if pinned != digest {
            return Err(Error::WrongDigest {
                what: label,
                algorithm: "sha256",
                expected: pinned.to_string(),
                got: digest,
            }
            .into());
        }
    }
    let stored = if store.box_dir(&digest).is_dir() {
        store.get(&digest)?
    } else {
        let _lock = store.lock(&format!("box-{digest}"), ui, &format!("storing {digest}"))?;
        if store.box_dir(&digest).is_dir() {
            store.get(&digest)?
        } else {
            let default_name = image.repository.rsplit('/').next().unwrap_or("image").to_string();
            install(store, &registry, image, &platform_manifest, name.unwrap_or(default_name), ui)?
        }
    };
    Ok(Pulled { stored, index })
}

/// Fetches the manifest's blobs into a temp dir in the store, applies the layers and
/// renames the box into place; any error removes the temp dir.
fn install(
    store: &Store,
    registry: &Registry,
    image: &OciRef,
    fetched: &Fetched,
    name: String,
    ui: &Ui,
) -> anyhow::Result<StoredBox> {
    let label = image.to_string();
    let parsed: ImageManifest = parse_json(&fetched.bytes, &label, "manifest")?;
    if !matches!(parsed.config.media_type.as_str(), image::OCI_CONFIG | image::DOCKER_CONFIG) {
        return Err(unknown_type(&label, "config", &parsed.config.media_type).into());
    }
    let compressions = parsed
        .layers
        .iter()
        .map(|l| LayerCompression::of(&l.media_type).ok_or_else(|| unknown_type(&label, "layer", &l.media_type)))
        .collect::<Result<Vec<_>, _>>()?;
    let boxes = store.home.boxes_dir();
    std::fs::create_dir_all(&boxes).map_err(Error::io("cannot create", &boxes))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".tmp-{}-", fetched.digest))
        .tempdir_in(&boxes)
        .map_err(Error::io("cannot create a temp dir in", &boxes))?;
    let manifest_path = tmp.path().join(MANIFEST_FILE);
    std::fs::write(&manifest_path, &fetched.bytes).map_err(Error::io("cannot write", &manifest_path))?;

    let mut files = std::collections::BTreeMap::from([(MANIFEST_FILE.to_string(), fetched.digest.clone())]);
    let config_sha = fetch_blob(store, registry, &parsed.config, &tmp.path().join(CONFIG_FILE), &label, ui)?;
    files.insert(CONFIG_FILE.to_string(), config_sha);
    let config_path = tmp.path().join(CONFIG_FILE);
    let config_bytes = std::fs::read(&config_path).map_err(Error::io("cannot read", &config_path))?;
    let config: ImageConfig = parse_json(&config_bytes, &label, "image config")?;
    if config.rootfs.diff_ids.len() != parsed.layers.len() {
        return Err(Error::BadImage {
            reference: label,
            reason: format!(
                "its config lists {} diff_ids for {} layers",
                config.rootfs.diff_ids.len(),
                parsed.layers.len()
            ),
        }
        .into());
    }

    let mut layers = Vec::new();
    for (i, layer) in parsed.layers.iter().enumerate() {
        let file = format!("layer-{i}");
        let sha = fetch_blob(store, registry, layer, &tmp.path().join(&file), &label, ui)?;
        files.insert(file.clone(), sha);
        layers.push(file);
    }

    let rootfs = tmp.path().join(ROOTFS_DIR);
    std::fs::create_dir(&rootfs).map_err(Error::io("cannot create", &rootfs))?;
    for (i, ((file, compression), diff_id)) in layers.iter().zip(&compressions).zip(&config.rootfs.diff_ids).enumerate() {
        ui.step(format!("applying layer {}/{} of {label}", i + 1, layers.len()));
        apply_layer(&tmp.path().join(file), *compression, diff_id, &rootfs, &format!("layer {} of {label}", i + 1))?;
    }

    // A KubeVirt containerDisk (one disk image under /disk/) is a VM box; any other
    // image is a container's root filesystem.
    let (providers, container, qemu) = match container_disk(&rootfs)? {
        Some(disk) => {
            ui.step(format!("{label} is a containerDisk: {} becomes the VM's disk", disk.display()));
            let stored_disk = tmp.path().join(DISK_FILE);
            as_qcow2(&disk, &stored_disk, &label)?;
            std::fs::remove_dir_all(&rootfs).map_err(Error::io("cannot remove", &rootfs))?;
            files.insert(DISK_FILE.to_string(), sha256_file(&stored_disk)?);
            let boot = QemuPayload { disk: DISK_FILE.into(), boot: BootMethod::Firmware, kernel: None, initrd: None, cmdline: None, first_login: Default::default() };
            (vec![BoxFormat::Qemu], None, Some(boot))
        }
        None => (vec![BoxFormat::Container], Some(ContainerPayload { rootfs: None }), None),
    };
    let version = image.tag.clone().unwrap_or_else(|| fetched.digest[..12].to_string());
    let manifest = Manifest {
        format: FORMAT,
        name: name.clone(),
        version,
        arch: std::env::consts::ARCH.to_string(),
        providers,
        container,
        qemu,
        files,
        image: Some(ImagePayload { manifest: MANIFEST_FILE.into(), config: CONFIG_FILE.into(), layers }),
        envfile: None,
    };
    manifest.validate(&label)?;
    crate::fsutil::write_atomic(&tmp.path().join(manifest::FILE_NAME), manifest.to_toml().as_bytes())?;
    let origin = Origin { source: label, pin: Some(Pin::Sha256(fetched.digest.clone()).to_string()) };
    store.commit(tmp, &fetched.digest, &manifest, name, &origin, ui)
}

/// The disk of a KubeVirt containerDisk: a tree holding only `disk/` with exactly one
/// regular file in it (never followed through a symlink).
fn container_disk(rootfs: &Path) -> Result<Option<PathBuf>, Error> {
    let names = |dir: &Path| -> Result<Vec<std::ffi::OsString>, Error> {
        std::fs::read_dir(dir)
            .map_err(Error::io("cannot read", dir))?
            .map(|e| e.map(|e| e.file_name()).map_err(Error::io("cannot read", dir)))
            .collect()
    };
    let disk_dir = rootfs.join("disk");
    if names(rootfs)? != ["disk"] || !std::fs::symlink_metadata(&disk_dir).is_ok_and(|m| m.is_dir()) {
        return Ok(None);
    }
    match names(&disk_dir)?.as_slice() {
        [one] => {
            let path = disk_dir.join(one);
            Ok(std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()).then_some(path))
        }
        _ => Ok(None),
    }
}

/// Moves a qcow2 disk to `dest`, or converts a raw one (`qemu-img convert`).
fn as_qcow2(disk: &Path, dest: &Path, label: &str) -> anyhow::Result<()> {
    let mut magic = [0u8; 4];
    let n = File::open(disk).and_then(|mut f| f.read(&mut magic)).map_err(Error::io("cannot read", disk))?;
    if magic[..n] == *b"QFI\xfb" {
        std::fs::rename(disk, dest).map_err(Error::io("cannot move into the store", disk))?;
        return Ok(());
    }
    Process::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(disk)
        .arg(dest)
        .doing(format!("converting the raw disk of {label} to qcow2"))
        .run()?;
    Ok(())
}

/// Puts the blob at `dest`: linked from a stored box that has it, else downloaded
/// (resumable) and checked against the descriptor's sha256 and size.
fn fetch_blob(store: &Store, registry: &Registry, desc: &Descriptor, dest: &Path, label: &str, ui: &Ui) -> anyhow::Result<String> {
    let sha = descriptor_sha256(desc, label)?;
    let what = format!("blob {} of {label}", desc.digest);
    if let Some(have) = store.find_payload(&sha)? {
        if std::fs::hard_link(&have, dest).is_ok() {
            tracing::debug!("{what} is already stored at {}", have.display());
            return Ok(sha);
        }
    }
    let downloads = store.home.downloads_dir();
    std::fs::create_dir_all(&downloads).map_err(Error::io("cannot create", &downloads))?;
    let part = downloads.join(format!("blob-{}.part", &sha[..32]));
    let pin = Pin::Sha256(sha.clone());
    let short = &sha[..12];
    let hashes = registry.downloader().fetch(
        &registry.url("blobs", &desc.digest),
        &registry.headers(),
        &part,
        Some(&pin),
        ui,
        &format!("{} {short}", label.rsplit('/').next().and_then(|n| n.split('@').next()).unwrap_or(label)),
    )?;
    let size = std::fs::metadata(&part).map_err(Error::io("cannot read", &part))?.len();
    let checked = pin.check(&what, &hashes).and_then(|()| {
        if size == desc.size { Ok(()) } else { Err(Error::WrongSize { what: what.clone(), expected: desc.size, got: size }) }
    });
    if let Err(e) = checked {
        remove_part(&part)?;
        return Err(e.into());
    }
    crate::fsutil::move_file(&part, dest).map_err(Error::io("cannot move into the store", &part))?;
    File::open(dest).and_then(|f| f.sync_all()).map_err(Error::io("cannot write", dest))?;
    Ok(sha)
}

/// Decompresses and applies one verified layer blob, hashing the uncompressed stream
/// against its diff_id. A mismatch fails the whole pull (the temp dir goes).
fn apply_layer(blob: &Path, compression: LayerCompression, diff_id: &str, rootfs: &Path, label: &str) -> Result<(), Error> {
    let file = File::open(blob).map_err(Error::io("cannot read", blob))?;
    let as_archive = match compression {
        LayerCompression::None => archive::Compression::None,
        LayerCompression::Gzip => archive::Compression::Gzip,
        LayerCompression::Zstd => archive::Compression::Zstd,
    };
    let damaged = |e: std::io::Error| Error::NotABox { archive: label.to_string(), reason: format!("the layer cannot be decompressed ({e})") };
    let mut reader = HashingReader::new(as_archive.reader(file).map_err(damaged)?);
    archive::unpack_layer(&mut reader, rootfs, label)?;
    let got = reader.finish().map_err(damaged)?.sha256;
    let expected = diff_id.strip_prefix("sha256:").unwrap_or(diff_id);
    if got != expected {
        return Err(Error::WrongDigest {
            what: format!("uncompressed {label} (the config's rootfs.diff_ids)"),
            algorithm: "sha256",
            expected: expected.to_string(),
            got,
        });
    }
    Ok(())
}

/// A blob's digest as hex; only sha256 is accepted.
fn descriptor_sha256(desc: &Descriptor, label: &str) -> Result<String, Error> {
    desc.sha256().map(str::to_ascii_lowercase).ok_or_else(|| Error::BadImage {
        reference: label.to_string(),
        reason: format!("digest `{}` is not a sha256 digest, the only kind envy checks", desc.digest),
    })
}

fn check_size(bytes: &[u8], expected: u64, what: &str) -> Result<(), Error> {
    if bytes.len() as u64 == expected {
        Ok(())
    } else {
        Err(Error::WrongSize { what: what.to_string(), expected, got: bytes.len() as u64 })
    }
}

fn unknown_type(label: &str, what: &str, media_type: &str) -> Error {
    Error::BadImage {
        reference: label.to_string(),
        reason: format!(
            "its {what} has media type `{media_type}`, which envy does not read (it reads OCI and Docker v2 images with tar, gzip or zstd layers)"
        ),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], label: &str, what: &str) -> Result<T, Error> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::BadImage { reference: label.to_string(), reason: format!("its {what} is not valid JSON of that type ({e})") })
}

