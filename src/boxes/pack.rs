//! Writing a `.box` in one pass, front to back: box.toml (format 2, without digests),
//! each payload streamed once through its hash and a multithreaded zstd, then box.sums
//! with the payloads' digests. Each payload's tar header needs its size first: a file's
//! is its length, a tree's is found from its metadata before it is packed. Nothing is
//! written twice, so the box's own sha256 is taken as it is written.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::archive::{changed, pack_rootfs_into, rootfs_tar_size};
use super::digest::{Hasher, Offload, ThreadedHashingWriter};
use super::manifest::{self, Manifest};
use super::Error;

/// One payload file of a `.box`.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A file on disk, copied in as it is.
    File(PathBuf),
    /// A root filesystem dir, packed as `pack_rootfs_dir` packs it straight into the
    /// box: no tarball of it is written to disk first.
    Tree(PathBuf),
}

/// Writes a zstd-compressed `.box`: `box.toml` (`manifest` without digests, checked as
/// a reader would check it, `label` naming the box in its errors), the payloads in the
/// order of `files` (which must be the names the manifest uses), each read once (a file
/// or tree that changes while it is read is refused), and box.sums. Returns the box's
/// sha256. The box is not synced, as tar's and zstd's output is not: nothing relies on
/// it being on disk, and whoever reads it checks it against that digest.
pub fn pack_box(out: &Path, mut manifest: Manifest, files: &BTreeMap<String, Payload>, label: &str) -> anyhow::Result<String> {
    manifest.format = manifest::FORMAT;
    manifest.files.clear();
    let (_, expected) = Manifest::parse_first_entry(&manifest.to_toml(), label)?;
    let names: Vec<&String> = files.keys().collect();
    anyhow::ensure!(
        expected.as_ref().is_some_and(|e| e.iter().eq(names.iter().copied())),
        "box {label}: the payloads given ({names:?}) are not the ones its box.toml names ({expected:?})"
    );
    let file = File::create(out).map_err(Error::io("cannot create", out))?;
    let mut disk = disk_writer(file);
    let written = zstd_encoder(&mut disk).map_err(anyhow::Error::from).and_then(|mut encoder| {
        write_box(&mut encoder, &mut manifest, files)?;
        encoder.finish()?;
        Ok(())
    });
    // A write that failed (a full disk) is this file's error, whatever else it broke.
    let (_, hasher) = disk.finish().map_err(Error::io("cannot write", out))?;
    written?;
    Ok(hasher.finish().sha256)
}

fn write_box(out: &mut dyn Write, manifest: &mut Manifest, files: &BTreeMap<String, Payload>) -> anyhow::Result<()> {
    out.write_all(&tar_entry(manifest::FILE_NAME, manifest.to_toml().as_bytes())?)?;
    for (name, payload) in files {
        let sha256 = match payload {
            Payload::File(path) => copy_file(name, path, out)?,
            Payload::Tree(dir) => pack_tree(name, dir, rootfs_tar_size(dir)?, out)?,
        };
        manifest.files.insert(name.clone(), sha256);
    }
    out.write_all(&tar_entry(manifest::SUMS_NAME, manifest::sums_text(&manifest.files).as_bytes())?)?;
    // The archive's end: two zero blocks.
    out.write_all(&[0; 1024])?;
    Ok(())
}

/// Copies a payload file, its header before it and the tar padding after it, into
/// `out`, and returns its sha256; a file that changes while it is read is refused.
fn copy_file(name: &str, path: &Path, out: &mut dyn Write) -> anyhow::Result<String> {
    let file = File::open(path).map_err(Error::io("cannot read", path))?;
    let before = file.metadata().map_err(Error::io("cannot read", path))?;
    out.write_all(&payload_header(name, before.len())?)?;
    let mut hashing = ThreadedHashingWriter::new(&mut *out);
    io::copy(&mut BufReader::with_capacity(1 << 20, (&file).take(before.len())), &mut hashing).map_err(Error::io("cannot read", path))?;
    let after = file.metadata().map_err(Error::io("cannot read", path))?;
    let (out, (sha256, size)) = hashing.finish_counted()?;
    if size != before.len() || changed(&before, &after) {
        let dir = path.parent().unwrap_or(path).to_path_buf();
        return Err(Error::TreeChanged { dir, file: path.to_path_buf() }.into());
    }
    out.write_all(&[0; 512][..(size.next_multiple_of(512) - size) as usize])?;
    Ok(sha256)
}

