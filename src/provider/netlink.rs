//! Asking the kernel about a network namespace over netlink, from the host: a socket
//! made by a thread that entered the namespace stays bound to it. The project
//! network's links and a machine's address (rtnetlink) and a container's listening
//! sockets (sock_diag, container/ports.rs) are read this way, not by parsing the text
//! `ip` prints. The answers are bounded and parsed defensively: a namespace holds what
//! its machine made.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context as _, Result};

/// Size of `struct nlmsghdr`.
pub const HEADER: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
const RTM_GETLINK: u16 = 18;
const RTM_GETADDR: u16 = 22;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFA_LOCAL: u16 = 2;
/// The most of one rtnetlink dump read: a project network holds tens of links.
const MAX_ROUTE_DUMP: u64 = 1 << 20;

/// A netlink socket of `protocol` (NETLINK_ROUTE, NETLINK_SOCK_DIAG) inside the network
/// namespace `netns` (a /run/netns file or /proc/PID/ns/net).
pub fn socket_in(netns: &Path, protocol: libc::c_int) -> Result<OwnedFd> {
    let ns_path = netns.display().to_string();
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<OwnedFd> {
                let ns = std::fs::File::open(netns).with_context(|| format!("cannot open {ns_path}"))?;
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).with_context(|| format!("cannot enter {ns_path}"))?;
                socket(protocol).with_context(|| format!("cannot open a netlink socket in {ns_path}"))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread entering {ns_path} panicked"))?
    })
}

/// A netlink socket in the calling thread's network namespace.
fn socket(protocol: libc::c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: a plain socket(2) call; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A dump request: the header (`kind`, request and dump flags), then `body`.
pub fn dump_request(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut request = vec![0u8; HEADER];
    request[0..4].copy_from_slice(&((HEADER + body.len()) as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&kind.to_ne_bytes());
    request[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    request.extend_from_slice(body);
    request
}

/// Sends a dump `request` and hands each message of the answer (its type and body) to
/// `each` until the kernel says it is done; more than `max` bytes is an error naming
/// `what` was asked.
pub fn dump(sock: &OwnedFd, request: &[u8], max: u64, what: &str, mut each: impl FnMut(u16, &[u8])) -> Result<()> {
    // SAFETY: the buffer lives for the call; an unaddressed netlink send goes to the kernel.
    if unsafe { libc::send(sock.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) } < 0 {
        bail!("cannot ask the kernel for {what}: {}", std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 << 10];
    let mut read = 0u64;
    loop {
        // SAFETY: recv writes at most buf.len() bytes into buf.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            bail!("cannot read the kernel's answer about {what}: {}", std::io::Error::last_os_error());
        }
        read += n as u64;
        if read > max {
            bail!("the kernel's answer about {what} is over {max} bytes");
        }
        if messages(&buf[..n as usize], &mut each).with_context(|| format!("the kernel refused to list {what}"))? || n == 0 {
            return Ok(());
        }
    }
}

/// The messages of one netlink datagram, each (type, body) handed to `each`; true when
/// the dump is done. Anything short or malformed ends the datagram.
pub fn messages(buf: &[u8], each: &mut impl FnMut(u16, &[u8])) -> Result<bool> {
    let mut at = 0;
    while at + HEADER <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2 bytes"));
        if len < HEADER || at + len > buf.len() {
            break;
        }
        let body = &buf[at + HEADER..at + len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = body.get(..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                return Err(std::io::Error::from_raw_os_error(-code).into());
            }
            _ => each(kind, body),
        }
        at += (len + 3) & !3;
    }
    Ok(false)
}

/// The routing attributes after a message's fixed part: (type, payload) pairs.
fn attributes(mut rest: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            break;
        }
        out.push((kind, &rest[4..len]));
        rest = &rest[((len + 3) & !3).min(rest.len())..];
    }
    out
}

/// A network device of a namespace, as `ip link` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The index of the bridge it is enslaved to.
    pub master: Option<u32>,
}

/// Every link of the namespace `netns`.
pub fn links(netns: &Path) -> Result<Vec<Link>> {
    links_on(&socket_in(netns, libc::NETLINK_ROUTE)?, &netns.display().to_string())
}

/// Every link of the namespace a route socket is in; `netns` names it in errors.
fn links_on(sock: &OwnedFd, netns: &str) -> Result<Vec<Link>> {
    // struct ifinfomsg, all zero: every family, every link.
    let request = dump_request(RTM_GETLINK, &[0u8; 16]);
    let mut links = Vec::new();
    dump(sock, &request, MAX_ROUTE_DUMP, &format!("the links of {netns}"), |_, body| {
        if let Some(link) = parse_link(body) {
            links.push(link);
        }
    })?;
    Ok(links)
}

