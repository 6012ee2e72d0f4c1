//! Writing a `.box` in one pass over its payloads. `box.toml` comes first in a box and
//! names every payload's sha256, known only once the payload has been read (a machine's
//! root filesystem is tarred as it is read). So box.toml and each payload's tar header
//! go into zstd frames of raw blocks, whose bytes sit verbatim at a known place in the
//! file, first with placeholders of the same length; each payload then streams once
//! through its hash and a multithreaded zstd frame; at the end the raw frames are
//! rewritten in place. The file is a plain zstd stream (concatenated frames, as RFC 8878
//! allows) of a plain tar: readers need not know any of this.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::archive::{changed, pack_rootfs_into};
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

/// What box.toml names a payload by until its bytes are hashed: as long as a sha256, so
/// the rewrite moves no byte. A box left with it fails its payload's digest check.
const UNHASHED: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Writes a zstd-compressed `.box`: `box.toml` (`manifest` with the payloads' sha256s
/// as its `files`, checked as a reader would check it, `label` naming the box in its
/// errors), then the payloads in the order of `files`, each read once (a file or tree
/// that changes while it is read is refused). The box is synced before this returns.
/// Returns the box's sha256.
pub fn pack_box(out: &Path, mut manifest: Manifest, files: &BTreeMap<String, Payload>, label: &str) -> anyhow::Result<String> {
    manifest.files = files.keys().map(|name| (name.clone(), UNHASHED.to_string())).collect();
    manifest.validate(label)?;
    // Read and write: it is read back for its digest.
    let file = File::options().read(true).write(true).create(true).truncate(true).open(out).map_err(Error::io("cannot create", out))?;
    let mut writer = FrameWriter { to_disk: disk_writer(file).map_err(Error::io("cannot write", out))?, at: 0 };
    let written = write_box(&mut writer, &mut manifest, files);
    // A write that failed (a full disk) is this file's error, whatever else it broke.
    let (headers, file) = match (written, writer.to_disk.finish()) {
        (_, Err(cause)) => return Err(Error::io("cannot write", out)(cause).into()),
        (Err(e), Ok(_)) => return Err(e),
        (Ok(headers), Ok(disk)) => (headers, disk.file),
    };
    rewrite(&file, &Raw { at: 0, len: headers.manifest_len }, &manifest_entry(&manifest)?, out)?;
    for (raw, name, size) in &headers.payloads {
        rewrite(&file, raw, &payload_header(name, *size)?, out)?;
    }
    // The box is read back for its digest (its first bytes changed last, and sha256
    // reads from the start) while the disk syncs it: the two overlap.
    let (synced, digest) = std::thread::scope(|scope| {
        let sync = scope.spawn(|| file.sync_all());
        let digest = sha256_of(&file);
        (sync.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), digest)
    });
    synced.map_err(Error::io("cannot write", out))?;
    Ok(digest.map_err(Error::io("cannot read", out))?)
}

/// Where the raw frames to rewrite are: box.toml's at the start, then each payload's
/// header with its name and size.
struct Headers {
    manifest_len: usize,
    payloads: Vec<(Raw, String, u64)>,
}

/// A raw frame in the file: where it starts and how many bytes it holds.
struct Raw {
    at: u64,
    len: usize,
}

fn write_box(writer: &mut FrameWriter, manifest: &mut Manifest, files: &BTreeMap<String, Payload>) -> anyhow::Result<Headers> {
    let manifest_len = writer.raw(&manifest_entry(manifest)?)?.len;
    let mut payloads = Vec::new();
    for (name, payload) in files {
        let raw = writer.raw(&payload_header(name, 0)?)?;
        let (sha256, size) = writer.compressed(|out| match payload {
            Payload::File(path) => copy_file(path, out),
            // A tar is whole 512-byte blocks, so the entry needs no padding after it.
            Payload::Tree(dir) => Ok(pack_rootfs_into(dir, ThreadedHashingWriter::new(out))?.finish_counted()?.1),
        })?;
        manifest.files.insert(name.clone(), sha256);
        payloads.push((raw, name.clone(), size));
    }
    // The archive's end: two zero blocks.
    writer.raw(&[0; 1024])?;
    Ok(Headers { manifest_len, payloads })
}

/// Copies a payload file and the tar padding after it into `out`, and returns its
/// sha256 and size; a file that changes while it is read is refused.
fn copy_file(path: &Path, out: &mut dyn Write) -> anyhow::Result<(String, u64)> {
    let file = File::open(path).map_err(Error::io("cannot read", path))?;
    let before = file.metadata().map_err(Error::io("cannot read", path))?;
    let mut hashing = ThreadedHashingWriter::new(out);
    io::copy(&mut BufReader::with_capacity(1 << 20, (&file).take(before.len())), &mut hashing).map_err(Error::io("cannot read", path))?;
    let after = file.metadata().map_err(Error::io("cannot read", path))?;
    let (out, (sha256, size)) = hashing.finish_counted()?;
    if size != before.len() || changed(&before, &after) {
        let dir = path.parent().unwrap_or(path).to_path_buf();
        return Err(Error::TreeChanged { dir, file: path.to_path_buf() }.into());
    }
    out.write_all(&[0; 512][..(size.next_multiple_of(512) - size) as usize])?;
    Ok((sha256, size))
}

