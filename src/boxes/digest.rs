//! Digests: parsing pinned hex digests, and hashing while bytes stream past, so a
//! download or an extraction is verified in the same pass that writes it.

use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest as _, Sha256, Sha384, Sha512};

use super::Error;

/// A digest a source is pinned to. Boxes are named by sha256; upstreams that publish
/// another digest (Debian's SHA512SUMS; a Vagrant box's `checksum_type`, whatever it
/// is) are checked by it while the sha256 that names the box is computed in the same
/// pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    Sha256(String),
    Sha512(String),
    Sha384(String),
    Sha1(String),
    Md5(String),
}

impl Pin {
    pub fn algorithm(&self) -> &'static str {
        match self {
            Pin::Sha256(_) => "sha256",
            Pin::Sha512(_) => "sha512",
            Pin::Sha384(_) => "sha384",
            Pin::Sha1(_) => "sha1",
            Pin::Md5(_) => "md5",
        }
    }
    pub fn hex(&self) -> &str {
        match self {
            Pin::Sha256(h) | Pin::Sha512(h) | Pin::Sha384(h) | Pin::Sha1(h) | Pin::Md5(h) => h,
        }
    }
    /// A pin from an algorithm's name (`sha256`, `SHA512`, `md5`, …) and hex digest.
    pub fn parse(algorithm: &str, hex: &str) -> Result<Pin, Error> {
        let (make, name, len): (fn(String) -> Pin, &'static str, usize) = match algorithm.to_ascii_lowercase().as_str() {
            "sha256" => (Pin::Sha256, "sha256", 64),
            "sha512" => (Pin::Sha512, "sha512", 128),
            "sha384" => (Pin::Sha384, "sha384", 96),
            "sha1" => (Pin::Sha1, "sha1", 40),
            "md5" => (Pin::Md5, "md5", 32),
            _ => return Err(Error::BadDigest { value: format!("{algorithm}:{hex}"), algorithm: "sha256, sha512, sha384, sha1 or md5", len: 64 }),
        };
        parse_hex(hex, name, len).map(make)
    }
    /// Checks the hashes of what arrived against the pin.
    pub fn check(&self, what: &str, got: &Hashes) -> Result<(), Error> {
        let actual = match self {
            Pin::Sha256(_) => got.sha256.as_str(),
            _ => got.pinned.as_deref().unwrap_or(""),
        };
        if actual == self.hex() {
            return Ok(());
        }
        Err(Error::WrongDigest {
            what: what.to_string(),
            algorithm: self.algorithm(),
            expected: self.hex().to_string(),
            got: actual.to_string(),
        })
    }
}

impl std::fmt::Display for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.algorithm(), self.hex())
    }
}

/// Validates a hex sha256 (any case) and returns it in lower case.
pub fn parse_sha256(value: &str) -> Result<String, Error> {
    parse_hex(value, "sha256", 64)
}

/// Validates a hex sha512 and returns it in lower case.
pub fn parse_sha512(value: &str) -> Result<String, Error> {
    parse_hex(value, "sha512", 128)
}

fn parse_hex(value: &str, algorithm: &'static str, len: usize) -> Result<String, Error> {
    let v = value.trim();
    if v.len() == len && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(v.to_ascii_lowercase())
    } else {
        Err(Error::BadDigest { value: value.to_string(), algorithm, len })
    }
}

/// Hex digests of a byte stream.
#[derive(Debug, Clone)]
pub struct Hashes {
    pub sha256: String,
    /// The digest a non-sha256 pin asked for, in its algorithm.
    pub pinned: Option<String>,
}

/// The second hash a pin may need beside sha256.
#[derive(Clone)]
enum Extra {
    Sha512(Sha512),
    Sha384(Sha384),
    Sha1(sha1::Sha1),
    Md5(md5::Md5),
}

/// Running hashes: always sha256, and the pin's own algorithm when it is another.
#[derive(Clone)]
pub struct Hasher {
    sha256: Sha256,
    extra: Option<Extra>,
    bytes: u64,
}

impl Default for Hasher {
    fn default() -> Hasher {
        Hasher::new()
    }
}

