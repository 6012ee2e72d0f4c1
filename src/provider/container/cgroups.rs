//! A container's cgroups as envy's own runtime makes them on a cgroup v1 (or hybrid)
//! host, as root: a folder per hierarchy at the bundle's cgroupsPath, its cpu and
//! memory limits, and the device rules without which a guest's root could mknod the
//! host's disks and read them. A normal user's containers have none
//! (bundle::Limits::NotApplied); cgroup v2 alone, whose device rules are an eBPF
//! program, stays runc's (native::serves_this_host).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

/// The devices a container may use, runc's default list: every node may be made
/// (`m`), and only these read and written.
const ALLOWED_DEVICES: [&str; 12] = [
    "c *:* m", "b *:* m",
    "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", // null zero full random urandom
    "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm",            // tty console ptmx pts
    "c 10:200 rwm",                                                  // net/tun
];

/// How long freezing or emptying a cgroup may take before it is an error.
const SETTLE: Duration = Duration::from_secs(10);

/// One mounted cgroup hierarchy of the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hierarchy {
    /// Where it is mounted (/sys/fs/cgroup/memory).
    pub mount: PathBuf,
    /// Its controllers as mount options name them ("memory", "cpu,cpuacct",
    /// "name=systemd"); empty for cgroup v2.
    pub options: String,
}

impl Hierarchy {
    pub fn is_v2(&self) -> bool {
        self.options.is_empty()
    }

    fn controllers(&self) -> impl Iterator<Item = &str> {
        self.options.split(',').filter(|c| !c.is_empty())
    }
}

/// The cgroup hierarchies mounted under /sys/fs/cgroup, from /proc/self/mountinfo,
/// read once per process (the mount table grows with every machine, and `up` of many
/// asks for each).
pub fn hierarchies() -> &'static [Hierarchy] {
    static FOUND: std::sync::OnceLock<Vec<Hierarchy>> = std::sync::OnceLock::new();
    FOUND.get_or_init(read_hierarchies)
}

fn read_hierarchies() -> Vec<Hierarchy> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount = PathBuf::from(before.split_whitespace().nth(4)?);
            let mut fields = after.split_whitespace();
            let options = match fields.next()? {
                "cgroup2" => String::new(),
                "cgroup" => {
                    let superblock = fields.nth(1)?;
                    superblock.split(',').filter(|o| !matches!(*o, "rw" | "ro") && !o.starts_with("release_agent")).collect::<Vec<_>>().join(",")
                }
                _ => return None,
            };
            mount.starts_with("/sys/fs/cgroup").then_some(Hierarchy { mount, options })
        })
        .collect()
}

/// Whether the host has cgroup v1's device controller, which envy's runtime needs.
pub fn has_v1_devices(hierarchies: &[Hierarchy]) -> bool {
    hierarchies.iter().any(|h| h.controllers().any(|c| c == "devices"))
}

/// The limits of a bundle's `linux.resources` envy applies.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub memory: Option<Memory>,
    #[serde(default)]
    pub cpu: Option<Cpu>,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    pub limit: Option<i64>,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    pub quota: Option<i64>,
    pub period: Option<u64>,
}

/// Makes the container's folder `path` (the bundle's cgroupsPath) in every
/// hierarchy, with its limits and device rules. Returns each controller's folder, as
/// the state file records them ("" for v2).
pub fn create(hierarchies: &[Hierarchy], path: &str, resources: &Resources) -> Result<BTreeMap<String, PathBuf>> {
    let relative = path.trim_start_matches('/');
    if relative.is_empty() || relative.split('/').any(|c| c == ".." || c == ".") {
        bail!("the bundle's cgroupsPath {path:?} is not a plain path below the cgroup root");
    }
    let mut made = BTreeMap::new();
    for hierarchy in hierarchies {
        let dir = hierarchy.mount.join(relative);
        make_dir(hierarchy, &dir)?;
        if hierarchy.is_v2() {
            made.insert(String::new(), dir);
        } else {
            for controller in hierarchy.controllers() {
                made.insert(controller.to_string(), dir.clone());
            }
        }
    }
    clear_orphans(&made)?;
    let write = |controller: &str, file: &str, value: &str| -> Result<()> {
        let Some(dir) = made.get(controller) else { bail!("this host has no {controller} cgroup controller for the container's limits") };
        write_file(&dir.join(file), value)
    };
    if let Some(dir) = made.get("devices") {
        write_file(&dir.join("devices.deny"), "a")?;
        for rule in ALLOWED_DEVICES {
            write_file(&dir.join("devices.allow"), rule)?;
        }
    } else {
        bail!("this host has no cgroup v1 devices controller to keep a container's root off the host's devices");
    }
    if let Some(limit) = resources.memory.as_ref().and_then(|m| m.limit) {
        write("memory", "memory.limit_in_bytes", &limit.to_string())?;
    }
    if let Some(cpu) = &resources.cpu {
        if let Some(period) = cpu.period {
            write("cpu", "cpu.cfs_period_us", &period.to_string())?;
        }
        if let Some(quota) = cpu.quota {
            write("cpu", "cpu.cfs_quota_us", &quota.to_string())?;
        }
    }
    Ok(made)
}

