//! Archives in and out: telling a `.box` from a bare qcow2, a rootfs tarball or a
//! Vagrant box by its bytes, unpacking them safely (every entry checked before it touches the disk), and
//! packing boxes and root filesystems.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use super::digest::{Hasher, HashingWriter};
use super::manifest::{self, Manifest};
use super::Error;
use crate::ui::Progress;

/// Largest payload file a box archive may hold (a big VM disk fits, a lying header not).
pub const MAX_PAYLOAD_BYTES: u64 = 256 << 30;
/// Largest single file in a root filesystem tarball.
pub const MAX_ROOTFS_ENTRY_BYTES: u64 = 64 << 30;
/// Largest `box.toml` or `box.sums`.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

pub(super) const QCOW2_MAGIC: &[u8] = b"QFI\xfb";

/// How a tar stream is compressed, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
}

impl Compression {
    fn detect(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else {
            Compression::None
        }
    }

    /// File name extension for a tarball stored with this compression.
    pub fn tar_extension(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "tar.gz",
            Compression::Zstd => "tar.zst",
            Compression::Xz => "tar.xz",
        }
    }

    /// A decompressing reader over `inner`.
    pub fn reader<'a>(self, inner: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
        let inner = BufReader::with_capacity(1 << 20, inner);
        Ok(match self {
            Compression::None => Box::new(inner),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(inner)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(inner)?),
            Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(inner)),
        })
    }
}

/// What a box file turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifact {
    /// A `.box`: tar whose first entry is `box.toml`.
    BoxArchive(Compression),
    /// A tar without `box.toml`: a root filesystem for containers.
    RootfsTarball(Compression),
    /// A bare qcow2 disk image.
    Qcow2,
    /// A tar whose first entry is a Vagrant box's file (metadata.json, a Vagrantfile, a
    /// `*.img` disk, …): a Vagrant box (`vagrant`).
    VagrantBox(Compression),
}

/// Looks at a file's bytes (never its name) to tell what it is.
pub fn sniff(path: &Path, label: &str) -> Result<Artifact, Error> {
    let mut magic = [0u8; 8];
    let mut file = File::open(path).map_err(Error::io("cannot read", path))?;
    let n = read_up_to(&mut file, &mut magic).map_err(Error::io("cannot read", path))?;
    if magic[..n].starts_with(QCOW2_MAGIC) {
        return Ok(Artifact::Qcow2);
    }
    let compression = Compression::detect(&magic[..n]);
    let not_a_box = |reason: String| Error::NotABox { archive: label.to_string(), reason };
    let file = File::open(path).map_err(Error::io("cannot read", path))?;
    let mut reader = compression.reader(file).map_err(Error::io("cannot read", path))?;
    let mut header = [0u8; 512];
    let got =
        read_up_to(&mut reader, &mut header).map_err(|e| not_a_box(format!("cannot decompress it ({e})")))?;
    if got < 512 || &header[257..262] != b"ustar" {
        return Err(not_a_box(
            "it is neither a qcow2 image nor a tar archive (plain, gzip, zstd or xz)".into(),
        ));
    }
    let name_len = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
    let first = String::from_utf8_lossy(&header[..name_len]);
    if first.trim_start_matches("./") == manifest::FILE_NAME {
        Ok(Artifact::BoxArchive(compression))
    } else if super::vagrant::is_vagrant_box(path, compression).map_err(|e| not_a_box(format!("cannot read it as a tar archive ({e})")))? {
        Ok(Artifact::VagrantBox(compression))
    } else {
        Ok(Artifact::RootfsTarball(compression))
    }
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A tar reader over a (possibly compressed) file, reporting the file bytes read.
fn open_tar<'a>(
    path: &Path,
    compression: Compression,
    progress: &'a mut Progress,
) -> Result<tar::Archive<Box<dyn Read + 'a>>, Error> {
    let file = File::open(path).map_err(Error::io("cannot read", path))?;
    let counted = ProgressReader { inner: file, progress };
    let reader = compression.reader(counted).map_err(Error::io("cannot read", path))?;
    Ok(tar::Archive::new(reader))
}

struct ProgressReader<'a, R> {
    inner: R,
    progress: &'a mut Progress,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}

