//! A small real HTTP/1.1 server on 127.0.0.1 for download tests: serves byte blobs,
//! honors `Range: bytes=N-`, records every request, and injects faults on demand
//! (a connection cut after N bytes, error statuses, a slow body).

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the server does instead of answering normally, once per request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Announce the full length, send this many body bytes, close the connection.
    Cut(usize),
    /// Answer with this status and no body.
    Status(u16),
    /// Answer 200 with the whole file even when a Range was asked for.
    IgnoreRange,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub range: Option<String>,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Arc<Vec<u8>>>,
    faults: HashMap<String, VecDeque<Fault>>,
    /// (bytes per chunk, pause between chunks) for slow bodies.
    throttle: HashMap<String, (usize, Duration)>,
    requests: Vec<Request>,
}

/// Stops when dropped.
pub struct Server {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let st = st.clone();
                    thread::spawn(move || {
                        let _ = handle(conn, &st);
                    });
                }
            }
        });
        Server { port, state, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, path.trim_start_matches('/'))
    }

    /// Serves `data` at `/path`.
    pub fn serve(&self, path: &str, data: Vec<u8>) {
        self.state.lock().unwrap().files.insert(normalize(path), Arc::new(data));
    }

    /// Faults to inject on the next requests for `/path`, in order.
    pub fn faults(&self, path: &str, faults: Vec<Fault>) {
        self.state.lock().unwrap().faults.insert(normalize(path), faults.into());
    }

    /// Sends `/path`'s body in chunks with a pause between them.
    pub fn throttle(&self, path: &str, chunk: usize, pause: Duration) {
        self.state.lock().unwrap().throttle.insert(normalize(path), (chunk, pause));
    }

    /// Every request so far for `/path`.
    pub fn requests_for(&self, path: &str) -> Vec<Request> {
        let path = normalize(path);
        self.state.lock().unwrap().requests.iter().filter(|r| r.path == path).cloned().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// `/path` for origin requests; absolute URIs (what a client sends a proxy) stay as is.
fn normalize(path: &str) -> String {
    if path.starts_with("http://") {
        return path.to_string();
    }
    format!("/{}", path.trim_start_matches('/'))
}

fn handle(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    let (file, fault, throttle) = {
        let mut st = state.lock().unwrap();
        st.requests.push(Request { path: path.clone(), range: range.clone() });
        let fault = st.faults.get_mut(&path).and_then(|q| q.pop_front());
        (st.files.get(&path).cloned(), fault, st.throttle.get(&path).copied())
    };
    let mut out = conn;
    if let Some(Fault::Status(code)) = fault {
        return write!(out, "HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
    let Some(file) = file else {
        return write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    let start = range
        .as_deref()
        .filter(|_| !matches!(fault, Some(Fault::IgnoreRange)))
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let body = match start {
        Some(s) if s >= file.len() => {
            return write!(out, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", file.len());
        }
        Some(s) => {
            write!(
                out,
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                file.len() - 1,
                file.len(),
                file.len() - s
            )?;
            &file[s..]
        }
        None => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
                file.len()
            )?;
            &file[..]
        }
    };
    let body = match fault {
        Some(Fault::Cut(n)) => &body[..n.min(body.len())],
        _ => body,
    };
    match throttle {
        Some((chunk, pause)) => {
            for piece in body.chunks(chunk) {
                out.write_all(piece)?;
                out.flush()?;
                thread::sleep(pause);
            }
        }
        None => out.write_all(body)?,
    }
    out.flush()?;
    out.shutdown(std::net::Shutdown::Both)
}
