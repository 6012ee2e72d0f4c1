//! The LXD/Incus REST API: a connection per request over the daemon's unix socket (or
//! TLS to a remote), JSON in and out, background operations awaited, every failure a
//! typed `Error` naming the server and what envy was doing.

use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::{self, Body};
use super::remotes::{Pinned, Remotes};
use super::Error;
use crate::state::Home;
use crate::envfile::Placement;

/// How long a request may wait for the daemon's next byte; operations are awaited in
/// steps shorter than this.
const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// One `/wait` call asks for at most this many seconds.
const WAIT_STEP: u64 = 60;

/// How long a member that just joined a cluster may refuse a trusted certificate (403).
const TRUST_SETTLE: Duration = Duration::from_secs(15);

/// Where the daemon answers.
#[derive(Clone)]
enum Endpoint {
    Unix(PathBuf),
    /// A remote over TLS, its certificate pinned.
    Https { remote: String, address: String, config: Arc<rustls::ClientConfig>, verifier: Arc<Pinned> },
}

/// A byte stream to the daemon.
pub enum Stream {
    Unix(UnixStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

impl Stream {
    /// How long a read may block (None: forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(timeout),
            Stream::Tls(s) => s.sock.set_read_timeout(timeout),
        }
    }
}

/// A client of one daemon (or cluster).
#[derive(Clone)]
pub struct Client {
    endpoint: Endpoint,
    /// How errors name the daemon: "LXD at /var/lib/lxd/unix.socket".
    pub server: String,
}

/// The local daemon's sockets, in the order envy tries them when LXD_DIR is not set.
const LOCAL_SOCKETS: [&str; 3] =
    ["/var/lib/lxd/unix.socket", "/var/snap/lxd/common/lxd/unix.socket", "/var/lib/incus/unix.socket"];

/// A started background operation.
#[derive(Debug)]
pub struct Operation {
    pub id: String,
    /// The operation's own metadata (for exec: the websocket secrets).
    pub metadata: Value,
}

impl Client {
    /// The local daemon: `$LXD_DIR/unix.socket` (or `$INCUS_DIR`'s) when set, else the
    /// first of the usual sockets that exists.
    pub fn local() -> Result<Client, Error> {
        let candidates: Vec<PathBuf> = match ["LXD_DIR", "INCUS_DIR"].iter().find_map(|v| std::env::var_os(v).filter(|d| !d.is_empty())) {
            Some(dir) => vec![PathBuf::from(dir).join("unix.socket")],
            None => LOCAL_SOCKETS.iter().map(PathBuf::from).collect(),
        };
        let socket = candidates.iter().find(|p| p.exists()).ok_or_else(|| Error::NoDaemon {
            tried: candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        })?;
        Ok(Client { server: format!("the daemon at {}", socket.display()), endpoint: Endpoint::Unix(socket.clone()) })
    }

    /// The daemon a machine's `remote` names, or the local one.
    pub fn for_placement(home: &Home, placement: &Placement) -> anyhow::Result<Client> {
        match &placement.remote {
            None => Ok(Client::local()?),
            Some(name) => {
                let remotes = Remotes::load(home)?;
                let remote = remotes.get(name)?;
                let (config, verifier) = remotes.tls(Some(&remote.fingerprint))?;
                Ok(Client::https(name, &remote.address, config, verifier))
            }
        }
    }

    /// A remote at `address` (`HOST:PORT`) through `config`, whose verifier pins its certificate.
    pub fn https(name: &str, address: &str, config: Arc<rustls::ClientConfig>, verifier: Arc<Pinned>) -> Client {
        Client {
            server: format!("remote {name} ({address})"),
            endpoint: Endpoint::Https { remote: name.to_string(), address: address.to_string(), config, verifier },
        }
    }

    /// Whether the daemon runs on this host (sync folders and forwards need that).
    pub fn is_local(&self) -> bool {
        matches!(self.endpoint, Endpoint::Unix(_))
    }

