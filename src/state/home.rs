//! Where envy keeps what it keeps: the box store and each project's state (data), the
//! user's config, partial downloads (cache) and what must not outlive a boot (runtime:
//! sockets, pid files, runc's state, network namespace files). With `ENVY_HOME` set all
//! of it lives there; otherwise each kind goes to the user's dir for it (XDG on Linux).

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// envy's dirs, resolved once per command.
#[derive(Debug, Clone)]
pub struct Home {
    /// Data: the box store, projects' state, the project list, store locks.
    root: PathBuf,
    config: PathBuf,
    cache: PathBuf,
    runtime: PathBuf,
}

/// What decides the dirs, read from the process once (`locate`) and passed in whole,
/// so the choice itself is a pure function the unit tests can drive.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inputs {
    /// `ENVY_HOME`; empty counts as unset.
    pub(crate) envy_home: Option<OsString>,
    /// `XDG_RUNTIME_DIR`; empty counts as unset.
    pub(crate) xdg_runtime_dir: Option<OsString>,
    /// The effective uid as the host sees it (inside envy's user namespace a normal
    /// user is root): the runtime dir's fallback depends on it.
    pub(crate) uid: u32,
    /// The platform's data, config and cache dirs for envy (`directories`), None when
    /// the user has no home directory.
    pub(crate) user_dirs: Option<UserDirs>,
}

/// The platform dirs `directories::ProjectDirs` gives envy.
#[derive(Debug, Clone)]
pub(crate) struct UserDirs {
    pub(crate) data: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) cache: PathBuf,
}

impl Inputs {
    /// This process's environment and user.
    fn from_process() -> Inputs {
        Inputs {
            envy_home: std::env::var_os("ENVY_HOME"),
            xdg_runtime_dir: std::env::var_os("XDG_RUNTIME_DIR"),
            uid: host_uid(nix::unistd::geteuid().as_raw()),
            user_dirs: directories::ProjectDirs::from("dev", "envy", "envy").map(|d| UserDirs {
                data: d.data_dir().to_path_buf(),
                config: d.config_dir().to_path_buf(),
                cache: d.cache_dir().to_path_buf(),
            }),
        }
    }
}

/// `euid` as the parent user namespace knows it, through /proc/self/uid_map: the
/// host's uid inside envy's own (one level deep) namespace, the identity outside any.
fn host_uid(euid: u32) -> u32 {
    std::fs::read_to_string("/proc/self/uid_map").ok().and_then(|map| outside_uid(&map, euid)).unwrap_or(euid)
}

fn outside_uid(uid_map: &str, uid: u32) -> Option<u32> {
    uid_map.lines().find_map(|line| {
        let fields: Vec<u64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        let [inside, outside, count] = fields[..] else { return None };
        let uid = u64::from(uid);
        (inside <= uid && uid < inside + count).then(|| u32::try_from(outside + uid - inside).ok())?
    })
}

fn non_empty(value: &Option<OsString>) -> Option<PathBuf> {
    value.as_ref().filter(|v| !v.is_empty()).map(PathBuf::from)
}

impl Home {
    /// The dirs for this process, the runtime dir made ready (`secure_runtime_dir`)
    /// when it is one of the shared places (`/run`, `/tmp`, `$XDG_RUNTIME_DIR`).
    pub fn locate() -> Result<Home> {
        let inputs = Inputs::from_process();
        let home = Home::choose(&inputs)?;
        if non_empty(&inputs.envy_home).is_none() {
            // Owners are compared as this process sees them (in its namespace, if any).
            secure_runtime_dir(&home.runtime, nix::unistd::geteuid().as_raw(), inputs.uid == 0)?;
        }
        Ok(home)
    }