/// Unpacks a `.box` into `dest` (an empty directory): `box.toml`, then exactly the
/// payload files it names, each hashed while written and checked against its digest:
/// box.toml's own in format 1, box.sums's (the last entry) in format 2. `dest` gets the
/// whole manifest as its box.toml. Only plain regular files are accepted. On error
/// `dest` may hold partial files; the caller removes it.
pub fn unpack_box(
    path: &Path,
    compression: Compression,
    dest: &Path,
    label: &str,
    progress: &mut Progress,
) -> Result<Manifest, Error> {
    let hostile = |entry: &str, reason: &str| Error::HostileEntry {
        archive: label.to_string(),
        entry: entry.to_string(),
        reason: reason.to_string(),
    };
    let read_err = damaged(label);
    let mut archive = open_tar(path, compression, progress)?;
    // box.toml as read, and (format 2) the payload names box.sums must give.
    let mut head: Option<(Manifest, Option<std::collections::BTreeSet<String>>)> = None;
    let mut sums: Option<BTreeMap<String, String>> = None;
    // Each payload's sha256 as it was written.
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let header = entry.header();
        let kind = header.entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            continue;
        }
        let name = raw.strip_prefix("./").unwrap_or(&raw);
        if name.starts_with('/') {
            return Err(hostile(&raw, "has an absolute path"));
        }
        if name.split('/').any(|c| c == "..") {
            return Err(hostile(&raw, "has a `..` component"));
        }
        if !kind.is_file() {
            return Err(hostile(&raw, &format!("is a {}; a box holds only regular files", describe(kind))));
        }
        let mode = header.mode().map_err(read_err)?;
        if mode & 0o7000 != 0 {
            return Err(hostile(
                &raw,
                &format!("has setuid/setgid/sticky bits (mode {mode:o}); box payload files must not"),
            ));
        }
        if sums.is_some() {
            return Err(hostile(&raw, &format!("comes after {}, which must be the box's last entry", manifest::SUMS_NAME)));
        }
        let Some((manifest, expected)) = &head else {
            if name != manifest::FILE_NAME {
                return Err(Error::NotABox {
                    archive: label.into(),
                    reason: format!("its first entry is `{raw}`, not box.toml"),
                });
            }
            head = Some(Manifest::parse_first_entry(&read_small(&mut entry, &raw, label)?, label)?);
            continue;
        };
        if let (Some(_), manifest::SUMS_NAME) = (expected, name) {
            sums = Some(manifest::parse_sums(&read_small(&mut entry, &raw, label)?, label)?);
            continue;
        }
        let listed = match expected {
            Some(names) => names.contains(name),
            None => manifest.files.contains_key(name),
        };
        if !listed {
            return Err(hostile(&raw, "is not a payload box.toml names"));
        }
        if written.contains_key(name) {
            return Err(hostile(&raw, "appears twice"));
        }
        written.insert(name.to_string(), write_entry(&mut entry, &dest.join(name), &raw, label)?);
    }
    let (mut manifest, expected) =
        head.ok_or_else(|| Error::NotABox { archive: label.into(), reason: "it is empty".into() })?;
    if expected.is_some() {
        manifest.files = sums.ok_or_else(|| Error::BadManifest {
            archive: label.into(),
            reason: format!("it ends without {}, the payloads' digests: the box was cut short (an interrupted download or share?)", manifest::SUMS_NAME),
        })?;
        manifest.validate(label)?;
    }
    for (name, expected) in &manifest.files {
        let Some(sha256) = written.get(name) else {
            return Err(Error::BadManifest {
                archive: label.into(),
                reason: format!("`files` lists {name}, which the archive does not contain"),
            });
        };
        if sha256 != expected {
            return Err(Error::WrongDigest {
                what: format!("{name} in {label}"),
                algorithm: "sha256",
                expected: expected.clone(),
                got: sha256.clone(),
            });
        }
    }
    crate::fsutil::write_atomic(&dest.join(manifest::FILE_NAME), manifest.to_toml().as_bytes())
        .map_err(|e| Error::io("cannot write in", dest)(io::Error::other(e)))?;
    Ok(manifest)
}

