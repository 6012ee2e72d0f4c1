//! `envy share` of an lxd machine: the daemon publishes a snapshot of the instance as an
//! uncompressed image, envy streams its export and keeps only the root filesystem, as
//! the container box payload `rootfs.tar` (docs/box-format.md). The snapshot and the
//! image are the daemon's for the moment of the export and are deleted after it.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::client::{url_escape, Client};
use super::{instances, Error};
use crate::plan::MachinePlan;
use crate::ui::Ui;

/// The directory holding the root filesystem in a unified LXD image.
const ROOTFS: &str = "rootfs";

/// Writes the machine's current root filesystem as `dir/rootfs.tar`. A running machine
/// is exported as it is at one instant (a snapshot), without being stopped.
pub fn export(client: &Client, plan: &MachinePlan, dir: &Path, ui: &Ui) -> Result<PathBuf, Error> {
    // The pid keeps two shares of one machine apart.
    let snapshot = format!("envy-share-{}", std::process::id());
    ui.step(format!("{}: publishing a snapshot of it as an image on {}", plan.name(), client.server));
    instances::snapshot_create(client, plan, &snapshot)?;
    let exported = publish_and_export(client, plan, &snapshot, dir, ui);
    let removed = instances::snapshot_delete(client, plan, &snapshot);
    let target = exported?;
    removed?;
    Ok(target)
}

fn publish_and_export(client: &Client, plan: &MachinePlan, snapshot: &str, dir: &Path, ui: &Ui) -> Result<PathBuf, Error> {
    let body = json!({
        "source": { "type": "snapshot", "name": format!("{}/{snapshot}", plan.runtime_id) },
        // Unified and uncompressed: the export is read as one tar stream, with nothing to inflate.
        "compression_algorithm": "none",
        "properties": { "description": format!("envy share of machine {} (deleted after the export)", plan.name()) },
    });
    let published = client.call("POST", "/1.0/images", Some(&body), "publishing the machine as an image")?;
    let fingerprint = published["fingerprint"]
        .as_str()
        .filter(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| Error::BadAnswer {
            server: client.server.clone(),
            doing: "publishing the machine as an image".into(),
            problem: "no fingerprint of the image".into(),
        })?
        .to_string();
    let image = format!("/1.0/images/{}", url_escape(&fingerprint));
    ui.step(format!("{}: exporting its root filesystem", plan.name()));
    let target = dir.join("rootfs.tar");
    let written = client.download(&format!("{image}/export"), "exporting the machine's image").and_then(|export| {
        rootfs_of(export, &target).map_err(|e| match e {
            Convert::Read(cause) => client.unreachable("exporting the machine's image", cause),
            Convert::Bad(problem) => {
                Error::BadAnswer { server: client.server.clone(), doing: "exporting the machine's image".into(), problem }
            }
            Convert::Write(e) => e,
        })
    });
    let deleted = client.call("DELETE", &image, None, "deleting the image made for the export");
    if written.is_err() {
        let _ = std::fs::remove_file(&target);
    }
    written?;
    deleted?;
    Ok(target)
}

/// Why the conversion stopped: the stream from the daemon broke, it held something
/// envy refuses, or the box payload could not be written.
enum Convert {
    Read(std::io::Error),
    Bad(String),
    Write(Error),
}

/// Copies the entries under `rootfs/` of a unified image tar to `out`, that prefix
/// taken off (hard link targets too). Device nodes and FIFOs are left out, as envy's
/// own rootfs packing does: the runtime provides /dev.
fn rootfs_of(image: impl Read, out: &Path) -> Result<(), Convert> {
    let write_error = |cause| Convert::Write(Error::Io { doing: "cannot write", path: out.to_path_buf(), cause });
    let file = File::create(out).map_err(write_error)?;
    let mut builder = tar::Builder::new(BufWriter::with_capacity(1 << 20, file));
    let mut archive = tar::Archive::new(image);
    let mut found = false;
    for entry in archive.entries().map_err(Convert::Read)? {
        let mut entry = entry.map_err(Convert::Read)?;
        let path = entry.path().map_err(Convert::Read)?.into_owned();
        let Some(inner) = below_rootfs(&path)? else { continue };
        found = true;
        let mut header = entry.header().clone();
        match header.entry_type() {
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => continue,
            tar::EntryType::Link => {
                let target = entry.link_name().map_err(Convert::Read)?.map(|t| t.into_owned());
                let target = target.as_deref().map(below_rootfs).transpose()?.flatten()
                    .ok_or_else(|| Convert::Bad(format!("hard link {} points out of the image's root filesystem", path.display())))?;
                builder.append_link(&mut header, &inner, target).map_err(write_error)?;
            }
            tar::EntryType::Symlink => {
                // A symlink's target is the machine's to resolve: copied as it is.
                let target = entry.link_name().map_err(Convert::Read)?.map(|t| t.into_owned()).unwrap_or_default();
                builder.append_link(&mut header, &inner, target).map_err(write_error)?;
            }
            _ => builder.append_data(&mut header, &inner, &mut entry).map_err(write_error)?,
        }
    }
    if !found {
        return Err(Convert::Bad("the exported image has no rootfs/ folder".into()));
    }
    let mut writer = builder.into_inner().map_err(write_error)?;
    writer.flush().map_err(write_error)?;
    writer.into_inner().map_err(|e| write_error(e.into_error()))?.sync_all().map_err(write_error)?;
    Ok(())
}

