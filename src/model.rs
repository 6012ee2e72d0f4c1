//! The types every layer shares, at the bottom of the crate: which provider runs a
//! machine, which payload a box carries, where a box comes from, a port forward, and
//! sizes and ages as people read them. Nothing here imports the rest of envy.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The name of a provider (`container`, `qemu`, …): an open set, since providers
/// register themselves (`provider::registry`). Names are interned, so a kind is
/// `Copy` and compares as a pointer-sized string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderKind(&'static str);

/// Every provider name seen in this process, so each is leaked once at most.
static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

impl ProviderKind {
    /// A kind for a name known at compile time (a provider's own constant).
    pub const fn new(name: &'static str) -> ProviderKind {
        ProviderKind(name)
    }

    /// The kind a name read from a file or flag stands for; whether a provider of
    /// that name exists is the registry's question.
    pub fn named(name: &str) -> ProviderKind {
        let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = names.iter().find(|n| **n == name) {
            return ProviderKind(known);
        }
        let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
        names.push(leaked);
        ProviderKind(leaked)
    }

    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::fmt::Debug for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Serialize for ProviderKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for ProviderKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok(ProviderKind::named(&name))
    }
}

/// The payload a box carries: a closed set, because the store must know how to
/// verify and unpack each. A provider says which one it boots; the LXD provider, for
/// one, boots the same root filesystems as the container provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BoxFormat {
    /// A root filesystem tarball (`[container]` in box.toml).
    Container,
    /// A bootable disk image with its boot settings (`[qemu]` in box.toml).
    Qemu,
}

impl std::fmt::Display for BoxFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BoxFormat::Container => "container",
            BoxFormat::Qemu => "qemu",
        })
    }
}

/// Where a machine's box comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BoxRef {
    /// A catalog entry: `name` or `name@version`.
    Catalog { name: String, version: Option<String> },
    /// A URL, pinned by digest (hex sha256) unless the user accepts an unpinned one.
    Url { url: String, sha256: Option<String> },
    /// A local file, absolute (resolved against the project).
    Path { path: PathBuf, sha256: Option<String> },
    /// An image in an OCI registry. `sha256` is the platform manifest the lock pins
    /// (the image's own `@sha256:` is in `image`).
    Oci { image: OciRef, sha256: Option<String> },
    /// A box on Vagrant Cloud: `vagrant://USER/BOX[@VERSION]` (`vagrant` is `USER/BOX`).
    Vagrant { vagrant: String, version: Option<String> },
}

impl std::fmt::Display for BoxRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BoxRef::Catalog { name, version: Some(v) } => write!(f, "{name}@{v}"),
            BoxRef::Catalog { name, version: None } => f.write_str(name),
            BoxRef::Url { url, .. } => f.write_str(url),
            BoxRef::Path { path, .. } => write!(f, "{}", path.display()),
            BoxRef::Oci { image, .. } => image.fmt(f),
            BoxRef::Vagrant { vagrant, version: Some(v) } => write!(f, "vagrant://{vagrant}@{v}"),
            BoxRef::Vagrant { vagrant, version: None } => write!(f, "vagrant://{vagrant}"),
        }
    }
}

/// `oci://REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]`, with Docker's defaults applied
/// (`docker.io`, `library/`, tag `latest` when neither tag nor digest is given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciRef {
    /// Host and optional port (`docker.io` for Docker Hub, whose API answers at
    /// registry-1.docker.io).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    /// Hex sha256 of an index or manifest the reference pins.
    pub digest: Option<String>,
}

impl std::fmt::Display for OciRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "oci://{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@sha256:{d}")?;
        }
        Ok(())
    }
}

/// QEMU acceleration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when a probe shows it works, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

