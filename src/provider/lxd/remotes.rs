//! LXD/Incus remotes (`envy remote add|list|remove`): envy's own client certificate,
//! traded for trust with a token, and each server's certificate pinned by its sha256
//! fingerprint on first contact (or by the fingerprint the token carries). A server
//! that shows another certificate later is refused. Kept in `<config dir>/lxd/`, 0700,
//! files 0600.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::Error;
use crate::state::Home;

/// Format version of `remotes.json`.
const VERSION: u32 = 1;

/// One remote: where it answers and the certificate it must show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remote {
    /// `HOST:PORT` of the API.
    pub address: String,
    /// sha256 (hex) of the server certificate's DER, pinned at `remote add`.
    pub fingerprint: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    remotes: BTreeMap<String, Remote>,
}

/// envy's LXD files: the remotes and the client certificate.
pub struct Remotes {
    dir: PathBuf,
    file: File,
}

/// `<config dir>/lxd/`: beside config.toml (in ENVY_HOME when it is set).
pub fn dir(home: &Home) -> PathBuf {
    home.config_file().with_file_name("lxd")
}

impl Remotes {
    pub fn load(home: &Home) -> anyhow::Result<Remotes> {
        let dir = dir(home);
        let path = dir.join("remotes.json");
        let file = match crate::fsutil::read_private(&path)? {
            None => File { version: VERSION, remotes: BTreeMap::new() },
            Some(bytes) => {
                let file: File = serde_json::from_slice(&bytes).map_err(|e| crate::state::Error::BadRecord {
                    path: path.clone(),
                    message: format!("unreadable ({e}); remove it and add the remotes again"),
                })?;
                if file.version != VERSION {
                    return Err(crate::state::Error::BadRecord {
                        path,
                        message: format!("written by another envy (version {}, this envy reads {VERSION})", file.version),
                    }
                    .into());
                }
                file
            }
        };
        Ok(Remotes { dir, file })
    }

    pub fn get(&self, name: &str) -> Result<&Remote, Error> {
        self.file.remotes.get(name).ok_or_else(|| {
            Error::Unsupported(format!(
                "no LXD remote named {name}; add it with `envy remote add {name} https://HOST:8443 --token TOKEN` \
                 (`envy remote list` shows the known ones)"
            ))
        })
    }

    pub fn list(&self) -> &BTreeMap<String, Remote> {
        &self.file.remotes
    }

    fn save(&self) -> anyhow::Result<()> {
        crate::fsutil::create_private_dir(&self.dir)?;
        crate::fsutil::write_atomic(&self.dir.join("remotes.json"), &serde_json::to_vec_pretty(&self.file)?)
    }

    pub fn insert(&mut self, name: &str, remote: Remote) -> anyhow::Result<()> {
        self.file.remotes.insert(name.to_string(), remote);
        self.save()
    }

    /// Forgets a remote; false when there was none of that name.
    pub fn remove(&mut self, name: &str) -> anyhow::Result<bool> {
        let found = self.file.remotes.remove(name).is_some();
        if found {
            self.save()?;
        }
        Ok(found)
    }

    /// envy's client certificate and key (PEM), made on first use.
    fn identity(&self) -> anyhow::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
        let cert_path = self.dir.join("client.crt");
        let key_path = self.dir.join("client.key");
        if crate::fsutil::read_private(&key_path)?.is_none() {
            let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "host".into());
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name.push(rcgen::DnType::CommonName, format!("envy@{host}"));
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2124, 1, 1);
            let key = rcgen::KeyPair::generate()?;
            let cert = params.self_signed(&key)?;
            crate::fsutil::create_private_dir(&self.dir)?;
            crate::fsutil::write_atomic(&cert_path, cert.pem().as_bytes())?;
            crate::fsutil::write_atomic(&key_path, key.serialize_pem().as_bytes())?;
        }
        let pem = |path: &Path| -> anyhow::Result<Vec<u8>> {
            crate::fsutil::read_private(path)?.ok_or_else(|| anyhow::anyhow!("{} is missing; remove {} and add the remotes again", path.display(), self.dir.display()))
        };
        let cert = CertificateDer::from_pem_slice(&pem(&cert_path)?)
            .map_err(|e| anyhow::anyhow!("{} is not a PEM certificate ({e}); remove it and client.key to make new ones", cert_path.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&pem(&key_path)?)
            .map_err(|e| anyhow::anyhow!("{} is not a PEM key ({e}); remove it and client.crt to make new ones", key_path.display()))?;
        Ok((cert, key))
    }

    /// TLS to a server whose certificate must have sha256 `pinned` (None: any, recorded
    /// in the returned verifier, for `remote add`), authenticated by envy's certificate.
    pub fn tls(&self, pinned: Option<&str>) -> anyhow::Result<(Arc<ClientConfig>, Arc<Pinned>)> {
        let (cert, key) = self.identity()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(Pinned { pinned: pinned.map(str::to_string), seen: Mutex::new(None), provider: provider.clone() });
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_auth_cert(vec![cert], key)?;
        Ok((Arc::new(config), verifier))
    }
}

