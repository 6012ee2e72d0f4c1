//! A machine's own cloud-config (`user_data`) and how it joins the one envy writes
//! into the NoCloud seed: the user's keys are added after envy's, and a key envy
//! manages (the login key, hostname, mounts, ...) is refused, never silently replaced.

use serde_yaml::{Mapping, Value};

/// The first line cloud-init requires of a cloud-config.
pub const HEADER: &str = "#cloud-config";

/// The longest `user_data` file: the seed image is 2 MiB, and a cloud-config is text.
pub const MAX_USER_DATA: u64 = 512 * 1024;

/// Top-level keys envy's own user-data sets or may set (docs/box-format.md): the
/// machine's identity, envy's login, its sync mounts and project network. A user
/// value for one would change how envy reaches the machine, so it is an error.
pub const ENVY_KEYS: &[&str] = &["hostname", "disable_root", "ssh_pwauth", "ssh_genkeytypes", "users", "ssh_authorized_keys", "mounts", "bootcmd"];

/// Reads a user's cloud-config: `#cloud-config` first, then a YAML mapping with no
/// key envy manages. The error is a sentence to put after the file or key's name.
pub fn parse(text: &str) -> Result<Mapping, String> {
    if text.lines().next().map(str::trim_end) != Some(HEADER) {
        return Err(format!("does not start with a `{HEADER}` line; cloud-init reads only that format"));
    }
    let value: Value = serde_yaml::from_str(text).map_err(|e| format!("is not valid YAML: {e}"))?;
    let mapping = match value {
        Value::Mapping(m) => m,
        // Only a comment: a cloud-config that asks for nothing.
        Value::Null => Mapping::new(),
        _ => return Err("is not a cloud-config: its top level must be a mapping of keys (write_files:, runcmd:, ...)".into()),
    };
    for key in mapping.keys() {
        let Some(name) = key.as_str() else {
            return Err(format!("has a top-level key that is not a string ({key:?}); cloud-config keys are names"));
        };
        if ENVY_KEYS.contains(&name) {
            return Err(format!(
                "sets `{name}`, which envy manages for every VM (it sets {}); remove `{name}` from user_data \
                 (use runcmd or write_files for what it was meant to do)",
                ENVY_KEYS.join(", ")
            ));
        }
    }
    Ok(mapping)
}

/// envy's user-data with the user's keys after it. envy's part stays byte for byte as
/// written (the minimal boxes' line parser reads it); `parse` guaranteed the two share
/// no top-level key, so the result is one valid mapping.
pub fn merge(envy: &str, user: &Mapping) -> String {
    if user.is_empty() {
        return envy.to_string();
    }
    let mut out = envy.to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out += "# from the Envfile's user_data\n";
    out += &serde_yaml::to_string(user).expect("a YAML mapping always serializes");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENVY: &str = "#cloud-config\nhostname: \"web\"\nusers:\n  - default\nssh_authorized_keys:\n  - \"ssh-ed25519 AAAA envy\"\n";

    #[test]
    fn user_keys_follow_envys_and_the_result_is_one_mapping() {
        let user = parse(
            "#cloud-config\nwrite_files:\n  - path: /etc/motd\n    content: |\n      hello: \"world\"\n    permissions: '0644'\nruncmd:\n  - [touch, /x]\npackages: [git]\n",
        )
        .unwrap();
        let merged = merge(ENVY, &user);
        assert!(merged.starts_with(ENVY), "envy's part is kept as written:\n{merged}");
        assert!(merged.starts_with("#cloud-config\n"));
        let value: Value = serde_yaml::from_str(&merged).unwrap();
        let map = value.as_mapping().unwrap();
        assert_eq!(map.get("hostname").unwrap().as_str(), Some("web"));
        assert_eq!(map.get("ssh_authorized_keys").unwrap()[0].as_str(), Some("ssh-ed25519 AAAA envy"));
        let file = &map.get("write_files").unwrap()[0];
        assert_eq!(file["path"].as_str(), Some("/etc/motd"));
        assert_eq!(file["content"].as_str(), Some("hello: \"world\"\n"));
        assert_eq!(file["permissions"].as_str(), Some("0644"));
        assert_eq!(map.get("runcmd").unwrap()[0][1].as_str(), Some("/x"));
        assert_eq!(map.get("packages").unwrap()[0].as_str(), Some("git"));
        assert_eq!(map.len(), 6);
    }

    #[test]
    fn an_empty_cloud_config_changes_nothing() {
        assert_eq!(merge(ENVY, &parse("#cloud-config\n# nothing yet\n").unwrap()), ENVY);
    }

    #[test]
    fn every_key_envy_manages_is_refused_by_name() {
        for key in ENVY_KEYS {
            let err = parse(&format!("#cloud-config\n{key}: []\n")).unwrap_err();
            assert!(err.contains(&format!("sets `{key}`, which envy manages")), "{key}: {err}");
        }
    }

    #[test]
    fn what_is_not_a_cloud_config_is_refused() {
        assert!(parse("runcmd: []\n").unwrap_err().contains("does not start with a `#cloud-config` line"));
        assert!(parse("#cloud-config\n- a\n").unwrap_err().contains("top level must be a mapping"));
        assert!(parse("#cloud-config\nruncmd: [\n").unwrap_err().contains("is not valid YAML"));
        assert!(parse("#cloud-config\n1: x\n").unwrap_err().contains("not a string"));
    }
}
