//! `{ file = "src", to = "/dst" }` provision steps and `sync_mode = "copy"` folders: a
//! project file or folder packed on the host into a tar, read only through fds the kernel resolved below the project
//! (no symlink followed), and unpacked by `tar -x` inside the machine through the
//! provider's exec. envy never writes into a guest's filesystem from the host, so a
//! symlink the guest planted at the destination can only redirect the copy within the
//! guest.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, FileStat, Mode};

use crate::envfile::{SyncFolder, SyncMode};
use crate::model::shell_quote;
use crate::plan::MachinePlan;
use crate::provider::ExecRequest;
use crate::ui::Ui;

/// What the Envfile calls these paths in its errors.
const KEY: &str = "provision file";
const SYNC_KEY: &str = "sync folder";

/// A packed copy, ready to stream into the machine.
#[derive(Debug)]
pub struct Packed {
    /// The tar (in the machine's private state dir; removed when dropped).
    pub tar: tempfile::NamedTempFile,
    /// The shell line that unpacks it, from stdin, inside the machine.
    pub command: String,
}

/// A copied sync folder that did not unpack in the machine.
#[derive(Debug, thiserror::Error)]
#[error(
    "copying sync folder {host} into machine {machine} at {guest} failed: `tar -x` there exited with code {code}; \
     check that the machine has tar and room on its disk, then run `envy provision {machine}`"
)]
pub struct CopyFailed {
    pub machine: String,
    pub host: String,
    pub guest: String,
    pub code: i32,
}

/// Pushes the machine's copied sync folders (`sync_mode = "copy"`) into it, one way:
/// each is opened as a mounted one would be (below the project unless `allow_outside`),
/// packed like a `file` step and unpacked over its guest path through the provider's
/// exec. What the machine changed there stays unless the host has a newer version;
/// files removed on the host stay in the machine.
pub fn push_sync(plan: &MachinePlan, ui: &Ui) -> Result<()> {
    let copied: Vec<&SyncFolder> = plan.spec.sync.iter().filter(|f| f.mode == SyncMode::Copy).collect();
    if copied.is_empty() {
        return Ok(());
    }
    let provider = crate::provider::for_kind(plan.spec.provider)?;
    for folder in copied {
        let opened = plan.open_sync_folder(folder)?;
        ui.step(format!("{}: copying {} to {}", plan.name(), folder.host.display(), folder.guest));
        let packed = pack_opened(plan, &opened.fd, &folder.host, &folder.guest, None, SYNC_KEY)?;
        let request = ExecRequest {
            command: vec!["/bin/sh".into(), "-c".into(), packed.command],
            // Not the default (the first sync folder), which the first push makes.
            workdir: Some("/".into()),
            as_root: true,
            stdin: Some(packed.tar.path().to_path_buf()),
            ..ExecRequest::default()
        };
        let code = provider.exec(plan, &request)?;
        if code != 0 {
            let (host, guest) = (folder.host.display().to_string(), folder.guest.clone());
            return Err(CopyFailed { machine: plan.name().to_string(), host, guest, code }.into());
        }
    }
    Ok(())
}

/// Packs `from` (a file or folder in the project) to land at `to` in the machine,
/// owned by root:root; `mode` sets a file's permission bits (a folder's files keep
/// their own).
pub fn pack(plan: &MachinePlan, from: &Path, to: &str, mode: Option<u32>) -> Result<Packed> {
    let fd = plan.open_project_path(from, KEY)?;
    pack_opened(plan, &fd, from, to, mode, KEY)
}

