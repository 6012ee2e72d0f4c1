//! Small file helpers for envy's own state and for host paths an Envfile names:
//! atomic replace, private files and dirs, and opening paths without following
//! symlinks a guest could have planted (openat2's RESOLVE_* flags).

use std::fs;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path};

use anyhow::{Context as _, Result};
use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Removes what is at `path`, a dir with all it holds, without following a symlink
/// there (the link goes, not what it points to); nothing there is fine.
pub fn remove_path(path: &Path) -> Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        _ => Ok(()),
    }
}

/// Writes `data` to `path` atomically: a temp file in the same folder, fsync, rename.
/// A reader sees the old or the new content, never a mix; a crash leaves the old one.
/// The rename replaces a symlink at `path` rather than writing through it; the file
/// is 0600, as everything in envy's state is private.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(data)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// Moves the file `from` to `to`: a rename, or where the two are on different
/// filesystems (downloads in the cache dir, the store in the data dir) a copy, synced,
/// then the original removed. `to` must not exist yet.
pub fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let mut src = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(from)?;
            let mut dest = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(to)?;
            std::io::copy(&mut src, &mut dest).and_then(|_| dest.sync_all()).inspect_err(|_| {
                let _ = fs::remove_file(to);
            })?;
            fs::remove_file(from)
        }
        done => done,
    }
}

/// Gives `path`, just made by envy, to the user who ran `sudo envy …` (SUDO_UID,
/// SUDO_GID): under sudo envy is the host's root, and a root-owned Envfile.lock, Envfile
/// or shared box in someone's checkout is one they cannot change or delete. Only when
/// the folder it was made in belongs to that user (a folder of root's or of someone
/// else's keeps its owner's rules), and never through a symlink: the folder is opened
/// and the name changed with AT_SYMLINK_NOFOLLOW. Without sudo, and in rootless mode
/// (where everything is the user's already), nothing happens.
pub fn give_to_invoking_user(path: &Path) -> Result<()> {
    let euid = nix::unistd::geteuid().as_raw();
    let var = |name| std::env::var(name).ok();
    let Some((uid, gid)) = invoking_user(euid, var("SUDO_UID"), var("SUDO_GID")) else { return Ok(()) };
    if crate::userns::is_rootless() {
        return Ok(());
    }
    let cannot = |e: Errno| anyhow::anyhow!("cannot give {} to uid {uid} (SUDO_UID), who ran envy through sudo: {e}; run `sudo chown {uid}:{gid} {}`", path.display(), path.display());
    let name = path.file_name().ok_or_else(|| cannot(Errno::EINVAL))?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = nix::fcntl::open(folder, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).map_err(cannot)?;
    // SAFETY: `open` just returned this fd and nothing else owns it.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&dir);
    if nix::sys::stat::fstat(raw).map_err(cannot)?.st_uid != uid {
        return Ok(());
    }
    nix::unistd::fchownat(
        Some(raw),
        name,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(cannot)
}

/// SUDO_UID and SUDO_GID when this process is root through sudo for a user other than
/// root; None otherwise (or when either does not read as an id).
fn invoking_user(euid: u32, sudo_uid: Option<String>, sudo_gid: Option<String>) -> Option<(u32, u32)> {
    let uid: u32 = sudo_uid?.parse().ok()?;
    let gid: u32 = sudo_gid?.parse().ok()?;
    (euid == 0 && uid != 0).then_some((uid, gid))
}

/// Creates `dir` and its missing parents, each given to the user who ran `sudo envy …`
/// as it is made (`give_to_invoking_user`), so an output folder envy makes in their
/// checkout is theirs too.
pub fn create_dir_all_given(dir: &Path) -> Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|p| !p.as_os_str().is_empty() && fs::symlink_metadata(p).is_err()).collect();
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    missing.iter().rev().try_for_each(|made| give_to_invoking_user(made))
}

