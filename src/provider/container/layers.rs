//! A container machine's frozen layers, which make a snapshot O(1). The machine's root
//! is an overlay of its upper layer over a chain of read-only layers over the box; a
//! snapshot names a chain. Saving a halted machine renames its upper layer into the
//! chain and starts an empty one (whatever changed); saving a running one copies the
//! upper layer while the machine is held still (overlayfs cannot swap the upper layer
//! under running processes). Restoring makes the snapshot's chain the machine's, under
//! a new empty upper layer. Layers are never changed once frozen, so snapshots share
//! them; a layer no chain names is removed. A chain longer than `MAX_DEPTH` is merged
//! into one layer of hard links (`flatten`): lookups stay fast, and no data is copied.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use nix::sys::stat::{Mode, SFlag};

use super::Layout;

/// The most frozen layers under a machine's upper layer; one more is merged.
pub const MAX_DEPTH: usize = 16;

/// The frozen layers of one machine (`layers/<id>`) and its chain (`layers.json`).
pub struct Layers<'a> {
    layout: &'a Layout,
}

impl<'a> Layers<'a> {
    pub fn of(layout: &'a Layout) -> Layers<'a> {
        Layers { layout }
    }

    pub fn path(&self, id: u32) -> PathBuf {
        self.layout.layers().join(id.to_string())
    }

    /// Layer `id` is there as a real dir (a symlink in its place is not followed).
    pub fn is_there(&self, id: u32) -> bool {
        std::fs::symlink_metadata(self.path(id)).is_ok_and(|m| m.is_dir())
    }

    /// The machine's chain, bottom first (empty for a machine never snapshotted).
    pub fn chain(&self) -> Result<Vec<u32>> {
        let path = self.layout.chain();
        let Some(bytes) = crate::fsutil::read_private(&path)? else { return Ok(Vec::new()) };
        serde_json::from_slice(&bytes).map_err(|e| {
            crate::state::Error::BadRecord { path, message: format!("is not a list of layers ({e}); destroy the machine and bring it up again") }
                .into()
        })
    }

    pub fn set_chain(&self, chain: &[u32]) -> Result<()> {
        crate::fsutil::write_atomic(&self.layout.chain(), serde_json::to_string(chain)?.as_bytes())
    }

    /// A save killed between naming its layer in the chain and renaming the upper layer
    /// into it is finished here, before anything mounts the chain. Returns the chain.
    pub fn repair(&self) -> Result<Vec<u32>> {
        let chain = self.chain()?;
        if let Some(&top) = chain.last() {
            if std::fs::symlink_metadata(self.path(top)).is_err() && self.layout.upper().is_dir() {
                std::fs::rename(self.layout.upper(), self.path(top)).with_context(|| format!("cannot finish freezing layer {top}"))?;
            }
        }
        if !self.layout.upper().exists() {
            self.fresh_upper(chain.last().copied())?;
        }
        Ok(chain)
    }

    /// The overlay's lower dirs for `chain` (the machine's), top first, then the box's rootfs.
    pub fn lowers(&self, chain: &[u32], box_rootfs: &Path) -> Result<Vec<PathBuf>> {
        if let Some(&missing) = chain.iter().find(|&&id| !self.is_there(id)) {
            bail!(crate::state::Error::BadRecord {
                path: self.layout.chain(),
                message: format!("names layer {}, which is gone; destroy the machine and bring it up again", self.path(missing).display()),
            });
        }
        Ok(chain.iter().rev().map(|&id| self.path(id)).chain([box_rootfs.to_path_buf()]).collect())
    }

    fn next_id(&self) -> Result<u32> {
        let mut top = 0;
        for entry in std::fs::read_dir(self.layout.layers()).into_iter().flatten() {
            let name = entry?.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.trim_start_matches('.').trim_end_matches(".partial").parse::<u32>().ok()) {
                top = top.max(id);
            }
        }
        Ok(top + 1)
    }