/// The text of box.toml or box.sums, bounded before it is read.
fn read_small<R: Read>(entry: &mut tar::Entry<R>, raw: &str, label: &str) -> Result<String, Error> {
    check_claim(entry, MAX_MANIFEST_BYTES, "box.toml and box.sums", raw, label)?;
    let mut text = String::new();
    entry.read_to_string(&mut text).map_err(damaged(label))?;
    Ok(text)
}

/// Refuses an entry whose header claims more than `bound` bytes, before it is read.
fn check_claim<R: Read>(entry: &tar::Entry<R>, bound: u64, what: &str, raw: &str, label: &str) -> Result<(), Error> {
    let size = entry.size();
    if size > bound {
        return Err(Error::HostileEntry {
            archive: label.to_string(),
            entry: raw.to_string(),
            reason: format!("claims {size} bytes, more than the {bound}-byte bound for {what}"),
        });
    }
    Ok(())
}

/// What a read error of the box's tar stream means.
fn damaged(label: &str) -> impl Fn(io::Error) -> Error + Copy + '_ {
    move |e| Error::NotABox { archive: label.to_string(), reason: format!("the tar stream is damaged ({e})") }
}

/// Writes a box entry's bytes to `out_path` (a new file) and returns their sha256,
/// hashed in the same pass. Refused: an entry over the payload bound, or one that ends
/// before its announced size; a full disk is its own error. The file is synced before
/// this returns: a stamp must never vouch for lost bytes.
pub(super) fn write_entry<R: Read>(entry: &mut tar::Entry<R>, out_path: &Path, raw: &str, label: &str) -> Result<String, Error> {
    check_claim(entry, MAX_PAYLOAD_BYTES, "a payload file", raw, label)?;
    let size = entry.size();
    let damaged = damaged(label);
    let out = File::create(out_path).map_err(Error::io("cannot write", out_path))?;
    let mut writer = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, out), Hasher::new());
    let copied = io::copy(entry, &mut writer)
        .map_err(|e| if super::error::is_disk_full(&e) { Error::io("cannot write", out_path)(e) } else { damaged(e) })?;
    let (buf, hashes) = writer.finish();
    buf.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(Error::io("cannot write", out_path))?;
    if copied != size {
        return Err(Error::NotABox { archive: label.into(), reason: format!("entry `{raw}` ends after {copied} of {size} bytes") });
    }
    Ok(hashes.sha256)
}

fn describe(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Directory => "directory",
        EntryType::Symlink => "symlink",
        EntryType::Link => "hardlink",
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "fifo",
        _ => "special entry",
    }
}

/// What unpacking a root filesystem skipped.
#[derive(Debug, Default)]
pub struct RootfsReport {
    /// Device nodes and fifos under dev/ (runc makes /dev for the container).
    pub skipped_devices: u64,
}

/// Unpacks a root filesystem tarball into `dest`, keeping owners, modes, symlinks and
/// hardlinks. Refused: absolute paths, `..`, writing through a symlink, hardlinks to
/// outside the tree, device nodes and fifos outside dev/, entries over the size bound.
/// On error `dest` may hold partial content; the caller removes it.
pub fn unpack_rootfs(
    path: &Path,
    compression: Compression,
    dest: &Path,
    label: &str,
    progress: &mut Progress,
) -> Result<RootfsReport, Error> {
    let archive = open_tar(path, compression, progress)?;
    unpack_rootfs_stream(archive, dest, label, Tree::Rootfs)
}

/// Applies one OCI image layer (an uncompressed tar stream) onto `dest`, which holds
/// the layers below it, under the rules of `unpack_rootfs`. In addition, as the OCI
/// image spec says: `.wh.NAME` deletes NAME from the layers below, `.wh..wh..opq`
/// empties its directory of what the layers below put there, and an entry replaces
/// whatever non-directory (or, for a non-directory entry, directory) lies at its path.
/// Whiteout files themselves are never written. The caller reads `reader` to its end
/// afterwards if it hashes the whole stream (tar stops at its end-of-archive marker).
pub fn unpack_layer(reader: impl Read, dest: &Path, label: &str) -> Result<RootfsReport, Error> {
    unpack_rootfs_stream(tar::Archive::new(reader), dest, label, Tree::Layer)
}