    /// A fresh connection to the daemon.
    pub fn connect(&self, doing: &str) -> Result<Stream, Error> {
        let stream = match &self.endpoint {
            Endpoint::Unix(path) => Stream::Unix(UnixStream::connect(path).map_err(|e| self.unreachable(doing, e))?),
            Endpoint::Https { remote, address, config, verifier } => {
                let mut tls = super::remotes::connect(address, config.clone()).map_err(|e| self.unreachable(doing, e))?;
                tls.sock.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| self.unreachable(doing, e))?;
                // The handshake now, so a changed certificate is told apart from a broken network.
                while tls.conn.is_handshaking() {
                    if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                        if verifier.changed() {
                            return Err(Error::CertificateChanged {
                                remote: remote.clone(),
                                address: address.clone(),
                                pinned: verifier.pinned().unwrap_or_default(),
                                seen: verifier.seen().unwrap_or_default(),
                            });
                        }
                        return Err(self.unreachable(doing, e));
                    }
                }
                Stream::Tls(Box::new(tls))
            }
        };
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| self.unreachable(doing, e))?;
        Ok(stream)
    }

    /// The error for a connection that failed or broke while `doing`.
    pub fn unreachable(&self, doing: &str, cause: impl std::fmt::Display) -> Error {
        Error::Unreachable { server: self.server.clone(), doing: doing.to_string(), cause: cause.to_string() }
    }

    fn bad_answer(&self, doing: &str, problem: impl Into<String>) -> Error {
        Error::BadAnswer { server: self.server.clone(), doing: doing.to_string(), problem: problem.into() }
    }

    /// One request; the answer's JSON envelope, or the API's error as `Error::Api`.
    fn request(&self, method: &str, path: &str, body: Option<Body<'_>>, doing: &str) -> Result<Value, Error> {
        tracing::debug!(method, path, "lxd request");
        let mut stream = self.connect(doing)?;
        let response = http::send(&mut stream, method, path, body).map_err(|e| self.unreachable(doing, e))?;
        let envelope: Value = serde_json::from_slice(&response.body).map_err(|e| {
            self.bad_answer(doing, format!("HTTP {} with a body that is not JSON ({e})", response.status))
        })?;
        if envelope["type"] == "error" || response.status >= 400 {
            return Err(self.api_error(doing, response.status, &envelope));
        }
        Ok(envelope)
    }

    /// The API's refusal: the reason in its error envelope, with the HTTP status.
    fn api_error(&self, doing: &str, status: u16, envelope: &Value) -> Error {
        let message = envelope["error"].as_str().filter(|m| !m.is_empty()).unwrap_or("no reason given").to_string();
        Error::Api { server: self.server.clone(), doing: doing.to_string(), status, message }
    }

    /// A request with a JSON body (or none). A remote member that answers 403 is asked
    /// again for a while: right after it joined a cluster it refuses certificates the
    /// cluster trusts.
    fn json_request(&self, method: &str, path: &str, body: Option<&Value>, doing: &str) -> Result<Value, Error> {
        let bytes = body.map(|v| serde_json::to_vec(v).expect("a JSON value serializes"));
        let started = Instant::now();
        loop {
            let mut reader: &[u8] = bytes.as_deref().unwrap_or_default();
            let body = bytes.as_ref().map(|b| Body { content_type: "application/json".into(), len: b.len() as u64, reader: &mut reader });
            match self.request(method, path, body, doing) {
                Err(Error::Api { status: 403, .. }) if !self.is_local() && started.elapsed() < TRUST_SETTLE => {
                    std::thread::sleep(Duration::from_millis(500))
                }
                other => return other,
            }
        }
    }

    /// GET `path`; its metadata.
    pub fn get(&self, path: &str, doing: &str) -> Result<Value, Error> {
        Ok(self.json_request("GET", path, None, doing)?["metadata"].take())
    }

    /// A request that may start a background operation: a synchronous answer's
    /// metadata, or the finished operation's metadata once it succeeded.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>, doing: &str) -> Result<Value, Error> {
        let mut envelope = self.json_request(method, path, body, doing)?;
        if envelope["type"] == "async" {
            let op = self.operation_of(&mut envelope, doing)?;
            return self.wait(&op.id, doing);
        }
        Ok(envelope["metadata"].take())
    }

    /// GET `path` as a stream of raw bytes (an image export), cut-off checked; the
    /// API's error when it refuses.
    pub fn download(&self, path: &str, doing: &str) -> Result<http::Exact<BufReader<Stream>>, Error> {
        let mut stream = self.connect(doing)?;
        http::write_request(&mut stream, "GET", path, None).map_err(|e| self.unreachable(doing, e))?;
        let mut reader = BufReader::new(stream);
        let head = http::read_head(&mut reader).map_err(|e| self.unreachable(doing, e))?;
        if head.status != 200 {
            let body = http::read_body(&mut reader, &head).map_err(|e| self.unreachable(doing, e))?;
            let envelope = serde_json::from_slice::<Value>(&body).unwrap_or_default();
            return Err(self.api_error(doing, head.status, &envelope));
        }
        match head.length {
            // The server's word on a size is bounded as an archive's is.
            Some(len) if len > crate::boxes::MAX_PAYLOAD_BYTES => Err(self.bad_answer(
                doing,
                format!("a download of {len} bytes, more than the {}-byte bound for a payload file", crate::boxes::MAX_PAYLOAD_BYTES),
            )),
            Some(len) if !head.chunked => Ok(http::Exact::new(reader, len)),
            _ => Err(self.bad_answer(doing, "a download without a Content-Length")),
        }
    }

    /// A request body streamed from `reader` (an image upload); waits for the operation.
    pub fn upload(&self, path: &str, content_type: &str, len: u64, reader: &mut dyn Read, doing: &str) -> Result<Value, Error> {
        let body = Body { content_type: content_type.into(), len, reader };
        let mut envelope = self.request("POST", path, Some(body), doing)?;
        let op = self.operation_of(&mut envelope, doing)?;
        self.wait(&op.id, doing)
    }

    /// A request that starts a background operation, returned unfinished (exec).
    pub fn start(&self, path: &str, body: &Value, doing: &str) -> Result<Operation, Error> {
        let mut envelope = self.json_request("POST", path, Some(body), doing)?;
        self.operation_of(&mut envelope, doing)
    }

    fn operation_of(&self, envelope: &mut Value, doing: &str) -> Result<Operation, Error> {
        let id = envelope["metadata"]["id"].as_str().map(str::to_string);
        match id {
            Some(id) if valid_operation_id(&id) => Ok(Operation { id, metadata: envelope["metadata"]["metadata"].take() }),
            _ => Err(self.bad_answer(doing, "an operation without a valid id")),
        }
    }

    /// Waits for operation `id` to end; its metadata when it succeeded.
    pub fn wait(&self, id: &str, doing: &str) -> Result<Value, Error> {
        loop {
            let mut op = self.get(&format!("/1.0/operations/{id}/wait?timeout={WAIT_STEP}"), doing)?;
            match op["status_code"].as_u64() {
                // Running (103) or pending: the wait step ended first.
                Some(100..=199) => continue,
                Some(200) => return Ok(op["metadata"].take()),
                _ => {
                    let message = op["err"].as_str().filter(|m| !m.is_empty()).unwrap_or("no reason given").to_string();
                    return Err(Error::Failed { server: self.server.clone(), doing: doing.to_string(), message });
                }
            }
        }
    }

    /// The websocket of an operation (exec's stdio and control channels).
    pub fn websocket(&self, op: &str, secret: &str, doing: &str) -> Result<tungstenite::WebSocket<Stream>, Error> {
        let stream = self.connect(doing)?;
        let url = format!("ws://lxd/1.0/operations/{op}/websocket?secret={}", url_escape(secret));
        let (socket, _) = tungstenite::client::client(url.as_str(), stream).map_err(|e| self.unreachable(doing, e))?;
        Ok(socket)
    }
}

/// Operation ids are UUIDs; anything else is not put into a URL.
fn valid_operation_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Percent-encodes everything but unreserved characters, for a URL path or query.
pub fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_bigger_than_any_box_payload_is_refused_before_a_byte_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("unix.socket");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut request);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", crate::boxes::MAX_PAYLOAD_BYTES + 1);
            std::io::Write::write_all(&mut conn, head.as_bytes()).unwrap();
        });
        let client = Client { server: "the test daemon".into(), endpoint: Endpoint::Unix(socket) };
        let err = client.download("/1.0/images/x/export", "exporting").err().expect("refused").to_string();
        assert!(err.contains("more than the 274877906944-byte bound"), "{err}");
        server.join().unwrap();
    }
}
