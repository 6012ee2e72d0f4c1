//! What a test needs from the host beyond `cargo test`, and the two tiers that follow
//! from it. A plain `cargo test` (any user, no network) runs every test whose needs this
//! host meets and skips the rest, saying so on stderr as each one is skipped and again
//! in a summary when the run ends. With ENVY_TEST_FULL=1 (scripts/test.sh sets it) a
//! missing need fails the test loudly with what to install: the full tier never skips.

use std::io::Write as _;
use std::sync::{Mutex, Once};

/// One thing a test needs.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// root: containers, network namespaces, mounts, dpkg.
    Root,
    /// A tool on PATH (or at an absolute path), with the Debian package that has it.
    Tool(&'static str, &'static str),
    /// Booting QEMU machines (under TCG, minutes of CPU): the full tier only.
    VmBoot,
    /// The network beyond 127.0.0.1 (Debian's mirrors, through apt or mmdebstrap): the
    /// full tier only.
    Network,
}

/// `/bin/busybox` (busybox-static), the root filesystem of every test box.
pub const BUSYBOX: &[Need] = &[Need::Tool("busybox", "busybox-static")];

/// Starting containers: root, runc, slirp4netns and ip, and the busybox box.
pub const CONTAINERS: &[Need] = &[
    Need::Root,
    Need::Tool("runc", "runc"),
    Need::Tool("slirp4netns", "slirp4netns"),
    Need::Tool("ip", "iproute2"),
    Need::Tool("busybox", "busybox-static"),
];

/// Running envy as a normal user (common::normal_user): root to make that user and
/// switch to it, the setuid id-mappers from uidmap, and unshare and mount, which
/// doctor's rootless checks try.
pub const ROOTLESS: &[Need] = &[
    Need::Root,
    Need::Tool("useradd", "passwd"),
    Need::Tool("newuidmap", "uidmap"),
    Need::Tool("newgidmap", "uidmap"),
    Need::Tool("unshare", "util-linux"),
    Need::Tool("mount", "mount"),
];

/// Building a qemu box (`envy box build --kind qemu`): an ext4 image in a qcow2.
pub const QEMU_BOX: &[Need] =
    &[Need::Tool("qemu-img", "qemu-utils"), Need::Tool("mkfs.ext4", "e2fsprogs"), Need::Tool("busybox", "busybox-static")];

/// Booting the tiny VM box (common::tiny_vm_box): its recipe fetches a Debian kernel,
/// and QEMU boots it to SSH.
pub const VMS: &[Need] = &[
    Need::VmBoot,
    Need::Network,
    Need::Tool("qemu-system-x86_64", "qemu-system-x86"),
    Need::Tool("qemu-img", "qemu-utils"),
    Need::Tool("mkfs.ext4", "e2fsprogs"),
    Need::Tool("busybox", "busybox-static"),
    Need::Tool("dropbear", "dropbear-bin"),
    Need::Tool("ssh", "openssh-client"),
];

/// An LXD daemon started by the test (common::lxd): root, Debian's lxd and lxc, and
/// nft for its firewall; the busybox box it runs.
pub const LXD: &[Need] = &[
    Need::Root,
    Need::Tool("lxd", "lxd"),
    Need::Tool("lxc", "lxd-client"),
    Need::Tool("nft", "nftables"),
    Need::Tool("busybox", "busybox-static"),
];

/// Whether this run is the full tier (ENVY_TEST_FULL=1).
pub fn full_tier() -> bool {
    std::env::var_os("ENVY_TEST_FULL").is_some_and(|v| v == "1")
}

impl Need {
    /// Why this host does not meet the need, or None when it does.
    fn unmet(self) -> Option<String> {
        match self {
            Need::Root => (!nix::unistd::geteuid().is_root()).then(|| "root (run it as root)".to_string()),
            Need::Tool(tool, package) => {
                (envy::provider::host::which(tool).is_none()).then(|| format!("`{tool}` on PATH (apt-get install {package})"))
            }
            Need::VmBoot => (!full_tier()).then(|| "QEMU boots (full tier only)".to_string()),
            Need::Network => (!full_tier()).then(|| "the network (full tier only)".to_string()),
        }
    }
}

/// The tests skipped so far, each with what it lacked, for the summary at exit.
static SKIPPED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// True when the host meets every need. Otherwise, in the full tier, panics naming what
/// is missing and how to get it; in the default tier, records the skip, says so on
/// stderr, and returns false (the `require!` macro then returns from the test).
pub fn met(groups: &[&[Need]]) -> bool {
    let mut missing: Vec<String> = Vec::new();
    for reason in groups.iter().flat_map(|g| g.iter()).filter_map(|n| n.unmet()) {
        if !missing.contains(&reason) {
            missing.push(reason);
        }
    }
    if missing.is_empty() {
        return true;
    }
    let missing = missing.join(", ");
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    assert!(
        !full_tier(),
        "{test} needs {missing}; the full tier (ENVY_TEST_FULL=1) runs every test: run scripts/test.sh as root, \
         which installs the packages with scripts/deps.sh"
    );
    // Straight to the process's stderr: libtest captures print!/eprint! of passing tests,
    // and a skip is there to be seen.
    let _ = writeln!(std::io::stderr(), "skipped {test}: needs {missing}");
    SKIPPED.lock().unwrap_or_else(|e| e.into_inner()).push((test, missing));
    static SUMMARY: Once = Once::new();
    SUMMARY.call_once(|| {
        // libtest has no hook after the last test; the C runtime's exit handlers run
        // after its own summary, whether main returns or calls exit.
        // SAFETY: `summary` is a plain extern "C" fn that touches only a static.
        unsafe { libc::atexit(summary) };
    });
    false
}

/// Printed when the test binary exits: every skipped test and what it needed.
extern "C" fn summary() {
    let skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "\n{} tests skipped (this host lacks what they need; scripts/test.sh runs the full tier as root):",
        skipped.len()
    );
    let mut lines: Vec<String> = skipped.iter().map(|(test, missing)| format!("  {test}: needs {missing}")).collect();
    lines.sort();
    for line in lines {
        let _ = writeln!(err, "{line}");
    }
}

/// Returns from the calling test unless the host meets every need given (each a slice
/// of `Need`): see `met`.
macro_rules! require {
    ($($needs:expr),+ $(,)?) => {
        if !$crate::common::need::met(&[$(&$needs[..]),+]) {
            return;
        }
    };
}
pub(crate) use require;
