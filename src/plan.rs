//! Envfile + command line + host, resolved into what a provider acts on: paths,
//! runtime ids, forwards with their final host ports. Commands build plans;
//! providers never read the Envfile or clap structs themselves.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use std::os::fd::{AsRawFd, OwnedFd};

use crate::state::Home;
use crate::envfile::{Envfile, MachineSpec, SyncFolder, SyncMode, UserData};
use crate::model::Forward;
use crate::fsutil::{open_below, Follow};

/// The project a command acts on.
#[derive(Debug, Clone)]
pub struct Project {
    /// The folder holding the Envfile.
    pub dir: PathBuf,
    /// The Envfile's path.
    pub envfile: PathBuf,
    /// envy's state for the project (`$ENVY_HOME/projects/<key>/`): records, keys,
    /// sockets, layers, disks, snapshots. Outside the project on purpose: a machine
    /// with the project synced in must not reach it (docs/security.md).
    pub state_dir: PathBuf,
    /// Short stable id of the project folder, used in host-wide names.
    pub id: String,
}

impl Project {
    pub fn new(home: &Home, envfile: &Envfile) -> Project {
        let dir = envfile.project_dir.clone();
        Project {
            id: project_id(&dir),
            state_dir: Project::state_dir_for(home, &dir),
            envfile: envfile.path.clone(),
            dir,
        }
    }

    /// Where the state of the project in `dir` lives: keyed by 16 hex digits of the
    /// canonical path's sha256, so two projects cannot share it by accident.
    pub fn state_dir_for(home: &Home, dir: &Path) -> PathBuf {
        home.projects_dir().join(hex::encode(&path_digest(dir)[..8]))
    }


    /// A copy of this project with an identity and state of its own (`envy run`): its
    /// machines, network and runtime ids never meet the project's, nor another copy's.
    pub fn throwaway(&self, home: &Home, id: &str) -> Project {
        Project {
            dir: self.dir.clone(),
            envfile: self.envfile.clone(),
            state_dir: home.projects_dir().join(format!("run-{id}")),
            id: id.to_string(),
        }
    }

    /// `<state dir>/machines/<name>/`.
    pub fn machine_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join("machines").join(name)
    }
}

fn path_digest(dir: &Path) -> [u8; 32] {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    Sha256::digest(canonical.as_os_str().as_encoded_bytes()).into()
}

/// Eight hex digits of the sha256 of the project's canonical path.
pub fn project_id(dir: &Path) -> String {
    hex::encode(&path_digest(dir)[..4])
}

/// Everything a provider needs to act on one machine.
#[derive(Debug, Clone)]
pub struct MachinePlan {
    pub home: Home,
    pub project: Project,
    pub spec: MachineSpec,
    /// Position of the machine in the Envfile (stable addresses derive from it).
    pub index: usize,
    /// `<state dir>/machines/<name>/`: the provider keeps its files here.
    pub dir: PathBuf,
    /// Host-wide unique name: `envy-<project id>-<machine>`.
    pub runtime_id: String,
    /// Forwards with the host ports actually used (an `auto` forward may have moved).
    pub forwards: Vec<Forward>,
    /// The other machines of the project, by name and index, so they can reach each other.
    pub peers: Vec<(String, usize)>,
}

impl MachinePlan {
    pub fn new(home: &Home, project: &Project, envfile: &Envfile, spec: &MachineSpec) -> MachinePlan {
        let index = envfile.machines.iter().position(|m| m.name == spec.name).unwrap_or(0);
        MachinePlan {
            home: home.clone(),
            project: project.clone(),
            spec: spec.clone(),
            index,
            dir: project.machine_dir(&spec.name),
            runtime_id: format!("envy-{}-{}", project.id, spec.name),
            forwards: spec.forwards.clone(),
            peers: envfile
                .machines
                .iter()
                .enumerate()
                .filter(|(_, m)| m.name != spec.name)
                .map(|(i, m)| (m.name.clone(), i))
                .collect(),
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Resolves every sync folder on the host and opens it, for the provider to mount
    /// from the fd: the path is resolved by the kernel below the project (a symlink
    /// out of it is refused unless `allow_outside`), so a folder a guest swapped for a
    /// symlink, before or after this call, never brings another host path in.
    /// Only the mounted folders: copied ones (`sync_mode = "copy"`) are packed by `copy_in`.
    pub fn open_sync_folders(&self) -> Result<Vec<OpenedFolder>, crate::envfile::Error> {
        self.spec.sync.iter().filter(|f| f.mode == SyncMode::Mount).map(|folder| self.open_sync_folder(folder)).collect()
    }

    pub fn open_sync_folder(&self, folder: &SyncFolder) -> Result<OpenedFolder, crate::envfile::Error> {
        let refuse = |problem: String| self.project_path_error(&folder.host, "sync folder", problem);
        let opened = if folder.allow_outside {
            // The Envfile names this path on purpose: resolve it once, then open the
            // result with no symlink at all, so a swap in between fails.
            let real = folder.host.canonicalize().map_err(|e| refuse(format!("cannot be resolved ({e}); create it or fix `sync`")))?;
            open_below(Path::new("/"), &real, Follow::Never)
        } else {
            open_below(&self.project.dir, &folder.host, Follow::BelowRoot)
        };
        let fd = opened.map_err(|errno| {
            refuse(self.open_problem(
                errno,
                "move the folder into the project, or use the table form with allow_outside = true if the machine may see it",
                "; create it or fix `sync` in the Envfile",
            ))
        })?;
        let meta = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| refuse(format!("cannot be read ({e})")))?;
        let is_dir = meta.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if !is_dir && meta.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(refuse("is neither a folder nor a regular file".into()));
        }
        Ok(OpenedFolder { fd, is_dir, folder: folder.clone() })
    }

