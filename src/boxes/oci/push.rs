//! Pushing a machine to a registry as an OCI image. A container: the layers of its
//! box as they are (an image box's blobs byte for byte, or a rootfs box packed as one
//! layer) plus the machine's own changes as one more layer, so a teammate who has the
//! base pulls only that delta. A VM: its flattened disk as a KubeVirt containerDisk.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::boxes::archive::pack_rootfs_dir;
use crate::boxes::digest::{sha256_bytes, Hasher, HashingReader, HashingWriter};
use crate::boxes::store::{Store, StoredBox};
use crate::boxes::Error;
use crate::model::OciRef;
use crate::ui::Ui;

use super::image::{self, host_platform, ImageManifest};
use super::registry::Registry;

/// The layer media type envy writes.
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A blob to push: its descriptor, and the file holding it.
struct Blob {
    media_type: String,
    sha256: String,
    size: u64,
    path: PathBuf,
}

impl Blob {
    fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": format!("sha256:{}", self.sha256), "size": self.size })
    }
}

/// Pushes the image of `stored` + the `delta` layer (an uncompressed layer tar) as
/// `target` (which names a tag); `work` is a scratch directory. Returns the sha256 of
/// the pushed manifest.
pub fn push(store: &Store, stored: &StoredBox, delta: &Path, target: &OciRef, work: &Path, ui: &Ui) -> anyhow::Result<String> {
    let (mut layers, mut config) = base_layers(stored, work)?;
    let (delta_blob, delta_diff) = gzip_layer(delta, &work.join("delta.tar.gz"))?;
    layers.push(delta_blob);
    let diff_ids = config["rootfs"]["diff_ids"].as_array_mut().ok_or_else(|| Error::BadImage {
        reference: stored.dir.display().to_string(),
        reason: "its image config has no rootfs.diff_ids list".into(),
    })?;
    diff_ids.push(Value::String(format!("sha256:{delta_diff}")));
    // Tools that match history to layers need one entry per layer.
    if let Some(history) = config.get_mut("history").and_then(Value::as_array_mut) {
        history.push(json!({ "created_by": "envy share --push", "comment": "the machine's own changes" }));
    }
    upload_image(store, layers, &config, target, work, ui)
}

/// Pushes a VM disk (qcow2) as a KubeVirt containerDisk: one layer holding
/// `disk/disk.qcow2`, owned by uid/gid 107 as KubeVirt expects.
pub fn push_disk(store: &Store, disk: &Path, target: &OciRef, work: &Path, ui: &Ui) -> anyhow::Result<String> {
    let tar = work.join("disk-layer.tar");
    {
        let out = File::create(&tar).map_err(Error::io("cannot create", &tar))?;
        let mut builder = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, out));
        let header = |kind: tar::EntryType, size: u64, mode: u32| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(mode);
            h.set_uid(107);
            h.set_gid(107);
            h.set_mtime(0);
            h
        };
        builder.append_data(&mut header(tar::EntryType::Directory, 0, 0o555), "disk/", io::empty())?;
        let file = File::open(disk).map_err(Error::io("cannot read", disk))?;
        let size = file.metadata().map_err(Error::io("cannot read", disk))?.len();
        builder.append_data(&mut header(tar::EntryType::Regular, size, 0o444), "disk/disk.qcow2", file)?;
        builder.into_inner()?.into_inner().map_err(|e| e.into_error())?.sync_all().map_err(Error::io("cannot write", &tar))?;
    }
    let (layer, diff_id) = gzip_layer(&tar, &work.join("disk-layer.tar.gz"))?;
    upload_image(store, vec![layer], &fresh_config(&diff_id), target, work, ui)
}

/// The config of an image envy makes from scratch: this host's platform, one layer.
fn fresh_config(diff_id: &str) -> Value {
    let platform = host_platform();
    json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
    })
}

