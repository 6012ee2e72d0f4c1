//! Asking the kernel about a network namespace over netlink, and changing it, from the
//! host: a socket made by a thread that entered the namespace stays bound to it. The
//! project network's bridge and links and each container's veth, address and route
//! are made this way (`Changes`), and read back with a container's listening sockets
//! (sock_diag, container/ports.rs), without running `ip` or parsing the text it prints.
//! The answers are bounded and parsed defensively: a namespace holds what its machine
//! made.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;

use anyhow::{bail, Context as _, Result};

/// Size of `struct nlmsghdr`.
pub const HEADER: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;
/// The kernel's mark on an attribute that holds attributes.
const NLA_F_NESTED: u16 = 0x8000;
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

/// A request: the header (`kind`, NLM_F_REQUEST and `flags`), then `body`.
fn request(kind: u16, flags: libc::c_int, body: &[u8]) -> Vec<u8> {
    let mut request = vec![0u8; HEADER];
    request[0..4].copy_from_slice(&((HEADER + body.len()) as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&kind.to_ne_bytes());
    request[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | flags) as u16).to_ne_bytes());
    request.extend_from_slice(body);
    request
}

/// A dump request: the header (`kind`, request and dump flags), then `body`.
pub fn dump_request(kind: u16, body: &[u8]) -> Vec<u8> {
    request(kind, libc::NLM_F_DUMP, body)
}

/// Sends a dump `request` and hands each message of the answer (its type and body) to
/// `each` until the kernel says it is done; more than `max` bytes is an error naming
/// `what` was asked.
pub fn dump(sock: &OwnedFd, request: &[u8], max: u64, what: &str, each: impl FnMut(u16, &[u8])) -> Result<()> {
    exchange(sock, request, max, each).with_context(|| format!("cannot list {what}"))
}