/// Kills what is left in the container's folders: processes of this container that
/// an envy killed while it started it left running without a state file (the next
/// start must not run beside them).
fn clear_orphans(paths: &BTreeMap<String, PathBuf>) -> Result<()> {
    // A frozen process does not die until thawed.
    let _ = set_frozen(paths, false);
    let deadline = Instant::now() + SETTLE;
    for dir in folders(paths) {
        loop {
            let procs = dir.join("cgroup.procs");
            let text = std::fs::read_to_string(&procs).with_context(|| format!("cannot read {}", procs.display()))?;
            let pids: Vec<i32> = text.split_whitespace().filter_map(|p| p.parse().ok()).collect();
            if pids.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                bail!("the processes left in {} did not end within {} s of SIGKILL", dir.display(), SETTLE.as_secs());
            }
            for pid in pids {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(())
}

/// Makes `dir` and the folders above it; a new cpuset folder starts with no cpus or
/// memory nodes, so each takes its parent's, as runc does.
fn make_dir(hierarchy: &Hierarchy, dir: &Path) -> Result<()> {
    if dir.is_dir() || dir == hierarchy.mount {
        return Ok(());
    }
    let parent = dir.parent().context("a cgroup folder has a parent")?;
    make_dir(hierarchy, parent)?;
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot make the cgroup {}", dir.display())),
    }
    if hierarchy.controllers().any(|c| c == "cpuset") {
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let inherited = std::fs::read_to_string(parent.join(file)).with_context(|| format!("cannot read {}", parent.join(file).display()))?;
            write_file(&dir.join(file), inherited.trim())?;
        }
    }
    Ok(())
}

fn write_file(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("cannot write {value:?} to {}", path.display()))
}

/// The distinct folders of a container's cgroups.
fn folders(paths: &BTreeMap<String, PathBuf>) -> Vec<&PathBuf> {
    let mut dirs: Vec<&PathBuf> = paths.values().collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Moves `pid` into every folder of the container's cgroups.
pub fn join(paths: &BTreeMap<String, PathBuf>, pid: libc::pid_t) -> Result<()> {
    folders(paths).into_iter().try_for_each(|dir| write_file(&dir.join("cgroup.procs"), &pid.to_string()))
}

/// The container's freezer file, and what it reads when frozen and when thawed:
/// cgroup v1's freezer controller, or v2's cgroup.freeze.
fn freezer(paths: &BTreeMap<String, PathBuf>) -> Option<(PathBuf, &'static str, &'static str)> {
    match (paths.get("freezer"), paths.get("")) {
        (Some(v1), _) => Some((v1.join("freezer.state"), "FROZEN", "THAWED")),
        (None, Some(v2)) => Some((v2.join("cgroup.freeze"), "1", "0")),
        (None, None) => None,
    }
}

fn reads(file: &Path, value: &str) -> bool {
    std::fs::read_to_string(file).is_ok_and(|s| s.trim() == value)
}

/// Whether the container's processes are frozen (paused).
pub fn is_frozen(paths: &BTreeMap<String, PathBuf>) -> bool {
    freezer(paths).is_some_and(|(file, frozen, _)| reads(&file, frozen))
}

/// Freezes (or thaws) every process of the container, and waits until the kernel says so.
pub fn set_frozen(paths: &BTreeMap<String, PathBuf>, frozen: bool) -> Result<()> {
    let Some((file, on, off)) = freezer(paths) else { bail!("the container has no freezer cgroup") };
    let value = if frozen { on } else { off };
    write_file(&file, value)?;
    let deadline = Instant::now() + SETTLE;
    while !reads(&file, value) {
        if Instant::now() >= deadline {
            bail!("{} did not become {value} within {} s", file.display(), SETTLE.as_secs());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Removes the container's folders once its processes have left them.
pub fn remove(paths: &BTreeMap<String, PathBuf>) -> Result<()> {
    let deadline = Instant::now() + SETTLE;
    for dir in folders(paths) {
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(e).with_context(|| format!("cannot remove the cgroup {}; its processes may still run", dir.display())),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroups_path_that_climbs_out_is_refused() {
        let hierarchies = [Hierarchy { mount: PathBuf::from("/nonexistent/cgroup/memory"), options: "memory".into() }];
        for path in ["/", "/envy/../../etc", "/./x"] {
            let err = create(&hierarchies, path, &Resources::default()).unwrap_err().to_string();
            assert!(err.contains("not a plain path"), "{path}: {err}");
        }
    }

    #[test]
    fn this_hosts_hierarchies_are_read_from_the_mount_table() {
        let found = hierarchies();
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let expected = table.lines().filter(|l| l.contains(" - cgroup") && l.contains(" /sys/fs/cgroup")).count();
        assert_eq!(found.len(), expected, "{found:?}");
        assert!(found.iter().all(|h| h.mount.starts_with("/sys/fs/cgroup")));
        assert!(found.iter().all(|h| !h.options.split(',').any(|o| o == "rw")), "{found:?}");
    }
}
