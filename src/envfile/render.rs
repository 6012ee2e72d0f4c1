//! Writing a machine back out as an Envfile section, with every default applied:
//! `envy share` ships it inside the box so a teammate gets the same settings.

use std::path::Path;

use toml::Value;

use super::{MachineSpec, ProvisionAction, ReadyCheck, UserData};

impl MachineSpec {
    /// `[machine.NAME]` with this machine's settings and `box` set to `box_value`.
    /// Paths are written relative to `project_dir` where they lie inside it.
    pub fn to_section(&self, project_dir: &Path, box_value: Value) -> String {
        let relative = |p: &Path| -> String {
            match p.strip_prefix(project_dir) {
                Ok(rel) if rel.as_os_str().is_empty() => ".".into(),
                Ok(rel) => rel.display().to_string(),
                Err(_) => p.display().to_string(),
            }
        };
        let mut out = format!("[machine.{}]\n", self.name);
        let mut line = |key: &str, value: Value| out.push_str(&format!("{key} = {value}\n"));
        line("box", box_value);
        line("provider", Value::String(self.provider.to_string()));
        if let Some(remote) = &self.placement.remote {
            line("remote", Value::String(remote.clone()));
        }
        if let Some(target) = &self.placement.target {
            line("target", Value::String(target.clone()));
        }
        line("cpus", Value::Integer(self.cpus.into()));
        line("memory", Value::String(format!("{}MiB", self.memory >> 20)));
        if let Some(disk) = self.disk {
            line("disk", Value::String(format!("{}MiB", disk >> 20)));
        }
        if !self.env.is_empty() {
            line("env", Value::Table(self.env.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()));
        }
        if !self.forwards.is_empty() {
            let forwards = self.forwards.iter().map(|f| {
                Value::Table(toml::Table::from_iter([
                    ("host".to_string(), Value::Integer(f.host_port.into())),
                    ("guest".to_string(), Value::Integer(f.guest_port.into())),
                    ("protocol".to_string(), Value::String(f.protocol.to_string())),
                    ("host_ip".to_string(), Value::String(f.host_ip.to_string())),
                    ("auto".to_string(), Value::Boolean(f.auto)),
                ]))
            });
            line("forward", Value::Array(forwards.collect()));
        }
        if !self.sync.is_empty() {
            let sync = self.sync.iter().map(|s| {
                let ro = if s.readonly { ":ro" } else { "" };
                let short = Value::String(format!("{}:{}{ro}", relative(&s.host), s.guest));
                match s.mode {
                    super::SyncMode::Mount => short,
                    super::SyncMode::Copy => Value::Table(toml::Table::from_iter([
                        ("host".to_string(), Value::String(relative(&s.host))),
                        ("guest".to_string(), Value::String(s.guest.clone())),
                        ("readonly".to_string(), Value::Boolean(s.readonly)),
                        ("mode".to_string(), Value::String("copy".into())),
                    ])),
                }
            });
            line("sync", Value::Array(sync.collect()));
        }
        if !self.provision.is_empty() {
            let steps = self.provision.iter().map(|p| {
                let mut table = toml::Table::new();
                match &p.action {
                    ProvisionAction::Shell(cmd) if !p.always => return Value::String(cmd.clone()),
                    ProvisionAction::Shell(cmd) => table.insert("shell".into(), Value::String(cmd.clone())),
                    ProvisionAction::Script(path) => table.insert("script".into(), Value::String(relative(path))),
                    ProvisionAction::File { from, to, mode } => {
                        table.insert("file".into(), Value::String(relative(from)));
                        if let Some(mode) = mode {
                            table.insert("mode".into(), Value::String(format!("{mode:04o}")));
                        }
                        table.insert("to".into(), Value::String(to.clone()))
                    }
                };
                if p.always {
                    table.insert("run".into(), Value::String("always".into()));
                }
                Value::Table(table)
            });
            line("provision", Value::Array(steps.collect()));
        }
        if let Some(ready) = &self.ready {
            let check = match &ready.check {
                ReadyCheck::Command(cmd) => ("cmd", Value::String(cmd.clone())),
                ReadyCheck::Tcp(port) => ("tcp", Value::Integer((*port).into())),
                ReadyCheck::Http(url) => ("http", Value::String(url.clone())),
            };
            let timeout = ("timeout".to_string(), Value::String(format!("{}s", ready.timeout.as_secs())));
            line("ready", Value::Table(toml::Table::from_iter([(check.0.to_string(), check.1), timeout])));
        }
        match &self.user_data {
            Some(UserData::File(path)) => line("user_data", Value::String(relative(path))),
            Some(UserData::Inline(text)) => line("user_data", Value::String(text.clone())),
            None => {}
        }
        match self.forward_auto {
            Some(auto) if auto.min_port == super::AUTO_FORWARD_MIN_PORT => line("forward_auto", Value::Boolean(true)),
            Some(auto) => line("forward_auto", Value::Table(toml::Table::from_iter([("min_port".to_string(), Value::Integer(auto.min_port.into()))]))),
            None => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {


    use crate::envfile::parse_str;

    #[test]
    fn a_rendered_section_reads_back_as_the_same_machine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Envfile");
        let text = "[defaults]\nmemory = \"512MiB\"\nsync = [\".:/project\", \"docs:/docs:ro\", { host = \"src\", guest = \"/src\", mode = \"copy\" }]\n\
                    [machine.web]\nbox = \"b\"\nforward = [\"8080:80\", \"0.0.0.0:5353:53/udp\"]\n\
                    env = { A = \"1\" }\nprovision = [\"echo 'hi'\", { shell = \"date\", run = \"always\" }, { file = \"etc/app.conf\", to = \"/etc/app.conf\", mode = \"0640\" }]\nready = { tcp = 80, timeout = \"2m\" }\n";
        let original = parse_str(&path, text, crate::model::ProviderKind::new("container")).unwrap();
        let section = original.machines[0].to_section(dir.path(), toml::Value::String("b".into()));
        let again = parse_str(&path, &section, crate::model::ProviderKind::new("qemu")).unwrap();
        assert_eq!(again.machines[0], original.machines[0], "{section}");
    }
}
