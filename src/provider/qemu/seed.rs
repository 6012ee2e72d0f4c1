//! The NoCloud seed disk: a small vfat image labelled `cidata` holding `meta-data`
//! and `user-data` (#cloud-config). It is the one contract with the guest, so stock
//! cloud images (cloud-init) and envy's own minimal boxes read the same file
//! (docs/box-format.md, "Guest contract (qemu)").

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, Result};

use super::network::Segment;
use super::virtiofs::Transport;
use crate::plan::MachinePlan;

/// The seed image size: FAT12 with room to spare for two small text files.
const SEED_BYTES: u64 = 2 << 20;

/// The mount tag (9p or virtiofs) of the sync folder at `index`.
pub fn mount_tag(index: usize) -> String {
    format!("envy{index}")
}

/// Options the guest mounts a sync folder with (read-only folders are always 9p).
fn mount_options(transport: Transport, readonly: bool) -> String {
    if transport == Transport::Virtiofs {
        return "nofail".to_string();
    }
    let mut opts = "trans=virtio,version=9p2000.L,msize=262144,nofail".to_string();
    if readonly {
        opts.push_str(",ro");
    }
    opts
}

/// A YAML scalar for any string: JSON's double-quoted form is valid YAML and escapes
/// quotes, backslashes and control characters.
fn quote(value: &str) -> String {
    serde_json::to_string(value).expect("a string always serializes")
}

/// `meta-data`: the instance id (stable for the machine's life, so cloud-init runs its
/// first-boot modules once) and the hostname.
pub fn meta_data(plan: &MachinePlan) -> String {
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        quote(&plan.runtime_id),
        quote(plan.name())
    )
}

/// `user-data`, laid out one item per line so the minimal boxes' shell parser reads
/// exactly what cloud-init reads. `transports` says how each sync folder is shared.
pub fn user_data(plan: &MachinePlan, public_key: &str, net: Option<&Segment>, transports: &[Transport]) -> String {
    let mut out = String::from("#cloud-config\n");
    out += &format!("hostname: {}\n", quote(plan.name()));
    // envy logs in as root (exec, provisioning); the default user gets the key too.
    out += "disable_root: false\nssh_pwauth: false\n";
    // One host key, the type ssh picks first: cloud-init's default also makes RSA 3072
    // and ECDSA keys before sshd starts, up to 25 s of a first boot under TCG
    // (docs/benchmarks.md, "A stock cloud image's boot").
    out += "ssh_genkeytypes: [\"ed25519\"]\n";
    out += "users:\n  - default\n";
    out += &format!("ssh_authorized_keys:\n  - {}\n", quote(public_key.trim()));
    if !plan.spec.sync.is_empty() {
        out += "mounts:\n";
        for (i, (folder, &transport)) in plan.spec.sync.iter().zip(transports).enumerate() {
            out += &format!(
                "  - [{}, {}, {}, {}, \"0\", \"0\"]\n",
                quote(&mount_tag(i)),
                quote(&folder.guest),
                quote(transport.name()),
                quote(&mount_options(transport, folder.readonly))
            );
        }
    }
    if let Some(net) = net {
        // bootcmd runs on every boot (runcmd only once), so the address survives reboots.
        out += "bootcmd:\n  - |\n";
        for line in net.guest_script().lines() {
            out += &format!("    {line}\n");
        }
    }
    out
}

