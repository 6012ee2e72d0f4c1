//! `envy remote add|list|remove`: the LXD/Incus servers lxd machines can run on.

use anyhow::{bail, Result};
use serde_json::json;

use crate::cli::{RemoteAddArgs, RemoteCommand, RemoteRemoveArgs};
use crate::context::Context;
use crate::provider::lxd::{remotes, Client, Remotes};

pub fn run(ctx: &Context, cmd: RemoteCommand) -> Result<i32> {
    let mut known = Remotes::load(&ctx.home)?;
    match cmd {
        RemoteCommand::Add(args) => add(ctx, &mut known, args),
        RemoteCommand::List => {
            if ctx.ui.json {
                super::print_json(&json!({ "version": 1, "remotes": known.list() }))?;
            } else {
                println!("{:<16} {:<28} CERTIFICATE SHA256", "NAME", "ADDRESS");
                for (name, remote) in known.list() {
                    println!("{name:<16} {:<28} {}", remote.address, remote.fingerprint);
                }
            }
            Ok(0)
        }
        RemoteCommand::Remove(RemoteRemoveArgs { name }) => {
            if !known.remove(&name)? {
                bail!(crate::provider::lxd::Error::Unsupported(format!("there is no remote named {name}; `envy remote list` shows the known ones")));
            }
            ctx.ui.step(format!("forgot remote {name}; its server still trusts envy's certificate until its administrator removes it"));
            Ok(0)
        }
    }
}

fn add(ctx: &Context, known: &mut Remotes, args: RemoteAddArgs) -> Result<i32> {
    let RemoteAddArgs { name, url, token } = args;
    if !crate::model::is_placement_name(&name) {
        bail!(crate::provider::lxd::Error::Unsupported(format!(
            "remote name {name:?} is not valid: use 1-63 letters, digits and '-', starting with a letter"
        )));
    }
    if known.list().contains_key(&name) {
        bail!(crate::provider::lxd::Error::Unsupported(format!(
            "a remote named {name} exists already; `envy remote remove {name}` first to add it again"
        )));
    }
    let address = remotes::parse_url(&url)?;
    let (config, verifier) = known.tls(remotes::token_fingerprint(&token).as_deref())?;
    let client = Client::https(&name, &address, config, verifier.clone());
    let mut server = client.get("/1.0", "reading the server's description")?;
    if server["auth"] != "trusted" {
        let body = json!({ "type": "client", "password": token.trim(), "name": format!("envy-{name}") });
        client.call("POST", "/1.0/certificates", Some(&body), "trading the token for trust")?;
        server = client.get("/1.0", "reading the server's description")?;
        if server["auth"] != "trusted" {
            bail!(crate::provider::lxd::Error::Unsupported(format!(
                "{} accepted the token but does not trust envy's certificate; make a new token with `lxc config trust add --name envy` and try again",
                client.server
            )));
        }
    }
    let fingerprint = verifier.seen().expect("the handshake saw the server's certificate");
    known.insert(&name, remotes::Remote { address: address.clone(), fingerprint: fingerprint.clone() })?;
    let env = &server["environment"];
    let kind = if env["server"] == "incus" { "Incus" } else { "LXD" };
    let cluster = if env["server_clustered"] == true { ", clustered" } else { "" };
    ctx.ui.step(format!(
        "added remote {name}: {kind} {} at {address}{cluster}; its certificate is pinned (sha256 {fingerprint})",
        env["server_version"].as_str().unwrap_or("?")
    ));
    Ok(0)
}