/// `rootfs/x/y` (or `./rootfs/x/y`) as `x/y`; None for the image's metadata, its
/// templates and the rootfs folder itself. A path that would leave the root filesystem
/// (`rootfs/../x`) is refused, as an archive's entries are (boxes::relative_path).
fn below_rootfs(path: &Path) -> Result<Option<PathBuf>, Convert> {
    let Ok(inner) = path.strip_prefix(ROOTFS).or_else(|_| path.strip_prefix(Path::new(".").join(ROOTFS))) else { return Ok(None) };
    if inner.as_os_str().is_empty() {
        return Ok(None);
    }
    crate::boxes::relative_path(&inner.to_string_lossy())
        .map(Some)
        .map_err(|why| Convert::Bad(format!("entry {} {why}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(builder: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        match link {
            Some(target) => builder.append_link(&mut header, path, target).unwrap(),
            None => builder.append_data(&mut header, path, data).unwrap(),
        }
    }

    #[test]
    fn keeps_only_the_root_filesystem() {
        let mut image = tar::Builder::new(Vec::new());
        entry(&mut image, "metadata.yaml", tar::EntryType::Regular, b"architecture: x86_64\n", None);
        entry(&mut image, "templates/envy-init.tpl", tar::EntryType::Regular, b"init", None);
        entry(&mut image, "rootfs/", tar::EntryType::Directory, b"", None);
        entry(&mut image, "rootfs/etc/hostname", tar::EntryType::Regular, b"web\n", None);
        entry(&mut image, "rootfs/etc/name", tar::EntryType::Link, b"", Some("rootfs/etc/hostname"));
        entry(&mut image, "rootfs/bin/sh", tar::EntryType::Symlink, b"", Some("/bin/busybox"));
        entry(&mut image, "rootfs/dev/null", tar::EntryType::Char, b"", None);
        let image = image.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("rootfs.tar");
        assert!(rootfs_of(image.as_slice(), &out).is_ok());
        let mut archive = tar::Archive::new(File::open(&out).unwrap());
        let seen: Vec<(String, Option<String>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.link_name().unwrap().map(|l| l.display().to_string()))
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("etc/hostname".to_string(), None),
                ("etc/name".to_string(), Some("etc/hostname".to_string())),
                ("bin/sh".to_string(), Some("/bin/busybox".to_string())),
            ]
        );
        // A hard link out of the root filesystem, or no root filesystem at all, is refused.
        let mut bad = tar::Builder::new(Vec::new());
        entry(&mut bad, "rootfs/etc/shadow", tar::EntryType::Link, b"", Some("metadata.yaml"));
        assert!(matches!(rootfs_of(bad.into_inner().unwrap().as_slice(), &out), Err(Convert::Bad(_))));
        let mut escaping = tar::Builder::new(Vec::new());
        entry(&mut escaping, "rootfs/etc/shadow", tar::EntryType::Link, b"", Some("rootfs/../../etc/shadow"));
        assert!(matches!(rootfs_of(escaping.into_inner().unwrap().as_slice(), &out), Err(Convert::Bad(m)) if m.contains("`..`")));
        let mut empty = tar::Builder::new(Vec::new());
        entry(&mut empty, "metadata.yaml", tar::EntryType::Regular, b"x", None);
        assert!(matches!(rootfs_of(empty.into_inner().unwrap().as_slice(), &out), Err(Convert::Bad(_))));
    }
}