/// Unpacks a container snapshot of record format 2, which older envys wrote (with their
/// own packer, or GNU tar with `--numeric-owner --xattrs --xattrs-include=trusted.overlay.*`
/// before that; snapshots are layers now), into `dest`, an empty private
/// dir that becomes a machine's upper layer, under the rules of `unpack_rootfs`. In
/// addition 0/0 character devices (overlayfs whiteouts) are made wherever they are, the
/// `trusted.overlay.*` xattrs of entries are set (no other xattr is), and the root entry
/// gives `dest` its mode and owner.
pub fn unpack_upper(path: &Path, dest: &Path, label: &str) -> Result<(), Error> {
    let file = File::open(path).map_err(Error::io("cannot read", path))?;
    let reader = Compression::Zstd.reader(file).map_err(Error::io("cannot read", path))?;
    unpack_rootfs_stream(tar::Archive::new(reader), dest, label, Tree::Upper).map(drop)
}

/// What a tar stream unpacks as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tree {
    /// A whole root filesystem.
    Rootfs,
    /// An OCI layer over the layers already in the destination.
    Layer,
    /// An overlayfs upper dir, with its whiteouts and xattrs.
    Upper,
}

/// The prefix of OCI whiteout file names.
const WHITEOUT: &str = ".wh.";
/// The name of an opaque-directory marker.
const OPAQUE: &str = ".wh..wh..opq";

