//! A Linux guest's `/proc/net/tcp` and `/proc/net/tcp6`, read on the host to learn
//! which ports listen in a machine (`forward_auto` for VMs, where the text comes over
//! SSH). The text is the guest's doing: its size is bounded, every line is parsed
//! strictly, and anything unexpected is an error naming the line, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The most of the text taken at one look: a line is ~150 bytes (~180 for IPv6), so
/// this holds some 25 000 sockets, far beyond a development machine's.
pub const MAX_TEXT: usize = 4 << 20;
/// The longest line taken: the kernel's are 150-180 bytes.
const MAX_LINE: usize = 512;
/// The kernel's TCP_LISTEN, as the `st` column writes it.
const LISTEN: &str = "0A";

/// The guest's text is not a /proc/net/tcp table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the machine's /proc/net/tcp text is over {MAX_TEXT} bytes")]
    TooLong,
    #[error("line {line} of the machine's /proc/net/tcp text is not a socket entry ({why}): {text}")]
    BadLine { line: usize, why: &'static str, text: String },
}

/// The sockets in TCP state LISTEN, as (local address, port), from the concatenated
/// text of /proc/net/tcp and /proc/net/tcp6 (each with its header line).
pub fn listening(text: &[u8]) -> Result<Vec<(IpAddr, u16)>, Error> {
    if text.len() > MAX_TEXT {
        return Err(Error::TooLong);
    }
    let mut found = Vec::new();
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        let bad = |why| Error::BadLine { line: i + 1, why, text: quote(line) };
        if line.len() > MAX_LINE {
            return Err(bad("longer than any the kernel writes"));
        }
        let line = std::str::from_utf8(line).map_err(|_| bad("not text"))?;
        let mut columns = line.split_ascii_whitespace();
        let Some(slot) = columns.next() else { continue };
        if slot == "sl" {
            continue;
        }
        let numbered = slot.strip_suffix(':').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !numbered {
            return Err(bad("no slot number"));
        }
        let (Some(local), Some(remote), Some(state)) = (columns.next(), columns.next(), columns.next()) else {
            return Err(bad("missing columns"));
        };
        let local = endpoint(local).ok_or_else(|| bad("bad local address"))?;
        endpoint(remote).ok_or_else(|| bad("bad remote address"))?;
        if state.len() != 2 || !state.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("bad state"));
        }
        if state.eq_ignore_ascii_case(LISTEN) {
            found.push(local);
        }
    }
    Ok(found)
}

/// `ADDR:PORT` in the kernel's hex: 8 digits for IPv4, 32 for IPv6, each 32-bit word
/// in the guest's byte order (little-endian: envy runs x86_64 guests).
fn endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let hex_of = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex_of(port, 4) {
        return None;
    }
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| u32::from_str_radix(&addr[8 * i..8 * i + 8], 16).map(u32::to_le_bytes);
    let ip = if hex_of(addr, 8) {
        IpAddr::V4(Ipv4Addr::from(word(0).ok()?))
    } else if hex_of(addr, 32) {
        let mut bytes = [0u8; 16];
        for i in 0..4 {
            bytes[4 * i..4 * i + 4].copy_from_slice(&word(i).ok()?);
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        return None;
    };
    Some((ip, port))
}

/// A short, escaped excerpt of a guest's line for an error (it may hold anything).
fn quote(line: &[u8]) -> String {
    let shown = &line[..line.len().min(80)];
    let more = if line.len() > shown.len() { "..." } else { "" };
    format!("{:?}{more}", String::from_utf8_lossy(shown))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a busybox guest's `cat /proc/net/tcp /proc/net/tcp6` gives: sshd on 22,
    /// a server on 0.0.0.0:5173, one on 127.0.0.1:8080 and one on 10.0.2.15:8081, an
    /// established connection, and on IPv6 [::]:8443 and [::1]:9000.
    const TABLES: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   1: 00000000:1435 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1235 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1236 1 0000000000000000 100 0 0 10 0
   3: 0F02000A:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1237 1 0000000000000000 100 0 0 10 0
   4: 0F02000A:0016 0202000A:D431 01 00000000:00000000 02:0008E3D1 00000000     0        0 1238 4 0000000000000000 20 4 29 10 -1
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:20FB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1239 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:2328 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1240 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listening_sockets_are_read_with_their_addresses() {
        let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
        assert_eq!(
            listening(TABLES.as_bytes()).unwrap(),
            vec![
                (v4(0, 0, 0, 0), 22),
                (v4(0, 0, 0, 0), 5173),
                (v4(127, 0, 0, 1), 8080),
                (v4(10, 0, 2, 15), 8081),
                (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 8443),
                (IpAddr::V6(Ipv6Addr::LOCALHOST), 9000),
            ]
        );
        let reachable: Vec<u16> =
            listening(TABLES.as_bytes()).unwrap().into_iter().filter(|(ip, _)| crate::provider::forwardable(*ip)).map(|(_, p)| p).collect();
        assert_eq!(reachable, vec![22, 5173, 8081, 8443]);
        assert_eq!(listening(b"").unwrap(), vec![]);
    }

    #[test]
    fn hostile_text_is_an_error_naming_its_line() {
        let entry = |local: &str, rest: &str| format!("   0: {local} {rest}\n");
        let ok_rest = "00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1 1";
        for (text, line, why) in [
            (format!("{}\n", "x".repeat(100_000)), 1, "longer than any the kernel writes"),
            (format!("  sl\n{}", entry("00000000:1435", &format!("{ok_rest}{}", " ".repeat(600)))), 2, "longer than any the kernel writes"),
            (entry("0000000G:1435", ok_rest), 1, "bad local address"),
            (entry("00000000:14355", ok_rest), 1, "bad local address"),
            (entry("0000000:1435", ok_rest), 1, "bad local address"),
            (entry("000000000000000000000000000000000:1435", ok_rest), 1, "bad local address"),
            (entry("00000000", ok_rest), 1, "bad local address"),
            (entry("00000000:+435", ok_rest), 1, "bad local address"),
            (entry("00000000:1435", "00000000:0000"), 1, "missing columns"),
            (entry("00000000:1435", "zz:0000 0A"), 1, "bad remote address"),
            (entry("00000000:1435", "00000000:0000 0AB"), 1, "bad state"),
            (entry("00000000:1435", "00000000:0000 \u{e9}A"), 1, "bad state"),
            ("   x: 00000000:1435 00000000:0000 0A\n".to_string(), 1, "no slot number"),
            (":\n".to_string(), 1, "no slot number"),
            ("\u{1b}[2J\n".to_string(), 1, "no slot number"),
        ] {
            let err = listening(text.as_bytes()).unwrap_err();
            let Error::BadLine { line: at, why: said, text: shown } = &err else { panic!("{err}") };
            assert_eq!((*at, *said), (line, why), "{err}");
            assert!(shown.len() <= 90 && !shown.contains('\u{1b}'), "the excerpt is short and escaped: {shown}");
        }
        assert!(matches!(listening(&[0xff, 0xfe, b'\n']).unwrap_err(), Error::BadLine { why: "not text", .. }));
        assert_eq!(listening(&vec![b'\n'; MAX_TEXT + 1]).unwrap_err(), Error::TooLong);
    }
}
