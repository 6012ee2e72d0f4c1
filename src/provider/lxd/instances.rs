//! A machine as an LXD instance: its name and envy's mark, what it is created with
//! (image, limits, sync folders as disk devices, forwards as proxy devices), its state
//! changes and snapshots. An instance without envy's mark is never used or deleted.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::client::{url_escape, Client};
use super::Error;
use crate::model::Forward;
use crate::plan::{MachinePlan, OpenedFolder};
use crate::provider::SnapshotInfo;

/// The config key that marks an instance as envy's: the project id it belongs to.
pub const MARK_PROJECT: &str = "user.envy.project";
/// The machine's name in its Envfile.
pub const MARK_MACHINE: &str = "user.envy.machine";
/// The box digest the instance was made from (the one Envfile.lock pins).
pub const MARK_BOX: &str = "user.envy.box";
/// envy names the devices it adds with this prefix, and replaces only those.
const DEVICE_PREFIX: &str = "envy-";
/// How long a graceful stop may take before LXD reports failure.
const STOP_TIMEOUT: u64 = 30;

/// `/1.0/instances/NAME`.
pub fn path(plan: &MachinePlan) -> String {
    format!("/1.0/instances/{}", url_escape(&plan.runtime_id))
}

/// The instance of `plan` as the daemon describes it, or None when there is none.
/// One of the same name that envy did not make (for this machine) is an error.
pub fn get(client: &Client, plan: &MachinePlan) -> Result<Option<Value>, Error> {
    let instance = match client.get(&path(plan), "reading the machine's instance") {
        Ok(v) => v,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let config = &instance["config"];
    if config[MARK_PROJECT] != plan.project.id.as_str() || config[MARK_MACHINE] != plan.name() {
        return Err(Error::NotEnvys { server: client.server.clone(), name: plan.runtime_id.clone() });
    }
    Ok(Some(instance))
}

/// Creates the (stopped) instance from the image `alias`, on the plan's target member.
pub fn create(client: &Client, plan: &MachinePlan, alias: &str, box_digest: &str, attached: Attachments) -> Result<(), Error> {
    let mut config = BTreeMap::from([
        (MARK_PROJECT.to_string(), plan.project.id.clone()),
        (MARK_MACHINE.to_string(), plan.name().to_string()),
        (MARK_BOX.to_string(), box_digest.to_string()),
        ("limits.cpu".to_string(), plan.spec.cpus.to_string()),
        ("limits.memory".to_string(), format!("{}MiB", plan.spec.memory >> 20)),
        ("raw.lxc".to_string(), format!("lxc.init.cmd = /bin/sh {}", super::images::INIT_PATH)),
    ]);
    config.extend(attached.idmap.map(|map| ("raw.idmap".to_string(), map)));
    let body = json!({
        "name": plan.runtime_id,
        "type": "container",
        "source": { "type": "image", "alias": alias },
        "config": config,
        "devices": attached.devices,
    });
    let target = plan.spec.placement.target.as_ref().map(|t| format!("?target={}", url_escape(t))).unwrap_or_default();
    client.call("POST", &format!("/1.0/instances{target}"), Some(&body), "creating the machine's instance")?;
    Ok(())
}

/// What envy attaches to an instance: its devices and the id mapping its sync folders need.
pub struct Attachments {
    pub devices: Map<String, Value>,
    /// `raw.idmap`: the owner of the first sync folder is root in the machine, so root
    /// there reads and writes the project as its owner does on the host (as with runc).
    /// The daemon's idmapped-mount `shift` would do the same per device, but LXD 5.0
    /// refuses it on these kernels ("idmapping abilities are required").
    pub idmap: Option<String>,
}

/// envy's devices: each sync folder a disk device whose source is the folder envy
/// opened (`/proc/<envy's pid>/fd/N`, which the daemon resolves while it mounts at
/// start), each forward a proxy device listening on the host.
pub fn attachments(folders: &[OpenedFolder], forwards: &[Forward]) -> Attachments {
    let mut devices = Map::new();
    let pid = std::process::id();
    for (i, opened) in folders.iter().enumerate() {
        use std::os::fd::AsRawFd;
        let disk = json!({
            "type": "disk",
            "source": format!("/proc/{pid}/fd/{}", opened.fd.as_raw_fd()),
            "path": opened.folder.guest,
            "readonly": opened.folder.readonly.to_string(),
        });
        devices.insert(format!("{DEVICE_PREFIX}sync-{i}"), disk);
    }
    for (i, f) in forwards.iter().enumerate() {
        let proto = f.protocol.as_str();
        let host = match f.host_ip {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        devices.insert(
            format!("{DEVICE_PREFIX}forward-{i}"),
            json!({
                "type": "proxy",
                "listen": format!("{proto}:{host}:{}", f.host_port),
                "connect": format!("{proto}:127.0.0.1:{}", f.guest_port),
                "bind": "host",
            }),
        );
    }
    let idmap = folders.first().and_then(|opened| {
        let meta = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&opened.fd)).ok()?;
        Some(format!("uid {} 0\ngid {} 0", meta.st_uid, meta.st_gid))
    });
    Attachments { devices, idmap }
}

