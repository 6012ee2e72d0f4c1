//! Envfile + command line + host, resolved into what a provider acts on: paths,
//! runtime ids, forwards with their final host ports. Commands build plans;
//! providers never read the Envfile or clap structs themselves.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::context::Home;
use crate::envfile::{Envfile, Forward, MachineSpec};

/// The project a command acts on.
#[derive(Debug, Clone)]
pub struct Project {
    /// The folder holding the Envfile.
    pub dir: PathBuf,
    /// The Envfile's path.
    pub envfile: PathBuf,
    /// `.envy/` inside the project: records, keys, sockets.
    pub state_dir: PathBuf,
    /// Short stable id of the project folder, used in host-wide names.
    pub id: String,
}

impl Project {
    pub fn new(envfile: &Envfile) -> Project {
        let dir = envfile.project_dir.clone();
        Project {
            id: project_id(&dir),
            state_dir: dir.join(".envy"),
            envfile: envfile.path.clone(),
            dir,
        }
    }

    /// A copy of this project with an identity and state of its own (`envy run`): its
    /// machines, network and runtime ids never meet the project's, nor another copy's.
    pub fn throwaway(&self, home: &Home, id: &str) -> Project {
        Project {
            dir: self.dir.clone(),
            envfile: self.envfile.clone(),
            state_dir: home.root().join("throwaway").join(id),
            id: id.to_string(),
        }
    }

    /// `.envy/machines/<name>/`.
    pub fn machine_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join("machines").join(name)
    }
}

/// Eight hex digits of the sha256 of the project's canonical path.
pub fn project_id(dir: &Path) -> String {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..4])
}

/// Everything a provider needs to act on one machine.
#[derive(Debug, Clone)]
pub struct MachinePlan {
    pub home: Home,
    pub project: Project,
    pub spec: MachineSpec,
    /// Position of the machine in the Envfile (stable addresses derive from it).
    pub index: usize,
    /// `.envy/machines/<name>/`: the provider keeps its files here.
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
}

/// The project a command runs in: its Envfile, read and validated.
pub struct Workspace {
    pub envfile: Envfile,
    pub project: Project,
}

impl Workspace {
    /// Finds the Envfile from the command's directory upwards and reads it.
    pub fn load(ctx: &crate::context::Context) -> anyhow::Result<Workspace> {
        let path = crate::envfile::find(&ctx.cwd)?;
        let default_provider = ctx.config.provider.unwrap_or(crate::envfile::ProviderKind::Container);
        let mut envfile = crate::envfile::load(&path, default_provider)?;
        // The user's config fills in what the Envfile leaves open (ENVY_ACCEL beats both).
        for machine in &mut envfile.machines {
            machine.accel = machine.accel.or(ctx.config.accel);
        }
        let project = Project::new(&envfile);
        Ok(Workspace { envfile, project })
    }

    /// The named machines, or all of them when `names` is empty.
    pub fn select(&self, names: &[String]) -> Result<Vec<&MachineSpec>, crate::envfile::Error> {
        if names.is_empty() {
            return Ok(self.envfile.machines.iter().collect());
        }
        names.iter().map(|n| self.find(n)).collect()
    }

    /// One machine: the named one, or the only one when no name is given.
    pub fn select_one(&self, name: Option<&str>) -> Result<&MachineSpec, crate::envfile::Error> {
        match (name, self.envfile.machines.as_slice()) {
            (Some(n), _) => self.find(n),
            (None, [only]) => Ok(only),
            (None, _) => Err(crate::envfile::Error::At {
                path: self.envfile.path.clone(),
                line: 1,
                column: 1,
                message: format!("this Envfile has several machines ({}); name the one you mean", self.machine_names()),
            }),
        }
    }

    fn find(&self, name: &str) -> Result<&MachineSpec, crate::envfile::Error> {
        self.envfile.machine(name).ok_or_else(|| crate::envfile::Error::UnknownMachine {
            path: self.envfile.path.clone(),
            name: name.to_string(),
            known: self.machine_names(),
        })
    }

    fn machine_names(&self) -> String {
        self.envfile.machines.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// Machines with a record in `.envy/` but no section in the Envfile any more (renamed
    /// or removed): envy cannot act on them without their settings.
    pub fn orphans(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.project.state_dir.join("machines")) else { return Vec::new() };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join("machine.json").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| self.envfile.machine(name).is_none())
            .collect();
        names.sort();
        names
    }

    /// A warning for machines left behind by the Envfile, if there are any.
    pub fn orphan_warning(&self) -> Option<String> {
        let orphans = self.orphans();
        (!orphans.is_empty()).then(|| {
            format!(
                "{} in {} {} no section in the Envfile any more and may still be running; \
                 put the section back and run `envy destroy {}` to remove it",
                orphans.join(", "),
                self.project.state_dir.display(),
                if orphans.len() == 1 { "has" } else { "have" },
                orphans.join(" ")
            )
        })
    }

    pub fn plan(&self, home: &Home, spec: &MachineSpec) -> MachinePlan {
        MachinePlan::new(home, &self.project, &self.envfile, spec)
    }
}

/// A plan for unit tests: `machine` of the Envfile `text` in `project_dir` (which need
/// not exist), with the fixed project id `0badcafe`.
#[cfg(test)]
pub(crate) fn test_plan(project_dir: &str, home: &str, text: &str, machine: &str) -> MachinePlan {
    let envfile = crate::envfile::parse_str(&Path::new(project_dir).join("Envfile"), text, crate::envfile::ProviderKind::Qemu)
        .expect("a valid test Envfile");
    let project = Project {
        dir: project_dir.into(),
        envfile: envfile.path.clone(),
        state_dir: Path::new(project_dir).join(".envy"),
        id: "0badcafe".into(),
    };
    let spec = envfile.machine(machine).expect("the machine is in the test Envfile");
    MachinePlan::new(&Home::at(home), &project, &envfile, spec)
}
