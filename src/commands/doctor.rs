//! `envy doctor`: check the host and say what to do about each problem.

use anyhow::Result;
use serde_json::json;

use crate::context::Context;
use crate::doctor::{self, Finding};
use crate::model::{CheckStatus, HostCheck, ProviderKind};
use crate::workspace::Workspace;

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
            (serde_json::Value::Null, every_provider())
        }
        Err(e) => {
            checks.push(Finding {
                check: HostCheck {
                    name: "Envfile".into(),
                    status: CheckStatus::Fail,
                    detail: format!("{e:#}"),
                    advice: Some("fix the Envfile at the position shown (docs/envfile.md)".into()),
                    version_from: None,
                },
                needed_by: every_provider(),
                group: None,
            });
            (json!({ "valid": false, "error": format!("{e:#}") }), every_provider())
        }
    };
    let blocking = checks
        .iter()
        .filter(|c| c.check.status == CheckStatus::Fail && c.needed_by.iter().any(|k| needed.contains(k)))
        .count();
    if ctx.ui.json {
        super::print_json(&json!({ "version": 1, "ok": blocking == 0, "envfile": envfile, "checks": checks }))?;
    } else {
        let mut heading = None;
        for Finding { check: c, group, .. } in &checks {
            if *group != heading {
                heading = *group;
                if let Some(group) = group {
                    println!("{group}:");
                }
            }
            let mark = match c.status {
                CheckStatus::Ok => "ok  ",
                CheckStatus::Warn => "warn",
                CheckStatus::Fail => "FAIL",
            };
            println!("[{mark}] {:<12} {}", c.name, c.detail);
            if let Some(advice) = &c.advice {
                println!("       -> {advice}");
            }
        }
    }
    Ok(if blocking == 0 { 0 } else { crate::error::code::PROVIDER })
}

fn every_provider() -> Vec<ProviderKind> {
    crate::provider::registered().iter().map(|r| r.kind).collect()
}
