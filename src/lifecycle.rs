//! The steps several commands share: bring one machine up (box, ports, provider,
//! provisioning), provision it, and destroy it. `up`, `reload`, `provision`,
//! `destroy` and `run` are thin loops over these.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};

use crate::boxes::{BoxSource, Fetched, Store, StoredBox};
use crate::context::Context;
use crate::envfile::lock::{LockFile, LockedBox};
use crate::envfile::{MachineSpec, ProvisionAction};
use crate::model::{BoxFormat, BoxRef, Forward};
use crate::plan::MachinePlan;
use crate::provider::{self, ExecRequest, MachineState};
use crate::state::record::{MachineRecord, VERSION};

/// A provision step exited non-zero. envy exits with the step's own code, so a CI
/// job sees what the step said (docs/envfile.md).
#[derive(Debug, thiserror::Error)]
#[error("provision step {step}/{total} of machine {machine} failed with exit code {code}: {label}\nfix it, then run `envy provision {machine}`")]
pub struct ProvisionFailed {
    pub machine: String,
    pub step: usize,
    pub total: usize,
    pub code: i32,
    pub label: String,
}

/// Options of `envy up` that reach each machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpOptions {
    pub no_provision: bool,
    /// Accept a box URL without a digest (what arrives is pinned in the lock).
    pub insecure: bool,
}

/// Brings one machine to Running and provisions it on its first start.
/// Safe from any state: absent, stopped, half-made by a killed `envy up`.
/// With `lock_path`, a new pin is written there as soon as the box is verified: also
/// when a later step fails, so what arrived stays pinned, and before the machine
/// starts, so the file exists to be shared read-only with it.
pub fn up(ctx: &Context, plan: &mut MachinePlan, lock: &mut LockFile, lock_path: Option<&Path>, opts: UpOptions) -> Result<()> {
    up_all(ctx, std::slice::from_mut(plan), lock, lock_path, opts)
}

/// Brings several machines up as `up` does one, in three phases: each is prepared in
/// turn (its box fetched and pinned, its host ports chosen: what machines share),
/// then all are started at once, at most as many at a time as the host has cores,
/// then each is provisioned and waited for in the Envfile's order, so provisioning
/// output stays one machine's at a time and a step may rely on an earlier machine's.
/// When a start fails the others still finish starting; the first failure (in the
/// Envfile's order) is returned, the rest are said as warnings, and nothing is
/// provisioned: the next `envy up` provisions the machines that run.
pub fn up_all(ctx: &Context, plans: &mut [MachinePlan], lock: &mut LockFile, lock_path: Option<&Path>, opts: UpOptions) -> Result<()> {
    let mut prepared = Vec::with_capacity(plans.len());
    let mut claimed: Vec<Forward> = Vec::new();
    for plan in plans.iter_mut() {
        let machine = prepare(ctx, plan, lock, lock_path, opts, &claimed)?;
        claimed.extend(plan.forwards.iter().cloned());
        prepared.push(machine);
    }
    start_all(ctx, plans, &prepared)?;
    for (plan, machine) in plans.iter().zip(prepared) {
        finish(ctx, plan, machine, opts)?;
    }
    Ok(())
}

/// One machine between `prepare` and `finish`: its verified box, its record (saved),
/// and the state it was found in.
struct Prepared {
    stored: StoredBox,
    record: MachineRecord,
    state: MachineState,
}