    /// Makes an empty upper layer with the mode and owner of the root the machine sees
    /// (overlayfs shows the upper layer's root dir as `/`): layer `top`'s, the chain's top.
    pub fn fresh_upper(&self, top: Option<u32>) -> Result<()> {
        let like = top.and_then(|top| std::fs::symlink_metadata(self.path(top)).ok());
        crate::fsutil::create_private_dir(&self.layout.upper())?;
        if let Some(meta) = like {
            copy_owner_and_mode(&self.layout.upper(), &meta)?;
        }
        Ok(())
    }

    /// Freezes the upper layer of a machine whose overlay is not mounted: it becomes the
    /// chain's top, under a new empty upper layer. Returns the new chain.
    pub fn freeze_upper(&self) -> Result<Vec<u32>> {
        crate::fsutil::create_private_dir(&self.layout.layers())?;
        let id = self.next_id()?;
        let mut chain = self.chain()?;
        chain.push(id);
        // Named first, then renamed: `repair` finishes what a kill in between left.
        self.set_chain(&chain)?;
        std::fs::rename(self.layout.upper(), self.path(id)).with_context(|| format!("cannot freeze {} as layer {id}", self.layout.upper().display()))?;
        self.fresh_upper(Some(id))?;
        // overlayfs's work dir belongs to the upper layer it was made with.
        crate::fsutil::remove_path(&self.layout.work())?;
        if chain.len() > MAX_DEPTH {
            chain = vec![self.flatten(&chain)?];
            self.set_chain(&chain)?;
        }
        Ok(chain)
    }

    /// Writes the upper layer's data out to disk when its filesystem's copies clone
    /// blocks (XFS, btrfs: `copy_upper` is then a reflink): a clone shares blocks on
    /// disk, so data still only in memory would otherwise be written by the copy,
    /// inside the pause of a running machine. Elsewhere the copy reads the bytes
    /// wherever they are, and nothing is done.
    pub fn write_out_for_clones(&self) -> Result<()> {
        use nix::sys::statfs::{fstatfs, BTRFS_SUPER_MAGIC, XFS_SUPER_MAGIC};
        use std::os::fd::AsRawFd as _;
        let upper = self.layout.upper();
        let opened = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(&upper)
            .with_context(|| format!("cannot open {}", upper.display()))?;
        let kind = fstatfs(&opened).with_context(|| format!("cannot read the filesystem of {}", upper.display()))?.filesystem_type();
        if kind == XFS_SUPER_MAGIC || kind == BTRFS_SUPER_MAGIC {
            nix::unistd::syncfs(opened.as_raw_fd()).with_context(|| format!("cannot write out the filesystem of {}", upper.display()))?;
        }
        Ok(())
    }

    /// Copies the upper layer of a running machine (held still by the caller) into a new
    /// frozen layer over the machine's chain. Returns the snapshot's chain; the
    /// machine's own stays as it is.
    pub fn copy_upper(&self) -> Result<Vec<u32>> {
        crate::fsutil::create_private_dir(&self.layout.layers())?;
        let id = self.next_id()?;
        let partial = self.layout.layers().join(format!(".{id}.partial"));
        let copied = copy_tree(&self.layout.upper(), &partial, Link::Copy).and_then(|()| {
            std::fs::rename(&partial, self.path(id)).with_context(|| format!("cannot name layer {id}"))
        });
        if let Err(e) = copied {
            let _ = crate::fsutil::remove_path(&partial);
            return Err(e);
        }
        let mut chain = self.chain()?;
        chain.push(id);
        if chain.len() > MAX_DEPTH {
            chain = vec![self.flatten(&chain)?];
        }
        Ok(chain)
    }

