//! `envy list`: every environment of this user, across projects.

use anyhow::Result;
use serde_json::json;

use crate::context::Context;
use crate::workspace::Workspace;
use crate::state::registry;

pub fn run(ctx: &Context) -> Result<i32> {
    let mut projects = Vec::new();
    for dir in registry::projects(&ctx.home)? {
        let project_ctx = Context { cwd: dir.clone(), home: ctx.home.clone(), config: ctx.config.clone(), ui: ctx.ui.clone(), no_wait: true };
        let entry = match Workspace::load(&project_ctx) {
            Ok(ws) => {
                let machines = ws
                    .envfile
                    .machines
                    .iter()
                    .map(|spec| super::status::machine_json(&ws.plan(&ctx.home, spec)?))
                    .collect::<Result<Vec<_>>>()?;
                json!({ "project": dir, "machines": machines })
            }
            Err(e) => json!({ "project": dir, "error": format!("{e:#}"), "machines": [] }),
        };
        projects.push(entry);
    }
    if ctx.ui.json {
        super::print_json(&json!({ "version": 1, "projects": projects }))?;
        return Ok(0);
    }
    if projects.is_empty() {
        println!("no environments; run `envy up` in a project folder");
    }
    for p in &projects {
        println!("{}", p["project"].as_str().unwrap_or(""));
        if let Some(e) = p["error"].as_str() {
            println!("  error: {e}");
        }
        super::status::print_table(p["machines"].as_array().map(Vec::as_slice).unwrap_or(&[]));
        println!();
    }
    Ok(0)
}
