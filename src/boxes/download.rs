//! Downloads: streamed to a `.part` file while hashed (one pass), resumed with HTTP
//! Range after an interruption, retried with backoff on connection errors and 5xx.
//! What lands on disk here is unverified until `Pin::check` passes on the hashes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::blocking::Client;
use reqwest::header::{HeaderMap, CONTENT_RANGE, RANGE};
use reqwest::StatusCode;

use super::digest::{Hasher, Hashes, Pin};
use super::Error;
use crate::ui::Ui;

/// Attempts per download before giving up (connection errors, 5xx, cut bodies).
const ATTEMPTS: u32 = 5;
/// How long a download may make no progress before the attempt counts as failed.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest text file (checksum list, catalog, API answer) fetched into memory.
pub const MAX_TEXT_BYTES: u64 = 8 << 20;

/// An HTTP client configured for box downloads.
pub struct Downloader {
    client: Client,
    /// Text documents already fetched (URL → body): one command reads an index,
    /// checksum list or API answer once, however many machines name it.
    texts: Mutex<HashMap<String, String>>,
}

/// Whether `text` is an `http://` or `https://` URL.
pub fn is_http_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

/// Plain HTTP is for hosts on a loopback address (as Docker allows for registries) and
/// those the user lists in config `insecure_registries` (`host[:port]`): anything else
/// could be read or changed on the way.
pub fn plain_http_allowed(host_port: &str, insecure: &[String]) -> bool {
    if insecure.iter().any(|r| r == host_port) {
        return true;
    }
    let host = match host_port.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The `host[:port]` of an `http://` URL; None for any other URL.
pub fn plain_http_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    Some(authority.rsplit_once('@').map_or(authority, |(_, host)| host))
}

impl Downloader {
    /// A client using `proxy` when given (config `proxy`), else the usual proxy
    /// environment variables.
    pub fn new(proxy: Option<&str>) -> anyhow::Result<Downloader> {
        let mut builder = Client::builder()
            .user_agent(concat!("envy/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // In reqwest's blocking client this bounds the wait for headers and for each
            // body read, not the whole transfer: a stalled server is retried (resuming),
            // a slow but moving one is not cut off.
            .timeout(STALL_TIMEOUT);
        if let Some(p) = proxy {
            let proxy = reqwest::Proxy::all(p).map_err(|e| {
                anyhow::anyhow!("config `proxy` = {p:?} is not a proxy URL ({e}); fix it in config.toml")
            })?;
            builder = builder.proxy(proxy);
        }
        Ok(Downloader { client: builder.build()?, texts: Mutex::default() })
    }

    /// Fetches a small text document (a checksum list, a catalog), with retries.
    pub fn fetch_text(&self, url: &str) -> Result<String, Error> {
        self.fetch_text_up_to(url, MAX_TEXT_BYTES)
    }

    /// Fetches a text document of at most `limit` bytes, with retries; a larger one is
    /// an error, not a silently cut document. A URL fetched before by this downloader
    /// is answered from memory.
    pub fn fetch_text_up_to(&self, url: &str, limit: u64) -> Result<String, Error> {
        if let Some(text) = self.texts.lock().expect("text cache").get(url) {
            return Ok(text.clone());
        }
        let text = self.fetch_text_once(url, limit)?;
        self.texts.lock().expect("text cache").insert(url.to_string(), text.clone());
        Ok(text)
    }

    fn fetch_text_once(&self, url: &str, limit: u64) -> Result<String, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.client.get(url).send() {
                Ok(resp) if resp.status().is_success() => {
                    let mut body = Vec::new();
                    match resp.take(limit + 1).read_to_end(&mut body) {
                        Ok(_) if body.len() as u64 > limit => {
                            return Err(Error::Catalog {
                                location: url.into(),
                                message: format!("the document is larger than {} MiB, more than envy reads from an index, list or catalog", limit >> 20),
                            })
                        }
                        Ok(_) => return Ok(String::from_utf8_lossy(&body).into_owned()),
                        Err(e) => {
                            Error::Network { url: url.into(), attempts: attempt, message: e.to_string() }
                        }
                    }
                }
                Ok(resp) if resp.status().is_server_error() => {
                    Error::HttpStatus { url: url.into(), status: resp.status().as_u16(), attempts: attempt }
                }
                Ok(resp) => {
                    return Err(Error::HttpStatus {
                        url: url.into(),
                        status: resp.status().as_u16(),
                        attempts: 1,
                    })
                }
                Err(e) => Error::Network { url: url.into(), attempts: attempt, message: error_chain(&e) },
            };
            if attempt >= ATTEMPTS {
                return Err(failure);
            }
            backoff(attempt);
        }
    }

