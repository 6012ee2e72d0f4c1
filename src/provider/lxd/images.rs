//! Container boxes as LXD images: the box's unpacked root filesystem packed into a split
//! image (a metadata tarball and a rootfs tarball), uploaded once and found again by an
//! alias holding the box digest, so a second `up` anywhere in the cluster uploads nothing.
//! Uploaded images stay on the daemon as boxes stay in the store (docs/lxd.md).

use std::io::{Cursor, Read};
use std::path::Path;

use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::client::{url_escape, Client};
use super::Error;
use crate::boxes::StoredBox;
use crate::state::Home;
use crate::ui::Ui;

/// The file LXD's image template writes into each new instance; the instance's init
/// runs it (`raw.lxc` sets `lxc.init.cmd`, whose words LXC splits at every space, so
/// the script itself cannot be given inline). It is what the container provider runs as
/// PID 1: it keeps the machine up, reaps orphans, and exits on LXD's stop signal (PWR).
/// First it brings up the loopback interface, which nothing else does in a machine
/// without a network manager and which forwards (proxy devices) connect to.
pub const INIT_PATH: &str = "/etc/envy-init";
const INIT_SCRIPT: &str = "ip link set lo up 2>/dev/null || ifconfig lo up 2>/dev/null\n\
                           trap \"exit 0\" TERM PWR\nwhile :; do sleep 3600 & wait $!; done\n";

/// The image alias of a box: its digest is the key.
pub fn alias(digest: &str) -> String {
    format!("envy-box-{digest}")
}

/// The image for `stored`, uploaded when the daemon does not hold it yet; returns its alias.
pub fn ensure(client: &Client, home: &Home, stored: &StoredBox, ui: &Ui) -> Result<String, Error> {
    // `up` starts machines together: one box is packed and uploaded once, not by each
    // of its machines, while other boxes go up beside it.
    type Locks = std::collections::BTreeMap<String, std::sync::Arc<std::sync::Mutex<()>>>;
    static ENSURING: std::sync::Mutex<Locks> = std::sync::Mutex::new(Locks::new());
    let this_box = {
        let mut locks = ENSURING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(stored.digest.clone()).or_default().clone()
    };
    let _one_at_a_time = this_box.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let alias = alias(&stored.digest);
    match client.get(&format!("/1.0/images/aliases/{}", url_escape(&alias)), "looking up the box's image") {
        Ok(_) => return Ok(alias),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e),
    }
    let rootfs = stored.rootfs().map_err(|e| Error::Unsupported(format!("{e:#}")))?;
    let downloads = home.downloads_dir();
    let io = |doing: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |cause| Error::Io { doing, path, cause }
    };
    std::fs::create_dir_all(&downloads).map_err(io("cannot create", &downloads))?;
    let work = tempfile::Builder::new().prefix(".lxd-image-").tempdir_in(&downloads).map_err(io("cannot make a temp dir in", &downloads))?;
    let meta = work.path().join("metadata.tar");
    std::fs::write(&meta, metadata_tar(stored)).map_err(io("cannot write", &meta))?;
    let packed = work.path().join("rootfs.tar");
    ui.step(format!("packing box {} ({}) as an LXD image", stored.manifest.name, &stored.digest[..12]));
    crate::boxes::pack_rootfs_dir(&rootfs, &packed).map_err(|e| Error::Unsupported(format!("cannot pack {}: {e:#}", rootfs.display())))?;
    let fingerprint = {
        let mut hasher = Sha256::new();
        for path in [&meta, &packed] {
            let mut file = std::fs::File::open(path).map_err(io("cannot read", path))?;
            std::io::copy(&mut file, &mut hasher).map_err(io("cannot read", path))?;
        }
        hex::encode(hasher.finalize())
    };
    // The same box uploaded by another project (or a killed `up`) without its alias yet.
    let present = || match client.get(&format!("/1.0/images/{fingerprint}"), "looking up the box's image") {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    };
    if !present()? {
        ui.step(format!("uploading box {} to {}", stored.manifest.name, client.server));
        if let Err(e) = upload(client, &meta, &packed) {
            // Another envy (another project's `up`) uploaded the same image meanwhile.
            if !present()? {
                return Err(e);
            }
        }
    }
    let body = json!({ "name": alias, "target": fingerprint, "description": format!("envy box {} {}", stored.manifest.name, stored.manifest.version) });
    match client.call("POST", "/1.0/images/aliases", Some(&body), "naming the box's image") {
        Ok(_) => Ok(alias),
        // Another envy named it meanwhile.
        Err(Error::Api { status: 409, .. }) => Ok(alias),
        Err(e) => Err(e),
    }
}

/// metadata.yaml (the box's architecture and name, its digest as a property, the
/// init script as a template) and the template, in a tar with fixed times.
fn metadata_tar(stored: &StoredBox) -> Vec<u8> {
    let created = stored.record().map(|r| r.added).unwrap_or(0);
    let yaml = format!(
        "architecture: {arch}\ncreation_date: {created}\nproperties:\n  description: {desc}\n  envy.box: \"{digest}\"\ntemplates:\n  {INIT_PATH}:\n    when: [create, copy]\n    template: envy-init.tpl\n",
        arch = serde_json::to_string(&stored.manifest.arch).expect("a string serializes"),
        desc = serde_json::to_string(&format!("envy box {} {}", stored.manifest.name, stored.manifest.version)).expect("a string serializes"),
        digest = stored.digest,
    );
    let mut builder = tar::Builder::new(Vec::new());
    for (name, text, mode) in [("metadata.yaml", yaml.as_str(), 0o644), ("templates/envy-init.tpl", INIT_SCRIPT, 0o644)] {
        let mut header = tar::Header::new_ustar();
        header.set_size(text.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, name, text.as_bytes()).expect("a tar in memory");
    }
    builder.into_inner().expect("a tar in memory")
}

/// POSTs the two tarballs as one multipart/form-data body, streamed from disk.
fn upload(client: &Client, meta: &Path, rootfs: &Path) -> Result<(), Error> {
    const BOUNDARY: &str = "envy-image-upload-5d1c3a";
    let part = |name: &str| {
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.tar\"\r\nContent-Type: application/octet-stream\r\n\r\n")
    };
    let first = part("metadata");
    let second = format!("\r\n{}", part("rootfs"));
    let last = format!("\r\n--{BOUNDARY}--\r\n");
    let open = |path: &Path| -> Result<(std::fs::File, u64), Error> {
        let file = std::fs::File::open(path).map_err(|cause| Error::Io { doing: "cannot read", path: path.to_path_buf(), cause })?;
        let len = file.metadata().map_err(|cause| Error::Io { doing: "cannot read", path: path.to_path_buf(), cause })?.len();
        Ok((file, len))
    };
    let (meta_file, meta_len) = open(meta)?;
    let (rootfs_file, rootfs_len) = open(rootfs)?;
    let len = (first.len() + second.len() + last.len()) as u64 + meta_len + rootfs_len;
    let mut body = Cursor::new(first).chain(meta_file).chain(Cursor::new(second)).chain(rootfs_file).chain(Cursor::new(last));
    client.upload("/1.0/images", &format!("multipart/form-data; boundary={BOUNDARY}"), len, &mut body, "uploading the box's image")?;
    Ok(())
}