/// Accepts exactly the server certificate with the pinned fingerprint (LXD servers'
/// certificates are self-signed: no CA vouches for them), and records what it saw.
#[derive(Debug)]
pub struct Pinned {
    pinned: Option<String>,
    seen: Mutex<Option<String>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Pinned {
    /// The fingerprint of the certificate the server showed, once it showed one.
    pub fn seen(&self) -> Option<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or(None)
    }

    /// The fingerprint the server must show.
    pub fn pinned(&self) -> Option<String> {
        self.pinned.clone()
    }

    /// Whether the server showed a certificate other than the pinned one.
    pub fn changed(&self) -> bool {
        matches!((&self.pinned, self.seen()), (Some(p), Some(s)) if *p != s)
    }
}

/// sha256 (hex) of a certificate's DER, as `lxc` prints fingerprints.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint(end_entity);
        if let Ok(mut slot) = self.seen.lock() {
            *slot = Some(seen.clone());
        }
        match &self.pinned {
            Some(pinned) if *pinned != seen => Err(rustls::Error::General(format!("server certificate {seen} is not the pinned {pinned}"))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection to `address` with `config`.
pub fn connect(address: &str, config: Arc<ClientConfig>) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let tcp = TcpStream::connect(address)?;
    let conn = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// `https://HOST[:PORT]` → `HOST:PORT` (8443 by default); anything else is refused.
pub fn parse_url(url: &str) -> Result<String, Error> {
    let bad = || Error::Unsupported(format!("{url:?} is not an LXD remote address: give https://HOST:PORT, e.g. https://10.0.0.5:8443"));
    let rest = url.strip_prefix("https://").ok_or_else(bad)?.trim_end_matches('/');
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(bad());
    }
    let has_port = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && (host.starts_with('[') || !host.contains(':')) => {
            port.parse::<u16>().map_err(|_| bad())?;
            true
        }
        _ => false,
    };
    Ok(if has_port { rest.to_string() } else { format!("{rest}:8443") })
}

/// The server certificate fingerprint a trust token carries (LXD tokens are base64
/// JSON with a `fingerprint`), to check the server against on first contact.
pub fn token_fingerprint(token: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(token.trim()).ok()
        .or_else(|| base64::engine::general_purpose::URL_SAFE.decode(token.trim()).ok())?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    json["fingerprint"].as_str().filter(|f| f.len() == 64 && f.bytes().all(|b| b.is_ascii_hexdigit())).map(str::to_lowercase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_urls_are_checked() {
        assert_eq!(parse_url("https://10.0.0.5:8443").unwrap(), "10.0.0.5:8443");
        assert_eq!(parse_url("https://lxd.example/").unwrap(), "lxd.example:8443");
        assert_eq!(parse_url("https://[::1]:9443").unwrap(), "[::1]:9443");
        for bad in ["http://10.0.0.5:8443", "https://", "https://h:99999", "https://h/1.0", "10.0.0.5:8443", "https://u@h"] {
            assert!(parse_url(bad).unwrap_err().to_string().contains("is not an LXD remote address"), "{bad}");
        }
    }

    #[test]
    fn a_token_names_the_server_certificate() {
        let fp = "ab".repeat(32);
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{{\"client_name\":\"envy\",\"fingerprint\":\"{fp}\",\"secret\":\"s\"}}"));
        assert_eq!(token_fingerprint(&token), Some(fp));
        assert_eq!(token_fingerprint("not a token"), None);
    }
}
