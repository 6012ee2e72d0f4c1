//! `envy doctor` on the remotes added with `envy remote add`: each is asked, over its
//! pinned TLS connection, whether it answers, whether it trusts envy's certificate,
//! which API it speaks and, for a cluster, which members are online.

use serde_json::Value;

use super::client::Client;
use super::{Error, Remotes};
use crate::model::{CheckStatus, HostCheck};
use crate::state::Home;

/// The REST API version envy speaks (LXD and Incus alike).
const API_VERSION: &str = "1.0";

/// The checks of every remote, in name order; none when no remote was added.
pub fn remotes(home: &Home) -> Vec<HostCheck> {
    let remotes = match Remotes::load(home) {
        Ok(remotes) => remotes,
        Err(e) => {
            return vec![check("lxd remotes", CheckStatus::Fail, format!("{e:#}"), Some("fix or remove the file named above".into()))]
        }
    };
    let mut checks = Vec::new();
    for (name, remote) in remotes.list() {
        let client = match remotes.tls(Some(&remote.fingerprint)) {
            Ok((config, verifier)) => Client::https(name, &remote.address, config, verifier),
            Err(e) => {
                checks.push(check(name, CheckStatus::Fail, format!("{e:#}"), Some(format!("run `envy remote remove {name}` and add it again"))));
                continue;
            }
        };
        checks.extend(one(name, &client));
    }
    checks
}

fn check(name: &str, status: CheckStatus, detail: String, advice: Option<String>) -> HostCheck {
    HostCheck { name: name.to_string(), status, detail, advice, version_from: None }
}

/// Reachable (and showing the pinned certificate), trusted, its API; then its members.
fn one(name: &str, client: &Client) -> Vec<HostCheck> {
    let server = match client.get("/1.0", "asking for its API") {
        Ok(server) => server,
        Err(e @ Error::CertificateChanged { .. }) => return vec![check(name, CheckStatus::Fail, e.to_string(), None)],
        Err(e) => {
            let advice = format!("start the daemon or fix the network to {}; machines with remote = \"{name}\" cannot be reached until then", client.server);
            return vec![check(name, CheckStatus::Fail, e.to_string(), Some(advice))];
        }
    };
    let mut checks = vec![api(name, client, &server)];
    let trust = format!("{name} trust");
    if server["auth"] != "trusted" {
        let advice = format!(
            "the server no longer trusts envy's certificate (it was removed with `lxc config trust remove`?): \
             make a token with `lxc config trust add --name envy` there, then `envy remote remove {name}` and \
             `envy remote add {name} https://{} --token TOKEN`",
            address(client)
        );
        checks.push(check(&trust, CheckStatus::Fail, "envy's client certificate is not trusted".into(), Some(advice)));
        return checks;
    }
    checks.push(check(&trust, CheckStatus::Ok, "envy's client certificate is trusted".into(), None));
    if server["environment"]["server_clustered"] == true {
        checks.push(members(name, client));
    }
    checks
}

/// `remote (HOST:PORT)` → `HOST:PORT`, for advice.
fn address(client: &Client) -> &str {
    client.server.rsplit_once('(').map_or(&client.server, |(_, a)| a.trim_end_matches(')'))
}

/// Which server answers (LXD or Incus, its version) and whether it speaks envy's API.
fn api(name: &str, client: &Client, server: &Value) -> HostCheck {
    let environment = &server["environment"];
    let product = match environment["server"].as_str() {
        Some("incus") => "Incus",
        _ => "LXD",
    };
    let version = environment["server_version"].as_str().unwrap_or("of an unknown version");
    let api = server["api_version"].as_str().unwrap_or("unknown");
    let detail = format!("{product} {version} at {}, API {api}", address(client));
    if api == API_VERSION {
        check(name, CheckStatus::Ok, detail, None)
    } else {
        check(name, CheckStatus::Fail, detail, Some(format!("envy speaks the {API_VERSION} API of LXD and Incus; this server does not")))
    }
}

/// Every cluster member and its state; a member that is not online is a warning,
/// with what it means for the machines placed on it.
fn members(name: &str, client: &Client) -> HostCheck {
    let title = format!("{name} members");
    let list = match client.get("/1.0/cluster/members?recursion=1", "listing the cluster's members") {
        Ok(list) => list,
        Err(e) => return check(&title, CheckStatus::Fail, e.to_string(), None),
    };
    let members: Vec<(String, String, String)> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let text = |key: &str| m[key].as_str().unwrap_or_default().to_string();
            (text("server_name"), text("status"), text("message"))
        })
        .collect();
    let (online, down): (Vec<_>, Vec<_>) = members.iter().partition(|(_, status, _)| status == "Online");
    if down.is_empty() {
        let names: Vec<&str> = online.iter().map(|(n, _, _)| n.as_str()).collect();
        return check(&title, CheckStatus::Ok, format!("{} online", names.join(", ")), None);
    }
    let detail = members
        .iter()
        .map(|(n, status, message)| match message.as_str() {
            "" | "Fully operational" => format!("{n} {}", status.to_lowercase()),
            message => format!("{n} {} ({message})", status.to_lowercase()),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let names: Vec<&str> = down.iter().map(|(n, _, _)| n.as_str()).collect();
    let advice = format!(
        "machines placed on {} (`target`) cannot be created or started there until it is back (start its daemon, \
         or `lxc cluster restore MEMBER` after an evacuation); `envy status` shows where each machine runs",
        names.join(", ")
    );
    check(&title, CheckStatus::Warn, detail, Some(advice))
}