/// Creates (or truncates) a file only its owner can read, never through a symlink.
pub fn create_private(path: &Path) -> Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// The descriptor a syscall returned (fsopen, pidfd_open, openat, ...), or its errno.
pub fn fd_from_syscall(ret: libc::c_long) -> std::io::Result<OwnedFd> {
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to this process alone.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as std::os::fd::RawFd) })
}

/// Reads a file of envy's state, refusing a symlink in its place. None when absent.
pub fn read_private(path: &Path) -> Result<Option<Vec<u8>>> {
    let opened = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path);
    match opened {
        Ok(mut file) => {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut data).with_context(|| format!("cannot read {}", path.display()))?;
            Ok(Some(data))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {} (envy never reads its state through a symlink)", path.display())),
    }
}

/// Creates `dir` (and its parents) and makes it 0700. `dir` itself must not be a symlink.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let meta = fs::symlink_metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if !meta.is_dir() {
        anyhow::bail!(
            "{} is not a folder (a symlink or a file stands there); envy never follows a symlink in its state: remove it and try again",
            dir.display()
        );
    }
    if meta.permissions().mode() & 0o777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).with_context(|| format!("cannot make {} private", dir.display()))?;
    }
    Ok(())
}

/// ext4's top-folder flag (`FS_TOPDIR_FL` in linux/fs.h; libc does not name it).
const FS_TOPDIR_FL: libc::c_long = 0x0002_0000;

/// Creates `dir` as `create_private_dir` does, as the parent of unrelated trees (one
/// per machine): ext4 is asked to place each of its subfolders in a block group of its
/// own (the Orlov allocator's top-folder flag, `chattr +T`), so each tree's files share
/// a group with nothing else. Where every machine shares its parent's group, each new
/// inode is found by scanning that group past every inode freed in the last minutes
/// (ext4 does this when it has no journal): 100 machines made after 100 destroyed spent
/// a third of `envy up`'s CPU there. Other filesystems have no such flag; it is a hint,
/// so a refusal changes nothing.
pub fn create_private_dir_of_trees(dir: &Path) -> Result<()> {
    create_private_dir(dir)?;
    let Ok(folder) = fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(dir) else {
        return Ok(());
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&folder);
    let mut flags: libc::c_long = 0;
    // SAFETY: both ioctls read or write one c_long through a pointer to a live local.
    if unsafe { libc::ioctl(fd, libc::FS_IOC_GETFLAGS, &mut flags) } == 0 && flags & FS_TOPDIR_FL == 0 {
        flags |= FS_TOPDIR_FL;
        unsafe { libc::ioctl(fd, libc::FS_IOC_SETFLAGS, &flags) };
    }
    Ok(())
}

/// How a path below a root may be resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Symlinks are followed as long as every step stays below the root (an absolute
    /// link, or `..` past the root, fails with EXDEV).
    BelowRoot,
    /// No symlink anywhere below the root.
    Never,
}

/// Opens `path`, which must lie below `root`, resolving it only below `root`: the
/// kernel refuses any step (a symlink, `..`) that would leave it. The root itself is
/// opened as named. The fd is O_PATH (good for mounting, fstat and reopening through
/// /proc/self/fd) and close-on-exec.
pub fn open_below(root: &Path, path: &Path, follow: Follow) -> Result<OwnedFd, Errno> {
    let rel = path.strip_prefix(root).map_err(|_| Errno::EXDEV)?;
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(Errno::EXDEV);
    }
    let root_fd = nix::fcntl::open(root, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    // SAFETY: `open` just returned this fd and nothing else owns it.
    let root_fd = unsafe { OwnedFd::from_raw_fd(root_fd) };
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let resolve = match follow {
        Follow::BelowRoot => ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        Follow::Never => ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS,
    };
    let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_CLOEXEC).resolve(resolve);
    let fd = openat2(std::os::fd::AsRawFd::as_raw_fd(&root_fd), rel, how)?;
    // SAFETY: `openat2` just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `path` inside the tree whose root is the open dir `root` (a container's