impl Hasher {
    /// sha256 alone, what envy pins.
    pub fn new() -> Hasher {
        Hasher::for_pin(None)
    }
    /// Hashes enough for `pin` (its own algorithm too when it is not sha256).
    pub fn for_pin(pin: Option<&Pin>) -> Hasher {
        let extra = match pin {
            None | Some(Pin::Sha256(_)) => None,
            Some(Pin::Sha512(_)) => Some(Extra::Sha512(Sha512::new())),
            Some(Pin::Sha384(_)) => Some(Extra::Sha384(Sha384::new())),
            Some(Pin::Sha1(_)) => Some(Extra::Sha1(sha1::Sha1::new())),
            Some(Pin::Md5(_)) => Some(Extra::Md5(md5::Md5::new())),
        };
        Hasher { sha256: Sha256::new(), extra, bytes: 0 }
    }
    pub fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        match &mut self.extra {
            Some(Extra::Sha512(h)) => h.update(data),
            Some(Extra::Sha384(h)) => h.update(data),
            Some(Extra::Sha1(h)) => h.update(data),
            Some(Extra::Md5(h)) => h.update(data),
            None => {}
        }
        self.bytes += data.len() as u64;
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    pub fn finish(self) -> Hashes {
        let pinned = self.extra.map(|extra| match extra {
            Extra::Sha512(h) => hex::encode(h.finalize()),
            Extra::Sha384(h) => hex::encode(h.finalize()),
            Extra::Sha1(h) => hex::encode(h.finalize()),
            Extra::Md5(h) => hex::encode(h.finalize()),
        });
        Hashes { sha256: hex::encode(self.sha256.finalize()), pinned }
    }
    /// Feeds everything `reader` yields into the hasher.
    pub fn consume(&mut self, mut reader: impl Read) -> io::Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => self.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Copies `reader` to `writer` and returns the hashes of what was copied: one pass
/// over the bytes, so what is hashed is exactly what was written.
pub fn copy_hashing(mut reader: impl Read, mut writer: impl Write, mut hasher: Hasher) -> io::Result<Hashes> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                writer.write_all(&buf[..n])?;
                hasher.update(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    writer.flush()?;
    Ok(hasher.finish())
}

/// sha256 (hex) of bytes in memory.
pub fn sha256_bytes(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// sha256 (hex) of a file's content.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    let file = std::fs::File::open(path).map_err(Error::io("cannot read", path))?;
    let mut hasher = Hasher::new();
    hasher.consume(file).map_err(Error::io("cannot read", path))?;
    Ok(hasher.finish().sha256)
}

/// A writer that hashes what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W, hasher: Hasher) -> Self {
        HashingWriter { inner, hasher }
    }
    pub fn finish(self) -> (W, Hashes) {
        (self.inner, self.hasher.finish())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A writer whose bytes are fed, in order and in 1 MiB buffers (a few at a time), to
/// `feed` on a thread of its own, so that work runs beside the writer's: hashing a
/// box's payload, or writing the box to disk, while the payload is read and compressed.
pub struct Offload<S> {
    pending: Vec<u8>,
    to_thread: std::sync::mpsc::SyncSender<Vec<u8>>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: std::thread::JoinHandle<io::Result<S>>,
}

const HANDOVER: usize = 1 << 20;

impl<S: Send + 'static> Offload<S> {
    pub fn new(mut state: S, mut feed: impl FnMut(&mut S, &[u8]) -> io::Result<()> + Send + 'static) -> Self {
        let (to_thread, chunks) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let (give_back, free) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            for mut chunk in chunks {
                // On an error the thread ends, and the writer's next hand-over fails.
                feed(&mut state, &chunk)?;
                chunk.clear();
                // The writer may be gone (an error elsewhere): the buffer is then dropped.
                let _ = give_back.send(chunk);
            }
            Ok(state)
        });
        Offload { pending: Vec::with_capacity(HANDOVER), to_thread, free, thread }
    }

    fn hand_over(&mut self) -> io::Result<()> {
        let next = self.free.try_recv().unwrap_or_else(|_| Vec::with_capacity(HANDOVER));
        let chunk = std::mem::replace(&mut self.pending, next);
        self.to_thread.send(chunk).map_err(|_| io::Error::other("the thread it feeds stopped"))
    }

    /// Hands over what is left and returns what the thread made of it all, or its error.
    pub fn finish(mut self) -> io::Result<S> {
        let handed = if self.pending.is_empty() { Ok(()) } else { self.hand_over() };
        drop(self.to_thread);
        let made = self.thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        handed.map(|()| made)
    }
}

impl<S: Send + 'static> Write for Offload<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if self.pending.len() >= HANDOVER {
            self.hand_over()?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that hashes what passes through it on a thread of its own (`Offload`).
pub struct ThreadedHashingWriter<W> {
    inner: W,
    hashing: Offload<Hasher>,
}

impl<W: Write> ThreadedHashingWriter<W> {
    pub fn new(inner: W) -> Self {
        let hashing = Offload::new(Hasher::new(), |hasher, chunk| {
            hasher.update(chunk);
            Ok(())
        });
        ThreadedHashingWriter { inner, hashing }
    }

    /// The inner writer, and the sha256 and length of what went through.
    pub fn finish_counted(self) -> io::Result<(W, (String, u64))> {
        let hasher = self.hashing.finish()?;
        let bytes = hasher.bytes();
        Ok((self.inner, (hasher.finish().sha256, bytes)))
    }
}

impl<W: Write> Write for ThreadedHashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hashing.write_all(&buf[..n])?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what passes through it (an image layer's uncompressed bytes,
/// checked against the config's diff_id while they are unpacked).
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Hasher::new() }
    }
    /// Reads what is left, then returns the hashes of the whole stream.
    pub fn finish(mut self) -> io::Result<Hashes> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.hasher.finish())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threaded_hash_is_the_hash_of_what_was_written_in_order() {
        // Uneven writes across several hand-overs, and the short tail after the last.
        let data: Vec<u8> = (0..(3 << 20) + 777u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let mut writer = ThreadedHashingWriter::new(Vec::new());
        for chunk in data.chunks(70_001) {
            writer.write_all(chunk).unwrap();
        }
        let (written, (sha256, bytes)) = writer.finish_counted().unwrap();
        assert_eq!(written, data);
        assert_eq!(bytes, data.len() as u64);
        assert_eq!(sha256, sha256_bytes(&data));
    }
}