fn unpack_rootfs_stream<R: Read>(
    mut archive: tar::Archive<R>,
    dest: &Path,
    label: &str,
    tree: Tree,
) -> Result<RootfsReport, Error> {
    let layer = tree == Tree::Layer;
    let hostile = |entry: &str, reason: String| Error::HostileEntry {
        archive: label.to_string(),
        entry: entry.to_string(),
        reason,
    };
    let read_err = |e: io::Error| Error::NotABox {
        archive: label.to_string(),
        reason: format!("the tar stream is damaged ({e})"),
    };
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(!crate::userns::only_root_inside());
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut report = RootfsReport::default();
    // Directories known to be real directories (not symlinks) inside `dest`.
    let mut real_dirs: HashSet<PathBuf> = HashSet::new();
    // Paths this layer wrote: an opaque marker hides only what lies below the layer.
    let mut written: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink
        ) {
            continue;
        }
        let rel = relative_path(&raw).map_err(|reason| hostile(&raw, reason.into()))?;
        if rel.as_os_str().is_empty() {
            // The tree's root itself (`./`): an upper dir's mode and owner are the
            // merged root's; another tree's root is the caller's.
            if tree == Tree::Upper && kind == EntryType::Directory {
                set_owner_and_mode(dest, entry.header()).map_err(|e| hostile(&raw, format!("cannot be applied to {}: {e}", dest.display())))?;
            }
            continue;
        }
        if entry.size() > MAX_ROOTFS_ENTRY_BYTES {
            return Err(hostile(
                &raw,
                format!(
                    "claims {} bytes, more than the {MAX_ROOTFS_ENTRY_BYTES}-byte bound for one file",
                    entry.size()
                ),
            ));
        }
        let file_name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if layer && file_name.starts_with(WHITEOUT) {
            check_no_symlink_parents(dest, &rel, &mut real_dirs).map_err(|via| {
                hostile(&raw, format!("is a whiteout under symlink `{via}`, which may point outside the tree"))
            })?;
            let dir = rel.parent().unwrap_or(Path::new("")).to_path_buf();
            if file_name == OPAQUE {
                let children = match std::fs::read_dir(dest.join(&dir)) {
                    Ok(entries) => entries.filter_map(|e| e.ok().map(|e| dir.join(e.file_name()))).collect(),
                    Err(_) => Vec::new(),
                };
                for child in children.into_iter().filter(|c| !written.contains(c)) {
                    remove_below(dest, &child, &mut real_dirs)?;
                }
            } else {
                let target = dir.join(&file_name[WHITEOUT.len()..]);
                if target.file_name().is_none_or(|n| n == "." || n == "..") {
                    return Err(hostile(&raw, "is a whiteout of no file".into()));
                }
                remove_below(dest, &target, &mut real_dirs)?;
            }
            continue;
        }
        match kind {
            EntryType::Char if tree == Tree::Upper && is_whiteout(entry.header()) => {
                check_no_symlink_parents(dest, &rel, &mut real_dirs).map_err(|via| {
                    hostile(&raw, format!("is a whiteout under symlink `{via}`, which may point outside the tree"))
                })?;
                remove_below(dest, &rel, &mut real_dirs)?;
                make_whiteout(&dest.join(&rel), entry.header())
                    .map_err(|e| hostile(&raw, format!("cannot be made as a whiteout: {e}")))?;
                continue;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                if rel.starts_with("dev") {
                    report.skipped_devices += 1;
                    continue;
                }
                return Err(hostile(&raw, format!("is a {} outside dev/", describe(kind))));
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let target_rel = relative_path(&target).map_err(|reason| {
                    hostile(&raw, format!("is a hardlink to `{target}`, which {reason}"))
                })?;
                check_no_symlink_parents(dest, &target_rel, &mut real_dirs).map_err(|via| {
                    hostile(&raw, format!("is a hardlink to `{target}` through symlink `{via}`"))
                })?;
                if std::fs::symlink_metadata(dest.join(&target_rel)).is_err() {
                    return Err(hostile(
                        &raw,
                        format!("is a hardlink to `{target}`, which is not in the archive before it"),
                    ));
                }
            }
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::GNUSparse => {}
            other => return Err(hostile(&raw, format!("has an unsupported type ({other:?})"))),
        }
        check_no_symlink_parents(dest, &rel, &mut real_dirs).map_err(|via| {
            hostile(
                &raw,
                format!("would be written through symlink `{via}`, which may point outside the tree"),
            )
        })?;
        if layer {
            // A layer's entry replaces what the layers below had at its path, except
            // that a directory merges into a directory.
            let existing = std::fs::symlink_metadata(dest.join(&rel));
            if existing.is_ok_and(|m| !(m.is_dir() && kind == EntryType::Directory)) {
                remove_below(dest, &rel, &mut real_dirs)?;
            }
            written.insert(rel.clone());
        }
        // Files and links replace an existing symlink; a directory entry would instead
        // chmod/chown whatever the symlink points to.
        if kind == EntryType::Directory
            && std::fs::symlink_metadata(dest.join(&rel)).is_ok_and(|m| m.file_type().is_symlink())
        {
            return Err(hostile(&raw, "is a directory over an earlier symlink of the same name".into()));
        }
        if kind == EntryType::Symlink {
            // The symlink replaces whatever was at `rel` (a real directory there makes the
            // unpack fail instead), so only that path leaves the cache.
            real_dirs.remove(&rel);
        }
        let xattrs = if tree == Tree::Upper { overlay_xattrs(&mut entry).map_err(read_err)? } else { Vec::new() };
        entry.unpack_in(dest).map_err(|e| {
            if super::error::is_disk_full(&e) {
                Error::io("cannot write", dest.join(&rel))(e)
            } else {
                hostile(&raw, format!("cannot be unpacked: {}", super::download::error_chain(&e)))
            }
        })?;
        for (name, value) in xattrs {
            // No-follow: set on the entry itself, a symlink included.
            xattr::set(dest.join(&rel), &name, &value)
                .map_err(|e| hostile(&raw, format!("cannot be given its xattr {name} ({e})")))?;
        }
    }
    Ok(report)
}

/// An entry's overlayfs xattrs envy restores (`KEPT_XATTRS`) from its PAX records;
/// the others are ignored. The tar crate reads PAX records line by line, so a binary
/// value with a newline in it (overlayfs's `origin` file handle, which GNU tar saved
/// for older envys) reads as malformed: such records are skipped, and the records
/// after them still read.
fn overlay_xattrs<R: Read>(entry: &mut tar::Entry<R>) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut found = Vec::new();
    if let Some(records) = entry.pax_extensions()? {
        for record in records {
            let Ok(record) = record else { continue };
            let Some(suffix) = record.key().ok().and_then(|k| k.strip_prefix(PAX_XATTR)?.strip_prefix(ARCHIVE_XATTR_PREFIX)) else { continue };
            if KEPT_XATTRS.contains(&suffix) {
                found.push((overlay_xattr(suffix), record.value_bytes().to_vec()));
            }
        }
    }
    Ok(found)
}