    /// Which dir holds what: everything under `ENVY_HOME` when it is set; otherwise the
    /// user's data, config and cache dirs, and a runtime dir short enough for unix
    /// socket paths (108 bytes): `$XDG_RUNTIME_DIR/envy`, else `/run/envy` for root and
    /// `/tmp/envy-<uid>` for anyone else (whose /run is not theirs to write).
    pub(crate) fn choose(inputs: &Inputs) -> Result<Home> {
        if let Some(root) = non_empty(&inputs.envy_home) {
            return Ok(Home::at(root));
        }
        let dirs = inputs.user_dirs.as_ref().context("cannot find a home directory for envy's data; set HOME, or ENVY_HOME to a folder for all of envy's state")?;
        let runtime = match non_empty(&inputs.xdg_runtime_dir) {
            Some(dir) => dir.join("envy"),
            None if inputs.uid == 0 => PathBuf::from("/run/envy"),
            None => PathBuf::from(format!("/tmp/envy-{}", inputs.uid)),
        };
        Ok(Home { root: dirs.data.clone(), config: dirs.config.clone(), cache: dirs.cache.clone(), runtime })
    }

    /// Everything under `root`, as with `ENVY_HOME=root` (tests, and a throwaway home).
    pub fn at(root: impl Into<PathBuf>) -> Home {
        let root = root.into();
        Home { config: root.clone(), cache: root.clone(), runtime: root.join("run"), root }
    }

    /// The data dir.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Content-addressed box store: `boxes/<sha256>/`.
    pub fn boxes_dir(&self) -> PathBuf {
        self.root.join("boxes")
    }
    /// Partial downloads, kept across interruptions so they can resume (the cache dir:
    /// losing them costs a download, nothing more).
    pub fn downloads_dir(&self) -> PathBuf {
        self.cache.join("downloads")
    }
    /// Lock files for store operations (one per digest or URL).
    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }
    /// Each project's state (`projects/<key>/`): machine records, layers, disks, keys.
    pub fn projects_dir(&self) -> PathBuf {
        self.root.join("projects")
    }
    /// Every project this user has brought up, for `envy list`.
    pub fn projects_file(&self) -> PathBuf {
        self.root.join("projects.json")
    }
    /// The global config file.
    pub fn config_file(&self) -> PathBuf {
        self.config.join("config.toml")
    }
    /// Runtime state that must not survive a reboot (runc's state, sockets, pid files,
    /// network namespace files).
    pub fn runtime_dir(&self) -> PathBuf {
        self.runtime.clone()
    }
}