    /// One new layer that reads as `chain` does, its files hard links to theirs.
    pub fn flatten(&self, chain: &[u32]) -> Result<u32> {
        let id = self.next_id()?;
        let partial = self.layout.layers().join(format!(".{id}.partial"));
        let merged = chain.iter().try_for_each(|&layer| merge_layer(&self.path(layer), &partial)).and_then(|()| {
            std::fs::rename(&partial, self.path(id)).with_context(|| format!("cannot name layer {id}"))
        });
        if let Err(e) = merged {
            let _ = crate::fsutil::remove_path(&partial);
            return Err(e.context(format!("cannot merge the {} layers of machine dir {}", chain.len(), self.layout.dir().display())));
        }
        Ok(id)
    }

    /// The machine's changes over its box as one layer dir `into`: its chain and upper
    /// layer merged (hard links; the caller holds the machine still and removes `into`).
    pub fn merge_all(&self, into: &Path) -> Result<()> {
        for id in self.chain()? {
            merge_layer(&self.path(id), into)?;
        }
        merge_layer(&self.layout.upper(), into)
    }

    /// Bytes of regular files in layer `id` (each inode once): a snapshot's own size.
    pub fn size(&self, id: u32) -> u64 {
        let mut seen = BTreeSet::new();
        tree_size(&self.path(id), &mut seen)
    }

    /// Removes every layer (and partial one) that no chain in `used` names.
    pub fn remove_unused(&self, used: &BTreeSet<u32>) -> Result<()> {
        for entry in std::fs::read_dir(self.layout.layers()).into_iter().flatten() {
            let entry = entry?;
            let keep = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()).is_some_and(|id| used.contains(&id));
            if !keep {
                crate::fsutil::remove_path(&entry.path())?;
            }
        }
        Ok(())
    }
}

fn tree_size(dir: &Path, seen: &mut BTreeSet<(u64, u64)>) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.path().symlink_metadata() else { continue };
        if meta.is_dir() {
            total += tree_size(&entry.path(), seen);
        } else if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
            total += meta.len();
        }
    }
    total
}

/// How regular files reach a new layer.
#[derive(Clone, Copy, PartialEq)]
enum Link {
    /// Their bytes are copied: the source is a live upper layer.
    Copy,
    /// Hard-linked: the source is a frozen layer, and so is the target.
    Hard,
}

/// Applies layer `upper` onto `lower` (a layer being built) as overlayfs reads them
/// stacked: a whiteout removes what is below and stays (layers further down may have
/// the name), an opaque dir replaces, a plain dir merges, anything else replaces.
fn merge_layer(upper: &Path, lower: &Path) -> Result<()> {
    if !lower.exists() {
        return copy_tree(upper, lower, Link::Hard);
    }
    let redirect = crate::boxes::overlay_xattr("redirect");
    for entry in std::fs::read_dir(upper).with_context(|| format!("cannot read {}", upper.display()))? {
        let entry = entry?;
        let (from, to) = (entry.path(), lower.join(entry.file_name()));
        let meta = from.symlink_metadata()?;
        let below = to.symlink_metadata().ok();
        if meta.is_dir() {
            if xattr::get(&from, &redirect).ok().flatten().is_some() {
                bail!("{} is a renamed directory (overlayfs redirect_dir); envy cannot merge such a layer", from.display());
            }
            match below {
                Some(b) if b.is_dir() && !crate::boxes::is_opaque_dir(&from) => merge_layer(&from, &to)?,
                Some(_) => {
                    crate::fsutil::remove_path(&to)?;
                    copy_tree(&from, &to, Link::Hard)?;
                    // Over a whiteout or a file nothing further down shows through.
                    xattr::set(&to, crate::boxes::overlay_xattr("opaque"), b"y").with_context(|| format!("cannot mark {} opaque", to.display()))?;
                }
                None => copy_tree(&from, &to, Link::Hard)?,
            }
        } else {
            crate::fsutil::remove_path(&to)?;
            copy_entry(&from, &to, &meta, Link::Hard, &mut HashMap::new())?;
        }
    }
    // A dir present in both takes the upper one's owner and mode, as overlayfs shows it.
    copy_owner_and_mode(lower, &upper.symlink_metadata()?)
}