/// Whether a file's size, content or metadata changed between two looks at it.
pub(super) fn changed(before: &std::fs::Metadata, after: &std::fs::Metadata) -> bool {
    (before.len(), before.mtime(), before.mtime_nsec(), before.ctime(), before.ctime_nsec())
        != (after.len(), after.mtime(), after.mtime_nsec(), after.ctime(), after.ctime_nsec())
}

/// Whether a file in an upper layer is an overlayfs whiteout (a character device 0/0,
/// which hides the name in the layers below).
pub fn is_whiteout_file(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether a character device entry is an overlayfs whiteout (device 0/0).
fn is_whiteout(header: &tar::Header) -> bool {
    matches!((header.device_major(), header.device_minor()), (Ok(Some(0)), Ok(Some(0))))
}

/// Makes a 0/0 character device (an overlayfs whiteout) with the entry's mode and owner.
fn make_whiteout(path: &Path, header: &tar::Header) -> io::Result<()> {
    let mode = header.mode()? & 0o777;
    nix::sys::stat::mknod(path, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::from_bits_truncate(mode), 0)?;
    set_owner_and_mode(path, header)
}

/// Gives `path` (never followed) the entry's numeric owner, then its mode: chown clears
/// setuid bits, so the mode comes last.
fn set_owner_and_mode(path: &Path, header: &tar::Header) -> io::Result<()> {
    let uid = u32::try_from(header.uid()?).map_err(|_| io::Error::other("its owner is out of range"))?;
    let gid = u32::try_from(header.gid()?).map_err(|_| io::Error::other("its group is out of range"))?;
    // Where no other owner can be given (userns::only_root_inside) all stays the unpacker's.
    if !crate::userns::only_root_inside() {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    let mode = header.mode()? & 0o7777;
    nix::sys::stat::fchmodat(None, path, nix::sys::stat::Mode::from_bits_truncate(mode), nix::sys::stat::FchmodatFlags::NoFollowSymlink)
        .map_err(io::Error::from)
}

/// Removes `rel` under `root` without following a symlink at it (its parents were
/// checked by the caller), and forgets what the removal invalidates.
fn remove_below(root: &Path, rel: &Path, real_dirs: &mut HashSet<PathBuf>) -> Result<(), Error> {
    let path = root.join(rel);
    let removed = match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
        Ok(_) => std::fs::remove_file(&path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    removed.map_err(Error::io("cannot remove", &path))?;
    real_dirs.retain(|d| !d.starts_with(rel));
    Ok(())
}

/// The entry's path relative to the tree root, or why it is refused.
/// `raw` as a path below an archive's root: `.` parts dropped, an absolute path or a
/// `..` part refused (with the reason).
pub(crate) fn relative_path(raw: &str) -> Result<PathBuf, &'static str> {
    if raw.starts_with('/') {
        return Err("has an absolute path");
    }
    let mut rel = PathBuf::new();
    for part in Path::new(raw).components() {
        match part {
            Component::Normal(p) => rel.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("has a `..` component"),
            Component::RootDir | Component::Prefix(_) => return Err("has an absolute path"),
        }
    }
    Ok(rel)
}

/// Fails with the offending prefix when any existing ancestor of `rel` under `root`
/// is a symlink (the kernel would follow it, maybe out of the tree).
fn check_no_symlink_parents(root: &Path, rel: &Path, real_dirs: &mut HashSet<PathBuf>) -> Result<(), String> {
    let mut prefix = PathBuf::new();
    let parent = rel.parent().unwrap_or(Path::new(""));
    for part in parent.components() {
        prefix.push(part);
        if real_dirs.contains(&prefix) {
            continue;
        }
        match std::fs::symlink_metadata(root.join(&prefix)) {
            Ok(m) if m.file_type().is_symlink() => return Err(prefix.display().to_string()),
            Ok(m) if m.is_dir() => {
                real_dirs.insert(prefix.clone());
            }
            _ => return Ok(()), // not there yet: created as a real directory
        }
    }
    Ok(())
}

/// Packs a root filesystem directory as an uncompressed tar (owners, modes, symlinks
/// kept; device nodes and sockets skipped: runc provides /dev). Entries are in name
/// order, and with SOURCE_DATE_EPOCH set no mtime is later than it, so the same tree
/// packs to the same bytes. Returns its sha256.
pub fn pack_rootfs_dir(dir: &Path, out: &Path) -> anyhow::Result<String> {
    let file = File::create(out).map_err(Error::io("cannot create", out))?;
    let hashing = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, file), Hasher::new());
    let (buf, hashes) = pack_rootfs_into(dir, hashing)?.finish();
    // Not synced: every caller packs it into what it keeps (a box, a registry blob, an
    // image upload), and that is what gets synced.
    buf.into_inner().map_err(|e| e.into_error())?;
    Ok(hashes.sha256)
}