/// Sends `request` and hands each message of the answer to `each` until the kernel
/// says it is done (a dump's end, or its acknowledgement); its refusal, or an answer
/// over `max` bytes, is the error.
fn exchange(sock: &OwnedFd, request: &[u8], max: u64, mut each: impl FnMut(u16, &[u8])) -> Result<()> {
    // SAFETY: the buffer lives for the call; an unaddressed netlink send goes to the kernel.
    if unsafe { libc::send(sock.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) } < 0 {
        bail!("cannot send the request: {}", std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 << 10];
    let mut read = 0u64;
    loop {
        // SAFETY: recv writes at most buf.len() bytes into buf.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            bail!("cannot read the kernel's answer: {}", std::io::Error::last_os_error());
        }
        read += n as u64;
        if read > max {
            bail!("the kernel's answer is over {max} bytes");
        }
        if messages(&buf[..n as usize], &mut each)? || n == 0 {
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
                // Error 0 is the acknowledgement of a request that asked for one.
                if code == 0 {
                    return Ok(true);
                }
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

/// Changes to one namespace's links, addresses and routes over a route socket in it:
/// what `ip link`, `ip address` and `ip route` would do, without a process each (two
/// `ip` per machine were a sixth of the CPU of starting 100 machines). envy runs no `ip`.
pub struct Changes {
    sock: OwnedFd,
    netns: String,
}

impl Changes {
    pub fn in_namespace(netns: &Path) -> Result<Changes> {
        Ok(Changes { sock: socket_in(netns, libc::NETLINK_ROUTE)?, netns: netns.display().to_string() })
    }

    pub fn links(&self) -> Result<Vec<Link>> {
        links_on(&self.sock, &self.netns)
    }

    /// The index of link `name`, which must be there: the kernel is asked for that
    /// one link, not for every link of a namespace that holds one per machine.
    fn index_of(&self, name: &str) -> Result<u32> {
        let mut found = None;
        exchange(&self.sock, &request(RTM_GETLINK, libc::NLM_F_ACK, &named_link(name, false)), MAX_ROUTE_DUMP, |_, body| {
            found = found.or(parse_link(body).map(|link| link.index));
        })
        .with_context(|| format!("cannot find link {name} in network namespace {}", self.netns))?;
        found.with_context(|| format!("network namespace {} has no link {name}", self.netns))
    }

    /// A veth pair: `name` here with `mtu`, up and on bridge `bridge`; its other end
    /// `peer` in the namespace of `peer_netns` (a descriptor of it), down.
    pub fn add_veth(&self, name: &str, mtu: u32, bridge: &str, peer: &str, peer_netns: &impl std::os::fd::AsRawFd) -> Result<()> {
        let master = self.index_of(bridge)?;
        let mut body = named_link(name, true);
        attribute(&mut body, IFLA_MTU, &mtu.to_ne_bytes());
        attribute(&mut body, IFLA_MASTER, &master.to_ne_bytes());
        nest(&mut body, IFLA_LINKINFO, |info| {
            attribute(info, IFLA_INFO_KIND, b"veth");
            nest(info, IFLA_INFO_DATA, |data| {
                nest(data, VETH_INFO_PEER, |other| {
                    other.extend(named_link(peer, false));
                    attribute(other, IFLA_NET_NS_FD, &(peer_netns.as_raw_fd() as u32).to_ne_bytes());
                });
            });
        });
        self.ask(RTM_NEWLINK, libc::NLM_F_CREATE | libc::NLM_F_EXCL, &body, &format!("add veth {name} on {bridge} (its peer {peer} in another namespace)"))
    }

    /// A bridge `name` with `mtu`, up.
    pub fn add_bridge(&self, name: &str, mtu: u32) -> Result<()> {
        let mut body = named_link(name, true);
        attribute(&mut body, IFLA_MTU, &mtu.to_ne_bytes());
        nest(&mut body, IFLA_LINKINFO, |info| attribute(info, IFLA_INFO_KIND, b"bridge"));
        self.ask(RTM_NEWLINK, libc::NLM_F_CREATE | libc::NLM_F_EXCL, &body, &format!("add bridge {name}"))
    }

    /// Puts link `name` on bridge `bridge` with `mtu`, and up: one request.
    pub fn join_bridge(&self, name: &str, mtu: u32, bridge: &str) -> Result<()> {
        let mut body = named_link(name, true);
        attribute(&mut body, IFLA_MTU, &mtu.to_ne_bytes());
        attribute(&mut body, IFLA_MASTER, &self.index_of(bridge)?.to_ne_bytes());
        self.ask(RTM_NEWLINK, 0, &body, &format!("put link {name} on bridge {bridge}"))
    }

    /// Sets link `name` up.
    pub fn set_up(&self, name: &str) -> Result<()> {
        self.ask(RTM_NEWLINK, 0, &named_link(name, true), &format!("set link {name} up"))
    }

    /// Adds `address`/`prefix` to link `name`.
    pub fn add_ipv4(&self, name: &str, address: Ipv4Addr, prefix: u8) -> Result<()> {
        let index = self.index_of(name)?;
        // struct ifaddrmsg: family, prefix length, flags, scope (universe), index.
        let mut body = vec![libc::AF_INET as u8, prefix, 0, 0];
        body.extend(index.to_ne_bytes());
        attribute(&mut body, IFA_LOCAL, &address.octets());
        attribute(&mut body, IFA_ADDRESS, &address.octets());
        self.ask(RTM_NEWADDR, libc::NLM_F_CREATE | libc::NLM_F_EXCL, &body, &format!("add address {address}/{prefix} to link {name}"))
    }

    /// Adds the default route, through `gateway`.
    pub fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        // struct rtmsg: family, dst and src lengths, tos, table (main), protocol (boot),
        // scope (universe), type (unicast), flags.
        let mut body = vec![libc::AF_INET as u8, 0, 0, 0, libc::RT_TABLE_MAIN, libc::RTPROT_BOOT, libc::RT_SCOPE_UNIVERSE, libc::RTN_UNICAST];
        body.extend(0u32.to_ne_bytes());
        attribute(&mut body, RTA_GATEWAY, &gateway.octets());
        self.ask(RTM_NEWROUTE, libc::NLM_F_CREATE | libc::NLM_F_EXCL, &body, &format!("add the default route via {gateway}"))
    }

    /// Deletes link `name` (a veth pair goes with either end); one that is not there is
    /// already deleted.
    pub fn delete_link(&self, name: &str) -> Result<()> {
        let asked = self.ask(RTM_DELLINK, 0, &named_link(name, false), &format!("delete link {name}"));
        let absent = |e: &anyhow::Error| e.root_cause().downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) == Some(libc::ENODEV);
        match asked {
            Err(e) if absent(&e) => Ok(()),
            asked => asked,
        }
    }

    /// Sends one request of `kind` with `flags` and waits for the kernel's answer; its
    /// refusal is an error saying what was `doing` in which namespace.
    fn ask(&self, kind: u16, flags: libc::c_int, body: &[u8], doing: &str) -> Result<()> {
        exchange(&self.sock, &request(kind, libc::NLM_F_ACK | flags, body), MAX_ROUTE_DUMP, |_, _| ())
            .with_context(|| format!("cannot {doing} in network namespace {}", self.netns))
    }
}

/// A struct ifinfomsg that names its link by the name attribute after it (index 0),
/// up when `up`.
fn named_link(name: &str, up: bool) -> Vec<u8> {
    let mut body = vec![0u8; 16];
    if up {
        let up = libc::IFF_UP as u32;
        body[8..12].copy_from_slice(&up.to_ne_bytes());
        body[12..16].copy_from_slice(&up.to_ne_bytes());
    }
    let mut name = name.as_bytes().to_vec();
    name.push(0);
    attribute(&mut body, IFLA_IFNAME, &name);
    body
}

/// Appends a routing attribute: its length and type, then `value`, padded to 4 bytes.
fn attribute(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend(((4 + value.len()) as u16).to_ne_bytes());
    out.extend(kind.to_ne_bytes());
    out.extend(value);
    out.resize((out.len() + 3) & !3, 0);
}

/// Appends an attribute holding what `fill` appends.
fn nest(out: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend([0u8; 4]);
    fill(out);
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    out[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        attribute(&mut out, kind, value);
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
        link.extend(attr(IFLA_IFNAME, b"veth-web\0"));
        link.extend(attr(IFLA_MASTER, &3u32.to_ne_bytes()));
        assert_eq!(parse_link(&link), Some(Link { index: 7, name: "veth-web".into(), master: Some(3) }));
        // A length past the end stops the attributes: the name before it stays.
        let mut cut = link.clone();
        cut.extend([0xff, 0xff, 3, 0]);
        assert_eq!(parse_link(&cut).unwrap().name, "veth-web");
        assert_eq!(parse_link(&link[..10]), None);
        assert_eq!(parse_link(&[0u8; 16]), None, "a link without a name");

        let mut address = vec![libc::AF_INET as u8, 24, 0, 0];
        address.extend(7u32.to_ne_bytes());
        address.extend(attr(IFA_LOCAL, &[10, 0, 4, 20]));
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