/// Packs what `fd` (opened by the caller, `from` on the host) holds to land at `to`;
/// `key` names the Envfile setting in errors.
fn pack_opened(plan: &MachinePlan, fd: &OwnedFd, from: &Path, to: &str, mode: Option<u32>, key: &'static str) -> Result<Packed> {
    let stat = fstat(fd.as_raw_fd()).with_context(|| format!("cannot read {}", from.display()))?;
    let tar = tempfile::Builder::new()
        .prefix(".copy-")
        .tempfile_in(&plan.dir)
        .with_context(|| format!("cannot write a tar in {}", plan.dir.display()))?;
    let mut builder = tar::Builder::new(tar.as_file().try_clone()?);
    let into = match stat.st_mode & libc::S_IFMT {
        libc::S_IFDIR => {
            if mode.is_some() {
                return Err(plan.project_path_error(from, key, "is a folder; `mode` applies to a file (a folder's files keep their own modes)".into()).into());
            }
            add_dir(plan, &mut builder, fd, Path::new(""), from, key)?;
            to.to_string()
        }
        libc::S_IFREG => {
            let (parent, name) = to.rsplit_once('/').expect("the Envfile checked `to` is absolute");
            add_file(&mut builder, fd, &stat, Path::new(name), mode, from)?;
            if parent.is_empty() { "/".to_string() } else { parent.to_string() }
        }
        _ => return Err(plan.project_path_error(from, key, "is neither a regular file nor a folder".into()).into()),
    };
    builder.into_inner()?.sync_all()?;
    // A folder's contents land in `to`; a file lands as `to` (replacing what is there).
    let command = format!("mkdir -p {dir} && exec tar -x -f - -C {dir}", dir = shell_quote(&into));
    Ok(Packed { tar, command })
}

/// Adds a folder's entries (not the folder itself) below `name`, recursively. Every
/// entry is opened relative to its folder's fd without following a symlink, so a
/// folder swapped for a symlink while envy walks never leads out of the project.
fn add_dir(plan: &MachinePlan, builder: &mut tar::Builder<File>, dir: &OwnedFd, name: &Path, shown: &Path, key: &'static str) -> Result<()> {
    let listing = std::fs::read_dir(crate::fsutil::fd_path(dir)).with_context(|| format!("cannot list {}", shown.display()))?;
    let mut names: Vec<_> = listing.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", shown.display()))?;
    // A stable order: the same folder gives the same tar.
    names.sort();
    for entry in names {
        let path = name.join(&entry);
        let shown = shown.join(&entry);
        let child = openat(Some(dir.as_raw_fd()), entry.as_os_str(), OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
            .with_context(|| format!("cannot open {}", shown.display()))?;
        // SAFETY: `openat` just returned this fd and nothing else owns it.
        let child = unsafe { OwnedFd::from_raw_fd(child) };
        let stat = fstat(child.as_raw_fd()).with_context(|| format!("cannot read {}", shown.display()))?;
        match stat.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let mut header = header(&stat, tar::EntryType::Directory, stat.st_mode & 0o7777);
                builder.append_data(&mut header, &path, std::io::empty())?;
                add_dir(plan, builder, &child, &path, &shown, key)?;
            }
            libc::S_IFREG => add_file(builder, &child, &stat, &path, None, &shown)?,
            libc::S_IFLNK => {
                // Copied as a link: it is resolved in the machine, never on the host.
                let target = nix::fcntl::readlinkat(Some(child.as_raw_fd()), "")
                    .with_context(|| format!("cannot read the link {}", shown.display()))?;
                let mut header = header(&stat, tar::EntryType::Symlink, 0o777);
                builder.append_link(&mut header, &path, PathBuf::from(target))?;
            }
            _ => {
                let problem = format!("is a FIFO, socket or device; a {key} copies only files, folders and symlinks");
                return Err(plan.project_path_error(&shown, key, problem).into());
            }
        }
    }
    Ok(())
}

/// Adds one regular file, read through its fd (the file fstat saw, not a path).
fn add_file(builder: &mut tar::Builder<File>, fd: &OwnedFd, stat: &FileStat, name: &Path, mode: Option<u32>, shown: &Path) -> Result<()> {
    let file = File::open(crate::fsutil::fd_path(fd)).with_context(|| format!("cannot read {}", shown.display()))?;
    let mut header = header(stat, tar::EntryType::Regular, mode.unwrap_or(stat.st_mode & 0o7777));
    header.set_size(stat.st_size as u64);
    // A file that shrinks while it is read would leave a tar shorter than its header
    // says; `tar -x` in the machine then fails the step, which is the right outcome.
    builder.append_data(&mut header, name, std::io::Read::take(file, stat.st_size as u64))
        .with_context(|| format!("cannot pack {}", shown.display()))?;
    Ok(())
}

/// A header owned by root:root with the entry's mtime.
fn header(stat: &FileStat, kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(stat.st_mtime.max(0) as u64);
    header.set_size(0);
    header
}