/// Replaces envy's devices of a stopped instance (fresh folder fds, this start's ports),
/// keeping any the user added.
pub fn replace_devices(client: &Client, plan: &MachinePlan, mut instance: Value, attached: Attachments) -> Result<(), Error> {
    let mut all: Map<String, Value> = instance["devices"].as_object().cloned().unwrap_or_default();
    all.retain(|name, _| !name.starts_with(DEVICE_PREFIX));
    all.extend(attached.devices);
    instance["devices"] = Value::Object(all);
    match attached.idmap {
        Some(map) => instance["config"]["raw.idmap"] = json!(map),
        None => drop(instance["config"].as_object_mut().and_then(|c| c.remove("raw.idmap"))),
    }
    client.call("PUT", &path(plan), Some(&instance), "updating the machine's devices")?;
    Ok(())
}

/// `start`, `stop` (graceful unless `force`) or `restart`, awaited.
pub fn set_state(client: &Client, plan: &MachinePlan, action: &str, force: bool) -> Result<(), Error> {
    let body = json!({ "action": action, "timeout": STOP_TIMEOUT, "force": force });
    client.call("PUT", &format!("{}/state", path(plan)), Some(&body), &format!("{action}ing the machine"))?;
    Ok(())
}

/// Deletes the (stopped) instance and its snapshots.
pub fn delete(client: &Client, plan: &MachinePlan) -> Result<(), Error> {
    client.call("DELETE", &path(plan), None, "deleting the machine's instance")?;
    Ok(())
}

fn snapshot_path(plan: &MachinePlan, name: &str) -> String {
    format!("{}/snapshots/{}", path(plan), url_escape(name))
}

/// The instance's snapshots, oldest first.
pub fn snapshots(client: &Client, plan: &MachinePlan) -> Result<Vec<SnapshotInfo>, Error> {
    let list = client.get(&format!("{}/snapshots?recursion=1", path(plan)), "listing the machine's snapshots")?;
    let mut out: Vec<SnapshotInfo> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            Some(SnapshotInfo {
                name: s["name"].as_str()?.to_string(),
                created: s["created_at"].as_str().and_then(epoch_seconds).unwrap_or(0),
                size: s["size"].as_u64().unwrap_or(0),
                memory: s["stateful"].as_bool().unwrap_or(false),
            })
        })
        .collect();
    out.sort_by_key(|s| s.created);
    Ok(out)
}

pub fn snapshot_create(client: &Client, plan: &MachinePlan, name: &str) -> Result<(), Error> {
    let body = json!({ "name": name, "stateful": false });
    client.call("POST", &format!("{}/snapshots", path(plan)), Some(&body), &format!("saving snapshot {name}"))?;
    Ok(())
}

pub fn snapshot_delete(client: &Client, plan: &MachinePlan, name: &str) -> Result<(), Error> {
    client.call("DELETE", &snapshot_path(plan, name), None, &format!("deleting snapshot {name}"))?;
    Ok(())
}

/// Renames a snapshot (a replaced one takes the old name once it is whole).
pub fn snapshot_rename(client: &Client, plan: &MachinePlan, from: &str, to: &str) -> Result<(), Error> {
    client.call("POST", &snapshot_path(plan, from), Some(&json!({ "name": to })), &format!("renaming snapshot {from} to {to}"))?;
    Ok(())
}

/// Restores the instance's filesystem to snapshot `name` (LXD stops and restarts a
/// running container around it).
pub fn snapshot_restore(client: &Client, plan: &MachinePlan, name: &str) -> Result<(), Error> {
    client.call("PUT", &path(plan), Some(&json!({ "restore": name })), &format!("restoring snapshot {name}"))?;
    Ok(())
}

/// Seconds since the epoch of an RFC 3339 time as LXD writes it
/// (`2026-11-28T03:27:40.157Z`, or with a `+hh:mm` offset).
pub fn epoch_seconds(text: &str) -> Option<u64> {
    let (date, rest) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = rest.get(..8)?;
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let zone = rest[8..].trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let offset = match zone {
        "Z" | "" => 0,
        z if z.len() == 6 => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            sign * (z[1..3].parse::<i64>().ok()? * 3600 + z[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss - offset).ok()
}

#[cfg(test)]
mod tests {
    use super::epoch_seconds;

    #[test]
    fn reads_lxd_times() {
        assert_eq!(epoch_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(epoch_seconds("2026-11-28T03:27:40.15716682Z"), Some(1_795_836_460));
        assert_eq!(epoch_seconds("2026-11-28T04:27:40+01:00"), Some(1_795_836_460));
        assert_eq!(epoch_seconds("0001-01-01T00:00:00Z"), None);
        assert_eq!(epoch_seconds("yesterday"), None);
    }
}
