//! Serving one box file over HTTP for `envy share --serve`: GET and HEAD of a single
//! path, with byte ranges so a teammate's interrupted download resumes. Everything
//! else is 404. Runs until `stop()` says so (Ctrl-C).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

/// A bound HTTP server for one file.
pub struct BoxServer {
    server: Server,
    file: PathBuf,
    url_path: String,
}

impl BoxServer {
    /// Binds `addr` (port 0 picks a free one) to serve `file` at `/<its file name>`.
    pub fn bind(addr: &str, file: &Path) -> Result<BoxServer> {
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("{addr:?} is not ADDR:PORT (e.g. 127.0.0.1:8000, or 0.0.0.0:8000 to share on your network)"))?;
        let server = Server::http(addr).map_err(|e| anyhow!("cannot listen on {addr}: {e}; pick another port"))?;
        let name = file.file_name().and_then(|n| n.to_str()).context("the box file has no name")?;
        Ok(BoxServer { server, file: file.to_path_buf(), url_path: format!("/{name}") })
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.server.server_addr().to_ip().expect("bound to an IP address")
    }

    /// The URL a teammate fetches, given the host name or address they reach us by.
    pub fn url(&self) -> String {
        let addr = self.addr();
        let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        format!("http://{host}:{}{}", addr.port(), self.url_path)
    }

    /// Answers requests until `stop()` returns true (checked every 200 ms).
    pub fn serve_until(&self, stop: impl Fn() -> bool) -> Result<()> {
        while !stop() {
            match self.server.recv_timeout(Duration::from_millis(200)) {
                Ok(Some(request)) => {
                    if let Err(e) = self.answer(request) {
                        tracing::warn!("share: answering a request failed: {e:#}");
                    }
                }
                Ok(None) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("the share server stopped"),
            }
        }
        Ok(())
    }

    fn answer(&self, request: Request) -> Result<()> {
        let path = request.url().split('?').next().unwrap_or("");
        let method = request.method().clone();
        if path != self.url_path || !matches!(method, Method::Get | Method::Head) {
            return Ok(request.respond(Response::empty(StatusCode(404)))?);
        }
        let mut file = File::open(&self.file).with_context(|| format!("cannot read {}", self.file.display()))?;
        let size = file.metadata()?.len();
        let range = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Range"))
            .map(|h| parse_range(h.value.as_str(), size));
        let (status, start, end) = match range {
            None => (200, 0, size),
            Some(Some((start, end))) => (206, start, end),
            Some(None) => {
                let unsatisfiable = Response::empty(StatusCode(416))
                    .with_header(header("Content-Range", &format!("bytes */{size}")));
                return Ok(request.respond(unsatisfiable)?);
            }
        };
        file.seek(SeekFrom::Start(start))?;
        let length = end - start;
        let body: Box<dyn Read + Send> = if method == Method::Head { Box::new(std::io::empty()) } else { Box::new(file.take(length)) };
        let mut response = Response::new(StatusCode(status), Vec::new(), body, Some(length as usize), None)
            .with_header(header("Accept-Ranges", "bytes"))
            .with_header(header("Content-Type", "application/octet-stream"));
        if status == 206 {
            response = response.with_header(header("Content-Range", &format!("bytes {start}-{}/{size}", end - 1)));
        }
        Ok(request.respond(response)?)
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header names are valid")
}

/// `bytes=N-`, `bytes=N-M` or `bytes=-N` as a half-open range within `size`; None when
/// it cannot be satisfied.
fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    let (first, last) = spec.split_once('-')?;
    let (start, end) = match (first.trim(), last.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.saturating_sub(n), size)
        }
        (s, "") => (s.parse().ok()?, size),
        (s, e) => (s.parse().ok()?, e.parse::<u64>().ok()?.saturating_add(1).min(size)),
    };
    (start < end && start < size).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_resolve_within_the_file() {
        assert_eq!(parse_range("bytes=10-", 100), Some((10, 100)));
        assert_eq!(parse_range("bytes=10-19", 100), Some((10, 20)));
        assert_eq!(parse_range("bytes=90-200", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=-5", 100), Some((95, 100)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("items=1-2", 100), None);
    }
}
