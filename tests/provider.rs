//! A provider written outside envy, registered through the same registry as the
//! built-in ones, and driven through the same life cycle: it keeps
//! docs/architecture.md's "Adding a provider" honest. Its machines are folders on the
//! host and its commands run there: nothing here needs root, a VM or a network.

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use envy::boxes::StoredBox;
use envy::context::Context;
use envy::envfile::lock::LockFile;
use envy::envfile::{Invalid, MachineSpec};
use envy::lifecycle::{self, UpOptions};
use envy::model::{BoxFormat, ProviderKind};
use envy::plan::MachinePlan;
use envy::provider::{self, ExecRequest, MachineState, Provider, Registration};
use envy::state::Home;
use envy::ui::Ui;
use envy::workspace::Workspace;

use crate::common::{self, need, require};

const KIND: ProviderKind = ProviderKind::new("hostdir");

/// Machines that are folders: `up` makes `root/` in the machine's state dir and
/// notes the box it was given; `exec` runs the command on the host in that folder.
struct HostDir;

impl HostDir {
    fn root(machine: &MachinePlan) -> std::path::PathBuf {
        machine.dir.join("root")
    }
}

impl Provider for HostDir {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn box_format(&self) -> BoxFormat {
        BoxFormat::Container
    }

    fn validate(&self, spec: &MachineSpec) -> Result<(), Invalid> {
        match spec.forwards.is_empty() {
            true => Ok(()),
            false => Err(Invalid::new("forward", "the hostdir provider has no network to forward into: remove `forward`")),
        }
    }

    fn forwards_on_host(&self) -> bool {
        false
    }

    fn up(&self, machine: &MachinePlan, stored: &StoredBox, _ui: &Ui) -> Result<()> {
        std::fs::create_dir_all(Self::root(machine))?;
        std::fs::write(machine.dir.join("box"), &stored.digest)?;
        Ok(())
    }

    fn state(&self, machine: &MachinePlan) -> Result<MachineState> {
        Ok(match (Self::root(machine).is_dir(), machine.dir.join("halted").exists()) {
            (false, _) => MachineState::NotCreated,
            (true, true) => MachineState::Stopped,
            (true, false) => MachineState::Running,
        })
    }

    fn exec(&self, machine: &MachinePlan, request: &ExecRequest) -> Result<i32> {
        let (program, args) = request.command.split_first().expect("a command");
        let mut command = Command::new(program);
        command.args(args).current_dir(Self::root(machine)).envs(machine.spec.env.iter()).envs(request.env.iter().cloned());
        if let Some(input) = &request.stdin {
            command.stdin(std::fs::File::open(input)?);
        }
        Ok(command.status()?.code().unwrap_or(128))
    }

    fn halt(&self, machine: &MachinePlan, _force: bool, _ui: &Ui) -> Result<()> {
        std::fs::write(machine.dir.join("halted"), "")?;
        Ok(())
    }

    fn destroy(&self, _machine: &MachinePlan, _ui: &Ui) -> Result<()> {
        // Everything it made is in the machine dir, which the caller removes.
        Ok(())
    }
}

fn register() {
    provider::register(Registration { kind: KIND, summary: "folders on the host (tests)", make: || Box::new(HostDir) });
}

fn context(home: &Path, project: &Path) -> Context {
    Context {
        home: Home::at(home),
        config: Default::default(),
        ui: Ui::detect(false, true),
        cwd: project.to_path_buf(),
        no_wait: true,
    }
}

#[test]
fn a_provider_from_outside_envy_runs_the_whole_life_cycle() {
    require!(need::BUSYBOX);
    register();
    assert!(provider::registered().iter().any(|r| r.kind == KIND));
    let env = common::TestEnv::new();
    let (box_file, digest) = common::build_container_box(&env, "hostdir-box");
    std::fs::write(
        env.project.join("Envfile"),
        format!(
            "[machine.web]\nbox = {{ path = {:?}, sha256 = \"{digest}\" }}\nprovider = \"hostdir\"\nenv = {{ GREETING = \"hi\" }}\n\
             provision = [\"echo \\\"$GREETING\\\" > provisioned\"]\n",
            box_file.to_str().unwrap()
        ),
    )
    .unwrap();
    let ctx = context(&env.home, &env.project);
    let ws = Workspace::load(&ctx).unwrap();
    let spec = ws.envfile.machine("web").unwrap();
    let mut plan = ws.plan(&ctx.home, spec).unwrap();
    let lock_path = LockFile::path_for(&env.project);
    let mut lock = LockFile::load(&lock_path).unwrap();
    lifecycle::up(&ctx, &mut plan, &mut lock, None, UpOptions::default()).unwrap();

    // The life cycle gave it the verified box, and provisioning ran through its exec.
    assert_eq!(std::fs::read_to_string(plan.dir.join("box")).unwrap(), digest);
    assert_eq!(std::fs::read_to_string(plan.dir.join("root/provisioned")).unwrap(), "hi\n");
    let hostdir = provider::for_kind(KIND).unwrap();
    assert_eq!(hostdir.state(&plan).unwrap(), MachineState::Running);
    let request = ExecRequest { command: vec!["sh".into(), "-c".into(), "exit 3".into()], ..ExecRequest::default() };
    assert_eq!(hostdir.exec(&plan, &request).unwrap(), 3);

    // What it does not implement says so, with the providers' exit code.
    let err = hostdir.snapshot_save(&plan, "before", false, &ctx.ui).unwrap_err();
    assert_eq!(err.to_string(), "the hostdir provider cannot take snapshots");
    assert_eq!(envy::error::exit_code(&err), envy::error::code::PROVIDER);

    lifecycle::destroy(&ctx, &plan).unwrap();
    assert!(!plan.dir.exists());
    assert_eq!(hostdir.state(&plan).unwrap(), MachineState::NotCreated);
}

#[test]
fn its_validate_refuses_at_load_with_the_place_in_the_envfile() {
    register();
    let env = common::TestEnv::new();
    std::fs::write(env.project.join("Envfile"), "[machine.web]\nbox = \"b\"\nprovider = \"hostdir\"\nforward = [\"8080:80\"]\n").unwrap();
    let err = Workspace::load(&context(&env.home, &env.project)).err().expect("the forward is refused").to_string();
    assert!(
        err.ends_with("Envfile:4:12: machine web: the hostdir provider has no network to forward into: remove `forward`"),
        "{err}"
    );
}