/// Makes `dir` envy's runtime dir for user `uid`: created 0700 when absent, and refused
/// when what stands there could be someone else's. `/tmp` is everyone's to write, so
/// another user could have made `/tmp/envy-<uid>` first (or a symlink by that name) to
/// read or redirect envy's sockets; /tmp's sticky bit keeps a dir the user owns theirs.
///
/// The host's root (`host_root`) also refuses a runtime dir in a folder root does not
/// own: `sudo -E` keeps the user's XDG_RUNTIME_DIR, whose owner could swap root's
/// runc state and sockets for their own.
fn secure_runtime_dir(dir: &Path, uid: u32, host_root: bool) -> Result<()> {
    let refuse = |problem: String| crate::state::Error::RuntimeDir { path: dir.to_path_buf(), problem };
    if host_root {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        let owner = std::fs::metadata(parent).map_err(|e| refuse(format!("cannot be made: {} cannot be read ({e})", parent.display())))?.uid();
        if owner != 0 {
            return Err(refuse(format!("is in {}, which belongs to uid {owner}, not to root (under sudo -E, unset XDG_RUNTIME_DIR)", parent.display())).into());
        }
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(refuse(format!("cannot be created ({e})")).into()),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| refuse(format!("cannot be read ({e})")))?;
    if meta.file_type().is_symlink() {
        return Err(refuse("is a symlink".into()).into());
    }
    if !meta.is_dir() {
        return Err(refuse("is not a folder".into()).into());
    }
    if meta.uid() != uid {
        return Err(refuse(format!("belongs to uid {}, not to this user (uid {uid})", meta.uid())).into());
    }
    if meta.mode() & 0o077 != 0 {
        return Err(refuse(format!("is open to other users (mode {:o})", meta.mode() & 0o777)).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn user_dirs() -> Option<UserDirs> {
        Some(UserDirs {
            data: "/home/u/.local/share/envy".into(),
            config: "/home/u/.config/envy".into(),
            cache: "/home/u/.cache/envy".into(),
        })
    }

    #[test]
    fn envy_home_holds_everything() {
        let inputs = Inputs { envy_home: Some("/h".into()), xdg_runtime_dir: Some("/run/user/1000".into()), uid: 1000, user_dirs: user_dirs() };
        let home = Home::choose(&inputs).unwrap();
        assert_eq!(home.boxes_dir(), Path::new("/h/boxes"));
        assert_eq!(home.downloads_dir(), Path::new("/h/downloads"));
        assert_eq!(home.config_file(), Path::new("/h/config.toml"));
        assert_eq!(home.runtime_dir(), Path::new("/h/run"));
    }

    #[test]
    fn without_envy_home_each_kind_goes_to_the_users_dir_for_it() {
        let inputs = Inputs { envy_home: Some("".into()), xdg_runtime_dir: Some("/run/user/1000".into()), uid: 1000, user_dirs: user_dirs() };
        let home = Home::choose(&inputs).unwrap();
        assert_eq!(home.boxes_dir(), Path::new("/home/u/.local/share/envy/boxes"));
        assert_eq!(home.projects_dir(), Path::new("/home/u/.local/share/envy/projects"));
        assert_eq!(home.config_file(), Path::new("/home/u/.config/envy/config.toml"));
        assert_eq!(home.downloads_dir(), Path::new("/home/u/.cache/envy/downloads"));
        assert_eq!(home.runtime_dir(), Path::new("/run/user/1000/envy"));
    }

    #[test]
    fn without_xdg_runtime_dir_root_uses_run_and_a_user_tmp() {
        let root = Inputs { uid: 0, user_dirs: user_dirs(), ..Inputs::default() };
        assert_eq!(Home::choose(&root).unwrap().runtime_dir(), Path::new("/run/envy"));
        let user = Inputs { uid: 1000, xdg_runtime_dir: Some("".into()), user_dirs: user_dirs(), ..Inputs::default() };
        assert_eq!(Home::choose(&user).unwrap().runtime_dir(), Path::new("/tmp/envy-1000"));
        let homeless = Inputs { uid: 1000, ..Inputs::default() };
        assert!(format!("{:#}", Home::choose(&homeless).unwrap_err()).contains("set HOME, or ENVY_HOME"));
    }

    #[test]
    fn inside_a_user_namespace_the_host_uid_names_the_runtime_dir() {
        let identity = "         0          0 4294967295\n";
        assert_eq!(outside_uid(identity, 1000), Some(1000));
        let envys = "         0       1000          1\n         1     100000      65536\n";
        assert_eq!(outside_uid(envys, 0), Some(1000));
        assert_eq!(outside_uid(envys, 5), Some(100004));
        assert_eq!(outside_uid(envys, 70000), None);
    }

    #[test]
    fn a_runtime_dir_is_made_private_and_refused_when_it_could_be_someone_elses() {
        let tmp = tempfile::tempdir().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        let dir = tmp.path().join("envy-run");
        secure_runtime_dir(&dir, uid, false).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        secure_runtime_dir(&dir, uid, false).expect("an existing private dir of this user is used");

        let message = |dir: &Path, uid| format!("{:#}", secure_runtime_dir(dir, uid, false).unwrap_err());
        assert!(message(&dir, uid + 1).contains(&format!("belongs to uid {uid}, not to this user")));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(message(&dir, uid).contains("is open to other users (mode 755)"));

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let said = message(&link, uid);
        assert!(said.contains(&link.display().to_string()) && said.contains("is a symlink"), "{said}");
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(message(&file, uid).contains("is not a folder"));
    }

    #[test]
    fn roots_runtime_dir_is_refused_in_a_folder_root_does_not_own() {
        let tmp = tempfile::tempdir().unwrap();
        let user_owned = tmp.path().join("user-runtime");
        std::fs::create_dir(&user_owned).unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&user_owned, Some(1), None).unwrap();
        }
        let owner = std::fs::metadata(&user_owned).unwrap().uid();
        let said = format!("{:#}", secure_runtime_dir(&user_owned.join("envy"), 0, true).unwrap_err());
        assert!(said.contains(&format!("which belongs to uid {owner}, not to root")), "{said}");
        assert!(!user_owned.join("envy").exists(), "nothing is made there");
    }
}
