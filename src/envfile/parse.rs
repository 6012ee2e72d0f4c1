//! Reading an Envfile: TOML into spanned raw values, then validated into the model.
//! Every error carries file:line:column of the offending key or value.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::model::parse_size;

use super::{host, AutoForward, Envfile, Error, MachineSpec, Placement, ProvisionAction, ProvisionStep, Ready, ReadyCheck, SyncFolder, SyncMode, UserData};
use crate::model::{Accel, BoxRef, Forward, Protocol, ProviderKind};

/// The smallest disk a machine (or `envy box build --disk-size`) may ask for.
pub const MIN_DISK: u64 = 64 << 20;

/// Name given to the machine of an Envfile that declares no `[machine.NAME]`.
pub const DEFAULT_MACHINE: &str = "default";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvfile {
    defaults: Option<RawMachine>,
    machine: Option<BTreeMap<Spanned<String>, Spanned<RawMachine>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    #[serde(rename = "box")]
    box_ref: Option<Spanned<toml::Value>>,
    provider: Option<Spanned<String>>,
    cpus: Option<Spanned<i64>>,
    memory: Option<Spanned<String>>,
    disk: Option<Spanned<String>>,
    accel: Option<Spanned<String>>,
    env: Option<BTreeMap<String, Spanned<String>>>,
    forward: Option<Vec<Spanned<toml::Value>>>,
    sync: Option<Vec<Spanned<toml::Value>>>,
    sync_mode: Option<Spanned<String>>,
    provision: Option<Vec<Spanned<toml::Value>>>,
    ready: Option<Spanned<toml::Value>>,
    user_data: Option<Spanned<String>>,
    forward_auto: Option<Spanned<toml::Value>>,
    remote: Option<Spanned<String>>,
    target: Option<Spanned<String>>,
}

/// Looks for an Envfile in `dir` and its parents.
pub fn find(dir: &Path) -> Result<PathBuf, Error> {
    dir.ancestors()
        .map(|d| d.join(super::FILE_NAME))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::NotFound { dir: dir.to_path_buf() })
}

/// Reads and validates the Envfile at `path`. `default_provider` applies to machines
/// that name none (from the user's config).
pub fn load(path: &Path, default_provider: ProviderKind) -> Result<Envfile, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
    parse_str(path, &text, default_provider)
}

/// Validates Envfile text as if read from `path` (relative paths resolve against its folder).
pub fn parse_str(path: &Path, text: &str, default_provider: ProviderKind) -> Result<Envfile, Error> {
    let project_dir = path
        .parent()
        .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
        .unwrap_or(Path::new("."));
    let project_dir = std::path::absolute(project_dir).unwrap_or_else(|_| project_dir.to_path_buf());
    let reader = Reader { path, text, project_dir: &project_dir, default_provider };
    let raw: RawEnvfile = toml::from_str(text).map_err(|e| {
        let message = e.message().trim_end().replace('\n', " ");
        let hint = if message.contains("unknown field") {
            "; see docs/envfile.md for the keys an Envfile may hold"
        } else {
            ""
        };
        reader.error(e.span().unwrap_or(0..0), format!("{message}{hint}"))
    })?;

    let defaults = raw.defaults.unwrap_or_default();
    let mut machines = Vec::new();
    let mut keys = BTreeMap::new();
    match raw.machine {
        Some(table) if !table.is_empty() => {
            let mut entries: Vec<_> = table.into_iter().collect();
            entries.sort_by_key(|(name, _)| name.span().start);
            for (name, machine) in entries {
                reader.check_machine_name(&name)?;
                let span = machine.span();
                let machine = machine.into_inner();
                keys.extend(reader.key_places(name.get_ref(), &defaults, &machine, span.clone()));
                machines.push(reader.machine(name.into_inner(), &defaults, machine, span)?);
            }
        }
        _ => {
            let machine = defaults_as_machine(&defaults);
            keys.extend(reader.key_places(DEFAULT_MACHINE, &RawMachine::default(), &machine, 0..0));
            machines.push(reader.machine(DEFAULT_MACHINE.into(), &RawMachine::default(), machine, 0..0)?)
        }
    }
    reader.check_host_ports(&machines, text)?;
    Ok(Envfile { path: path.to_path_buf(), project_dir, machines, keys })
}