/// Everything before the start that machines of one `up` share or must agree on: the
/// record and provider checks, the box (fetched, verified, pinned) and the host ports,
/// none of them taken by a machine in `claimed` (prepared earlier in this `up`).
fn prepare(ctx: &Context, plan: &mut MachinePlan, lock: &mut LockFile, lock_path: Option<&Path>, opts: UpOptions, claimed: &[Forward]) -> Result<Prepared> {
    let name = plan.name().to_string();
    plan.ensure_dir()?;
    let record = MachineRecord::load(&plan.dir)?;
    if let Some(r) = &record {
        if r.provider != plan.spec.provider {
            bail!(
                "machine {name} was created with the {} provider but the Envfile now says {}; run `envy destroy {name}` first",
                r.provider, plan.spec.provider
            );
        }
    }
    if !opts.no_provision && !record.as_ref().is_some_and(|r| r.provisioned) {
        // A missing or swapped script or file fails now, before anything is fetched or started.
        for step in &plan.spec.provision {
            match &step.action {
                ProvisionAction::Script(path) => drop(read_script(plan, path)?),
                ProvisionAction::File { from, .. } => drop(plan.open_project_path(from, "provision file")?),
                ProvisionAction::Shell(_) => {}
            }
        }
    }
    // So does a user_data file that is missing or sets a key envy manages.
    plan.user_cloud_config()?;
    let before = lock.clone();
    let provider = provider::for_kind(plan.spec.provider)?;
    let format = provider.box_format();
    let stored = resolve_box(ctx, &plan.spec, format, &plan.project.dir, lock, opts.insecure)?;
    if let Some(path) = lock_path.filter(|_| *lock != before) {
        lock.save(path)?;
    }
    stored.check_serves(format, &name)?;
    if let Some(r) = &record {
        if r.box_digest != stored.digest {
            ctx.ui.warn(format!(
                "machine {name} was created from box {} but the Envfile now resolves to {}; it keeps its old base until `envy destroy {name}`",
                short(&r.box_digest), short(&stored.digest)
            ));
        }
    }
    let state = provider.state(plan)?;
    if state == MachineState::Stopped {
        // A machine that died (not halted) may have left what it held: forwards on its
        // host ports, mounts. They are its own; free them before the ports are checked.
        provider.halt(plan, true, &ctx.ui)?;
    }
    plan.forwards = match (&record, state) {
        (Some(r), MachineState::Running) => r.forwards.clone(),
        _ if provider.forwards_on_host() => resolve_forwards(ctx, &name, &plan.spec.forwards, record.as_ref(), claimed)?,
        _ => plan.spec.forwards.clone(),
    };
    let mut record = record.unwrap_or_else(|| MachineRecord {
        version: VERSION,
        name: name.clone(),
        provider: plan.spec.provider,
        box_digest: stored.digest.clone(),
        created: now(),
        forwards: Vec::new(),
        provisioned: false,
    });
    record.forwards = plan.forwards.clone();
    record.save(&plan.dir)?;
    Ok(Prepared { stored, record, state })
}

/// Starts the prepared machines, at once (`each_at_once`).
fn start_all(ctx: &Context, plans: &[MachinePlan], prepared: &[Prepared]) -> Result<()> {
    let machines: Vec<_> = plans.iter().zip(prepared).collect();
    each_at_once(ctx, &machines, |(plan, _)| plan.name(), "starting", |(plan, machine)| start(ctx, plan, machine))
}