/// Copies a layer tree: owners, modes, times, overlayfs's meaning (whiteouts, opaque
/// dirs) and the files' own xattrs (file capabilities); hard links within it stay
/// links. Nothing is followed: symlinks are copied as symlinks.
fn copy_tree(from: &Path, to: &Path, link: Link) -> Result<()> {
    let meta = from.symlink_metadata().with_context(|| format!("cannot read {}", from.display()))?;
    copy_entry(from, to, &meta, link, &mut HashMap::new())
}

fn copy_entry(from: &Path, to: &Path, meta: &std::fs::Metadata, link: Link, links: &mut HashMap<(u64, u64), PathBuf>) -> Result<()> {
    let failed = |doing: &str| format!("cannot {doing} {} as {}", from.display(), to.display());
    let kind = meta.file_type();
    if kind.is_dir() {
        std::fs::create_dir(to).with_context(|| failed("copy the directory"))?;
        for entry in std::fs::read_dir(from).with_context(|| failed("read"))? {
            let entry = entry?;
            let child = entry.path().symlink_metadata()?;
            copy_entry(&entry.path(), &to.join(entry.file_name()), &child, link, links)?;
        }
    } else if kind.is_file() {
        if link == Link::Hard {
            return std::fs::hard_link(from, to).with_context(|| failed("link"));
        }
        if meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                return std::fs::hard_link(first, to).with_context(|| failed("link"));
            }
            links.insert((meta.dev(), meta.ino()), to.to_path_buf());
        }
        std::fs::copy(from, to).with_context(|| failed("copy"))?;
    } else if kind.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to).with_context(|| failed("copy the symlink"))?;
    } else if crate::boxes::is_whiteout_file(meta) || kind.is_fifo() {
        let sflag = if kind.is_fifo() { SFlag::S_IFIFO } else { SFlag::S_IFCHR };
        nix::sys::stat::mknod(to, sflag, Mode::from_bits_truncate(meta.mode() & 0o7777), 0).with_context(|| failed("make"))?;
    } else {
        // Sockets and device nodes: runc makes /dev, and a socket is nothing once copied.
        return Ok(());
    }
    copy_xattrs(from, to)?;
    copy_owner_and_mode(to, meta)?;
    let times = [nix::sys::time::TimeSpec::new(meta.atime(), meta.atime_nsec()), nix::sys::time::TimeSpec::new(meta.mtime(), meta.mtime_nsec())];
    nix::sys::stat::utimensat(None, to, &times[0], &times[1], nix::sys::stat::UtimensatFlags::NoFollowSymlink).with_context(|| failed("time"))?;
    Ok(())
}

/// Owner, then mode (a chown clears setuid bits); a symlink's mode is its own.
fn copy_owner_and_mode(to: &Path, meta: &std::fs::Metadata) -> Result<()> {
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid())).with_context(|| format!("cannot set the owner of {}", to.display()))?;
    if !meta.file_type().is_symlink() {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777)).with_context(|| format!("cannot set the mode of {}", to.display()))?;
    }
    Ok(())
}

/// The xattrs a layer entry keeps: overlayfs's meaning (`opaque`, `redirect`) and every
/// one that is not overlayfs's (file capabilities, ACLs). overlayfs's bookkeeping about
/// the inodes of one mount (`origin`, `impure`) stays behind, as in a snapshot archive.
fn copy_xattrs(from: &Path, to: &Path) -> Result<()> {
    let meaning = crate::boxes::KEPT_XATTRS.map(crate::boxes::overlay_xattr);
    for name in xattr::list(from).with_context(|| format!("cannot list the xattrs of {}", from.display()))? {
        let text = name.to_string_lossy();
        let overlay_own = text.starts_with("trusted.overlay.") || text.starts_with("user.overlay.");
        if overlay_own && !meaning.iter().any(|m| *m == text) {
            continue;
        }
        if let Some(value) = xattr::get(from, &name)? {
            xattr::set(to, &name, &value).with_context(|| format!("cannot copy xattr {text} to {}", to.display()))?;
        }
    }
    Ok(())
}