/// `/proc/PID/root`), as a process chrooted there would: absolute links and `..` stay
/// inside it, and /proc's magic links (a way out) are refused. O_PATH, close-on-exec.
pub fn open_in_root(root: &OwnedFd, path: &Path) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(std::os::fd::AsRawFd::as_raw_fd(root), path, how)?;
    // SAFETY: `openat2` just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `/proc/self/fd/N`: the opened file itself, for mount(2), QEMU or a reopen to use.
pub fn fd_path(fd: &OwnedFd) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd)))
}

/// Reads a whole file through an fd from `open_below`, up to `limit` bytes.
/// Only a regular file is opened: a FIFO or device planted in its place would block
/// or read forever.
pub fn read_fd(fd: &OwnedFd, path: &Path, limit: u64) -> Result<Vec<u8>> {
    let meta = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(fd)).with_context(|| format!("cannot read {}", path.display()))?;
    match meta.st_mode & libc::S_IFMT {
        libc::S_IFREG => {}
        libc::S_IFDIR => anyhow::bail!("{} is a directory, not a file", path.display()),
        _ => anyhow::bail!("{} is not a regular file (a FIFO, socket or device); envy reads only regular files", path.display()),
    }
    if meta.st_size as u64 > limit {
        anyhow::bail!("{} is {} bytes; the limit is {limit}", path.display(), meta.st_size);
    }
    let file = fs::File::open(fd_path(fd)).with_context(|| format!("cannot read {}", path.display()))?;
    let mut data = Vec::with_capacity(meta.st_size as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(file, limit), &mut data).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(data)
}

/// The last `n` lines of a log file a machine writes (a console, a container's
/// output): only its last 64 KiB are read, never through a symlink, so a guest that
/// floods its log cannot make envy read gigabytes. None when there is no file.
pub fn tail_lines(path: &Path, n: usize) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(64 << 10))).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    Some(crate::model::last_lines(&String::from_utf8_lossy(&bytes), n))
}

/// A JSON record envy keeps in its own state (a machine's, a stored box's, a VM's
/// runtime facts), with a format `version`. All of them are read and written one way
/// (`read_record`, `write_record`): no symlink followed, 0600, replaced atomically,
/// and refused (never guessed at) when damaged or of another format.
pub trait Record: serde::Serialize + serde::de::DeserializeOwned {
    /// The format this envy writes, and the only one it reads.
    const VERSION: u32;
    /// What the user can do about a record this envy cannot read.
    const REMEDY: &'static str;
}

/// A record that is damaged or of another envy's format.
#[derive(Debug, thiserror::Error)]
#[error("{} {problem}; {remedy}", .path.display())]
pub struct BadRecord {
    pub path: std::path::PathBuf,
    pub problem: String,
    pub remedy: &'static str,
}

/// The record at `path`, or None when there is none.
pub fn read_record<T: Record>(path: &Path) -> Result<Option<T>> {
    let Some(bytes) = read_private(path)? else { return Ok(None) };
    let bad = |problem: String| BadRecord { path: path.to_path_buf(), problem, remedy: T::REMEDY };
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(format!("is damaged ({e})")))?;
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(T::VERSION) => {}
        Some(v) => {
            let who = if v > u64::from(T::VERSION) { "a newer" } else { "an older" };
            return Err(bad(format!("was written by {who} envy (format {v}; this envy reads {})", T::VERSION)).into());
        }
        None => return Err(bad("is damaged (it has no format version)".into()).into()),
    }
    Ok(Some(serde_json::from_value(value).map_err(|e| bad(format!("is damaged ({e})")))?))
}

/// Writes `record` to `path` atomically, 0600.
pub fn write_record<T: Record>(path: &Path, record: &T) -> Result<()> {
    write_atomic(path, &serde_json::to_vec_pretty(record)?)
}

/// An exclusive lock on a file: held while the value lives, dropped by the kernel if
/// the process dies. The holder writes its pid into the file, so a process that
/// finds it taken can say whom it waits for. The project lock, the store's locks and
/// the project list all take this one.
#[derive(Debug)]
pub struct FileLock {
    _file: nix::fcntl::Flock<fs::File>,
}

