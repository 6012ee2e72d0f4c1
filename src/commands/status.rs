//! `envy status`: each machine's state, read from its processes.

use anyhow::Result;
use serde_json::json;

use crate::cli::MachinesArgs;
use crate::context::Context;
use crate::plan::MachinePlan;
use crate::workspace::Workspace;
use crate::provider::{self, MachineState};
use crate::state::record::MachineRecord;

pub fn run(ctx: &Context, args: MachinesArgs) -> Result<i32> {
    let ws = Workspace::load(ctx)?;
    let mut rows = Vec::new();
    for spec in ws.select(&args.machines)? {
        rows.push(machine_json(&ws.plan(&ctx.home, spec)?)?);
    }
    if let Some(warning) = ws.orphan_warning() {
        ctx.ui.warn(warning);
    }
    if ctx.ui.json {
        super::print_json(&json!({ "version": 1, "project": ws.project.dir, "machines": rows }))?;
    } else {
        print_table(&rows);
    }
    Ok(0)
}

/// One machine's status as JSON (also used by `envy list`).
pub fn machine_json(plan: &MachinePlan) -> Result<serde_json::Value> {
    let provider = provider::for_kind(plan.spec.provider)?;
    let state = provider.state(plan)?;
    let record = MachineRecord::load(&plan.dir)?;
    let info = if state == MachineState::NotCreated { Default::default() } else { provider.info(plan)? };
    let forwards = record.as_ref().map(|r| r.forwards.clone()).unwrap_or_else(|| plan.spec.forwards.clone());
    Ok(json!({
        "name": plan.name(),
        "provider": plan.spec.provider,
        "state": state,
        "box": plan.spec.box_ref.to_string(),
        "box_digest": record.as_ref().map(|r| r.box_digest.clone()),
        "ip": info.ip,
        "ssh_port": info.ssh_port,
        "pid": info.pid,
        "sync_transport": info.sync_transport,
        "location": info.location,
        "forwards": forwards,
        "auto_forwards": crate::autoforward::live(plan),
        "provisioned": record.as_ref().is_some_and(|r| r.provisioned),
        "log_tail": if state == MachineState::Stopped { info.log_tail } else { None },
    }))
}

/// A plain table: NAME PROVIDER STATE FORWARDS.
pub fn print_table(rows: &[serde_json::Value]) {
    println!("{:<16} {:<10} {:<12} FORWARDS", "NAME", "PROVIDER", "STATE");
    for row in rows {
        let forwards: Vec<String> = row["forwards"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| format!("{}:{}->{}", f["host_ip"].as_str().unwrap_or(""), f["host_port"], f["guest_port"]))
            .chain(row["auto_forwards"].as_array().into_iter().flatten().map(|f| {
                format!("{}:{}->{} (auto)", f["host_ip"].as_str().unwrap_or(""), f["host_port"], f["guest_port"])
            }))
            .collect();
        println!(
            "{:<16} {:<10} {:<12} {}",
            row["name"].as_str().unwrap_or(""),
            row["provider"].as_str().unwrap_or(""),
            row["state"].as_str().unwrap_or(""),
            forwards.join(" ")
        );
        let transports: Vec<&str> = row["sync_transport"].as_array().into_iter().flatten().filter_map(|t| t.as_str()).collect();
        if !transports.is_empty() {
            println!("  sync folders over {}", transports.join(", "));
        }
        if let Some(member) = row["location"].as_str() {
            println!("  runs on cluster member {member}");
        }
        if let Some(tail) = row["log_tail"].as_str() {
            println!("  last console lines of {}:", row["name"].as_str().unwrap_or(""));
            for line in tail.lines() {
                println!("  | {line}");
            }
        }
    }
}
