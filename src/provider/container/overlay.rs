//! The machine's root filesystem: an overlay whose lower layer is the box's unpacked
//! rootfs (shared, read-only) and whose upper layer is the machine's own, so creating
//! a machine copies nothing. Also the mount-table reads that keep removal safe.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use std::os::fd::AsRawFd as _;

use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;

use crate::provider::Error;

/// Mount points currently in this process's mount namespace.
fn mount_points() -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a mount's root is at `path` (not following a symlink there). The kernel
/// says so in one statx call; the mount table, which grows with every machine, is read
/// only on a kernel older than 5.8 that does not.
pub fn is_mounted(path: &Path) -> Result<bool> {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return Ok(false) };
    // SAFETY: statx fills the zeroed struct it is given and reads the NUL-terminated path.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statx(libc::AT_FDCWD, c_path.as_ptr(), libc::AT_SYMLINK_NOFOLLOW, libc::STATX_BASIC_STATS, &mut stx) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return match err.kind() {
            std::io::ErrorKind::NotFound => Ok(false),
            _ => Err(err).with_context(|| format!("cannot stat {}", path.display())),
        };
    }
    let mount_root = libc::STATX_ATTR_MOUNT_ROOT as u64;
    if stx.stx_attributes_mask & mount_root != 0 {
        return Ok(stx.stx_attributes & mount_root != 0);
    }
    Ok(mount_points()?.iter().any(|m| m == path))
}

/// Mount points at or below `dir`, deepest first (the order to unmount them in).
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = mount_points()?.into_iter().filter(|m| m.starts_with(dir)).collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    Ok(found)
}

/// Mounts the overlay at `merged`, `lowers` top first, over `upper` and its work dir
/// (none: a read-only view). Paths holding `,` or `:` cannot
/// be named in overlay options and are refused with an explanation. The lower dirs are
/// opened (no symlink followed) and named by their short `/proc/self/fd/N` paths, so a
/// deep chain of layers fits in the one page that mount options may take.
pub fn mount_overlay(lowers: &[PathBuf], upper: Option<(&Path, &Path)>, merged: &Path) -> Result<()> {
    for path in upper.into_iter().flat_map(|(upper, work)| [upper, work]).chain([merged]) {
        let text = path.to_string_lossy();
        if text.contains(',') || text.contains(':') {
            bail!(Error::OverlayPath { path: path.to_path_buf() });
        }
    }
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut opened = Vec::with_capacity(lowers.len());
    for dir in lowers {
        let fd = nix::fcntl::open(dir, flags, Mode::empty()).with_context(|| format!("cannot open layer {} (it must be a real directory)", dir.display()))?;
        opened.push(fd);
    }
    let lowerdir: Vec<String> = opened.iter().map(|fd| format!("/proc/self/fd/{}", fd.as_raw_fd())).collect();
    let mut options = format!("lowerdir={}", lowerdir.join(":"));
    if let Some((upper, work)) = upper {
        options.push_str(&format!(",upperdir={},workdir={}", upper.display(), work.display()));
    }
    // Inside a normal user's namespace overlayfs may not write trusted.* xattrs: it keeps
    // what makes a dir opaque or renamed under user.overlay.* (boxes/archive.rs reads both).
    if crate::userns::is_rootless() {
        options.push_str(",userxattr");
    }
    let lower = lowers.last().cloned().unwrap_or_default();
    mount(Some("overlay"), merged, Some("overlay"), MsFlags::empty(), Some(options.as_str()))
        .map_err(|cause| Error::OverlayMount { merged: merged.to_path_buf(), lower, cause })?;
    Ok(())
}

/// Bind-mounts `source` (a `/proc/self/fd/N` of an opened folder or file) onto a new
/// mount point `point`, a dir or an empty file to match.
pub fn bind_mount(source: &Path, point: &Path, is_dir: bool) -> Result<()> {
    let made = if is_dir {
        std::fs::create_dir(point)
    } else {
        std::fs::OpenOptions::new().write(true).create_new(true).open(point).map(drop)
    };
    made.with_context(|| format!("cannot create the mount point {}", point.display()))?;
    mount(Some(source), point, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|cause| Error::BindMount { point: point.to_path_buf(), cause })?;
    Ok(())
}

/// Unmounts every mount at or below `dir`, lazily when one is busy, and checks that
/// none is left, so a following removal never reaches through a mount.
pub fn unmount_all(dir: &Path) -> Result<()> {
    let points = mounts_under(dir)?;
    if points.is_empty() {
        return Ok(());
    }
    for point in points {
        if umount2(&point, MntFlags::empty()).is_err() {
            umount2(&point, MntFlags::MNT_DETACH).map_err(|cause| Error::Unmount { point: point.clone(), cause })?;
        }
    }
    if let Some(left) = mounts_under(dir)?.first() {
        bail!(Error::StillMounted { point: left.clone() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