/// Uploads the layers and the config, then puts the manifest under the target's tag.
fn upload_image(store: &Store, layers: Vec<Blob>, config: &Value, target: &OciRef, work: &Path, ui: &Ui) -> anyhow::Result<String> {
    let label = target.to_string();
    let config_bytes = serde_json::to_vec(config)?;
    let config_path = work.join("config.json");
    std::fs::write(&config_path, &config_bytes).map_err(Error::io("cannot write", &config_path))?;
    let config_blob = Blob {
        media_type: image::OCI_CONFIG.into(),
        sha256: sha256_bytes(&config_bytes),
        size: config_bytes.len() as u64,
        path: config_path,
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": image::OCI_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;

    let downloader = store.downloader()?;
    let registry = Registry::connect(downloader, target, &store.config().insecure_registries, "pull,push")?;
    for blob in layers.iter().chain([&config_blob]) {
        upload(&registry, blob, &label, ui)?;
    }
    let tag = target.tag.as_deref().unwrap_or("latest");
    let url = registry.url("manifests", tag);
    let resp = registry.send(
        registry.client().put(&url).header("Content-Type", image::OCI_MANIFEST).body(manifest_bytes.clone()),
        &format!("pushing the manifest {tag}"),
    )?;
    if !resp.status().is_success() {
        return Err(refused(&label, "the manifest", resp));
    }
    Ok(sha256_bytes(&manifest_bytes))
}

/// The box's layers and config: an image box's own, or its rootfs as one new layer
/// under a fresh config.
fn base_layers(stored: &StoredBox, work: &Path) -> anyhow::Result<(Vec<Blob>, Value)> {
    let Some(image) = &stored.manifest.image else {
        let tar = work.join("base.tar");
        pack_rootfs_dir(&stored.rootfs()?, &tar)?;
        let (blob, diff_id) = gzip_layer(&tar, &work.join("base.tar.gz"))?;
        return Ok((vec![blob], fresh_config(&diff_id)));
    };
    let read = |name: &str| -> Result<Vec<u8>, Error> {
        let path = stored.file(name);
        std::fs::read(&path).map_err(Error::io("cannot read", &path))
    };
    let bad = |reason: String| Error::BadImage { reference: stored.dir.display().to_string(), reason };
    let manifest: ImageManifest =
        serde_json::from_slice(&read(&image.manifest)?).map_err(|e| bad(format!("its stored manifest does not parse ({e})")))?;
    let config: Value =
        serde_json::from_slice(&read(&image.config)?).map_err(|e| bad(format!("its stored config does not parse ({e})")))?;
    let layers = manifest
        .layers
        .iter()
        .zip(&image.layers)
        .map(|(desc, file)| Blob {
            // The bytes stay; Docker's gzip type is the OCI one under another name.
            media_type: if desc.media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip" {
                OCI_LAYER_GZIP.into()
            } else {
                desc.media_type.clone()
            },
            sha256: desc.sha256().unwrap_or_default().to_string(),
            size: desc.size,
            path: stored.file(file),
        })
        .collect();
    Ok((layers, config))
}

/// Compresses an uncompressed layer tar with gzip; returns the blob and its diff_id
/// (the sha256 of the uncompressed stream), both hashed in the one pass.
fn gzip_layer(tar: &Path, out: &Path) -> anyhow::Result<(Blob, String)> {
    let src = File::open(tar).map_err(Error::io("cannot read", tar))?;
    let dest = File::create(out).map_err(Error::io("cannot create", out))?;
    let mut reader = HashingReader::new(BufReader::with_capacity(1 << 20, src));
    let writer = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, dest), Hasher::new());
    let mut encoder = flate2::write::GzEncoder::new(writer, flate2::Compression::fast());
    io::copy(&mut reader, &mut encoder).map_err(Error::io("cannot compress", tar))?;
    let (buf, compressed) = encoder.finish().map_err(Error::io("cannot write", out))?.finish();
    buf.into_inner().map_err(|e| e.into_error()).and_then(|f| f.sync_all()).map_err(Error::io("cannot write", out))?;
    let diff_id = reader.finish().map_err(Error::io("cannot read", tar))?.sha256;
    let size = std::fs::metadata(out).map_err(Error::io("cannot read", out))?.len();
    Ok((Blob { media_type: OCI_LAYER_GZIP.into(), sha256: compressed.sha256, size, path: out.to_path_buf() }, diff_id))
}

/// Uploads a blob unless the repository has it: POST an upload, PUT the bytes with
/// their digest (the registry checks it).
fn upload(registry: &Registry, blob: &Blob, label: &str, ui: &Ui) -> anyhow::Result<()> {
    let digest = format!("sha256:{}", blob.sha256);
    let head = registry.send(registry.client().head(registry.url("blobs", &digest)), &format!("checking blob {digest}"))?;
    if head.status().is_success() {
        tracing::debug!("{label} already has blob {digest}");
        return Ok(());
    }
    ui.step(format!("uploading {} ({} bytes)", &digest[..19], blob.size));
    let start = registry.send(registry.client().post(registry.url("blobs", "uploads/")), &format!("uploading blob {digest}"))?;
    if start.status() != StatusCode::ACCEPTED {
        return Err(refused(label, &format!("an upload of blob {digest}"), start));
    }
    let location = start.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut url = registry.resolve(&location)?;
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str(&format!("digest={digest}"));
    let file = File::open(&blob.path).map_err(Error::io("cannot read", &blob.path))?;
    let body = reqwest::blocking::Body::sized(file, blob.size);
    let put = registry.send(
        registry.client().put(&url).header("Content-Type", "application/octet-stream").body(body),
        &format!("uploading blob {digest}"),
    )?;
    if !put.status().is_success() {
        return Err(refused(label, &format!("blob {digest}"), put));
    }
    Ok(())
}

/// A registry's refusal, with the start of its error body (it names the reason).
fn refused(label: &str, what: &str, resp: reqwest::blocking::Response) -> anyhow::Error {
    let status = resp.status().as_u16();
    let body: String = resp.text().unwrap_or_default().chars().take(300).collect();
    Error::PushRefused { reference: label.to_string(), what: what.to_string(), status, body: body.trim().to_string() }.into()
}