/// With no `[machine.*]`, `[defaults]` describes the one machine.
fn defaults_as_machine(defaults: &RawMachine) -> RawMachine {
    RawMachine {
        box_ref: defaults.box_ref.clone(),
        provider: defaults.provider.clone(),
        cpus: defaults.cpus.clone(),
        memory: defaults.memory.clone(),
        disk: defaults.disk.clone(),
        accel: defaults.accel.clone(),
        env: defaults.env.clone(),
        forward: defaults.forward.clone(),
        sync: defaults.sync.clone(),
        sync_mode: defaults.sync_mode.clone(),
        provision: defaults.provision.clone(),
        ready: defaults.ready.clone(),
        user_data: defaults.user_data.clone(),
        forward_auto: defaults.forward_auto.clone(),
        remote: defaults.remote.clone(),
        target: defaults.target.clone(),
    }
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A (machine, key) and the line and column where it is written.
type KeyPlace = ((String, &'static str), (usize, usize));

struct Reader<'a> {
    path: &'a Path,
    text: &'a str,
    project_dir: &'a Path,
    default_provider: ProviderKind,
}

impl Reader<'_> {
    fn error(&self, span: Range<usize>, message: impl Into<String>) -> Error {
        let (line, column) = line_col(self.text, span.start);
        Error::At { path: self.path.to_path_buf(), line, column, message: message.into() }
    }

    /// Where each key that decides a machine's settings is written (in its table or
    /// in `[defaults]`), for errors found after parsing (`Envfile::invalid`). The
    /// machine's own header stands for keys it does not set.
    fn key_places(&self, machine: &str, defaults: &RawMachine, m: &RawMachine, table: Range<usize>) -> Vec<KeyPlace> {
        fn first<T>(list: Option<&Vec<Spanned<T>>>) -> Option<Range<usize>> {
            list.and_then(|l| l.first()).map(|v| v.span())
        }
        let either = |own: Option<Range<usize>>, default: Option<Range<usize>>| own.or(default);
        let places: [(&'static str, Option<Range<usize>>); 16] = [
            ("", Some(table)),
            ("box", either(m.box_ref.as_ref().map(|v| v.span()), defaults.box_ref.as_ref().map(|v| v.span()))),
            ("provider", either(m.provider.as_ref().map(|v| v.span()), defaults.provider.as_ref().map(|v| v.span()))),
            ("cpus", either(m.cpus.as_ref().map(|v| v.span()), defaults.cpus.as_ref().map(|v| v.span()))),
            ("memory", either(m.memory.as_ref().map(|v| v.span()), defaults.memory.as_ref().map(|v| v.span()))),
            ("disk", either(m.disk.as_ref().map(|v| v.span()), defaults.disk.as_ref().map(|v| v.span()))),
            ("accel", either(m.accel.as_ref().map(|v| v.span()), defaults.accel.as_ref().map(|v| v.span()))),
            ("forward", either(first(m.forward.as_ref()), first(defaults.forward.as_ref()))),
            ("sync", either(first(m.sync.as_ref()), first(defaults.sync.as_ref()))),
            ("sync_mode", either(m.sync_mode.as_ref().map(|v| v.span()), defaults.sync_mode.as_ref().map(|v| v.span()))),
            ("provision", either(first(m.provision.as_ref()), first(defaults.provision.as_ref()))),
            ("ready", either(m.ready.as_ref().map(|v| v.span()), defaults.ready.as_ref().map(|v| v.span()))),
            ("user_data", either(m.user_data.as_ref().map(|v| v.span()), defaults.user_data.as_ref().map(|v| v.span()))),
            ("forward_auto", either(m.forward_auto.as_ref().map(|v| v.span()), defaults.forward_auto.as_ref().map(|v| v.span()))),
            ("remote", either(m.remote.as_ref().map(|v| v.span()), defaults.remote.as_ref().map(|v| v.span()))),
            ("target", either(m.target.as_ref().map(|v| v.span()), defaults.target.as_ref().map(|v| v.span()))),
        ];
        places
            .into_iter()
            .filter_map(|(key, span)| Some(((machine.to_string(), key), line_col(self.text, span?.start))))
            .collect()
    }

    fn check_machine_name(&self, name: &Spanned<String>) -> Result<(), Error> {
        let n = name.get_ref();
        let ok = !n.is_empty()
            && n.len() <= 32
            && n.starts_with(|c: char| c.is_ascii_lowercase())
            && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(())
        } else {
            Err(self.error(
                name.span(),
                format!("machine name {n:?} is not valid: use 1-32 lowercase letters, digits and '-', starting with a letter (it becomes a hostname)"),
            ))
        }
    }

    fn machine(&self, name: String, defaults: &RawMachine, m: RawMachine, span: Range<usize>) -> Result<MachineSpec, Error> {
        let box_value = m.box_ref.as_ref().or(defaults.box_ref.as_ref()).ok_or_else(|| {
            self.error(span.clone(), format!("machine {name} has no box: set `box` in [machine.{name}] or [defaults]"))
        })?;
        let box_ref = self.box_ref(box_value)?;
        // Whether a provider of this name exists is the registry's to say
        // (`provider::validate`), as are the settings each provider refuses.
        let provider = match m.provider.as_ref().or(defaults.provider.as_ref()) {
            Some(p) => ProviderKind::named(p.get_ref()),
            None => self.default_provider,
        };
        // More CPUs than the host has is allowed: a team's Envfile says what the machine
        // should see, and QEMU and cgroups both take more than the host has (they share).
        let cpus = match m.cpus.as_ref().or(defaults.cpus.as_ref()) {
            Some(c) if (1..=1024).contains(c.get_ref()) => *c.get_ref() as u32,
            Some(c) => return Err(self.error(c.span(), format!("cpus = {} is out of range: give 1 to 1024", c.get_ref()))),
            None => 2,
        };
        let memory = match m.memory.as_ref().or(defaults.memory.as_ref()) {
            Some(s) => self.memory(s)?,
            None => 1 << 30,
        };
        let disk = m.disk.as_ref().or(defaults.disk.as_ref()).map(|s| self.size(s, "disk", MIN_DISK)).transpose()?;
        let accel = match m.accel.as_ref().or(defaults.accel.as_ref()) {
            Some(a) => Some(match a.get_ref().as_str() {
                "auto" => Accel::Auto,
                "kvm" => Accel::Kvm,
                "tcg" => Accel::Tcg,
                other => return Err(self.error(a.span(), format!("accel {other:?} is not known: use \"auto\", \"kvm\" or \"tcg\""))),
            }),
            None => None,
        };
        let mut env = BTreeMap::new();
        for (key, value) in defaults.env.iter().flatten().chain(m.env.iter().flatten()) {
            if !crate::model::is_env_name(key) {
                return Err(self.error(
                    value.span(),
                    format!("env key {key:?} is not a valid variable name: use letters, digits and _, not starting with a digit"),
                ));
            }
            env.insert(key.clone(), value.get_ref().clone());
        }
        let forwards = m.forward.as_ref().or(defaults.forward.as_ref())
            .map(|list| list.iter().map(|f| self.forward(f)).collect::<Result<Vec<_>, _>>())
            .transpose()?
            .unwrap_or_default();
        let sync_mode = match m.sync_mode.as_ref().or(defaults.sync_mode.as_ref()) {
            Some(mode) => self.sync_mode(mode.get_ref(), mode.span(), "sync_mode")?,
            None => SyncMode::Mount,
        };
        let sync = m.sync.as_ref().or(defaults.sync.as_ref())
            .map(|list| list.iter().map(|s| self.sync(s, sync_mode)).collect::<Result<Vec<_>, _>>())
            .transpose()?
            .unwrap_or_default();
        let provision = m.provision.as_ref().or(defaults.provision.as_ref())
            .map(|list| list.iter().map(|p| self.provision(p)).collect::<Result<Vec<_>, _>>())
            .transpose()?
            .unwrap_or_default();
        let ready = m.ready.as_ref().or(defaults.ready.as_ref()).map(|r| self.ready(r)).transpose()?;
        let user_data = m.user_data.as_ref().or(defaults.user_data.as_ref()).map(|u| self.user_data(u)).transpose()?;
        let forward_auto = match m.forward_auto.as_ref().or(defaults.forward_auto.as_ref()) {
            Some(value) => self.forward_auto(value)?,
            None => None,
        };
        let placement = Placement {
            remote: m.remote.as_ref().or(defaults.remote.as_ref()).map(|r| self.placement_name(r, "remote")).transpose()?,
            target: m.target.as_ref().or(defaults.target.as_ref()).map(|t| self.placement_name(t, "target")).transpose()?,
        };
        Ok(MachineSpec { name, box_ref, provider, cpus, memory, disk, accel, env, forwards, sync, provision, ready, user_data, forward_auto, placement })
    }

    /// `remote` and `target` name a remote and a cluster member (which providers take
    /// them is `provider::validate`'s to say); a name is what `envy remote add` and LXD
    /// accept (it becomes a file name and a URL query).
    fn placement_name(&self, value: &Spanned<String>, key: &str) -> Result<String, Error> {
        let name = value.get_ref();
        if !crate::model::is_placement_name(name) {
            return Err(self.error(value.span(), format!(
                "{key} {name:?} is not a valid name: use 1-63 letters, digits and '-', starting with a letter"
            )));
        }
        Ok(name.clone())
    }

    /// `user_data`: inline text starting with `#cloud-config`, checked now, or a file
    /// in the project, checked when the seed is written (a guest can change it).
    fn user_data(&self, value: &Spanned<String>) -> Result<UserData, Error> {
        let span = value.span();
        let text = value.get_ref();
        if text.starts_with(super::cloud_config::HEADER) {
            super::cloud_config::parse(text).map_err(|problem| self.error(span, format!("user_data {problem}")))?;
            return Ok(UserData::Inline(text.clone()));
        }
        let path = normalize(&self.project_dir.join(text));
        if text.trim().is_empty() || !path.starts_with(self.project_dir) || path == self.project_dir {
            return Err(self.error(span, format!(
                "user_data {text:?} is neither a file in the project {} nor inline text starting with `#cloud-config`",
                self.project_dir.display()
            )));
        }
        Ok(UserData::File(path))
    }

    fn box_ref(&self, value: &Spanned<toml::Value>) -> Result<BoxRef, Error> {
        let span = value.span();
        match value.get_ref() {
            // The command line's rule (`envy box add`), with paths relative to the project.
            toml::Value::String(s) => crate::boxes::parse_box_ref(s, None, self.project_dir)
                .map(|reference| match reference {
                    BoxRef::Path { path, sha256 } => BoxRef::Path { path: normalize(&path), sha256 },
                    other => other,
                })
                .map_err(|e| self.error(span, format!("box {s:?}: {e}"))),
            toml::Value::Table(t) => {
                for key in t.keys() {
                    if !matches!(key.as_str(), "url" | "path" | "sha256") {
                        return Err(self.error(span, format!("unknown key `{key}` in box table: it takes url or path, and sha256")));
                    }
                }
                let text = |k: &str| -> Result<Option<String>, Error> {
                    match t.get(k) {
                        None => Ok(None),
                        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                        Some(_) => Err(self.error(span.clone(), format!("box.{k} must be a string"))),
                    }
                };
                let sha256 = text("sha256")?.map(|d| self.digest(d.trim_start_matches("sha256:"), span.clone())).transpose()?;
                match (text("url")?, text("path")?) {
                    (Some(url), None) => Ok(BoxRef::Url { url, sha256 }),
                    (None, Some(path)) => Ok(BoxRef::Path { path: self.project_dir.join(path), sha256 }),
                    _ => Err(self.error(span, "a box table needs exactly one of url or path, e.g. { url = \"https://…/x.box\", sha256 = \"…\" }")),
                }
            }
            _ => Err(self.error(span, "box must be a catalog name, a URL, an oci:// image, or a table { url|path, sha256 }")),
        }
    }

    fn digest(&self, hex_digest: &str, span: Range<usize>) -> Result<String, Error> {
        let d = hex_digest.trim().to_ascii_lowercase();
        if d.len() == 64 && d.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(d)
        } else {
            Err(self.error(span, format!("{hex_digest:?} is not a sha256 digest (64 hex digits)")))
        }
    }

    fn size(&self, value: &Spanned<String>, key: &str, minimum: u64) -> Result<u64, Error> {
        let bytes = parse_size(value.get_ref()).ok_or_else(|| {
            self.error(value.span(), format!("{key} = {:?} is not a size: write a number and a unit, e.g. \"512MiB\" or \"2GiB\"", value.get_ref()))
        })?;
        if bytes < minimum {
            return Err(self.error(value.span(), format!("{key} = {:?} is too small: at least {} MiB", value.get_ref(), minimum >> 20)));
        }
        Ok(bytes)
    }

    /// A machine's memory: a size no larger than the host's memory.
    fn memory(&self, value: &Spanned<String>) -> Result<u64, Error> {
        let bytes = self.size(value, "memory", 16 << 20)?;
        match host::memory_total() {
            Some(total) if bytes > total => Err(self.error(value.span(), format!(
                "memory = {:?} is more than this host's memory ({}, MemTotal in /proc/meminfo): give at most {}MiB",
                value.get_ref(),
                indicatif::HumanBytes(total),
                total >> 20
            ))),
            _ => Ok(bytes),
        }
    }

    fn forward(&self, value: &Spanned<toml::Value>) -> Result<Forward, Error> {
        let span = value.span();
        let bad = |msg: String| self.error(span.clone(), msg);
        let port = |s: &str| -> Result<u16, Error> {
            match s.trim().parse::<u32>() {
                Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
                _ => Err(bad(format!("{s:?} is not a port: give 1-65535"))),
            }
        };
        let protocol = |s: &str| -> Result<Protocol, Error> {
            match s {
                "tcp" => Ok(Protocol::Tcp),
                "udp" => Ok(Protocol::Udp),
                _ => Err(bad(format!("protocol {s:?} is not known: use tcp or udp"))),
            }
        };
        let loopback = IpAddr::from([127, 0, 0, 1]);
        match value.get_ref() {
            toml::Value::String(s) => {
                let (spec, proto) = match s.rsplit_once('/') {
                    Some((spec, p)) => (spec, protocol(p)?),
                    None => (s.as_str(), Protocol::Tcp),
                };
                let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
                let (host_ip, host_port, guest_port) = match parts.as_slice() {
                    [guest, host] => (loopback, port(host)?, port(guest)?),
                    [guest, host, ip] => (
                        ip.trim_matches(|c| c == '[' || c == ']').parse().map_err(|_| bad(format!("{ip:?} is not an IP address to listen on")))?,
                        port(host)?,
                        port(guest)?,
                    ),
                    _ => return Err(bad(format!("forward {s:?} is not HOST:GUEST, e.g. \"8080:80\" or \"8080:80/udp\""))),
                };
                Ok(Forward { host_ip: self.local(host_ip, &span)?, host_port, guest_port, protocol: proto, auto: false })
            }
            toml::Value::Table(t) => {
                for key in t.keys() {
                    if !matches!(key.as_str(), "host" | "guest" | "protocol" | "auto" | "host_ip") {
                        return Err(bad(format!("unknown key `{key}` in forward: it takes host, guest, protocol, auto, host_ip")));
                    }
                }
                let num = |k: &str| match t.get(k) {
                    Some(toml::Value::Integer(n)) => port(&n.to_string()),
                    Some(toml::Value::String(s)) => port(s),
                    Some(_) => Err(bad(format!("forward.{k} must be a port number"))),
                    None => Err(bad(format!("forward needs `{k}`"))),
                };
                let proto = match t.get("protocol") {
                    Some(toml::Value::String(p)) => protocol(p)?,
                    Some(_) => return Err(bad("forward.protocol must be \"tcp\" or \"udp\"".into())),
                    None => Protocol::Tcp,
                };
                let auto = match t.get("auto") {
                    Some(toml::Value::Boolean(b)) => *b,
                    Some(_) => return Err(bad("forward.auto must be true or false".into())),
                    None => false,
                };
                let host_ip = match t.get("host_ip") {
                    Some(toml::Value::String(ip)) => ip.parse().map_err(|_| bad(format!("{ip:?} is not an IP address to listen on")))?,
                    Some(_) => return Err(bad("forward.host_ip must be a string".into())),
                    None => loopback,
                };
                Ok(Forward { host_ip: self.local(host_ip, &span)?, host_port: num("host")?, guest_port: num("guest")?, protocol: proto, auto })
            }
            _ => Err(bad("a forward is \"HOST:GUEST\" or a table { host, guest, protocol, auto }".into())),
        }
    }

    /// A forward's host address must be one this host can listen on.
    fn local(&self, ip: IpAddr, span: &Range<usize>) -> Result<IpAddr, Error> {
        if host::is_local_address(ip) {
            return Ok(ip);
        }
        Err(self.error(span.clone(), format!(
            "forward host address {ip} is not an address of this host, so nothing could listen on it: \
             use 127.0.0.1 (the default), 0.0.0.0, or one of this host's addresses (`ip address` lists them)"
        )))
    }

    /// `sync_mode` of a machine or `mode` of a sync folder.
    fn sync_mode(&self, text: &str, span: Range<usize>, key: &str) -> Result<SyncMode, Error> {
        match text {
            "mount" => Ok(SyncMode::Mount),
            "copy" => Ok(SyncMode::Copy),
            other => Err(self.error(span, format!("{key} {other:?} is not known: use \"mount\" (the default) or \"copy\""))),
        }
    }

    /// A sync folder; `machine_mode` is its machine's `sync_mode`, which its own `mode` overrides.
    fn sync(&self, value: &Spanned<toml::Value>, machine_mode: SyncMode) -> Result<SyncFolder, Error> {
        let span = value.span();
        let bad = |msg: String| self.error(span.clone(), msg);
        let (host, guest, readonly, allow_outside, mode) = match value.get_ref() {
            toml::Value::String(s) => {
                let mut parts = s.split(':');
                match (parts.next(), parts.next(), parts.next(), parts.next()) {
                    (Some(h), Some(g), None, None) => (h.to_string(), g.to_string(), false, false, machine_mode),
                    (Some(h), Some(g), Some("ro"), None) => (h.to_string(), g.to_string(), true, false, machine_mode),
                    (Some(h), Some(g), Some("rw"), None) => (h.to_string(), g.to_string(), false, false, machine_mode),
                    _ => return Err(bad(format!("sync {s:?} is not HOSTPATH:GUESTPATH[:ro], e.g. \".:/project\""))),
                }
            }
            toml::Value::Table(t) => {
                for key in t.keys() {
                    if !matches!(key.as_str(), "host" | "guest" | "readonly" | "allow_outside" | "mode") {
                        return Err(bad(format!("unknown key `{key}` in sync: it takes host, guest, readonly, allow_outside, mode")));
                    }
                }
                let text = |k: &str| match t.get(k) {
                    Some(toml::Value::String(s)) => Ok(s.clone()),
                    _ => Err(bad(format!("sync needs `{k}` as a string"))),
                };
                let flag = |k: &str| match t.get(k) {
                    Some(toml::Value::Boolean(b)) => Ok(*b),
                    None => Ok(false),
                    Some(_) => Err(bad(format!("sync.{k} must be true or false"))),
                };
                let mode = match t.get("mode") {
                    Some(toml::Value::String(m)) => self.sync_mode(m, span.clone(), "sync.mode")?,
                    Some(_) => return Err(bad("sync.mode must be \"mount\" or \"copy\"".into())),
                    None => machine_mode,
                };
                (text("host")?, text("guest")?, flag("readonly")?, flag("allow_outside")?, mode)
            }
            _ => return Err(bad("a sync folder is \"HOSTPATH:GUESTPATH\" or a table { host, guest }".into())),
        };
        if !guest.starts_with('/') || guest.split('/').any(|c| c == "..") {
            return Err(bad(format!("guest path {guest:?} must be absolute and without `..`")));
        }
        let host_path = normalize(&self.project_dir.join(&host));
        if !allow_outside && !host_path.starts_with(self.project_dir) {
            return Err(bad(format!(
                "sync folder {host:?} is outside the project {}; use the table form with allow_outside = true if you mean it",
                self.project_dir.display()
            )));
        }
        Ok(SyncFolder { host: host_path, guest, readonly, allow_outside, mode })
    }

    fn provision(&self, value: &Spanned<toml::Value>) -> Result<ProvisionStep, Error> {
        let span = value.span();
        let usage = "a provision step is a shell command string, { shell = \"...\" }, { script = \"path\" } \
                     or { file = \"path\", to = \"/guest/path\", mode = \"0644\" }, with run = \"always\" to run it on every `envy up`";
        let table = match value.get_ref() {
            toml::Value::String(cmd) if !cmd.trim().is_empty() => {
                return Ok(ProvisionStep { action: ProvisionAction::Shell(cmd.clone()), always: false })
            }
            toml::Value::Table(t) => t,
            _ => return Err(self.error(span, usage)),
        };
        if let Some(key) = table.keys().find(|k| !matches!(k.as_str(), "shell" | "script" | "file" | "to" | "mode" | "run")) {
            return Err(self.error(span, format!("unknown key `{key}` in provision step: {usage}")));
        }
        let always = match table.get("run") {
            None => false,
            Some(toml::Value::String(s)) if s == "once" => false,
            Some(toml::Value::String(s)) if s == "always" => true,
            Some(other) => return Err(self.error(span, format!("provision run = {other} is not known: use \"once\" (the default) or \"always\""))),
        };
        if table.contains_key("file") {
            return Ok(ProvisionStep { action: self.provision_file(table, span)?, always });
        }
        if let Some(key) = ["to", "mode"].iter().find(|k| table.contains_key(**k)) {
            return Err(self.error(span, format!("`{key}` belongs to a file step ({{ file = \"path\", to = \"/guest/path\" }}): {usage}")));
        }
        let action = match (table.get("shell"), table.get("script")) {
            (Some(toml::Value::String(cmd)), None) => ProvisionAction::Shell(cmd.clone()),
            (None, Some(toml::Value::String(s))) => {
                let path = self.project_path(s, "provision script", &span)?;
                // Whether the file is there is checked when it is used (envy up,
                // envy provision): a synced machine can change it at any time, and
                // must not be able to make the Envfile unreadable to `envy destroy`.
                ProvisionAction::Script(path)
            }
            _ => return Err(self.error(span, usage)),
        };
        Ok(ProvisionStep { action, always })
    }

    /// A path the Envfile names in the project, resolved lexically; the file itself is
    /// opened (below the project, symlinks checked) when it is used.
    fn project_path(&self, text: &str, key: &str, span: &Range<usize>) -> Result<PathBuf, Error> {
        let path = normalize(&self.project_dir.join(text));
        if !path.starts_with(self.project_dir) {
            return Err(self.error(span.clone(), format!(
                "{key} {text:?} is outside the project {}; keep it in the project",
                self.project_dir.display()
            )));
        }
        Ok(path)
    }

    /// `{ file = "src", to = "/dst", mode = "0644" }`: `to` is the copy's own path in
    /// the machine (a folder's contents land in it).
    fn provision_file(&self, table: &toml::map::Map<String, toml::Value>, span: Range<usize>) -> Result<ProvisionAction, Error> {
        let bad = |msg: String| self.error(span.clone(), msg);
        if table.contains_key("shell") || table.contains_key("script") {
            return Err(bad("a provision step is one of shell, script or file, not several".into()));
        }
        let Some(toml::Value::String(from)) = table.get("file") else {
            return Err(bad("provision file must be a path in the project, as a string".into()));
        };
        let from = self.project_path(from, "provision file", &span)?;
        let to = match table.get("to") {
            Some(toml::Value::String(to)) if to.starts_with('/') && !to.trim_end_matches('/').is_empty() && !to.split('/').any(|c| c == "..") => {
                to.trim_end_matches('/').to_string()
            }
            Some(toml::Value::String(to)) => return Err(bad(format!(
                "provision file `to = {to:?}` must be an absolute path in the machine, not / and without `..`"
            ))),
            Some(_) => return Err(bad("provision file `to` must be a string".into())),
            None => return Err(bad("provision file needs `to`, the path of the copy in the machine".into())),
        };
        let mode = match table.get("mode") {
            None => None,
            Some(toml::Value::String(m)) => match u32::from_str_radix(m, 8) {
                Ok(mode) if mode <= 0o7777 && !m.is_empty() => Some(mode),
                _ => return Err(bad(format!("provision file mode {m:?} is not an octal mode: write e.g. \"0644\" or \"0755\""))),
            },
            Some(other) => return Err(bad(format!("provision file mode = {other} is not an octal mode: write it as a string, e.g. \"0644\""))),
        };
        Ok(ProvisionAction::File { from, to, mode })
    }

    fn ready(&self, value: &Spanned<toml::Value>) -> Result<Ready, Error> {
        let span = value.span();
        let bad = |msg: String| self.error(span.clone(), msg);
        let usage = "ready is a command string, or a table with one of cmd = \"...\", tcp = PORT, \
                     http = \"http://127.0.0.1:PORT/path\", and optionally timeout = \"60s\"";
        let table = match value.get_ref() {
            toml::Value::String(cmd) if !cmd.trim().is_empty() => {
                return Ok(Ready { check: ReadyCheck::Command(cmd.clone()), timeout: DEFAULT_READY_TIMEOUT })
            }
            toml::Value::Table(t) => t,
            _ => return Err(bad(usage.into())),
        };
        if let Some(key) = table.keys().find(|k| !matches!(k.as_str(), "cmd" | "tcp" | "http" | "timeout")) {
            return Err(bad(format!("unknown key `{key}` in ready: {usage}")));
        }
        let check = match (table.get("cmd"), table.get("tcp"), table.get("http")) {
            (Some(toml::Value::String(cmd)), None, None) if !cmd.trim().is_empty() => ReadyCheck::Command(cmd.clone()),
            (None, Some(toml::Value::Integer(port)), None) => match u16::try_from(*port) {
                Ok(port) if port > 0 => ReadyCheck::Tcp(port),
                _ => return Err(bad(format!("ready tcp = {port} is not a port: give 1 to 65535"))),
            },
            (None, None, Some(toml::Value::String(url))) if url.starts_with("http://") || url.starts_with("https://") => {
                ReadyCheck::Http(url.clone())
            }
            (None, None, Some(other)) => return Err(bad(format!("ready http = {other} is not an http:// or https:// URL"))),
            _ => return Err(bad(usage.into())),
        };
        let timeout = match table.get("timeout") {
            None => DEFAULT_READY_TIMEOUT,
            Some(toml::Value::Integer(secs)) if *secs > 0 => Duration::from_secs(*secs as u64),
            Some(toml::Value::String(text)) => parse_duration(text)
                .ok_or_else(|| bad(format!("ready timeout {text:?} is not a duration: write e.g. \"90s\" or \"5m\"")))?,
            Some(other) => return Err(bad(format!("ready timeout = {other} is not a duration: write e.g. \"90s\" or \"5m\""))),
        };
        Ok(Ready { check, timeout })
    }

    /// `forward_auto = true`, or `{ enabled = true, min_port = 80 }` to forward ports
    /// below 1025 too.
    fn forward_auto(&self, value: &Spanned<toml::Value>) -> Result<Option<AutoForward>, Error> {
        let bad = |msg: String| self.error(value.span(), msg);
        let usage = "forward_auto is true, false, or a table { enabled = true, min_port = 1025 }";
        let (enabled, min_port) = match value.get_ref() {
            toml::Value::Boolean(b) => (*b, super::AUTO_FORWARD_MIN_PORT),
            toml::Value::Table(t) => {
                if let Some(key) = t.keys().find(|k| !matches!(k.as_str(), "enabled" | "min_port")) {
                    return Err(bad(format!("unknown key `{key}` in forward_auto: {usage}")));
                }
                let enabled = match t.get("enabled") {
                    None => true,
                    Some(toml::Value::Boolean(b)) => *b,
                    Some(other) => return Err(bad(format!("forward_auto.enabled = {other} must be true or false"))),
                };
                let min_port = match t.get("min_port") {
                    None => super::AUTO_FORWARD_MIN_PORT,
                    Some(toml::Value::Integer(n)) => match u16::try_from(*n) {
                        Ok(p) if p > 0 => p,
                        _ => return Err(bad(format!("forward_auto.min_port = {n} is not a port: give 1 to 65535"))),
                    },
                    Some(other) => return Err(bad(format!("forward_auto.min_port = {other} is not a port: give 1 to 65535"))),
                };
                (enabled, min_port)
            }
            _ => return Err(bad(usage.into())),
        };
        Ok(enabled.then_some(AutoForward { min_port }))
    }

    /// Two forwards may not claim the same host address, port and protocol.
    fn check_host_ports(&self, machines: &[MachineSpec], text: &str) -> Result<(), Error> {
        let mut seen: HashMap<(IpAddr, u16, Protocol), &str> = HashMap::new();
        for m in machines {
            for f in &m.forwards {
                if let Some(other) = seen.insert((f.host_ip, f.host_port, f.protocol), &m.name) {
                    let needle = format!("{}:", f.host_port);
                    let offset = text.find(&format!("[machine.{}]", m.name))
                        .and_then(|start| text[start..].find(&needle).map(|i| start + i))
                        .unwrap_or(0);
                    return Err(self.error(offset..offset, format!(
                        "host port {} is forwarded twice (machines {other} and {}): give each forward its own host port",
                        f.host_port, m.name
                    )));
                }
            }
        }
        Ok(())
    }
}

/// How long a `ready` check is waited for when the Envfile does not say.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Parses "90s", "5m", "1h" (a positive whole number and a unit).
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = number.parse().ok().filter(|n| *n > 0)?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// Removes `.` and resolves `..` lexically (the path may not exist yet).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