/// Does `work` for each machine of `machines` on worker threads, twice as many workers
/// as cores: starting or stopping a machine spends much of its time waiting (fsync,
/// the tools it runs, a process's end), and a second worker per core fills it. After
/// Ctrl-C (when the command catches it) no further machine is begun: its outcome is
/// the interruption, while `doing` (say "starting") the machine that `name` names.
/// Every machine is worked on even when one fails; the first failure in `machines`'
/// order is returned, the rest are said as warnings.
pub fn each_at_once<M: Sync>(
    ctx: &Context,
    machines: &[M],
    name: impl Fn(&M) -> &str + Sync,
    doing: &str,
    work: impl Fn(&M) -> Result<()> + Sync,
) -> Result<()> {
    let workers = (2 * std::thread::available_parallelism().map_or(1, |n| n.get())).min(machines.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut outcomes: Vec<(usize, Result<()>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(machine) = machines.get(i) else { return done };
                        let outcome = crate::signals::check(|| format!("{doing} machine {}", name(machine)))
                            .map_err(anyhow::Error::from)
                            .and_then(|()| work(machine));
                        done.push((i, outcome));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    outcomes.sort_by_key(|(i, _)| *i);
    let mut failures = outcomes.into_iter().filter_map(|(_, outcome)| outcome.err());
    let Some(first) = failures.next() else { return Ok(()) };
    for other in failures {
        ctx.ui.warn(format!("{other:#}"));
    }
    Err(first)
}

fn start(ctx: &Context, plan: &MachinePlan, machine: &Prepared) -> Result<()> {
    let name = plan.name();
    if machine.state == MachineState::Running {
        ctx.ui.step(format!("{name}: already running"));
    } else {
        ctx.ui.step(format!("{name}: starting ({}, box {})", plan.spec.provider, machine.stored.manifest.name));
    }
    // Also for a running machine: the provider repairs what is broken around it (a
    // killed slirp4netns, lost forwards) without restarting it.
    provider::for_kind(plan.spec.provider)?.up(plan, &machine.stored, &ctx.ui)?;
    if machine.state != MachineState::Running || !machine.record.provisioned {
        crate::copy_in::push_sync(plan, &ctx.ui)?;
    }
    Ok(())
}

/// After the start: provisioning (all steps on the first start, `always` ones on
/// later starts), the forwards said, and the `ready` check.
fn finish(ctx: &Context, plan: &MachinePlan, machine: Prepared, opts: UpOptions) -> Result<()> {
    let Prepared { mut record, state, .. } = machine;
    if !record.provisioned && !opts.no_provision {
        run_steps(ctx, plan, false)?;
        record.provisioned = true;
        record.save(&plan.dir)?;
    } else if state != MachineState::Running && !opts.no_provision {
        // Vagrant's `run: "always"`: these steps run on every start, not just the first.
        run_steps(ctx, plan, true)?;
    }
    for f in &plan.forwards {
        ctx.ui.step(format!("{}: {f}", plan.name()));
    }
    // Without provisioning the services a check waits for may not be there at all.
    if !opts.no_provision {
        crate::ready::wait(ctx, plan)?;
    }
    Ok(())
}

/// `envy provision`: the copied sync folders pushed again, then the provisioning
/// steps in order; the first failure stops them.
pub fn provision(ctx: &Context, plan: &MachinePlan) -> Result<()> {
    crate::copy_in::push_sync(plan, &ctx.ui)?;
    run_steps(ctx, plan, false)
}

/// Runs every provisioning step, or with `only_always` just the `run = "always"` ones.
fn run_steps(ctx: &Context, plan: &MachinePlan, only_always: bool) -> Result<()> {
    let provider = provider::for_kind(plan.spec.provider)?;
    let total = plan.spec.provision.len();
    for (i, step) in plan.spec.provision.iter().enumerate() {
        if only_always && !step.always {
            continue;
        }
        // What a step streams to the shell's stdin (a script, a file step's tar) lives
        // until its exec is done.
        let mut input = None;
        let (label, command) = match &step.action {
            ProvisionAction::Shell(cmd) => (cmd.clone(), vec!["-c".to_string(), cmd.clone()]),
            ProvisionAction::Script(path) => {
                // Streamed to `sh -s`, not passed as an argument: a script of any size runs.
                let mut file = tempfile::Builder::new().prefix(".script-").tempfile_in(&plan.dir)?;
                std::io::Write::write_all(&mut file, read_script(plan, path)?.as_bytes())?;
                input = Some(file.into_temp_path());
                (path.display().to_string(), vec!["-s".to_string()])
            }
            ProvisionAction::File { from, to, mode } => {
                let copy = crate::copy_in::pack(plan, from, to, *mode)?;
                let command = vec!["-c".to_string(), copy.command];
                input = Some(copy.tar.into_temp_path());
                (format!("copy {} to {to}", from.display()), command)
            }
        };
        ctx.ui.step(format!("{}: provision {}/{total}: {label}", plan.name(), i + 1));
        let request = ExecRequest {
            command: std::iter::once("/bin/sh".to_string()).chain(command).collect(),
            tty: false,
            workdir: None,
            env: Vec::new(),
            as_root: true,
            stdin: input.as_ref().map(|p| p.to_path_buf()),
        };
        let code = provider.exec(plan, &request)?;
        if code != 0 {
            bail!(ProvisionFailed { machine: plan.name().to_string(), step: i + 1, total, code, label });
        }
    }
    Ok(())
}

/// The longest provision script envy reads (it is streamed to the shell, so this only
/// bounds what a mistaken path, such as a disk image, would make envy read).
const MAX_SCRIPT: u64 = 16 << 20;

/// A provision script's text, read through a path the kernel resolves below the
/// project: a script (or a folder on its way) that a guest replaced with a symlink out
/// of the project is refused, not read from the host.
fn read_script(plan: &MachinePlan, path: &Path) -> Result<String> {
    let bytes = plan.read_project_file(path, "provision script", MAX_SCRIPT)?;
    String::from_utf8(bytes).map_err(|_| plan.project_path_error(path, "provision script", "is not UTF-8 text".into()).into())
}

/// Removes the machine and its record; the Envfile.lock and the box store stay.
pub fn destroy(ctx: &Context, plan: &MachinePlan) -> Result<()> {
    crate::autoforward::stop(plan);
    let provider = provider::for_kind(plan.spec.provider)?;
    provider.destroy(plan, &ctx.ui)?;
    crate::fsutil::remove_path(&plan.dir)
}

/// The machine's box, verified, honouring and updating the Envfile.lock pin.
pub fn resolve_box(ctx: &Context, spec: &MachineSpec, format: BoxFormat, project_dir: &Path, lock: &mut LockFile, insecure: bool) -> Result<StoredBox> {
    let store = Store::open(&ctx.home, &ctx.config)?;
    let source_text = source_key(&spec.box_ref);
    let Some(locked) = lock.machines.get(&spec.name).filter(|l| l.source == source_text).cloned() else {
        // Nothing pinned: a catalog or Vagrant Cloud name matches a box stored under it
        // first, without the network, as in Vagrant; else it is fetched. Either way the
        // lock now records where it came from.
        let fetched = match store.find_named(&spec.box_ref, format)? {
            Some(found) => found,
            None => fetch_box(ctx, &store, &spec.box_ref, format, insecure, None)?,
        };
        lock.machines.insert(spec.name.clone(), lock_entry(&spec.box_ref, &fetched));
        return Ok(fetched.stored);
    };
    let pinned = &locked.sha256;
    if let Ok(stored) = store.get(pinned) {
        return Ok(stored);
    }
    // Pinned but not stored here: the bytes the lock names, for a catalog or Vagrant
    // Cloud box from where they came (upstream may offer a newer build by now). The
    // lock entry stays as it is: it already says where they come from.
    let reference = match (&spec.box_ref, &locked.url) {
        (BoxRef::Catalog { .. } | BoxRef::Vagrant { .. }, Some(url)) => BoxRef::Url { url: url.clone(), sha256: Some(pinned.clone()) },
        (BoxRef::Url { url, sha256: None }, _) => BoxRef::Url { url: url.clone(), sha256: Some(pinned.clone()) },
        (BoxRef::Path { path, sha256: None }, _) => BoxRef::Path { path: path.clone(), sha256: Some(pinned.clone()) },
        (BoxRef::Oci { image, sha256: None }, _) => BoxRef::Oci { image: image.clone(), sha256: Some(pinned.clone()) },
        (other, _) => other.clone(),
    };
    let checked = match (&locked.url, &locked.upstream) {
        (Some(url), Some(upstream)) => {
            store.check_pinned_url(&BoxSource::from_ref(&spec.box_ref, None, Some(format)), url, upstream)
        }
        _ => Ok(()),
    };
    // Stored under the catalog or Vagrant Cloud name when the lock's URL stands in for it.
    let name = crate::boxes::listed_name(&spec.box_ref).filter(|_| reference != spec.box_ref);
    let fetched = checked.and_then(|()| fetch_box(ctx, &store, &reference, format, insecure, name));
    let gone = |url: &str, why: Option<String>| -> anyhow::Error {
        crate::envfile::Error::Lock {
            path: LockFile::path_for(project_dir),
            message: format!(
                "machine {} is pinned to box {pinned} from {url}, which upstream no longer serves; \
                 run `envy box update {}` to pin the newest build of {source_text}{}",
                spec.name,
                spec.name,
                why.map(|w| format!(" ({w})")).unwrap_or_default()
            ),
        }
        .into()
    };
    match fetched {
        Ok(fetched) if fetched.stored.digest == *pinned => Ok(fetched.stored),
        Ok(fetched) => Err(pin_broken(spec, project_dir, &source_text, pinned, &fetched.stored.digest)),
        Err(e) => Err(match e.downcast_ref::<crate::boxes::Error>() {
            Some(crate::boxes::Error::WrongDigest { got, .. }) => pin_broken(spec, project_dir, &source_text, pinned, got),
            // Upstream keeps a few builds only: the pinned one may be gone, or its URL
            // may serve a newer one.
            Some(crate::boxes::Error::HttpStatus { url, status: 404 | 410, .. }) if locked.url.as_ref() == Some(url) => gone(url, None),
            Some(why @ crate::boxes::Error::UpstreamMoved { url, .. }) => gone(url, Some(why.to_string())),
            _ => e,
        }),
    }
}

/// Fetches (or finds stored) the box `reference` names, for `format`, listed under
/// `name` when given.
pub fn fetch_box(ctx: &Context, store: &Store, reference: &BoxRef, format: BoxFormat, insecure: bool, name: Option<String>) -> Result<Fetched> {
    let mut source = BoxSource::from_ref(reference, None, Some(format));
    source.insecure = insecure;
    source.name = name;
    store.ensure(&source, &ctx.ui)
}

/// The Envfile.lock entry that pins `reference` to the box: for a catalog or Vagrant
/// Cloud box also the URL and upstream digest of the build it is, for an `oci://`
/// image the index it was picked from.
pub fn lock_entry(reference: &BoxRef, fetched: &Fetched) -> LockedBox {
    let build = fetched.build.as_ref();
    LockedBox {
        source: source_key(reference),
        sha256: fetched.stored.digest.clone(),
        index: fetched.index.clone(),
        url: build.map(|b| b.url.clone()),
        upstream: build.and_then(|b| b.pin.as_ref()).map(|p| p.to_string()),
    }
}

/// The error for a source that no longer gives the box Envfile.lock pins.
fn pin_broken(spec: &MachineSpec, project_dir: &Path, source: &str, pinned: &str, got: &str) -> anyhow::Error {
    crate::envfile::Error::Lock {
        path: LockFile::path_for(project_dir),
        message: format!(
            "machine {} is pinned to box {pinned} but {source} now gives {got}; \
             if the new box is wanted, run `envy box update {}`",
            spec.name, spec.name
        ),
    }
    .into()
}

/// How a box reference is written in the lock (a changed reference re-pins).
pub fn source_key(reference: &BoxRef) -> String {
    match reference {
        BoxRef::Url { url, sha256: Some(d) } => format!("{url}#sha256={d}"),
        other => other.to_string(),
    }
}

/// Checks every host port is free; an `auto` forward moves to a free port instead.
/// A port in `claimed` (given to a machine of this `up` that has not bound it yet) counts as taken.
fn resolve_forwards(ctx: &Context, machine: &str, wanted: &[Forward], record: Option<&MachineRecord>, claimed: &[Forward]) -> Result<Vec<Forward>> {
    let free = |f: &Forward, port: u16| f.host_port_free(port) && !claimed.iter().any(|c| c.host_port == port && c.protocol == f.protocol);
    let mut out = Vec::with_capacity(wanted.len());
    for f in wanted {
        // A port picked earlier for an auto forward is tried first, so it stays stable.
        let previous = record
            .and_then(|r| r.forwards.iter().find(|p| p.guest_port == f.guest_port && p.protocol == f.protocol))
            .filter(|_| f.auto)
            .map(|p| p.host_port);
        let mut port = previous.unwrap_or(f.host_port);
        if !free(f, port) && previous.is_some() {
            port = f.host_port;
        }
        if !free(f, port) {
            if !f.auto {
                return Err(provider::Error::PortTaken {
                    host_ip: f.host_ip,
                    host_port: port,
                    protocol: f.protocol.as_str(),
                    machine: machine.to_string(),
                    holder: holder_of(port),
                }
                .into());
            }
            // The kernel may hand out again a port a machine of this `up` was just given.
            port = f.protocol.free_port(f.host_ip)?;
            for _ in 0..16 {
                if free(f, port) {
                    break;
                }
                port = f.protocol.free_port(f.host_ip)?;
            }
            ctx.ui.step(format!("{machine}: host port {} is taken; forwarding {} -> guest {} instead", f.host_port, port, f.guest_port));
        }
        out.push(Forward { host_port: port, ..f.clone() });
    }
    Ok(out)
}

/// "process NAME (pid N)" holding a TCP port, found through /proc (best effort).
fn holder_of(port: u16) -> Option<String> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|file| {
        let text = std::fs::read_to_string(file).ok()?;
        text.lines().skip(1).find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
            // State 0A is LISTEN.
            (local_port == port && cols.get(3) == Some(&"0A")).then(|| cols.get(9).map(|s| s.to_string()))?
        })
    })?;
    let target = format!("socket:[{inode}]");
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = proc_entry.file_name().to_string_lossy().to_string();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target) {
                let comm = std::fs::read_to_string(proc_entry.path().join("comm")).unwrap_or_default();
                return Some(format!("process {} (pid {pid})", comm.trim()));
            }
        }
    }
    None
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