/// `pack_rootfs_dir`'s tar, written into `out` (which it returns).
pub(super) fn pack_rootfs_into<W: Write>(dir: &Path, out: W) -> anyhow::Result<W> {
    let mut builder = tar::Builder::new(out);
    append_tree(&mut builder, dir, Path::new(""), Packing::rootfs(Data::Read), &mut Walk::default())?;
    Ok(builder.into_inner()?)
}

/// The size of the tar `pack_rootfs_into` would write of `dir` now, found from the
/// tree's metadata alone (no file's bytes are read): a box's header for the tar must
/// give its size before the tar streams.
pub(super) fn rootfs_tar_size(dir: &Path) -> anyhow::Result<u64> {
    let mut builder = tar::Builder::new(Counter(0));
    let mut walk = Walk::default();
    append_tree(&mut builder, dir, Path::new(""), Packing::rootfs(Data::Sized), &mut walk)?;
    Ok(builder.into_inner()?.0 + walk.unread)
}

/// A writer that only counts.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Packs an overlayfs upper directory (a container machine's own changes) as an OCI
/// image layer, uncompressed: what `pack_rootfs_dir` writes, except that overlayfs's
/// whiteouts (0/0 character devices) become `.wh.NAME` files and opaque directories
/// (xattr `trusted.overlay.opaque=y`) get a `.wh..wh..opq` entry.
pub fn pack_layer_dir(upper: &Path, out: &Path) -> anyhow::Result<()> {
    let file = File::create(out).map_err(Error::io("cannot create", out))?;
    let mut builder = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, file));
    let packing = Packing { epoch: None, upper: Upper::AsOciLayer, data: Data::Read };
    append_tree(&mut builder, upper, Path::new(""), packing, &mut Walk::default())?;
    // Not synced, as `pack_rootfs_dir`: it is compressed into the blob that is pushed.
    builder.into_inner()?.into_inner().map_err(|e| e.into_error())?;
    Ok(())
}

/// The overlayfs xattrs a snapshot keeps: what the layer means (an opaque dir, a
/// renamed dir). The others are overlayfs's bookkeeping about inodes of this mount
/// (`origin`, `impure`, `nlink`), binary, and rebuilt by overlayfs as it needs them.
pub const KEPT_XATTRS: [&str; 2] = ["opaque", "redirect"];
/// Archives name them as root's overlay (and GNU tar) does. A normal user's overlay is
/// mounted with `userxattr` and keeps them under `user.overlay.`; they are read and
/// written under the name the overlay in use reads.
const ARCHIVE_XATTR_PREFIX: &str = "trusted.overlay.";

/// The name of overlayfs's xattr `suffix` (`opaque`, `redirect`) for the overlay in use.
pub fn overlay_xattr(suffix: &str) -> String {
    let prefix = if crate::userns::is_rootless() { "user.overlay." } else { ARCHIVE_XATTR_PREFIX };
    format!("{prefix}{suffix}")
}
/// How tar's PAX records name an xattr.
const PAX_XATTR: &str = "SCHILY.xattr.";

/// An empty, root-owned marker file in a layer (a whiteout).
fn append_marker<W: Write>(builder: &mut tar::Builder<W>, path: &Path) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(EntryType::Regular);
    builder.append_data(&mut header, path, io::empty())?;
    Ok(())
}