/// Packs a root filesystem dir as the payload `name`, behind a header with `size`,
/// what its metadata gave before; a tree whose tar comes out another size changed
/// meanwhile.
fn pack_tree(name: &str, dir: &Path, size: u64, out: &mut dyn Write) -> anyhow::Result<String> {
    out.write_all(&payload_header(name, size)?)?;
    // A tar is whole 512-byte blocks, so the entry needs no padding after it.
    let (_, (sha256, packed)) = pack_rootfs_into(dir, ThreadedHashingWriter::new(out))?.finish_counted()?;
    if packed != size {
        return Err(Error::TreeChanged { dir: dir.to_path_buf(), file: dir.to_path_buf() }.into());
    }
    Ok(sha256)
}

/// A payload's tar header (with a GNU long-name entry before it if its name needs one).
fn payload_header(name: &str, size: u64) -> io::Result<Vec<u8>> {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    entry_bytes(header, name, &[])
}

/// box.toml's or box.sums's whole tar entry.
fn tar_entry(name: &str, text: &[u8]) -> io::Result<Vec<u8>> {
    let mut header = tar::Header::new_ustar();
    header.set_size(text.len() as u64);
    entry_bytes(header, name, text)
}

/// The bytes of a regular file's entry, 0644 and mtime 0: its header (size as set)
/// and `data`, padded to whole blocks.
fn entry_bytes(mut header: tar::Header, name: &str, data: &[u8]) -> io::Result<Vec<u8>> {
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(EntryType::Regular);
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_data(&mut header, name, data)?;
    // Taken before the builder ends the archive (it would add its two zero blocks).
    Ok(std::mem::take(builder.get_mut()))
}

/// The box file, hashed and written on a thread of its own while the rest is packed
/// (one hand-over of the bytes: the packing thread is the one that waits on copies).
fn disk_writer(file: File) -> Offload<(File, Hasher)> {
    Offload::new((file, Hasher::new()), |(file, hasher), chunk| {
        hasher.update(chunk);
        file.write_all(chunk)
    })
}

