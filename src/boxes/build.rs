//! `envy box build`: a box from a root filesystem (a directory or a tarball, e.g. from
//! mmdebstrap). Container boxes carry the rootfs as a tarball; qemu boxes an ext4 disk
//! made without loop devices (`mkfs.ext4 -d`, then `qemu-img convert`), plus the
//! rootfs's own kernel and initrd for direct boot when it has them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::agent;
use super::archive::{self, Artifact};
use super::pack::{pack_box, Payload};
use super::manifest::{BootMethod, Manifest, QemuPayload, DEFAULT_CMDLINE};
use super::store::file_size;
use crate::process::Process;
use super::Error;
use crate::model::BoxFormat;
use crate::ui::Ui;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// A root filesystem directory, or a tarball of one.
    pub rootfs: PathBuf,
    pub name: String,
    pub version: String,
    pub kind: BoxFormat,
    /// VM disk size in bytes (default: the rootfs plus room).
    pub disk_size: Option<u64>,
    /// Appended to the default kernel command line (direct boot).
    pub cmdline: Option<String>,
    pub output: PathBuf,
}

/// Builds the box at `req.output` (written whole or not at all) and returns its sha256.
pub fn build(req: &BuildRequest, ui: &Ui) -> anyhow::Result<String> {
    let out_dir = req.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    crate::fsutil::create_dir_all_given(out_dir)?;
    let work = tempfile::Builder::new()
        .prefix(".envy-build-")
        .tempdir_in(out_dir)
        .map_err(Error::io("cannot create a temp dir in", out_dir))?;
    let (manifest, files) = match req.kind {
        BoxFormat::Container => container_payload(req)?,
        BoxFormat::Qemu => qemu_payload(req, work.path(), ui)?,
    };
    let partial = work.path().join("out.box");
    ui.step(format!("packing {}", req.output.display()));
    let digest = pack_box(&partial, manifest, &files, &req.output.display().to_string())?;
    std::fs::rename(&partial, &req.output).map_err(Error::io("cannot write", &req.output))?;
    crate::fsutil::give_to_invoking_user(&req.output)?;
    Ok(digest)
}

fn container_payload(req: &BuildRequest) -> anyhow::Result<(Manifest, BTreeMap<String, Payload>)> {
    let (name, payload) = if req.rootfs.is_dir() {
        // Packed straight into the box: no tarball of it on disk.
        ("rootfs.tar".to_string(), Payload::Tree(req.rootfs.clone()))
    } else {
        let label = req.rootfs.display().to_string();
        match archive::sniff(&req.rootfs, &label)? {
            Artifact::RootfsTarball(c) => (format!("rootfs.{}", c.tar_extension()), Payload::File(req.rootfs.clone())),
            _ => {
                return Err(Error::NotABox {
                    archive: label,
                    reason: "--rootfs must be a directory or a root filesystem tarball".into(),
                }
                .into())
            }
        }
    };
    // pack_box fills in the digest.
    let manifest = Manifest::for_rootfs(&req.name, &req.version, &name, "");
    Ok((manifest, BTreeMap::from([(name, payload)])))
}