    /// The HTTP client (registry requests share its proxy and timeouts).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Downloads `url` into `part`, resuming from what `part` already holds, and
    /// returns the hashes of the whole file (sha512 too when `pin` is one). The caller
    /// checks them against the pin; nothing here trusts the bytes. `headers` go with
    /// every request (a registry's Authorization).
    pub fn fetch(
        &self,
        url: &str,
        headers: &HeaderMap,
        part: &Path,
        pin: Option<&Pin>,
        ui: &Ui,
        label: &str,
    ) -> Result<Hashes, Error> {
        // Hash state of what `part` holds; rebuilt from disk when a previous process
        // left a part file (hash state cannot be saved across processes).
        let mut resumed: Option<Hasher> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut hasher = match resumed.take() {
                Some(h) => h,
                None => rehash_part(part, pin)?,
            };
            let have = hasher.bytes();
            let mut request = self.client.get(url).headers(headers.clone());
            if have > 0 {
                tracing::debug!("resuming {url} from byte {have}");
                request = request.header(RANGE, format!("bytes={have}-"));
            }
            let failure = match request.send() {
                Err(e) => Error::Network { url: url.into(), attempts: attempt, message: error_chain(&e) },
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
                        // The part is not a prefix of what the server has now: start over.
                        remove_part(part)?;
                        continue;
                    }
                    if status.is_server_error() {
                        Error::HttpStatus { url: url.into(), status: status.as_u16(), attempts: attempt }
                    } else if !status.is_success() {
                        return Err(Error::HttpStatus {
                            url: url.into(),
                            status: status.as_u16(),
                            attempts: 1,
                        });
                    } else {
                        let partial = status == StatusCode::PARTIAL_CONTENT;
                        if partial && range_start(&resp) != Some(have) {
                            if have == 0 {
                                return Err(Error::Network {
                                    url: url.into(),
                                    attempts: attempt,
                                    message: "the server sent part of the file (206) to a plain request".into(),
                                });
                            }
                            // Not the range asked for: start over from byte 0.
                            remove_part(part)?;
                            continue;
                        }
                        let resumes = partial;
                        if !resumes {
                            hasher = Hasher::for_pin(pin);
                        }
                        let start = hasher.bytes();
                        let total = resp.content_length().map(|n| n + start);
                        match receive(resp, part, resumes, &mut hasher, total, ui, label) {
                            Ok(()) => match total {
                                Some(t) if hasher.bytes() < t => Error::Truncated {
                                    url: url.into(),
                                    got: hasher.bytes(),
                                    expected: t,
                                    attempts: attempt,
                                },
                                _ => return Ok(hasher.finish()),
                            },
                            Err(ReceiveError::Local(e)) => return Err(e),
                            Err(ReceiveError::Interrupted) => return Err(Error::Interrupted { url: url.into() }),
                            Err(ReceiveError::Remote(message)) => match total {
                                Some(t) => Error::Truncated {
                                    url: url.into(),
                                    got: hasher.bytes(),
                                    expected: t,
                                    attempts: attempt,
                                },
                                None => Error::Network { url: url.into(), attempts: attempt, message },
                            },
                        }
                    }
                }
            };
            if attempt >= ATTEMPTS {
                return Err(failure);
            }
            tracing::debug!("attempt {attempt} failed: {failure}; retrying");
            resumed = Some(hasher);
            backoff(attempt);
        }
    }
}

enum ReceiveError {
    /// Writing the part file failed: retrying will not help.
    Local(Error),
    /// Ctrl-C or SIGTERM (`envy run`): stop, keeping what arrived for a resume.
    Interrupted,
    /// The connection broke: resume from what arrived.
    Remote(String),
}

/// Streams the response body to the part file (appending when resuming).
fn receive(
    mut resp: reqwest::blocking::Response,
    part: &Path,
    append: bool,
    hasher: &mut Hasher,
    total: Option<u64>,
    ui: &Ui,
    label: &str,
) -> Result<(), ReceiveError> {
    let local = |e: std::io::Error| ReceiveError::Local(Error::io("cannot write", part)(e));
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .map_err(local)?;
    let mut progress = ui.progress(&format!("downloading {label}"), total);
    progress.set(hasher.bytes());
    let mut buf = vec![0u8; 1 << 20];
    let outcome = loop {
        if crate::signals::interrupted() {
            break Err(ReceiveError::Interrupted);
        }
        match resp.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                file.write_all(&buf[..n]).map_err(local)?;
                hasher.update(&buf[..n]);
                progress.add(n as u64);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(ReceiveError::Remote(e.to_string())),
        }
    };
    file.sync_data().map_err(local)?;
    outcome
}

/// The hash state of an existing part file, or a fresh one.
fn rehash_part(part: &Path, pin: Option<&Pin>) -> Result<Hasher, Error> {
    let mut hasher = Hasher::for_pin(pin);
    match File::open(part) {
        Ok(f) => hasher.consume(f).map_err(Error::io("cannot read", part))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("cannot read", part)(e)),
    }
    Ok(hasher)
}

/// Deletes a part file (missing is fine).
pub fn remove_part(part: &Path) -> Result<(), Error> {
    match std::fs::remove_file(part) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("cannot remove", part)(e)),
        _ => Ok(()),
    }
}

/// The first byte of a 206 response's `Content-Range: bytes N-M/T`.
fn range_start(resp: &reqwest::blocking::Response) -> Option<u64> {
    let value = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    value.strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

pub(super) fn backoff(attempt: u32) {
    let ms = (250u64 << (attempt - 1).min(4)).min(4000);
    std::thread::sleep(Duration::from_millis(ms));
}

/// reqwest's error with its causes (the top level alone says little).
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback_or_listed() {
        assert!(plain_http_allowed("127.0.0.1:5000", &[]));
        assert!(plain_http_allowed("localhost:5000", &[]));
        assert!(plain_http_allowed("[::1]:5000", &[]));
        assert!(!plain_http_allowed("10.0.0.5:5000", &[]));
        assert!(!plain_http_allowed("ghcr.io", &[]));
        assert!(plain_http_allowed("reg.lan:5000", &["reg.lan:5000".into()]));
        assert_eq!(plain_http_host("http://u:p@boxes.lan:8080/x.box?a#b"), Some("boxes.lan:8080"));
        assert_eq!(plain_http_host("https://boxes.lan/x.box"), None);
        assert!(is_http_url("https://x/") && is_http_url("http://x/") && !is_http_url("./http"));
    }
}