/// Whether overlayfs marked this upper directory opaque (it hides the lower one).
pub fn is_opaque_dir(path: &Path) -> bool {
    xattr::get(path, overlay_xattr("opaque")).is_ok_and(|v| v.as_deref() == Some(b"y"))
}

/// How `append_tree` writes a tree.
#[derive(Clone, Copy)]
struct Packing {
    /// SOURCE_DATE_EPOCH: no mtime is written later than it.
    epoch: Option<u64>,
    /// Whether the tree is an overlayfs upper dir, and what its whiteouts become.
    upper: Upper,
    data: Data,
}

impl Packing {
    /// A root filesystem, as `pack_rootfs_dir` packs it.
    fn rootfs(data: Data) -> Packing {
        let epoch = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.trim().parse::<u64>().ok());
        Packing { epoch, upper: Upper::No, data }
    }
}

/// Whether `append_tree` reads the files' bytes into the tar.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Data {
    Read,
    /// Only the headers are written; the files' padded sizes are added up in
    /// `Walk::unread` instead.
    Sized,
}

/// What `append_tree` keeps across the tree: the first name of each file with more
/// than one (the later ones become hard links), and the bytes `Data::Sized` left out.
#[derive(Default)]
struct Walk {
    hardlinks: BTreeMap<(u64, u64), PathBuf>,
    unread: u64,
}

/// What `append_tree` makes of an overlayfs upper dir's whiteouts and opaque dirs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Upper {
    /// Not an upper dir: device nodes are skipped, xattrs not read.
    No,
    /// An OCI layer: `.wh.NAME` files and `.wh..wh..opq` markers.
    AsOciLayer,
}

fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    packing: Packing,
    walk: &mut Walk,
) -> anyhow::Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map_err(Error::io("cannot read", &dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(Error::io("cannot read", &dir))?;
    names.sort();
    for name in names {
        let entry_rel = rel.join(&name);
        let path = root.join(&entry_rel);
        let meta = std::fs::symlink_metadata(&path).map_err(Error::io("cannot read", &path))?;
        let ft = meta.file_type();
        let whiteout = is_whiteout_file(&meta);
        if packing.upper == Upper::AsOciLayer && whiteout {
            let name = format!("{WHITEOUT}{}", name.to_string_lossy());
            append_marker(builder, &rel.join(name))?;
            continue;
        }
        if !(ft.is_dir() || ft.is_file() || ft.is_symlink()) {
            continue;
        }
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        if let Some(epoch) = packing.epoch.filter(|e| meta.mtime().max(0) as u64 > *e) {
            header.set_mtime(epoch);
        }
        if ft.is_file() && meta.nlink() > 1 {
            // Second and later names of a file become hardlinks, as tar does.
            if let Some(first) = walk.hardlinks.get(&(meta.dev(), meta.ino())) {
                header.set_entry_type(EntryType::Link);
                header.set_size(0);
                builder.append_link(&mut header, &entry_rel, first)?;
                continue;
            }
            walk.hardlinks.insert((meta.dev(), meta.ino()), entry_rel.clone());
        }
        if ft.is_file() && packing.data == Data::Sized {
            builder.append_data(&mut header, &entry_rel, io::empty())?;
            walk.unread += meta.len().next_multiple_of(512);
        } else if ft.is_file() {
            let file = File::open(&path).map_err(Error::io("cannot read", &path))?;
            let mut content = (&file).take(meta.len());
            builder.append_data(&mut header, &entry_rel, &mut content)?;
            // The header gave the size before the read: a file that changed meanwhile
            // would make the tar lie (GNU tar checks the same way).
            let after = file.metadata().map_err(Error::io("cannot read", &path))?;
            if content.limit() != 0 || changed(&meta, &after) {
                return Err(Error::TreeChanged { dir: root.to_path_buf(), file: path }.into());
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(Error::io("cannot read", &path))?;
            builder.append_link(&mut header, &entry_rel, target)?;
        } else {
            builder.append_data(&mut header, &entry_rel, io::empty())?;
            if packing.upper == Upper::AsOciLayer && is_opaque_dir(&path) {
                append_marker(builder, &entry_rel.join(OPAQUE))?;
            }
            append_tree(builder, root, &entry_rel, packing, walk)?;
        }
    }
    Ok(())
}
