//! The user's global defaults (`config.toml`): provider, acceleration, catalog, proxy,
//! registries allowed over plain HTTP, the Vagrant Cloud API.
//! The Envfile and the command line win over these.

use std::path::Path;

use anyhow::{Context as _, Result};
use serde::Deserialize;

use crate::model::{Accel, ProviderKind};

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Provider for machines whose Envfile names none.
    pub provider: Option<ProviderKind>,
    /// Force KVM or TCG for every QEMU machine (ENVY_ACCEL still wins).
    pub accel: Option<Accel>,
    /// Catalog location: a directory of `*.toml` entries or a URL of one index file.
    pub catalog: Option<String>,
    /// HTTP(S) proxy for box downloads.
    pub proxy: Option<String>,
    /// Base URL of the Vagrant Cloud API v2 that `vagrant://` boxes resolve through
    /// (default https://vagrantcloud.com/api/v2).
    pub vagrant_api: Option<String>,
    /// Hosts (`host[:port]`) reached over plain HTTP although they are not on a
    /// loopback address (those always are, as Docker does): OCI registries, and the
    /// hosts of Vagrant Cloud `download_url`s.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
}

impl Config {
    /// Reads the file if it exists; a missing file means all defaults.
    pub fn load(path: &Path) -> Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        toml::from_str(&text).with_context(|| {
            format!("{} is not a valid envy config; fix or remove it", path.display())
        })
    }
}
