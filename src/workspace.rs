//! The project a command runs in: the Envfile found from the command's folder
//! upwards, read, and checked by the providers its machines name (above the
//! providers, so that they can refuse what they cannot do when it loads).

use crate::envfile::{self, Envfile, MachineSpec};
use crate::plan::{check_state_path, MachinePlan, Project};
use crate::state::Home;

/// The project a command runs in: its Envfile, read and validated.
pub struct Workspace {
    pub envfile: Envfile,
    pub project: Project,
}

impl Workspace {
    /// Finds the Envfile from the command's directory upwards and reads it.
    pub fn load(ctx: &crate::context::Context) -> anyhow::Result<Workspace> {
        let path = envfile::find(&ctx.cwd)?;
        let default_provider = ctx.config.provider.unwrap_or_else(crate::provider::default_kind);
        let mut envfile = envfile::load(&path, default_provider)?;
        crate::provider::validate(&envfile)?;
        // The user's config fills in what the Envfile leaves open (ENVY_ACCEL beats both).
        for machine in &mut envfile.machines {
            machine.accel = machine.accel.or(ctx.config.accel);
        }
        let project = Project::new(&ctx.home, &envfile);
        Ok(Workspace { envfile, project })
    }

    /// The named machines, or all of them when `names` is empty.
    pub fn select(&self, names: &[String]) -> Result<Vec<&MachineSpec>, envfile::Error> {
        if names.is_empty() {
            return Ok(self.envfile.machines.iter().collect());
        }
        names.iter().map(|n| self.find(n)).collect()
    }

    /// One machine: the named one, or the only one when no name is given.
    pub fn select_one(&self, name: Option<&str>) -> Result<&MachineSpec, envfile::Error> {
        match (name, self.envfile.machines.as_slice()) {
            (Some(n), _) => self.find(n),
            (None, [only]) => Ok(only),
            (None, _) => Err(envfile::Error::At {
                path: self.envfile.path.clone(),
                line: 1,
                column: 1,
                message: format!("this Envfile has several machines ({}); name the one you mean", self.machine_names()),
            }),
        }
    }

    fn find(&self, name: &str) -> Result<&MachineSpec, envfile::Error> {
        self.envfile.machine(name).ok_or_else(|| envfile::Error::UnknownMachine {
            path: self.envfile.path.clone(),
            name: name.to_string(),
            known: self.machine_names(),
        })
    }

    fn machine_names(&self) -> String {
        self.envfile.machines.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// Machines with a record in the state dir but no section in the Envfile any more (renamed
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

    /// Takes the project lock for a command that changes machines: it waits, saying
    /// for whom, or with `--no-wait` fails at once.
    pub fn lock(&self, ctx: &crate::context::Context) -> anyhow::Result<crate::state::ProjectLock> {
        crate::state::ProjectLock::acquire(&self.project.state_dir, &self.project.dir, ctx.no_wait, |holder| {
            ctx.ui.step(format!("waiting for another envy command (pid {holder}) to finish"))
        })
    }

    /// The plan for one machine; fails when its state dir is not what envy made.
    pub fn plan(&self, home: &Home, spec: &MachineSpec) -> anyhow::Result<MachinePlan> {
        let plan = MachinePlan::new(home, &self.project, &self.envfile, spec);
        check_state_path(home, &plan.dir)?;
        Ok(plan)
    }
}
