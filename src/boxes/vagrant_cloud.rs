//! `vagrant://USER/BOX[@VERSION]`: a box on Vagrant Cloud (HCP Vagrant), resolved
//! through its API v2 (`GET BASE/box/USER/BOX`: `versions[].providers[]`) to the
//! libvirt file for the host's architecture and the checksum upstream gives it. The
//! store then downloads it, checks that checksum whatever its type, and reads it as a
//! Vagrant box (`vagrant`).

use serde::Deserialize;

use super::digest::Pin;
use super::download::Downloader;
use super::upstream::{host_arch, Build};
use super::Error;

/// The public API, unless config `vagrant_api` names another.
pub const DEFAULT_API: &str = "https://vagrantcloud.com/api/v2";
/// The Vagrant provider whose boxes envy runs (a qcow2 disk).
const PROVIDER: &str = "libvirt";

#[derive(Deserialize)]
struct BoxInfo {
    #[serde(default)]
    versions: Vec<Version>,
}

#[derive(Deserialize)]
struct Version {
    version: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    providers: Vec<Provider>,
}

#[derive(Deserialize)]
struct Provider {
    name: String,
    #[serde(default)]
    download_url: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    checksum: Option<String>,
    #[serde(default)]
    checksum_type: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
}

/// Resolves `USER/BOX` (at `version`, or its newest active version that has a libvirt
/// file for this host) through the API at `base`.
pub fn resolve(downloader: &Downloader, base: &str, tag: &str, version: Option<&str>) -> Result<Build, Error> {
    let url = format!("{}/box/{tag}", base.trim_end_matches('/'));
    let what = format!("vagrant://{tag}");
    let fail = |message: String| Error::Upstream { what: what.clone(), tried: url.clone(), message };
    let text = downloader.fetch_text(&url).map_err(|e| fail(e.to_string()))?;
    let info: BoxInfo = serde_json::from_str(&text).map_err(|e| fail(format!("the answer is not a Vagrant box description ({e})")))?;
    let arch = host_arch();
    let fits = |p: &&Provider| p.name == PROVIDER && p.architecture.as_deref().is_none_or(|a| a == arch || a == "unknown");
    let mut versions: Vec<&Version> = info
        .versions
        .iter()
        .filter(|v| version.is_none_or(|want| v.version == want))
        .filter(|v| version.is_some() || v.status.as_deref().is_none_or(|s| s == "active"))
        .collect();
    versions.sort_by(|a, b| compare_versions(&b.version, &a.version));
    let Some((v, provider)) = versions.iter().find_map(|v| v.providers.iter().find(fits).map(|p| (*v, p))) else {
        let offered: Vec<String> = info
            .versions
            .iter()
            .flat_map(|v| {
                v.providers
                    .iter()
                    .map(move |p| format!("{} {} ({})", v.version, p.name, p.architecture.as_deref().unwrap_or("any arch")))
            })
            .collect();
        return Err(fail(format!(
            "it has no {PROVIDER} file for {arch}{}; it offers: {}",
            version.map(|v| format!(" at version {v}")).unwrap_or_default(),
            if offered.is_empty() { "nothing".to_string() } else { offered.join(", ") }
        )));
    };
    let file = provider
        .download_url
        .clone()
        .or_else(|| provider.url.clone())
        .ok_or_else(|| fail(format!("version {} of its {PROVIDER} provider gives no download_url", v.version)))?;
    let pin = match (provider.checksum.as_deref().filter(|c| !c.is_empty()), provider.checksum_type.as_deref()) {
        (Some(hex), Some(kind)) if !kind.is_empty() && kind != "none" => Some(Pin::parse(kind, hex).map_err(|e| fail(e.to_string()))?),
        _ => None,
    };
    Ok(Build { version: v.version.clone(), url: file, pin })
}

/// Orders `1.10.0` after `1.9.2`: dot-separated parts, numbers as numbers.
fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| -> Vec<(u64, String)> {
        s.split('.').map(|p| (p.parse::<u64>().unwrap_or(0), p.to_string())).collect()
    };
    parts(a).cmp(&parts(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number() {
        assert!(compare_versions("1.10.0", "1.9.2").is_gt());
        assert!(compare_versions("2024.01.02", "2023.12.31").is_gt());
        assert!(compare_versions("1.0", "1.0.1").is_lt());
    }
}