    /// Opens a file or folder the Envfile names in the project (`key` says which: a
    /// provision script, `user_data`, a provision file), resolved by the kernel below
    /// the project: one a guest replaced with a symlink out of it is refused.
    pub fn open_project_path(&self, path: &Path, key: &'static str) -> Result<OwnedFd, crate::envfile::Error> {
        open_below(&self.project.dir, path, Follow::BelowRoot)
            .map_err(|errno| self.project_path_error(path, key, self.open_problem(errno, "keep it in the project", "")))
    }

    /// Why a project path could not be opened below the project: `outside` is the way
    /// out when it leads out of the project, `missing` is added when it does not exist.
    fn open_problem(&self, errno: nix::errno::Errno, outside: &str, missing: &str) -> String {
        match errno {
            nix::errno::Errno::EXDEV => format!(
                "resolves outside the project {} (through a symlink); {outside}",
                self.project.dir.display()
            ),
            nix::errno::Errno::ENOENT => format!("does not exist{missing}"),
            other => format!("cannot be opened ({other})"),
        }
    }

    /// The error for a project path the Envfile names that envy refuses.
    pub fn project_path_error(&self, path: &Path, key: &'static str, problem: String) -> crate::envfile::Error {
        crate::envfile::Error::HostPath {
            envfile: self.project.envfile.clone(),
            machine: self.spec.name.clone(),
            key,
            path: path.to_path_buf(),
            problem,
        }
    }

    /// Reads a project file the Envfile names (see `open_project_path`): a regular
    /// file of at most `limit` bytes.
    pub fn read_project_file(&self, path: &Path, key: &'static str, limit: u64) -> Result<Vec<u8>, crate::envfile::Error> {
        let fd = self.open_project_path(path, key)?;
        crate::fsutil::read_fd(&fd, path, limit).map_err(|e| self.project_path_error(path, key, format!("{e:#}")))
    }

    /// The machine's own cloud-config (`user_data`), read and checked: a file in the
    /// project is read now (a guest may have changed it since the Envfile was loaded).
    pub fn user_cloud_config(&self) -> Result<Option<serde_yaml::Mapping>, crate::envfile::Error> {
        use crate::envfile::cloud_config;
        let (text, path) = match &self.spec.user_data {
            None => return Ok(None),
            Some(UserData::Inline(text)) => (text.clone(), None),
            Some(UserData::File(path)) => {
                let bytes = self.read_project_file(path, "user_data", cloud_config::MAX_USER_DATA)?;
                let text = String::from_utf8(bytes).map_err(|_| self.project_path_error(path, "user_data", "is not UTF-8 text".into()))?;
                (text, Some(path))
            }
        };
        cloud_config::parse(&text)
            .map(Some)
            .map_err(|problem| self.project_path_error(path.map_or(Path::new("(inline)"), |p| p.as_path()), "user_data", problem))
    }

    /// Creates the machine dir (and the project's state dir), private to the user.
    pub fn ensure_dir(&self) -> anyhow::Result<()> {
        crate::fsutil::create_private_dir(&self.project.state_dir)?;
        crate::fsutil::create_private_dir_of_trees(&self.project.state_dir.join("machines"))?;
        crate::fsutil::create_private_dir(&self.dir)?;
        check_state_path(&self.home, &self.dir)
    }
}

/// envy never follows a symlink in its own state: a machine dir that exists must be
/// reached from `$ENVY_HOME/projects` through real folders only, or nothing acts on it.
pub(crate) fn check_state_path(home: &Home, dir: &Path) -> anyhow::Result<()> {
    match crate::fsutil::open_below(&home.projects_dir(), dir, crate::fsutil::Follow::Never) {
        Ok(_) => Ok(()),
        Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(crate::state::Error::BadRecord {
            path: dir.to_path_buf(),
            message: format!(
                "cannot be opened without following a symlink ({e}); envy never follows a symlink in its state: \
                 look at what stands there and remove it by hand"
            ),
        }
        .into()),
    }
}

/// A sync folder resolved and opened on the host; mount it through `proc_path`.
#[derive(Debug)]
pub struct OpenedFolder {
    pub fd: OwnedFd,
    pub is_dir: bool,
    pub folder: SyncFolder,
}

impl OpenedFolder {
    /// `/proc/self/fd/N`: the opened folder itself, for mount(2) or QEMU to open.
    pub fn proc_path(&self) -> PathBuf {
        crate::fsutil::fd_path(&self.fd)
    }
}

/// A plan for unit tests: `machine` of the Envfile `text` in `project_dir` (which need
/// not exist), with the fixed project id `0badcafe`.
#[cfg(test)]
pub(crate) fn test_plan(project_dir: &str, home: &str, text: &str, machine: &str) -> MachinePlan {
    let envfile = crate::envfile::parse_str(&Path::new(project_dir).join("Envfile"), text, crate::model::ProviderKind::new("qemu"))
        .expect("a valid test Envfile");
    let project = Project {
        dir: project_dir.into(),
        envfile: envfile.path.clone(),
        state_dir: Path::new(home).join("projects/0badcafe"),
        id: "0badcafe".into(),
    };
    let spec = envfile.machine(machine).expect("the machine is in the test Envfile");
    MachinePlan::new(&Home::at(home), &project, &envfile, spec)
}
