//! Talking to an OCI distribution registry: the `/v2/` ping, its Basic or Bearer
//! challenge answered with an anonymous token or the Docker config's credentials, and
//! manifest and blob requests. Plain HTTP only to loopback hosts and the config's
//! `insecure_registries`.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use reqwest::blocking::{RequestBuilder, Response};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use crate::boxes::digest::sha256_bytes;
use crate::boxes::download::{error_chain, plain_http_allowed, Downloader};
use crate::boxes::Error;
use crate::model::OciRef;

/// Largest manifest or image config read into memory.
pub const MAX_JSON_BYTES: u64 = 4 << 20;

/// A username and password from a Docker config, with where they came from (the
/// secret itself never appears in a message).
struct Credentials {
    basic: String,
    from: PathBuf,
}

/// One repository of one registry, authenticated.
pub struct Registry<'a> {
    downloader: &'a Downloader,
    /// `host[:port]` as written in the reference.
    pub name: String,
    repository: String,
    base: String,
    credentials: Option<Credentials>,
    /// Where credentials were looked for, for the 401 message.
    config_path: Option<PathBuf>,
    authorization: Option<HeaderValue>,
}

/// A manifest or index as served: its bytes, their sha256 and the media type.
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub media_type: String,
}

impl<'a> Registry<'a> {
    /// Pings the registry and answers its challenge for `actions` (`pull` or
    /// `pull,push`) on the repository.
    pub fn connect(
        downloader: &'a Downloader,
        image: &OciRef,
        insecure: &[String],
        actions: &str,
    ) -> Result<Registry<'a>, Error> {
        let host = if image.registry == "docker.io" { "registry-1.docker.io" } else { image.registry.as_str() };
        let scheme = if plain_http_allowed(&image.registry, insecure) { "http" } else { "https" };
        let (credentials, config_path) = docker_credentials(&image.registry);
        let mut registry = Registry {
            downloader,
            name: image.registry.clone(),
            repository: image.repository.clone(),
            base: format!("{scheme}://{host}"),
            credentials,
            config_path,
            authorization: None,
        };
        registry.authenticate(actions)?;
        Ok(registry)
    }

    fn authenticate(&mut self, actions: &str) -> Result<(), Error> {
        let url = format!("{}/v2/", self.base);
        let down = |e: reqwest::Error| Error::RegistryDown {
            registry: self.name.clone(),
            url: url.clone(),
            message: error_chain(&e),
        };
        let resp = self.downloader.client().get(&url).send().map_err(down)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return match resp.status() {
                s if s.is_success() => Ok(()),
                s => Err(Error::HttpStatus { url, status: s.as_u16(), attempts: 1 }),
            };
        }
        let challenge = resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let (scheme, params) = parse_challenge(&challenge);
        if scheme.eq_ignore_ascii_case("basic") {
            let Some(creds) = &self.credentials else {
                return Err(self.unauthorized("access to its API", 401));
            };
            self.authorization = Some(header(&format!("Basic {}", creds.basic))?);
            // A wrong password shows here, before any manifest is asked for.
            let resp = self.send(self.downloader.client().get(&url), "access to its API")?;
            return match resp.status() {
                s if s.is_success() => Ok(()),
                s => Err(Error::HttpStatus { url, status: s.as_u16(), attempts: 1 }),
            };
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Error::BadImage {
                reference: self.name.clone(),
                reason: format!("the registry asks for `{challenge}` authentication, which envy does not speak (Basic or Bearer)"),
            });
        }
        let realm = params.iter().find(|(k, _)| k == "realm").map(|(_, v)| v.clone()).unwrap_or_default();
        let mut request = self.downloader.client().get(&realm).query(&[("scope", format!("repository:{}:{actions}", self.repository))]);
        if let Some((_, service)) = params.iter().find(|(k, _)| k == "service") {
            request = request.query(&[("service", service)]);
        }
        if let Some(creds) = &self.credentials {
            request = request.header(AUTHORIZATION, header(&format!("Basic {}", creds.basic))?);
        }
        let resp = request
            .send()
            .map_err(|e| Error::RegistryDown { registry: self.name.clone(), url: realm.clone(), message: error_chain(&e) })?;
        if matches!(resp.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(self.unauthorized("a token", resp.status().as_u16()));
        }
        if !resp.status().is_success() {
            return Err(Error::HttpStatus { url: realm, status: resp.status().as_u16(), attempts: 1 });
        }
        let body: serde_json::Value = serde_json::from_slice(&read_limited(resp, &realm)?).map_err(|e| Error::BadImage {
            reference: self.name.clone(),
            reason: format!("its token service {realm} answered with no JSON ({e})"),
        })?;
        let token = body.get("token").or_else(|| body.get("access_token")).and_then(|t| t.as_str()).ok_or_else(|| {
            Error::BadImage { reference: self.name.clone(), reason: format!("its token service {realm} gave no token") }
        })?;
        self.authorization = Some(header(&format!("Bearer {token}"))?);
        Ok(())
    }

    /// What envy tried, for a 401/403 message (never the secret).
    fn unauthorized(&self, what: &str, status: u16) -> Error {
        let tried = match (&self.credentials, &self.config_path) {
            (Some(c), _) => format!("the credentials for {} in {}", self.name, c.from.display()),
            (None, Some(p)) => format!("no credentials (none for {} in {})", self.name, p.display()),
            (None, None) => "no credentials (no Docker config: $DOCKER_CONFIG/config.json or ~/.docker/config.json)".into(),
        };
        Error::Unauthorized { registry: self.name.clone(), what: what.to_string(), status, tried }
    }

    /// Headers every registry request carries.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(a) = &self.authorization {
            headers.insert(AUTHORIZATION, a.clone());
        }
        headers
    }

    /// Sends a request with the registry's authorization; 401/403 become `Unauthorized`.
    pub fn send(&self, request: RequestBuilder, what: &str) -> Result<Response, Error> {
        let resp = request
            .headers(self.headers())
            .send()
            .map_err(|e| Error::RegistryDown { registry: self.name.clone(), url: self.base.clone(), message: error_chain(&e) })?;
        if matches!(resp.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(self.unauthorized(what, resp.status().as_u16()));
        }
        Ok(resp)
    }

    /// `/v2/<repository>/<kind>/<reference>`.
    pub fn url(&self, kind: &str, reference: &str) -> String {
        format!("{}/v2/{}/{kind}/{reference}", self.base, self.repository)
    }

    /// An upload's `Location`, relative or absolute; an absolute one must stay on
    /// this registry (its credentials go with the request).
    pub fn resolve(&self, location: &str) -> Result<String, Error> {
        if location.starts_with('/') {
            return Ok(format!("{}{location}", self.base));
        }
        if location.starts_with(&format!("{}/", self.base)) {
            return Ok(location.to_string());
        }
        Err(Error::BadImage {
            reference: self.name.clone(),
            reason: format!("the registry sent an upload to `{location}`, which is not on {}", self.base),
        })
    }

    /// The client, for requests built by the caller.
    pub fn client(&self) -> &reqwest::blocking::Client {
        self.downloader.client()
    }

    pub fn downloader(&self) -> &Downloader {
        self.downloader
    }

    /// Fetches a manifest or index by tag or `sha256:` digest, accepting the OCI and
    /// Docker v2 media types. `label` names the image in errors.
    pub fn manifest(&self, reference: &str, accept: &str, label: &str) -> Result<Fetched, Error> {
        let url = self.url("manifests", reference);
        let resp = self.send(self.client().get(&url).header("Accept", accept), &format!("the manifest {reference}"))?;
        match resp.status() {
            StatusCode::NOT_FOUND => {
                return Err(Error::NotInRegistry { reference: label.to_string(), what: format!("manifest `{reference}`") })
            }
            s if !s.is_success() => return Err(Error::HttpStatus { url, status: s.as_u16(), attempts: 1 }),
            _ => {}
        }
        let header_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let bytes = read_limited(resp, &url)?;
        let digest = sha256_bytes(&bytes);
        if let Some(want) = reference.strip_prefix("sha256:") {
            if want != digest {
                return Err(Error::WrongDigest {
                    what: format!("manifest {reference} of {label}"),
                    algorithm: "sha256",
                    expected: want.to_string(),
                    got: digest,
                });
            }
        }
        // The document's own mediaType wins; old Docker manifests only have the header.
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
            .unwrap_or(header_type);
        Ok(Fetched { bytes, digest, media_type })
    }
}