/// box.toml's tar entry: header, text, padding.
fn manifest_entry(manifest: &Manifest) -> io::Result<Vec<u8>> {
    let text = manifest.to_toml();
    let mut header = tar::Header::new_ustar();
    header.set_size(text.len() as u64);
    tar_entry(header, manifest::FILE_NAME, text.as_bytes())
}

/// A payload's tar header (with a GNU long-name entry before it if its name needs one).
fn payload_header(name: &str, size: u64) -> io::Result<Vec<u8>> {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    tar_entry(header, name, &[])
}

/// The bytes of a regular file's entry, 0644 and mtime 0: its header (size as set)
/// and `data`, padded to whole blocks.
fn tar_entry(mut header: tar::Header, name: &str, data: &[u8]) -> io::Result<Vec<u8>> {
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(EntryType::Regular);
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_data(&mut header, name, data)?;
    // Taken before the builder ends the archive (it would add its two zero blocks).
    Ok(std::mem::take(builder.get_mut()))
}

/// Puts `content` in place of the raw frame `raw`; its length is the placeholder's, so
/// no other byte moves.
fn rewrite(file: &File, raw: &Raw, content: &[u8], out: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(content.len() == raw.len, "box {}: the rewritten entry at byte {} is {} bytes, not {}", out.display(), raw.at, content.len(), raw.len);
    file.write_all_at(&raw_frame(content)?, raw.at).map_err(Error::io("cannot write", out))?;
    Ok(())
}

/// A thread that has the disk write the box's bytes while the rest is still being
/// packed, as far as it is told they reached the file: the sync at the end then finds
/// little left, instead of the whole box (which the kernel would otherwise keep in
/// memory for up to 30 s). It waits for the disk, the packing never does.
fn flusher(file: &File) -> io::Result<std::sync::mpsc::Sender<u64>> {
    use std::os::fd::AsRawFd as _;
    let file = file.try_clone()?;
    let (tell, told) = std::sync::mpsc::channel::<u64>();
    std::thread::spawn(move || {
        let mut from = 0;
        while let Ok(mut to) = told.recv() {
            to = told.try_iter().last().unwrap_or(to);
            let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else { return };
            // SAFETY: a plain syscall on a descriptor this thread owns; it touches no
            // memory. A failure is ignored: the sync at the end is what counts.
            let _ = unsafe {
                libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER)
            };
            from = to;
        }
    });
    Ok(tell)
}

/// sha256 of the whole file, read from its start.
fn sha256_of(mut file: &File) -> io::Result<String> {
    file.seek(io::SeekFrom::Start(0))?;
    let mut hasher = Hasher::new();
    hasher.consume(file)?;
    Ok(hasher.finish().sha256)
}

/// The box file as it is written: counts its bytes (where each frame starts), and
/// has a thread of its own put them in the file.
struct FrameWriter {
    to_disk: Offload<Disk>,
    at: u64,
}

/// The box file on the thread that writes it, and how far the flusher was told.
struct Disk {
    file: File,
    written: u64,
    told: u64,
    flusher: std::sync::mpsc::Sender<u64>,
}

/// How many written bytes are gathered before the flusher is told of them.
const FLUSH_EVERY: u64 = 32 << 20;

fn disk_writer(file: File) -> io::Result<Offload<Disk>> {
    let flusher = flusher(&file)?;
    Ok(Offload::new(Disk { file, written: 0, told: 0, flusher }, |disk, chunk| {
        disk.file.write_all(chunk)?;
        disk.written += chunk.len() as u64;
        if disk.written - disk.told >= FLUSH_EVERY {
            // A flusher gone (it cannot fail) changes nothing: the sync at the end counts.
            let _ = disk.flusher.send(disk.written);
            disk.told = disk.written;
        }
        Ok(())
    }))
}

impl FrameWriter {
    /// Writes `content` as a raw frame and returns where it is.
    fn raw(&mut self, content: &[u8]) -> io::Result<Raw> {
        let at = self.at;
        self.write_all(&raw_frame(content)?)?;
        Ok(Raw { at, len: content.len() })
    }

    /// Writes what `fill` writes as one compressed frame.
    fn compressed<T>(&mut self, fill: impl FnOnce(&mut dyn Write) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let mut encoder = zstd_encoder(&mut *self)?;
        let filled = fill(&mut encoder)?;
        encoder.finish()?;
        Ok(filled)
    }
}

impl Write for FrameWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.to_disk.write_all(buf)?;
        self.at += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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