impl FileLock {
    /// Takes the lock at `path` (made 0600, never through a symlink) if it is free;
    /// otherwise returns the pid written by its holder ("unknown" if none is).
    pub fn try_acquire(path: &Path) -> Result<Result<FileLock, String>> {
        use nix::fcntl::{Flock, FlockArg};
        match Flock::lock(Self::open(path)?, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Ok(Self::mark(lock, path)?)),
            Err((mut file, _)) => {
                let mut holder = String::new();
                let _ = std::io::Read::read_to_string(&mut file, &mut holder);
                Ok(Err(if holder.trim().is_empty() { "unknown".into() } else { holder.trim().to_string() }))
            }
        }
    }

    /// Takes the lock at `path`, waiting for it; `waiting` is told the holder's pid
    /// once, before the wait, so the user knows why nothing happens.
    pub fn acquire(path: &Path, waiting: impl FnOnce(&str)) -> Result<FileLock> {
        use nix::fcntl::{Flock, FlockArg};
        match Self::try_acquire(path)? {
            Ok(lock) => Ok(lock),
            Err(holder) => {
                waiting(&holder);
                let lock = Flock::lock(Self::open(path)?, FlockArg::LockExclusive)
                    .map_err(|(_, e)| e)
                    .with_context(|| format!("cannot lock {}", path.display()))?;
                Self::mark(lock, path)
            }
        }
    }

    fn open(path: &Path) -> Result<fs::File> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open lock file {}", path.display()))
    }

    /// Writes the holder's pid over the last one, padded to one length, so the file
    /// is not truncated first: shortening a file frees its block, a metadata write
    /// each command would otherwise pay.
    fn mark(lock: nix::fcntl::Flock<fs::File>, path: &Path) -> Result<FileLock> {
        let pid = format!("{:<10}\n", std::process::id());
        let written = lock.write_all_at(pid.as_bytes(), 0).and_then(|()| {
            // Only a file an older envy wrote can be longer.
            if lock.metadata()?.len() > pid.len() as u64 {
                lock.set_len(pid.len() as u64)?;
            }
            Ok(())
        });
        written.with_context(|| format!("cannot write {}", path.display()))?;
        Ok(FileLock { _file: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_folder_of_trees_is_private_and_on_ext4_spreads_its_subfolders() {
        let dir = tempfile::tempdir().unwrap();
        let machines = dir.path().join("project/machines");
        create_private_dir_of_trees(&machines).unwrap();
        create_private_dir_of_trees(&machines).unwrap();
        assert_eq!(fs::metadata(&machines).unwrap().permissions().mode() & 0o777, 0o700);
        let on_ext4 = nix::sys::statfs::statfs(&machines).unwrap().filesystem_type() == nix::sys::statfs::EXT4_SUPER_MAGIC;
        if on_ext4 {
            let folder = fs::File::open(&machines).unwrap();
            let mut flags: libc::c_long = 0;
            assert_eq!(unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&folder), libc::FS_IOC_GETFLAGS, &mut flags) }, 0);
            assert_ne!(flags & FS_TOPDIR_FL, 0, "the top-folder flag (chattr +T) is set: {flags:#x}");
        }
        symlink(&machines, dir.path().join("link")).unwrap();
        assert!(create_private_dir_of_trees(&dir.path().join("link")).is_err(), "a symlink is refused");
    }

    #[test]
    fn open_below_refuses_links_out_and_follows_links_within() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("project");
        fs::create_dir_all(root.join("data")).unwrap();
        fs::write(root.join("data/f"), "x").unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../..", root.join("data/up")).unwrap();
        symlink("data", root.join("within")).unwrap();

        assert!(open_below(&root, &root, Follow::Never).is_ok());
        assert!(open_below(&root, &root.join("data/f"), Follow::Never).is_ok());
        assert_eq!(open_below(&root, &root.join("abs"), Follow::BelowRoot).unwrap_err(), Errno::EXDEV);
        assert_eq!(open_below(&root, &root.join("data/up"), Follow::BelowRoot).unwrap_err(), Errno::EXDEV);
        assert_eq!(open_below(&root, &root.join("../etc"), Follow::BelowRoot).unwrap_err(), Errno::EXDEV);
        assert!(open_below(&root, &root.join("within/f"), Follow::BelowRoot).is_ok());
        assert_eq!(open_below(&root, &root.join("within/f"), Follow::Never).unwrap_err(), Errno::ELOOP);
        assert_eq!(open_below(&root, &root.join("nothing"), Follow::Never).unwrap_err(), Errno::ENOENT);
    }

    #[test]
    fn private_files_never_go_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, "keep").unwrap();
        let link = dir.path().join("link");
        symlink(&target, &link).unwrap();
        assert!(create_private(&link).is_err());
        assert!(read_private(&link).is_err());
        assert_eq!(read_private(&dir.path().join("absent")).unwrap(), None);
        write_atomic(&link, b"new").unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep", "rename replaced the link, not its target");
        assert_eq!(fs::symlink_metadata(&link).unwrap().permissions().mode() & 0o777, 0o600);

        let dir_link = dir.path().join("dirlink");
        symlink(dir.path(), &dir_link).unwrap();
        assert!(create_private_dir(&dir_link).is_err());
    }

    #[test]
    fn only_root_through_sudo_for_another_user_gives_files_away() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(invoking_user(0, some("1000"), some("1001")), Some((1000, 1001)));
        assert_eq!(invoking_user(1000, some("1000"), some("1000")), None, "a normal user's files are theirs already");
        assert_eq!(invoking_user(0, some("0"), some("0")), None, "sudo from root changes nothing");
        assert_eq!(invoking_user(0, None, None), None, "root without sudo");
        assert_eq!(invoking_user(0, some("1000"), None), None);
        assert_eq!(invoking_user(0, some("x"), some("1000")), None);
    }

    #[test]
    fn a_file_moves_across_filesystems() {
        // /dev/shm is a tmpfs on Linux and /var/tmp is on a disk: different
        // filesystems (asserted), so the copy is what runs.
        let shm = tempfile::tempdir_in("/dev/shm").expect("/dev/shm, a tmpfs, is there on Linux");
        let disk = tempfile::tempdir_in("/var/tmp").unwrap();
        use std::os::unix::fs::MetadataExt as _;
        assert_ne!(fs::metadata(shm.path()).unwrap().dev(), fs::metadata(disk.path()).unwrap().dev());
        let from = shm.path().join("part");
        fs::write(&from, b"verified bytes").unwrap();
        let to = disk.path().join("stored");
        move_file(&from, &to).unwrap();
        assert_eq!(fs::read(&to).unwrap(), b"verified bytes");
        assert!(!from.exists(), "the original is gone once the copy is synced");
        fs::write(&from, b"again").unwrap();
        assert!(move_file(&from, &to).is_err(), "an existing destination is never overwritten across filesystems");
        assert!(from.exists(), "and the original stays");
    }

    #[test]
    fn a_file_lock_names_its_holder_and_is_free_again_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks/x.lock");
        let held = FileLock::try_acquire(&path).unwrap().expect("free at first");
        // flock belongs to the open file, so a second open in this process contends.
        assert_eq!(FileLock::try_acquire(&path).unwrap().unwrap_err(), std::process::id().to_string());
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        drop(held);
        let mut told = None;
        let _again = FileLock::acquire(&path, |holder| told = Some(holder.to_string())).unwrap();
        assert_eq!(told, None, "a free lock is taken without a wait");
        let link = dir.path().join("link.lock");
        symlink(&path, &link).unwrap();
        assert!(FileLock::try_acquire(&link).is_err(), "a lock file is never opened through a symlink");
    }
}
