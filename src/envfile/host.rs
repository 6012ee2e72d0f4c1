//! What this host has, so an Envfile that asks for more (memory, an address
//! to listen on) is refused when it loads instead of failing later in QEMU or runc.

use std::net::{IpAddr, UdpSocket};

/// The host's memory in bytes (MemTotal of /proc/meminfo), or None when unreadable.
pub fn memory_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().strip_suffix("kB")?;
    kib.trim().parse::<u64>().ok().map(|k| k << 10)
}

/// Whether the host can listen on `ip`: one of its own addresses, or a wildcard.
/// Binding is the kernel's own answer (EADDRNOTAVAIL otherwise).
pub fn is_local_address(ip: IpAddr) -> bool {
    UdpSocket::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_has_memory_cpus_and_loopback() {
        assert!(memory_total().is_some_and(|m| m > 16 << 20));
        assert!(is_local_address("127.0.0.1".parse().unwrap()));
        assert!(is_local_address("0.0.0.0".parse().unwrap()));
        // TEST-NET-3 (RFC 5737) is never a host's own address.
        assert!(!is_local_address("203.0.113.5".parse().unwrap()));
    }
}