/// Whether `value` is a sha256 written as 64 hex digits (any case).
pub fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// Whether `addr` can be bound right now with this protocol.
    pub fn is_free(&self, addr: SocketAddr) -> bool {
        match self {
            Protocol::Tcp => TcpListener::bind(addr).is_ok(),
            Protocol::Udp => UdpSocket::bind(addr).is_ok(),
        }
    }

    /// A port on `ip` that the kernel says is free now.
    pub fn free_port(&self, ip: IpAddr) -> std::io::Result<u16> {
        let addr = SocketAddr::new(ip, 0);
        match self {
            Protocol::Tcp => TcpListener::bind(addr)?.local_addr().map(|a| a.port()),
            Protocol::Udp => UdpSocket::bind(addr)?.local_addr().map(|a| a.port()),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port forward from the host into the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// Host address to listen on; 127.0.0.1 unless the Envfile says otherwise.
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub guest_port: u16,
    pub protocol: Protocol,
    /// Pick another host port when this one is taken.
    pub auto: bool,
}

impl Forward {
    /// Whether `port` on the forward's host address is free for its protocol.
    pub fn host_port_free(&self, port: u16) -> bool {
        self.protocol.is_free(SocketAddr::new(self.host_ip, port))
    }
}

impl std::fmt::Display for Forward {
    /// `127.0.0.1:8080 -> guest 80 (tcp)`, as `up` and `status` print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{} -> guest {} ({})", self.host_ip, self.host_port, self.guest_port, self.protocol)
    }
}

/// Parses "512MiB", "2GiB", "1G" (binary units), "500MB" (decimal) into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    let bytes = number * factor as f64;
    // Zero is a size (too small for any use, which the caller says); NaN and inf are not.
    (bytes.is_finite() && bytes >= 0.0).then_some(bytes as u64)
}

/// How long ago a Unix time was, shortly ("5 min ago"). Sizes are indicatif's
/// `HumanBytes`.
pub fn human_age(unix_seconds: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let seconds = now.saturating_sub(unix_seconds);
    match seconds {
        0..=59 => format!("{seconds} s ago"),
        60..=3599 => format!("{} min ago", seconds / 60),
        3600..=86_399 => format!("{} h ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

/// Whether `name` may name a remote or a cluster member (`remote`, `target`, `envy
/// remote add`): 1-63 letters, digits and '-', starting with a letter, as LXD takes
/// them (it becomes a file name and a URL query).
pub fn is_placement_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Whether `name` may be an environment variable's name: what POSIX shells accept
/// (letters, digits, `_`, not starting with a digit), so every provider can set it.
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_') && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The last `n` lines of `text` (a tool's stderr, a console log's end).
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Quotes `word` for a POSIX shell, leaving plain words as they are (command lines
/// that run in a machine: ssh's remote command, `sh -c` scripts, hints to users).
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// One finding of a host check (`envy doctor`, and `envy up` before it starts a
/// machine): what was checked, how it went, and what to do about it.
#[derive(Debug, Clone, Serialize)]
pub struct HostCheck {
    pub name: String,
    pub status: CheckStatus,
    /// What was found (a version, a path, an error).
    pub detail: String,
    /// What to do when it is not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
    /// A found tool and the argument that makes it print its version: run only where
    /// the version is shown (`envy doctor`, provider/host.rs), as `envy up` needs to
    /// know the tool is there, not which one it is.
    #[serde(skip)]
    pub version_from: Option<(std::path::PathBuf, &'static str)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Ok,
    /// Works, but slower or with less than it could (TCG instead of KVM).
    Warn,
    /// The provider cannot run machines until this is fixed.
    Fail,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_intern_to_one_kind() {
        let a = ProviderKind::named("lxd");
        let b = ProviderKind::named(&String::from("lxd"));
        assert_eq!(a, b);
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
        assert_eq!(ProviderKind::new("qemu"), ProviderKind::named("qemu"));
        let parsed: ProviderKind = serde_json::from_str("\"container\"").unwrap();
        assert_eq!(parsed.to_string(), "container");
    }

    #[test]
    fn env_names_follow_the_shell() {
        for good in ["PATH", "_x", "MY_VAR2"] {
            assert!(is_env_name(good), "{good}");
        }
        for bad in ["", "MY-VAR", "2X", "A=B", "É"] {
            assert!(!is_env_name(bad), "{bad}");
        }
    }

    #[test]
    fn sizes_and_sha256() {
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("500MB"), Some(500_000_000));
        assert_eq!(parse_size("lots"), None);
        assert!(is_sha256_hex(&"aB".repeat(32)));
        assert!(!is_sha256_hex(&"g".repeat(64)));
    }
}