fn header(value: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(value).map_err(|_| Error::BadImage {
        reference: "registry credentials".into(),
        reason: "they hold characters an HTTP header cannot carry".into(),
    })
}

/// Reads a small JSON answer (bounded: a registry is not trusted with our memory).
fn read_limited(resp: Response, url: &str) -> Result<Vec<u8>, Error> {
    let mut body = Vec::new();
    resp.take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| Error::Network { url: url.to_string(), attempts: 1, message: e.to_string() })?;
    if body.len() as u64 > MAX_JSON_BYTES {
        return Err(Error::BadImage {
            reference: url.to_string(),
            reason: format!("the answer is larger than {MAX_JSON_BYTES} bytes, too large for a manifest"),
        });
    }
    Ok(body)
}

/// `Bearer realm="…",service="…"` → ("Bearer", [(realm, …), (service, …)]).
fn parse_challenge(header: &str) -> (String, Vec<(String, String)>) {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((v, n)) => (v.to_string(), n),
                None => (quoted.to_string(), ""),
            },
            None => match after.split_once(',') {
                Some((v, n)) => (v.trim().to_string(), n),
                None => (after.trim().to_string(), ""),
            },
        };
        params.push((key, value));
        rest = next.trim_start_matches([',', ' ']);
    }
    (scheme.to_string(), params)
}

/// The `auth` entry (base64 `user:password`) for `registry` in the Docker config
/// (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`), and the file looked in.
fn docker_credentials(registry: &str) -> (Option<Credentials>, Option<PathBuf>) {
    let path = match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => Path::new(&dir).join("config.json"),
        None => match std::env::var_os("HOME") {
            Some(home) => Path::new(&home).join(".docker/config.json"),
            None => return (None, None),
        },
    };
    let Ok(text) = std::fs::read(&path) else { return (None, None) };
    let Ok(config) = serde_json::from_slice::<serde_json::Value>(&text) else { return (None, Some(path)) };
    let keys: Vec<String> = if registry == "docker.io" {
        ["https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io"].map(String::from).to_vec()
    } else {
        vec![registry.to_string(), format!("https://{registry}"), format!("http://{registry}")]
    };
    let auth = keys.iter().find_map(|k| config.get("auths")?.get(k)?.get("auth")?.as_str().map(str::to_string));
    let valid = auth.filter(|a| {
        base64::engine::general_purpose::STANDARD.decode(a).is_ok_and(|d| d.contains(&b':'))
    });
    (valid.map(|basic| Credentials { basic, from: path.clone() }), Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#);
        assert_eq!(s, "Bearer");
        assert_eq!(p, vec![("realm".into(), "https://auth.docker.io/token".into()), ("service".into(), "registry.docker.io".into())]);
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#).0, "Basic");
    }
}