/// Writes the seed image to `path` (replacing it atomically).
pub fn write(path: &Path, meta_data: &str, user_data: &str) -> Result<()> {
    let dir = path.parent().context("the seed path has no folder")?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".seed-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a seed image in {}", dir.display()))?;
    tmp.as_file().set_len(SEED_BYTES)?;
    fatfs::format_volume(
        tmp.as_file_mut(),
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat12)
            .volume_label(*b"cidata     "),
    )
    .context("cannot format the seed image as vfat")?;
    {
        let fs = fatfs::FileSystem::new(tmp.as_file_mut(), fatfs::FsOptions::new())
            .context("cannot open the new seed image")?;
        let root = fs.root_dir();
        for (name, content) in [("meta-data", meta_data), ("user-data", user_data)] {
            let mut file = root
                .create_file(name)
                .with_context(|| format!("cannot create {name} in the seed image"))?;
            file.truncate()?;
            file.write_all(content.as_bytes())
                .with_context(|| format!("cannot write {name} in the seed image"))?;
        }
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_what_yaml_would_misread() {
        assert_eq!(quote("web"), "\"web\"");
        assert_eq!(quote("a \"b\": #c\\"), "\"a \\\"b\\\": #c\\\\\"");
    }

    fn plan() -> MachinePlan {
        let text = r#"
[machine.web]
box = "x"
sync = [".:/project", { host = "docs", guest = "/srv/my \"docs\"", readonly = true }]
[machine.db]
box = "x"
"#;
        crate::plan::test_plan("/p", "/h", text, "web")
    }

    #[test]
    fn user_data_is_the_documented_cloud_config() {
        let plan = plan();
        let net = Segment::of(&plan).unwrap();
        let text = user_data(&plan, "ssh-ed25519 AAAAkey envy\n", net.as_ref(), &[Transport::Virtiofs, Transport::NineP]);
        assert_eq!(
            text,
            r#"#cloud-config
hostname: "web"
disable_root: false
ssh_pwauth: false
ssh_genkeytypes: ["ed25519"]
users:
  - default
ssh_authorized_keys:
  - "ssh-ed25519 AAAAkey envy"
mounts:
  - ["envy0", "/project", "virtiofs", "nofail", "0", "0"]
  - ["envy1", "/srv/my \"docs\"", "9p", "trans=virtio,version=9p2000.L,msize=262144,nofail,ro", "0", "0"]
bootcmd:
  - |
    nic=$(grep -l '52:54:00:76:00:00' /sys/class/net/*/address | cut -d/ -f5)
    if [ -n "$nic" ]; then ip link set "$nic" up; ip addr add 10.0.4.20/24 dev "$nic" 2>/dev/null || true; fi
    grep -q ' db$' /etc/hosts || echo '10.0.4.21 db' >> /etc/hosts
"#
        );
        assert_eq!(meta_data(&plan), "instance-id: \"envy-0badcafe-web\"\nlocal-hostname: \"web\"\n");
    }

    #[test]
    fn the_users_cloud_config_follows_envys_exactly() {
        let plan = crate::plan::test_plan("/p", "/h", "[machine.vm]\nbox = \"x\"\nprovider = \"qemu\"\n", "vm");
        let user = crate::envfile::cloud_config::parse(
            "#cloud-config\nwrite_files:\n- path: /etc/motd\n  content: |\n    hostname: not envy's\n  permissions: '0644'\nruncmd: [[touch, /x]]\n",
        )
        .unwrap();
        let text = crate::envfile::cloud_config::merge(&user_data(&plan, "ssh-ed25519 AAAAkey envy", None, &[]), &user);
        assert_eq!(
            text,
            r#"#cloud-config
hostname: "vm"
disable_root: false
ssh_pwauth: false
ssh_genkeytypes: ["ed25519"]
users:
  - default
ssh_authorized_keys:
  - "ssh-ed25519 AAAAkey envy"
# from the Envfile's user_data
write_files:
- path: /etc/motd
  content: |
    hostname: not envy's
  permissions: '0644'
runcmd:
- - touch
  - /x
"#
        );
        // What a line reader of envy's layout (the minimal boxes' init) takes as the
        // hostname is still envy's: the user's text is indented below its own keys.
        let hostnames: Vec<&str> = text.lines().filter(|l| l.starts_with("hostname:")).collect();
        assert_eq!(hostnames, ["hostname: \"vm\""]);
    }

    #[test]
    fn seed_image_holds_both_files_under_the_cidata_label() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        write(&path, "instance-id: \"x\"\n", "#cloud-config\n").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "cidata");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut fs.root_dir().open_file("user-data").unwrap(), &mut text)
            .unwrap();
        assert_eq!(text, "#cloud-config\n");
    }
}