/// A link from an RTM_NEWLINK body: ifinfomsg (16 bytes), then its attributes.
fn parse_link(body: &[u8]) -> Option<Link> {
    let index = u32::from_ne_bytes(body.get(4..8)?.try_into().ok()?);
    let mut link = Link { index, name: String::new(), master: None };
    for (kind, value) in attributes(body.get(16..)?) {
        match kind {
            IFLA_IFNAME => link.name = String::from_utf8_lossy(value.split(|b| *b == 0).next()?).into_owned(),
            IFLA_MASTER => link.master = Some(u32::from_ne_bytes(value.get(..4)?.try_into().ok()?)),
            _ => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}

/// The IPv4 addresses (with their prefix length) of link `name` in the namespace.
pub fn ipv4_addresses(netns: &Path, name: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
    addresses_on(&socket_in(netns, libc::NETLINK_ROUTE)?, &netns.display().to_string(), name)
}

/// The IPv4 addresses of link `name` in the namespace a route socket is in.
fn addresses_on(sock: &OwnedFd, netns: &str, name: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
    let Some(link) = links_on(sock, netns)?.into_iter().find(|l| l.name == name) else { return Ok(Vec::new()) };
    // struct ifaddrmsg: AF_INET, then zeros.
    let mut ifaddrmsg = [0u8; 8];
    ifaddrmsg[0] = libc::AF_INET as u8;
    let request = dump_request(RTM_GETADDR, &ifaddrmsg);
    let mut addresses = Vec::new();
    dump(sock, &request, MAX_ROUTE_DUMP, &format!("the addresses of {netns}"), |_, body| {
        if let Some((index, address)) = parse_ipv4_address(body) {
            if index == link.index {
                addresses.push(address);
            }
        }
    })?;
    Ok(addresses)
}

/// (link index, (address, prefix)) from an RTM_NEWADDR body: ifaddrmsg (8 bytes:
/// family, prefix length, flags, scope, index), then its attributes.
fn parse_ipv4_address(body: &[u8]) -> Option<(u32, (Ipv4Addr, u8))> {
    if i32::from(*body.first()?) != libc::AF_INET {
        return None;
    }
    let prefix = *body.get(1)?;
    let index = u32::from_ne_bytes(body.get(4..8)?.try_into().ok()?);
    let local = attributes(body.get(8..)?).into_iter().find(|(kind, _)| *kind == IFA_LOCAL)?.1;
    let octets: [u8; 4] = local.get(..4)?.try_into().ok()?;
    Some((index, (Ipv4Addr::from(octets), prefix)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        out.extend(kind.to_ne_bytes());
        out.extend(value);
        out.resize((out.len() + 3) & !3, 0);
        out
    }

    /// The test's own namespace: entering one (setns) needs root, reading it does not.
    #[test]
    fn this_namespace_has_its_loopback_link_and_address() {
        let sock = socket(libc::NETLINK_ROUTE).unwrap();
        let links = links_on(&sock, "this namespace").unwrap();
        let lo = links.iter().find(|l| l.name == "lo").expect("a loopback link");
        assert_eq!(lo.master, None);
        assert!(addresses_on(&sock, "this namespace", "lo").unwrap().contains(&(Ipv4Addr::LOCALHOST, 8)));
        assert!(addresses_on(&sock, "this namespace", "no-such-link").unwrap().is_empty());
    }

    #[test]
    fn links_and_addresses_are_read_from_their_messages_and_bad_ones_are_skipped() {
        let mut link = vec![0u8; 16];
        link[4..8].copy_from_slice(&7u32.to_ne_bytes());
        link.extend(attribute(IFLA_IFNAME, b"veth-web\0"));
        link.extend(attribute(IFLA_MASTER, &3u32.to_ne_bytes()));
        assert_eq!(parse_link(&link), Some(Link { index: 7, name: "veth-web".into(), master: Some(3) }));
        // A length past the end stops the attributes: the name before it stays.
        let mut cut = link.clone();
        cut.extend([0xff, 0xff, 3, 0]);
        assert_eq!(parse_link(&cut).unwrap().name, "veth-web");
        assert_eq!(parse_link(&link[..10]), None);
        assert_eq!(parse_link(&[0u8; 16]), None, "a link without a name");

        let mut address = vec![libc::AF_INET as u8, 24, 0, 0];
        address.extend(7u32.to_ne_bytes());
        address.extend(attribute(IFA_LOCAL, &[10, 0, 4, 20]));
        assert_eq!(parse_ipv4_address(&address), Some((7, (Ipv4Addr::new(10, 0, 4, 20), 24))));
        address[0] = libc::AF_INET6 as u8;
        assert_eq!(parse_ipv4_address(&address), None);
    }

    #[test]
    fn an_error_message_is_an_error_and_a_short_datagram_nothing() {
        let mut error = (HEADER as u32 + 4).to_ne_bytes().to_vec();
        error.extend(NLMSG_ERROR.to_ne_bytes());
        error.extend([0u8; 10]);
        error.extend((-libc::EPERM).to_ne_bytes());
        assert!(messages(&error, &mut |_, _| ()).is_err());
        let mut seen = 0;
        for buf in [&[][..], &error[..10], &[0xff; 64][..]] {
            assert!(!messages(buf, &mut |_, _| seen += 1).unwrap());
        }
        assert_eq!(seen, 0);
    }
}
