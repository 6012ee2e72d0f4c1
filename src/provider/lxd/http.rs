//! A small blocking HTTP/1.1 client over any byte stream: LXD answers on a unix
//! socket, which reqwest cannot use, and over TLS with envy's own client certificate.
//! One request per connection (`Connection: close`), bodies bounded.

use std::io::{self, BufRead, BufReader, Read, Write};

/// The largest answer envy reads from the API (lists of instances, images, operations).
pub const MAX_BODY: u64 = 32 << 20;
/// The longest status line plus headers envy reads.
const MAX_HEAD: usize = 64 << 10;

/// A request body: its type, its length and where its bytes come from.
pub struct Body<'a> {
    pub content_type: String,
    pub len: u64,
    pub reader: &'a mut dyn Read,
}

/// A status and a body read whole.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Sends one request on `stream` and reads the whole answer.
pub fn send(stream: &mut (impl Read + Write), method: &str, path: &str, body: Option<Body<'_>>) -> io::Result<Response> {
    write_request(stream, method, path, body)?;
    read_response(stream)
}

/// Writes one request (its head and body).
pub fn write_request(stream: &mut impl Write, method: &str, path: &str, body: Option<Body<'_>>) -> io::Result<()> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: lxd\r\nUser-Agent: envy\r\nConnection: close\r\n");
    if let Some(b) = &body {
        head.push_str(&format!("Content-Type: {}\r\nContent-Length: {}\r\n", b.content_type, b.len));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(b) = body {
        let copied = io::copy(&mut b.reader.take(b.len), stream)?;
        if copied != b.len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("the request body ended after {copied} of {} bytes", b.len)));
        }
    }
    stream.flush()
}

fn bad(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads a status line, headers and a body (Content-Length, chunked, or up to EOF).
pub fn read_response(stream: &mut impl Read) -> io::Result<Response> {
    let mut reader = BufReader::new(stream);
    let head = read_head(&mut reader)?;
    let body = read_body(&mut reader, &head)?;
    Ok(Response { status: head.status, body })
}

/// An answer's status and how its body is framed.
pub struct Head {
    pub status: u16,
    pub length: Option<u64>,
    pub chunked: bool,
}

/// Reads a status line and headers, leaving the body in `reader`.
pub fn read_head(reader: &mut impl BufRead) -> io::Result<Head> {
    let mut head_len = 0;
    let mut line = String::new();
    let mut next_line = |reader: &mut dyn BufRead, line: &mut String| -> io::Result<()> {
        line.clear();
        let n = Read::take(&mut *reader, (MAX_HEAD - head_len) as u64).read_line(line)?;
        head_len += n;
        if n == 0 || !line.ends_with('\n') {
            return Err(bad("the answer's headers were cut off or too long"));
        }
        Ok(())
    };
    next_line(reader, &mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| line.starts_with("HTTP/1."))
        .ok_or_else(|| bad(format!("not an HTTP answer: {:?}", line.trim_end())))?;
    let mut length = None;
    let mut chunked = false;
    loop {
        next_line(reader, &mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else { return Err(bad(format!("malformed header {header:?}"))) };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<u64>().map_err(|_| bad(format!("bad Content-Length {value:?}")))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    Ok(Head { status, length, chunked })
}

/// Reads a body whole, at most MAX_BODY bytes.
pub fn read_body(reader: &mut impl BufRead, head: &Head) -> io::Result<Vec<u8>> {
    let (length, chunked) = (head.length, head.chunked);
    let body = if chunked {
        read_chunked(reader)?
    } else {
        let limit = length.unwrap_or(MAX_BODY + 1);
        if length.is_some_and(|l| l > MAX_BODY) {
            return Err(bad(format!("the answer is {limit} bytes, more than the {MAX_BODY} envy reads")));
        }
        let mut body = Vec::new();
        reader.take(limit).read_to_end(&mut body)?;
        if body.len() as u64 > MAX_BODY {
            return Err(bad(format!("the answer is more than the {MAX_BODY} bytes envy reads")));
        }
        if length.is_some_and(|l| l != body.len() as u64) {
            return Err(bad("the answer was cut off before its Content-Length"));
        }
        body
    };
    Ok(body)
}

/// A body of a known length, read as a stream (an exported image): reading past what
/// arrived is an error, so a cut connection is never taken for the end.
pub struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Exact<R> {
    pub fn new(inner: R, len: u64) -> Exact<R> {
        Exact { inner, left: len }
    }
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("the answer was cut off {} bytes before its end", self.left)));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        reader.by_ref().take(1024).read_line(&mut line)?;
        let size_text = line.trim_end().split(';').next().unwrap_or("");
        let size = u64::from_str_radix(size_text, 16).map_err(|_| bad(format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            return Ok(body);
        }
        if body.len() as u64 + size > MAX_BODY {
            return Err(bad(format!("the answer is more than the {MAX_BODY} bytes envy reads")));
        }
        let start = body.len();
        body.resize(start + size as usize, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(bad("a chunk does not end with CRLF"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> io::Result<Response> {
        read_response(&mut io::Cursor::new(raw.to_vec()))
    }

    #[test]
    fn reads_length_chunked_and_eof_bodies() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let r = parse(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"abcde"[..]));
        let r = parse(b"HTTP/1.0 200 OK\r\n\r\nto the end").unwrap();
        assert_eq!(r.body, b"to the end");
    }

    #[test]
    fn refuses_cut_or_oversized_answers() {
        for (raw, what) in [
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"[..], "cut off"),
            (&b"HTTP/1.1 200 OK\r\nContent-Le"[..], "cut off"),
            (&b"SSH-2.0-OpenSSH\r\n\r\n"[..], "not an HTTP answer"),
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n"[..], "more than"),
            (&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..], "bad chunk size"),
        ] {
            let err = parse(raw).unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
        }
    }

    #[test]
    fn sends_the_body_with_its_length() {
        struct Duplex(Vec<u8>, io::Cursor<Vec<u8>>);
        impl Read for Duplex {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.1.read(buf)
            }
        }
        impl Write for Duplex {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut d = Duplex(Vec::new(), io::Cursor::new(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n".to_vec()));
        let mut data: &[u8] = b"{\"a\":1}";
        let r = send(&mut d, "POST", "/1.0/x", Some(Body { content_type: "application/json".into(), len: 7, reader: &mut data })).unwrap();
        assert_eq!(r.status, 201);
        let sent = String::from_utf8(d.0).unwrap();
        assert!(sent.starts_with("POST /1.0/x HTTP/1.1\r\n") && sent.contains("Content-Length: 7\r\n") && sent.ends_with("\r\n\r\n{\"a\":1}"), "{sent}");
    }
}