fn qemu_payload(
    req: &BuildRequest,
    work: &Path,
    ui: &Ui,
) -> anyhow::Result<(Manifest, BTreeMap<String, Payload>)> {
    let root = if req.rootfs.is_dir() {
        req.rootfs.clone()
    } else {
        let label = req.rootfs.display().to_string();
        let compression = match archive::sniff(&req.rootfs, &label)? {
            Artifact::RootfsTarball(c) => c,
            _ => {
                return Err(Error::NotABox {
                    archive: label,
                    reason: "--rootfs must be a directory or a root filesystem tarball".into(),
                }
                .into())
            }
        };
        let dir = work.join("rootfs");
        std::fs::create_dir(&dir).map_err(Error::io("cannot create", &dir))?;
        ui.step(format!("unpacking {label}"));
        let mut progress = ui.progress(&format!("unpacking {label}"), file_size(&req.rootfs));
        archive::unpack_rootfs(&req.rootfs, compression, &dir, &label, &mut progress)?;
        dir
    };
    let starter = check_guest_contract(&root, req)?;
    let size = match req.disk_size {
        Some(s) => s,
        None => (tree_size(&root)? * 13 / 10 + (64 << 20)).div_ceil(1 << 20) << 20,
    };
    let raw = work.join("disk.raw");
    std::fs::File::create(&raw).and_then(|f| f.set_len(size)).map_err(Error::io("cannot create", &raw))?;
    ui.step(format!("making a {} MiB ext4 disk from {}", size >> 20, root.display()));
    Process::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "envy-root", "-d"])
        .arg(&root)
        .arg(&raw)
        .doing("making the ext4 disk image")
        .run()?;
    if let Some(starter) = &starter {
        ui.step(format!("installing envy's first-boot agent ({}), as {} has no cloud-init", agent::GUEST_PATH, req.rootfs.display()));
        agent::install(&raw, &root, starter, work)?;
    }
    let disk = work.join("disk.qcow2");
    Process::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&disk)
        .doing("converting the disk to qcow2")
        .run()?;
    std::fs::remove_file(&raw).map_err(Error::io("cannot remove", &raw))?;

    let mut files = BTreeMap::from([("disk.qcow2".to_string(), disk)]);
    let (boot, kernel, initrd, cmdline) = match find_kernel(&root)? {
        Some((vmlinuz, initrd)) => {
            files.insert("vmlinuz".into(), vmlinuz);
            let initrd_name = initrd.map(|p| {
                files.insert("initrd.img".into(), p);
                "initrd.img".to_string()
            });
            let cmdline = match &req.cmdline {
                Some(extra) => format!("{DEFAULT_CMDLINE} {extra}"),
                None => DEFAULT_CMDLINE.to_string(),
            };
            (BootMethod::Kernel, Some("vmlinuz".to_string()), initrd_name, Some(cmdline))
        }
        None => {
            ui.warn(format!(
                "{} has no /boot/vmlinuz*; the box boots through firmware, so its disk needs a bootloader",
                req.rootfs.display()
            ));
            (BootMethod::Firmware, None, None, None)
        }
    };
    let files: BTreeMap<String, Payload> = files.into_iter().map(|(name, path)| (name, Payload::File(path))).collect();
    let manifest = Manifest {
        format: super::manifest::FORMAT,
        name: req.name.clone(),
        version: req.version.clone(),
        arch: std::env::consts::ARCH.to_string(),
        providers: vec![BoxFormat::Qemu],
        container: None,
        qemu: Some(QemuPayload { disk: "disk.qcow2".into(), boot, kernel, initrd, cmdline, first_login: Default::default() }),
        // pack_box writes the digests last, in box.sums.
        files: BTreeMap::new(),
        image: None,
        envfile: None,
    };
    Ok((manifest, files))
}


/// SSH servers a VM box may bring (envy logs in over SSH for exec and provisioning).
const SSH_SERVERS: [&str; 4] = ["/usr/sbin/sshd", "/usr/sbin/dropbear", "/sbin/dropbear", "/usr/bin/dropbear"];

/// What a VM needs from its root filesystem to reach envy's SSH login, checked before
/// a disk is made: an init (the kernel command line's `init=`, else /sbin/init), as an
/// executable reached through links inside the root, an SSH server, and a reader of
/// envy's seed (cloud-init, or else envy's agent, which its init must be able to
/// start: the returned starter). A rootfs without them builds fine and then hangs in an
/// initramfs shell or a boot that never answers (docs/box-format.md, "the guest contract").
fn check_guest_contract(root: &Path, req: &BuildRequest) -> anyhow::Result<Option<agent::Starter>> {
    let cmdline = req.cmdline.as_deref().unwrap_or_default();
    let init = cmdline.split_whitespace().rev().find_map(|a| a.strip_prefix("init=")).unwrap_or("/sbin/init");
    let executable = |path: &str| {
        use std::os::unix::fs::PermissionsExt as _;
        resolve_in_root(root, Path::new(path)).and_then(|p| p.metadata().ok()).is_some_and(|m| m.permissions().mode() & 0o111 != 0)
    };
    let refuse = |missing: String, advice: &str| Error::CannotBoot { rootfs: req.rootfs.display().to_string(), missing, advice: advice.to_string() };
    let Some(init_file) = resolve_in_root(root, Path::new(init)).filter(|_| executable(init)) else {
        return Err(refuse(format!("init at {init}"), "install one (Debian: systemd-sysv), or name another with --cmdline init=PATH").into());
    };
    if !SSH_SERVERS.iter().any(|p| executable(p)) {
        return Err(refuse(format!("SSH server ({})", SSH_SERVERS.join(", ")), "install one (Debian: openssh-server, or dropbear-bin)").into());
    }
    let exists = |path: &str| resolve_in_root(root, Path::new(path)).is_some();
    Ok(agent::needed(root, (init, &init_file), &req.rootfs.display().to_string(), exists)?)
}

