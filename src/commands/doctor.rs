//! `envy doctor`: check the host and say what to do about each problem.

use anyhow::Result;
use serde_json::json;

use crate::context::Context;
use crate::doctor::{self, Status};
use crate::envfile::ProviderKind;
use crate::plan::Workspace;

pub fn run(ctx: &Context) -> Result<i32> {
    let mut checks = doctor::all(ctx.home.root());
    // With an Envfile here, only what its machines use decides the exit code.
    let (envfile, needed): (serde_json::Value, Vec<ProviderKind>) = match Workspace::load(ctx) {
        Ok(ws) => {
            let mut kinds: Vec<ProviderKind> = ws.envfile.machines.iter().map(|m| m.provider).collect();
            kinds.dedup();
            (json!({ "path": ws.envfile.path, "valid": true, "error": null }), kinds)
        }
        Err(e) if e.downcast_ref::<crate::envfile::Error>().is_some_and(|e| matches!(e, crate::envfile::Error::NotFound { .. })) => {
            (serde_json::Value::Null, vec![ProviderKind::Container, ProviderKind::Qemu])
        }
        Err(e) => {
            checks.push(doctor::Check {
                name: "Envfile",
                status: Status::Fail,
                detail: format!("{e:#}"),
                advice: Some("fix the Envfile at the position shown (docs/envfile.md)".into()),
                needed_by: vec![ProviderKind::Container, ProviderKind::Qemu],
            });
            (json!({ "valid": false, "error": format!("{e:#}") }), vec![ProviderKind::Container, ProviderKind::Qemu])
        }
    };
    let blocking = checks
        .iter()
        .filter(|c| c.status == Status::Fail && c.needed_by.iter().any(|k| needed.contains(k)))
        .count();
    if ctx.ui.json {
        super::print_json(&json!({ "version": 1, "ok": blocking == 0, "envfile": envfile, "checks": checks }))?;
    } else {
        for c in &checks {
            let mark = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            println!("[{mark}] {:<12} {}", c.name, c.detail);
            if let Some(advice) = &c.advice {
                println!("       -> {advice}");
            }
        }
    }
    Ok(if blocking == 0 { 0 } else { crate::error::code::PROVIDER })
}