/// The zstd stream of boxes: level 3 (zstd's default), compressed by as many worker
/// threads as the host has cores while this thread packs the tar. The bytes do not
/// depend on the number of workers, so a tree still packs the same.
fn zstd_encoder<W: Write>(out: W) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut encoder = zstd::stream::write::Encoder::new(out, 3)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    encoder.multithread(u32::try_from(workers).unwrap_or(1))?;
    Ok(encoder)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The box's entries, name and bytes, in order.
    fn entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut archive = tar::Archive::new(zstd::stream::read::Decoder::new(bytes).unwrap());
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let mut body = Vec::new();
                entry.read_to_end(&mut body).unwrap();
                (entry.path().unwrap().display().to_string(), body)
            })
            .collect()
    }

    #[test]
    fn a_box_is_written_front_to_back_with_its_digests_last() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hostname"), "box\n").unwrap();
        std::fs::write(tree.join("big"), vec![7u8; 3 << 20]).unwrap();
        std::fs::hard_link(tree.join("big"), tree.join("big-again")).unwrap();
        std::os::unix::fs::symlink("etc/hostname", tree.join("name")).unwrap();
        let long = "a-name-longer-than-a-ustar-header-holds-".repeat(4);
        std::fs::write(tree.join(&long), "long\n").unwrap();
        std::os::unix::fs::symlink(&long, tree.join("to-long")).unwrap();
        let disk = tmp.path().join("disk.img");
        std::fs::write(&disk, b"not a multiple of 512").unwrap();
        // A box for both providers: a tree and a file as payloads.
        let mut manifest = Manifest::for_rootfs("t", "1", "rootfs.tar", "");
        manifest.providers.push(crate::model::BoxFormat::Qemu);
        manifest.qemu = Manifest::for_qcow2("t", "1", "disk.img", "").qemu;
        let files = BTreeMap::from([
            ("rootfs.tar".to_string(), Payload::Tree(tree.clone())),
            ("disk.img".to_string(), Payload::File(disk.clone())),
        ]);
        let out = tmp.path().join("t.box");
        let digest = pack_box(&out, manifest, &files, "t.box").unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(digest, super::super::digest::sha256_bytes(&bytes));

        let rootfs = tmp.path().join("rootfs.tar");
        let rootfs_sha256 = super::super::archive::pack_rootfs_dir(&tree, &rootfs).unwrap();
        // The tree's size, found before it was packed, is the tar's.
        assert_eq!(rootfs_tar_size(&tree).unwrap(), std::fs::metadata(&rootfs).unwrap().len());
        let disk_sha256 = crate::boxes::sha256_file(&disk).unwrap();
        let entries = entries(&bytes);
        let names: Vec<&str> = entries.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["box.toml", "disk.img", "rootfs.tar", "box.sums"]);
        let head = String::from_utf8_lossy(&entries[0].1);
        assert!(head.contains("format = 2") && !head.contains(&rootfs_sha256), "{head}");
        assert_eq!(String::from_utf8_lossy(&entries[3].1), format!("{disk_sha256}  disk.img\n{rootfs_sha256}  rootfs.tar\n"));

        let dest = tmp.path().join("unpacked");
        let unpacked = unpack(&out, &dest).unwrap();
        assert_eq!(unpacked.files["rootfs.tar"], rootfs_sha256);
        assert_eq!(std::fs::read(dest.join("rootfs.tar")).unwrap(), std::fs::read(&rootfs).unwrap());
        assert_eq!(std::fs::read(dest.join("disk.img")).unwrap(), b"not a multiple of 512");
    }

    #[test]
    fn payloads_other_than_the_ones_box_toml_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = tmp.path().join("disk.img");
        std::fs::write(&disk, b"disk").unwrap();
        let files = BTreeMap::from([("extra.img".to_string(), Payload::File(disk))]);
        let out = tmp.path().join("t.box");
        let err = pack_box(&out, Manifest::for_rootfs("t", "1", "rootfs.tar", ""), &files, "t.box").unwrap_err().to_string();
        assert!(err.contains("are not the ones its box.toml names"), "{err}");
    }

    #[test]
    fn a_tree_whose_tar_is_not_the_size_its_header_gave_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("file"), "data\n").unwrap();
        let size = rootfs_tar_size(&tree).unwrap();
        // As a tree that grew after it was sized: its header said less.
        let err = pack_tree("rootfs.tar", &tree, size - 512, &mut Vec::new()).unwrap_err();
        assert!(matches!(err.downcast_ref::<Error>(), Some(Error::TreeChanged { dir, .. }) if dir == &tree), "{err:#}");
        assert!(pack_tree("rootfs.tar", &tree, size, &mut Vec::new()).is_ok());
    }

    /// Unpacks as the store does, every payload checked against box.sums.
    fn unpack(path: &Path, dest: &Path) -> Result<Manifest, Error> {
        std::fs::create_dir(dest).unwrap();
        let mut progress = crate::ui::Ui::detect(false, true).progress("t.box", None);
        super::super::archive::unpack_box(path, super::super::archive::Compression::Zstd, dest, "t.box", &mut progress)
    }

    #[test]
    fn a_file_that_changes_between_two_looks_is_seen_as_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, "a").unwrap();
        let before = std::fs::metadata(&path).unwrap();
        assert!(!changed(&before, &std::fs::metadata(&path).unwrap()));
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"b").unwrap();
        assert!(changed(&before, &std::fs::metadata(&path).unwrap()));
    }
}