/// The rootfs's kernel and initrd: the newest `boot/vmlinuz-*` (or what `/vmlinuz`
/// points to) and the initrd of the same version. Links are resolved inside `root`.
fn find_kernel(root: &Path) -> anyhow::Result<Option<(PathBuf, Option<PathBuf>)>> {
    let boot = root.join("boot");
    let mut kernels: Vec<String> = match std::fs::read_dir(&boot) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("vmlinuz"))
            .collect(),
        Err(_) => Vec::new(),
    };
    kernels.sort();
    let kernel = match kernels.last() {
        Some(k) => resolve_in_root(root, &Path::new("/boot").join(k)),
        None => resolve_in_root(root, Path::new("/vmlinuz")),
    };
    let Some(kernel) = kernel else { return Ok(None) };
    let suffix = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz"))
        .unwrap_or("")
        .to_string();
    let initrd = resolve_in_root(root, &Path::new("/boot").join(format!("initrd.img{suffix}")))
        .or_else(|| resolve_in_root(root, Path::new("/initrd.img")));
    Ok(Some((kernel, initrd)))
}

/// Follows symlinks as if `root` were `/` (absolute targets stay inside it); returns
/// the host path of the regular file reached, if any.
fn resolve_in_root(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..16 {
        let host = root.join(current.strip_prefix("/").unwrap_or(&current));
        let meta = std::fs::symlink_metadata(&host).ok()?;
        if meta.is_file() {
            return Some(host);
        }
        if !meta.file_type().is_symlink() {
            return None;
        }
        let target = std::fs::read_link(&host).ok()?;
        current = if target.is_absolute() { target } else { current.parent()?.join(target) };
        // Lexically drop `..` so a link cannot climb above the root.
        let mut clean = PathBuf::from("/");
        for c in current.components() {
            match c {
                std::path::Component::Normal(p) => clean.push(p),
                std::path::Component::ParentDir => {
                    clean.pop();
                }
                _ => {}
            }
        }
        current = clean;
    }
    None
}

/// Bytes the tree would take on a filesystem (file sizes plus a block per entry).
fn tree_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(Error::io("cannot read", dir))? {
        let entry = entry.map_err(Error::io("cannot read", dir))?;
        let meta = std::fs::symlink_metadata(entry.path()).map_err(Error::io("cannot read", entry.path()))?;
        total += 4096 + if meta.is_file() { meta.len() } else { 0 };
        if meta.is_dir() {
            total += tree_size(&entry.path())?;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_links_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("boot")).unwrap();
        std::fs::write(root.path().join("boot/vmlinuz-6.1.0-9"), b"k").unwrap();
        std::fs::write(root.path().join("boot/initrd.img-6.1.0-9"), b"i").unwrap();
        // An absolute link (as Debian makes it) resolves against the rootfs, not the host.
        std::os::unix::fs::symlink("/boot/vmlinuz-6.1.0-9", root.path().join("vmlinuz")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/passwd", root.path().join("escape")).unwrap();
        assert_eq!(
            resolve_in_root(root.path(), Path::new("/vmlinuz")),
            Some(root.path().join("boot/vmlinuz-6.1.0-9"))
        );
        assert_eq!(resolve_in_root(root.path(), Path::new("/escape")), None);
        let (k, i) = find_kernel(root.path()).unwrap().unwrap();
        assert_eq!(
            (k, i),
            (root.path().join("boot/vmlinuz-6.1.0-9"), Some(root.path().join("boot/initrd.img-6.1.0-9")))
        );
    }
}
