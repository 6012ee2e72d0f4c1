//! Readiness: a machine is up when its `ready` check passes, as a compose service is
//! healthy when its healthcheck does. The probe runs inside the machine through the
//! provider's exec, once a second, until it passes or the Envfile's timeout runs out.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::context::Context;
use crate::model::shell_quote;
use crate::envfile::ReadyCheck;
use crate::plan::MachinePlan;
use crate::provider::{self, ExecRequest};

/// The http probe's exit code when the machine has neither curl nor wget.
const NO_HTTP_CLIENT: i32 = 127;

/// A machine whose `ready` check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "machine {machine} is not ready after {secs}s: its ready check ({check}) still fails (last exit code {code}); \
         see why with `envy exec {machine} -- {probe}, or give it longer with ready's `timeout` in the Envfile"
    )]
    Timeout { machine: String, check: String, secs: u64, code: i32, probe: String },
    #[error(
        "machine {machine} has neither curl nor wget for its ready check ({check}): install one in its provisioning, \
         or check the port with ready = {{ tcp = PORT }}"
    )]
    NoHttpClient { machine: String, check: String },
}

/// Waits until the machine's `ready` check passes; at once when it has none.
pub fn wait(ctx: &Context, plan: &MachinePlan) -> Result<()> {
    let Some(ready) = &plan.spec.ready else { return Ok(()) };
    let name = plan.name().to_string();
    let check = describe(&ready.check);
    // As root, like provisioning: the check reads what any user of the machine may not.
    let request = ExecRequest { command: probe(&ready.check), as_root: true, ..ExecRequest::default() };
    let provider = provider::for_kind(plan.spec.provider)?;
    ctx.ui.step(format!("{name}: waiting until ready ({check}), at most {}s", ready.timeout.as_secs()));
    let start = Instant::now();
    loop {
        let code = provider.exec(plan, &request)?;
        match code {
            0 => {
                ctx.ui.step(format!("{name}: ready after {:.1}s", start.elapsed().as_secs_f64()));
                return Ok(());
            }
            NO_HTTP_CLIENT if matches!(ready.check, ReadyCheck::Http(_)) => {
                return Err(Error::NoHttpClient { machine: name, check }.into())
            }
            _ if crate::signals::interrupted() => {
                return Err(crate::signals::Interrupted { doing: format!("waiting for machine {name} to be ready") }.into())
            }
            _ if start.elapsed() >= ready.timeout => {
                let probe = probe_for_humans(&ready.check);
                return Err(Error::Timeout { machine: name, check, secs: ready.timeout.as_secs(), code, probe }.into());
            }
            _ => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// The check as the Envfile says it.
fn describe(check: &ReadyCheck) -> String {
    match check {
        ReadyCheck::Command(cmd) => format!("`{cmd}`"),
        ReadyCheck::Tcp(port) => format!("tcp port {port}"),
        ReadyCheck::Http(url) => format!("http {url}"),
    }
}

/// The probe's shell script and its one argument (`$1`); exit 0 means ready.
fn script(check: &ReadyCheck) -> (String, String) {
    match check {
        ReadyCheck::Command(cmd) => ("/bin/sh -c \"$1\"".to_string(), cmd.clone()),
        // A listening socket in the machine's own table: no network tool needed in the box.
        ReadyCheck::Tcp(port) => (
            format!("grep -Eq '^ *[0-9]+: [0-9A-F]+:{port:04X} [0-9A-F]+:0+ 0A ' /proc/net/tcp /proc/net/tcp6"),
            String::new(),
        ),
        ReadyCheck::Http(url) => (
            format!(
                "if command -v curl; then curl -fsS -o /dev/null --max-time 5 \"$1\"; \
                 elif command -v wget; then wget -q -O /dev/null -T 5 \"$1\"; else exit {NO_HTTP_CLIENT}; fi"
            ),
            url.clone(),
        ),
    }
}

/// The probe as run: quiet, since a check that keeps failing must not flood the output.
fn probe(check: &ReadyCheck) -> Vec<String> {
    let (script, arg) = script(check);
    vec!["/bin/sh".into(), "-c".into(), format!("exec >/dev/null 2>&1; {script}"), "ready".into(), arg]
}

/// A command a user can run with `envy exec` to see why the check fails.
fn probe_for_humans(check: &ReadyCheck) -> String {
    match check {
        ReadyCheck::Command(cmd) => format!("sh -c {}`", shell_quote(cmd)),
        ReadyCheck::Tcp(port) => format!("cat /proc/net/tcp` (what listens; port {port} is {port:04X}, listening is state 0A)"),
        ReadyCheck::Http(url) => format!("wget -O- {}`", shell_quote(url)),
    }
}