/// A zstd frame (RFC 8878) holding `content` in raw blocks, so its bytes sit verbatim
/// in the file: the magic; a one-segment frame header giving the content size in 4
/// bytes and no checksum (descriptor 0xA0; a checksum would cover the placeholders);
/// blocks of at most 128 KiB, each behind a 3-byte header (last-block bit, type 0 =
/// raw, size).
fn raw_frame(content: &[u8]) -> io::Result<Vec<u8>> {
    const MAX_BLOCK: usize = 128 << 10;
    let size = u32::try_from(content.len()).map_err(|_| io::Error::other("a raw zstd frame holds at most 4 GiB"))?;
    let mut frame = Vec::with_capacity(content.len() + 16);
    frame.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, 0xa0]);
    frame.extend_from_slice(&size.to_le_bytes());
    let blocks = content.len().div_ceil(MAX_BLOCK).max(1);
    for i in 0..blocks {
        let block = &content[i * MAX_BLOCK..content.len().min((i + 1) * MAX_BLOCK)];
        let header = (block.len() as u32) << 3 | u32::from(i + 1 == blocks);
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.extend_from_slice(block);
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unzstd(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        zstd::stream::read::Decoder::new(bytes).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn raw_frames_decode_to_their_content_and_keep_it_verbatim() {
        for len in [0, 1, 512, 128 << 10, (128 << 10) + 1, 300 << 10] {
            let content: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let frame = raw_frame(&content).unwrap();
            assert_eq!(unzstd(&frame), content, "{len} bytes");
            // One block header per 128 KiB: the content's first block sits right after
            // the 9-byte frame header and the first block's 3-byte header.
            assert_eq!(&frame[12..12 + len.min(128 << 10)], &content[..len.min(128 << 10)]);
        }
        // Concatenated with a compressed frame, as in a box.
        let mut both = raw_frame(b"first").unwrap();
        both.extend(zstd::encode_all(&b"second"[..], 3).unwrap());
        assert_eq!(unzstd(&both), b"firstsecond");
    }

    #[test]
    fn a_tree_packed_in_one_pass_names_its_real_digest_and_the_box_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hostname"), "box\n").unwrap();
        std::fs::write(tree.join("big"), vec![7u8; 3 << 20]).unwrap();
        let disk = tmp.path().join("disk.img");
        std::fs::write(&disk, b"not a multiple of 512").unwrap();
        let manifest = Manifest::for_rootfs("t", "1", "rootfs.tar", "");
        let files = BTreeMap::from([
            ("rootfs.tar".to_string(), Payload::Tree(tree.clone())),
            ("extra.img".to_string(), Payload::File(disk.clone())),
        ]);
        let out = tmp.path().join("t.box");
        let digest = pack_box(&out, manifest, &files, "t.box").unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(digest, super::super::digest::sha256_bytes(&bytes));

        let rootfs = tmp.path().join("rootfs.tar");
        let want = super::super::archive::pack_rootfs_dir(&tree, &rootfs).unwrap();
        // box.toml sits verbatim at the start, with the real digests.
        let head = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
        assert!(head.contains(&want) && !head.contains(UNHASHED), "{head}");
        assert!(head.contains(&crate::boxes::sha256_file(&disk).unwrap()), "{head}");

        let dest = tmp.path().join("unpacked");
        let unpacked = unpack(&out, &dest).unwrap();
        assert_eq!(unpacked.files["rootfs.tar"], want);
        assert_eq!(std::fs::read(dest.join("rootfs.tar")).unwrap(), std::fs::read(&rootfs).unwrap());
        assert_eq!(std::fs::read(dest.join("extra.img")).unwrap(), b"not a multiple of 512");
    }

    #[test]
    fn a_box_whose_placeholder_was_never_rewritten_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("file"), "data\n").unwrap();
        let files = BTreeMap::from([("rootfs.tar".to_string(), Payload::Tree(tree.clone()))]);
        let out = tmp.path().join("t.box");
        pack_box(&out, Manifest::for_rootfs("t", "1", "rootfs.tar", ""), &files, "t.box").unwrap();
        // As a share killed before its rewrite leaves it: the placeholder in box.toml.
        let real = crate::boxes::sha256_file(&dest_tar(&tree, tmp.path())).unwrap();
        let mut bytes = std::fs::read(&out).unwrap();
        let at = bytes.windows(64).position(|w| w == real.as_bytes()).expect("the digest is in the raw frame");
        bytes[at..at + 64].copy_from_slice(UNHASHED.as_bytes());
        std::fs::write(&out, &bytes).unwrap();
        let dest = tmp.path().join("unpacked");
        let err = unpack(&out, &dest).unwrap_err().to_string();
        assert!(err.contains("rootfs.tar in t.box") && err.contains(UNHASHED) && err.contains(&real), "{err}");
    }

    /// Unpacks as the store does, every payload checked against box.toml.
    fn unpack(path: &Path, dest: &Path) -> Result<Manifest, Error> {
        std::fs::create_dir(dest).unwrap();
        let mut progress = crate::ui::Ui::detect(false, true).progress("t.box", None);
        super::super::archive::unpack_box(path, super::super::archive::Compression::Zstd, dest, "t.box", &mut progress)
    }

    fn dest_tar(tree: &Path, dir: &Path) -> PathBuf {
        let path = dir.join("expected.tar");
        super::super::archive::pack_rootfs_dir(tree, &path).unwrap();
        path
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
