//! What an image's config asks of the machines made from it: `Env` as their base
//! environment, `WorkingDir` as the default directory of exec, and `User` (a uid, a
//! name, with an optional group) resolved through the image's own /etc/passwd and
//! /etc/group. Entrypoint and Cmd are not run: a box is a machine, not a service.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::boxes::store::{StoredBox, ROOTFS_DIR};
use crate::boxes::Error;

use super::image::ImageConfig;

/// The run settings of an image box.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageRun {
    /// `KEY=VALUE` pairs in the image's order.
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub user: Option<ImageUser>,
}

/// A user resolved to numbers, with the home directory /etc/passwd gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUser {
    pub uid: u32,
    pub gid: u32,
    pub home: Option<String>,
}

/// Largest /etc/passwd or /etc/group read from an image.
const MAX_DB_BYTES: u64 = 4 << 20;

impl ImageRun {
    /// The run settings of a stored box; None for a box that is not an image (a
    /// rootfs tarball or a `.box`).
    pub fn of(stored: &StoredBox) -> Result<Option<ImageRun>, Error> {
        let Some(image) = &stored.manifest.image else { return Ok(None) };
        let box_dir = &stored.dir;
        let config_path = box_dir.join(&image.config);
        let bytes = std::fs::read(&config_path).map_err(Error::io("cannot read", &config_path))?;
        let config: ImageConfig = serde_json::from_slice(&bytes).map_err(|e| Error::BadImage {
            reference: config_path.display().to_string(),
            reason: format!("the image config does not parse ({e})"),
        })?;
        let run = config.config;
        let env = run
            .env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.clone(), String::new()),
            })
            .collect();
        let user = match run.user.as_str() {
            "" => None,
            spec => Some(resolve_user(&box_dir.join(ROOTFS_DIR), spec, &box_dir.display().to_string())?),
        };
        let working_dir = Some(run.working_dir).filter(|d| d.starts_with('/'));
        Ok(Some(ImageRun { env, working_dir, user }))
    }
}

/// `USER[:GROUP]`, each a number or a name looked up in the image's own files.
fn resolve_user(rootfs: &Path, spec: &str, label: &str) -> Result<ImageUser, Error> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let unknown = |what: &str, name: &str, file: &str| Error::BadImage {
        reference: label.to_string(),
        reason: format!("its config's User `{spec}` names {what} `{name}`, which the image's {file} does not list"),
    };
    let passwd = read_db(rootfs, "passwd")?;
    let entry = passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| {
        f.len() >= 7 && (f[0] == user || (user.parse::<u32>().is_ok() && f[2] == user))
    });
    let (uid, primary_gid, home) = match (user.parse::<u32>(), &entry) {
        (Ok(uid), Some(f)) => (uid, f[3].parse().unwrap_or(uid), Some(f[5].to_string())),
        (Ok(uid), None) => (uid, uid, None),
        (Err(_), Some(f)) => (
            f[2].parse().map_err(|_| unknown("user", user, "/etc/passwd"))?,
            f[3].parse().map_err(|_| unknown("user", user, "/etc/passwd"))?,
            Some(f[5].to_string()),
        ),
        (Err(_), None) => return Err(unknown("user", user, "/etc/passwd")),
    };
    let gid = match group {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => read_db(rootfs, "group")?
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| unknown("group", g, "/etc/group"))?,
        },
    };
    Ok(ImageUser { uid, gid, home })
}

/// `etc/NAME` of an unpacked image, never through a symlink (an image's symlink
/// would resolve on the host here); missing reads as empty.
fn read_db(rootfs: &Path, name: &str) -> Result<String, Error> {
    let etc = rootfs.join("etc");
    match std::fs::symlink_metadata(&etc) {
        Ok(m) if m.is_dir() => {}
        _ => return Ok(String::new()),
    }
    let path = etc.join(name);
    let file = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(String::new())
        }
        Err(e) => return Err(Error::io("cannot read", &path)(e)),
    };
    let mut text = String::new();
    file.take(MAX_DB_BYTES).read_to_string(&mut text).map_err(Error::io("cannot read", &path))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_by_number_or_by_name_through_the_images_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\ndev:x:1000:1001:dev:/home/dev:/bin/sh\n").unwrap();
        std::fs::write(etc.join("group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let r = |spec: &str| resolve_user(dir.path(), spec, "img");
        assert_eq!(r("dev").unwrap(), ImageUser { uid: 1000, gid: 1001, home: Some("/home/dev".into()) });
        assert_eq!(r("dev:staff").unwrap().gid, 50);
        assert_eq!(r("1000:7").unwrap(), ImageUser { uid: 1000, gid: 7, home: Some("/home/dev".into()) });
        assert_eq!(r("4242").unwrap(), ImageUser { uid: 4242, gid: 4242, home: None });
        assert!(r("ghost").unwrap_err().to_string().contains("names user `ghost`"));
        assert!(r("dev:nogroup").is_err());
        // A symlinked /etc/passwd is not followed out of the image.
        std::fs::remove_file(etc.join("passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", etc.join("passwd")).unwrap();
        assert!(r("root").is_err(), "names resolve only through the image's own regular files");
    }
}
