//! `envy init --from-vagrantfile`: the common subset of a Vagrantfile turned into
//! Envfile text. The Ruby is read by a real parser (lib-ruby-parser), and only literal
//! settings are taken: anything computed or without an Envfile equivalent (loops,
//! variables, plugins, other provisioners) is reported with its Vagrantfile line and
//! marked by a comment in the Envfile, never guessed at.

use std::path::{Component, Path, PathBuf};

use lib_ruby_parser::{Node, Parser, ParserOptions};
use toml::Value;

/// A Vagrantfile that cannot be converted at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}; fix the Ruby (`vagrant validate` shows the same) and convert again", path.display())]
    Syntax { path: PathBuf, line: usize, message: String },
    #[error("{} has no `Vagrant.configure(\"2\") do |config| ... end` block, so there is nothing to convert", path.display())]
    NoConfigure { path: PathBuf },
}

/// Vagrant box names that have an entry in envy's catalog (boxes/*.toml).
const CATALOG_BOXES: &[(&str, &str)] = &[
    ("debian/bookworm64", "debian-12"),
    ("generic/debian12", "debian-12"),
    ("bento/debian-12", "debian-12"),
    ("debian/trixie64", "debian-13"),
    ("bento/debian-13", "debian-13"),
    ("bento/ubuntu-24.04", "ubuntu-24.04"),
    ("cloud-image/ubuntu-24.04", "ubuntu-24.04"),
    ("bento/fedora-42", "fedora-42"),
    ("archlinux/archlinux", "archlinux"),
];

/// Vagrant providers that run a VM whose `memory` and `cpus` mean what envy's do.
const VM_PROVIDERS: &[&str] = &["virtualbox", "libvirt", "vmware_desktop", "hyperv", "parallels", "qemu"];

/// Shell provisioner options whose loss would change what the step does: a step that
/// has one is not converted at all.
const SHELL_OPTIONS_THAT_MATTER: &[&str] = &["args", "env", "upload_path", "reboot", "reset", "powershell_args", "binary"];

/// The result of a conversion.
#[derive(Debug)]
pub struct Conversion {
    /// The Envfile, for the caller to check with envy's own Envfile parser.
    pub envfile: String,
    /// What was left out or changed, in Vagrantfile order.
    pub notes: Vec<Note>,
}

/// One thing the Envfile does not carry over as the Vagrantfile had it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// 1-based line in the Vagrantfile.
    pub line: usize,
    pub kind: NoteKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// Left out: the Envfile has no equivalent, or the value is computed by Ruby.
    NotConverted,
    /// Converted, but envy behaves differently; the note says how.
    Changed,
}

/// Reads and converts the Vagrantfile at `path`. Relative paths in it (sync folders,
/// provision scripts) are rewritten as seen from `project_dir`, where the Envfile goes.
pub fn convert_file(path: &Path, project_dir: &Path) -> Result<Conversion, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
    let vagrant_dir = path.parent().map(std::path::absolute).transpose().ok().flatten().unwrap_or_default();
    let project_dir = std::path::absolute(project_dir).unwrap_or_else(|_| project_dir.to_path_buf());
    let base = match vagrant_dir.strip_prefix(&project_dir) {
        Ok(rel) => rel.to_path_buf(),
        Err(_) => vagrant_dir,
    };
    convert(path, &text, &base)
}

/// Converts Vagrantfile `text` (read from `path`, named in errors). `base` is the
/// Vagrantfile's folder as seen from the Envfile's ("" when they are the same).
pub fn convert(path: &Path, text: &str, base: &Path) -> Result<Conversion, Error> {
    let options = ParserOptions { buffer_name: path.display().to_string(), record_tokens: false, ..Default::default() };
    let parsed = Parser::new(text.as_bytes().to_vec(), options).do_parse();
    if let Some(d) = parsed.diagnostics.iter().find(|d| d.is_error()) {
        return Err(Error::Syntax { path: path.into(), line: line_of(text, d.loc.begin), message: d.render_message() });
    }
    let mut converter = Converter { text, base, notes: Vec::new() };
    let mut top = Section::default();
    // Vagrant syncs the Vagrantfile's folder to /vagrant unless told not to.
    let vagrant_dir = if base.as_os_str().is_empty() { ".".to_string() } else { base.display().to_string() };
    top.sync.push(("/vagrant".into(), sync_value(&vagrant_dir, "/vagrant", false, base.is_absolute())));
    let mut machines = Vec::new();
    let mut configured = false;
    for statement in statements(parsed.ast.as_deref()) {
        match statement {
            Node::Block(block) if is_configure(&block.call) => {
                configured = true;
                let var = block_params(block).into_iter().next().unwrap_or_default();
                for node in statements(block.body.as_deref()) {
                    converter.machine_statement(node, &var, &mut top, Some(&mut machines));
                }
            }
            // `VAGRANTFILE_API_VERSION = "2"` only names the API version configure takes.
            Node::Casgn(c) if c.name == "VAGRANTFILE_API_VERSION" => {}
            other => converter.not_converted(&mut top, other, format!("`{}` is Ruby outside the configure block", converter.snippet(other))),
        }
    }
    if !configured {
        return Err(Error::NoConfigure { path: path.into() });
    }
    // One machine is named after its hostname; with defines, each has its own name.
    let hostname = top.hostname.clone();
    if machines.is_empty() {
        top.name = hostname
            .as_ref()
            .map(|(h, _)| machine_name(h.split('.').next().unwrap_or(h)))
            .filter(|n| valid_machine_name(n))
            .unwrap_or_else(|| crate::envfile::DEFAULT_MACHINE.to_string());
        let name = top.name.clone();
        converter.hostname_note(&mut top, hostname.as_ref(), &name);
    } else if let Some((hostname, line)) = hostname {
        let message = format!("hostname {hostname:?} is not kept: each machine's hostname is its own name");
        converter.note(&mut top, line, NoteKind::Changed, message);
    }
    converter.give_forwards_to_machines(&mut top, &mut machines);
    let envfile = render(&top, &machines);
    let mut notes = converter.notes;
    notes.sort_by_key(|n| n.line);
    Ok(Conversion { envfile, notes })
}

/// What one scope of the Vagrantfile (the configure block or one define) sets.
#[derive(Debug, Default)]
struct Section {
    /// Machine name; for the configure block, that of its one machine when nothing is defined.
    name: String,
    /// The Envfile's box and Vagrant's name for it.
    box_name: Option<(String, String)>,
    hostname: Option<(String, usize)>,
    provider: Option<&'static str>,
    cpus: Option<i64>,
    /// MiB, as Vagrant's providers take it.
    memory: Option<i64>,
    /// Each forward with its Vagrantfile line.
    forward: Vec<(usize, Value)>,
    /// Guest path and the Envfile value of each sync folder.
    sync: Vec<(String, Value)>,
    /// Guest paths of synced folders turned off here (`disabled: true`).
    disabled_sync: Vec<String>,
    provision: Vec<Value>,
    /// Comments for this section of the Envfile, by Vagrantfile line.
    comments: Vec<(usize, String)>,
}

struct Converter<'a> {
    text: &'a str,
    base: &'a Path,
    notes: Vec<Note>,
}

impl Converter<'_> {
    fn line(&self, node: &Node) -> usize {
        line_of(self.text, node.expression().begin)
    }

    /// The node's first line of source, shortened, to name it in a message.
    fn snippet(&self, node: &Node) -> String {
        let loc = node.expression();
        let source = &self.text[loc.begin..loc.end.min(self.text.len())];
        let first = source.lines().next().unwrap_or("").trim();
        if first.chars().count() > 60 {
            format!("{}...", first.chars().take(57).collect::<String>())
        } else {
            first.to_string()
        }
    }

    fn note(&mut self, section: &mut Section, line: usize, kind: NoteKind, message: String) {
        let prefix = match kind {
            NoteKind::NotConverted => format!("TODO (Vagrantfile line {line}, not converted)"),
            NoteKind::Changed => format!("Vagrantfile line {line}"),
        };
        section.comments.push((line, format!("{prefix}: {message}")));
        self.notes.push(Note { line, kind, message });
    }

    fn not_converted(&mut self, section: &mut Section, node: &Node, message: String) {
        self.note(section, self.line(node), NoteKind::NotConverted, message);
    }

    fn changed(&mut self, section: &mut Section, node: &Node, message: String) {
        self.note(section, self.line(node), NoteKind::Changed, message);
    }

    /// A hostname Vagrant sets that envy does not (a machine's hostname is its name).
    fn hostname_note(&mut self, section: &mut Section, hostname: Option<&(String, usize)>, name: &str) {
        if let Some((hostname, line)) = hostname {
            if hostname != name {
                let message = format!("hostname {hostname:?} is not kept: a machine's hostname is its name, {name}");
                self.note(section, *line, NoteKind::Changed, message);
            }
        }
    }

    /// One statement of the configure block (`defines` is Some) or of a define block.
    fn machine_statement(&mut self, node: &Node, var: &str, section: &mut Section, defines: Option<&mut Vec<Section>>) {
        if let Node::Block(block) = node {
            match vm_call(&block.call, var) {
                Some(("define", args)) => match defines {
                    Some(defines) => self.define(node, args, Some(block), defines),
                    None => self.not_converted(section, node, "a define inside a define".into()),
                },
                Some(("provider", args)) => self.provider(section, node, args, Some(block)),
                Some(("provision", args)) => self.provision(section, node, args, Some(block)),
                _ => {
                    let what = match &*block.call {
                        Node::Send(s) if matches!(s.method_name.as_str(), "each" | "each_with_index" | "times" | "upto" | "step") => {
                            format!("`{}` is a loop: write each machine it makes as its own [machine.NAME]", self.snippet(node))
                        }
                        _ => format!("`{}` has no Envfile equivalent", self.snippet(node)),
                    };
                    self.not_converted(section, node, what);
                }
            }
            return;
        }
        let Some((method, args)) = vm_call(node, var) else {
            let message = match node {
                Node::Send(_) if root_var(node) == Some(var) && chain_has(node, "ssh") => {
                    format!("`{}`: envy manages SSH itself (`envy ssh`, `envy exec`)", self.snippet(node))
                }
                Node::Send(_) if root_var(node) == Some(var) && chain_has(node, "vagrant") => {
                    format!("`{}`: Vagrant plugins have no envy equivalent", self.snippet(node))
                }
                Node::Lvasgn(_) | Node::Lvar(_) => {
                    format!("`{}` is a Ruby variable: only literal settings are converted", self.snippet(node))
                }
                Node::If(_) | Node::IfMod(_) | Node::Case(_) => {
                    format!("`{}` is a condition: decide it and write the result", self.snippet(node))
                }
                _ => format!("`{}` has no Envfile equivalent", self.snippet(node)),
            };
            self.not_converted(section, node, message);
            return;
        };
        match (method, args) {
            ("box=", [value]) => match literal_string(value) {
                Some(vagrant_box) => match CATALOG_BOXES.iter().find(|(v, _)| *v == vagrant_box) {
                    Some((_, name)) => section.box_name = Some((name.to_string(), vagrant_box)),
                    None => {
                        let message = format!(
                            "envy's catalog has no box for Vagrant's {vagrant_box:?}: replace the TODO box with a catalog name \
                             (such as debian-12) or a URL with its sha256"
                        );
                        self.not_converted(section, node, message);
                        section.box_name = Some((format!("TODO-{}", machine_name(&vagrant_box)), vagrant_box));
                    }
                },
                None => self.not_converted(section, node, "the box name is computed by Ruby: set `box` by hand".into()),
            },
            ("hostname=", [value]) => match literal_string(value) {
                Some(name) => section.hostname = Some((name, self.line(node))),
                None => self.not_converted(section, node, "the hostname is computed by Ruby".into()),
            },
            ("box_version=", _) => self.changed(
                section,
                node,
                "box_version is not kept: the first `envy up` pins the box's digest in Envfile.lock".into(),
            ),
            ("box_check_update=", _) => self.changed(
                section,
                node,
                "box_check_update is not kept: envy never moves a pinned box on its own; delete the machine's entry in Envfile.lock to take a newer one".into(),
            ),
            ("network", args) => self.network(section, node, args),
            ("synced_folder", args) => self.synced_folder(section, node, args),
            ("provision", args) => self.provision(section, node, args, None),
            ("provider", args) => self.provider(section, node, args, None),
            ("define", args) => match defines {
                Some(defines) => self.define(node, args, None, defines),
                None => self.not_converted(section, node, "a define inside a define".into()),
            },
            _ => {
                let message = format!("`{}` has no Envfile equivalent", self.snippet(node));
                self.not_converted(section, node, message);
            }
        }
    }

    /// Vagrant copies the configure block's forwards into every machine and moves a
    /// clashing host port when `auto_correct` says so; an Envfile gives each host port
    /// to one machine. Each machine gets the outer forwards first, and a host port
    /// already given is left out with a note.
    fn give_forwards_to_machines(&mut self, top: &mut Section, machines: &mut [Section]) {
        if machines.is_empty() {
            return;
        }
        let outer = std::mem::take(&mut top.forward);
        let mut taken = std::collections::HashSet::new();
        for machine in machines {
            let own = std::mem::take(&mut machine.forward);
            for (line, forward) in outer.iter().cloned().chain(own) {
                let key = ["host_ip", "host", "protocol"].map(|k| forward.get(k).map(Value::to_string).unwrap_or_default());
                if taken.insert(key) {
                    machine.forward.push((line, forward));
                } else {
                    let host = forward.get("host").map(Value::to_string).unwrap_or_default();
                    let message = format!(
                        "host port {host} is forwarded to an earlier machine already: give machine {} a host port of its own",
                        machine.name
                    );
                    self.note(machine, line, NoteKind::NotConverted, message);
                }
            }
        }
    }

    /// `config.vm.define "web" do |web| ... end`: one machine.
    fn define(&mut self, node: &Node, args: &[Node], block: Option<&lib_ruby_parser::nodes::Block>, defines: &mut Vec<Section>) {
        let mut section = Section::default();
        let Some(vagrant_name) = args.first().and_then(literal_string) else {
            // The machine cannot be named: its settings are still walked, for the notes.
            section.name = format!("machine-{}", defines.len() + 1);
            self.not_converted(&mut section, node, "the machine's name is computed by Ruby: it was written as [machine.machine-N]".into());
            return defines.push(section);
        };
        section.name = machine_name(&vagrant_name);
        if section.name != vagrant_name {
            let message = format!(
                "machine {vagrant_name:?} is named {} (envy names are lowercase letters, digits and '-')",
                section.name
            );
            self.changed(&mut section, node, message);
        }
        for (key, value) in options(&args[1..]) {
            match (key.as_str(), value) {
                ("primary", _) => self.changed(
                    &mut section,
                    value,
                    "primary: envy commands that act on one machine take its name; the first machine is the default of `envy run`".into(),
                ),
                ("autostart", Node::False(_)) => self.not_converted(
                    &mut section,
                    value,
                    "autostart: false: `envy up` starts every machine; name the ones you want (`envy up web`)".into(),
                ),
                _ => {
                    let message = format!("define option `{key}` has no Envfile equivalent");
                    self.not_converted(&mut section, value, message);
                }
            }
        }
        if let Some(block) = block {
            let var = block_params(block).into_iter().next().unwrap_or_default();
            for statement in statements(block.body.as_deref()) {
                self.machine_statement(statement, &var, &mut section, None);
            }
        }
        let (hostname, name) = (section.hostname.clone(), section.name.clone());
        self.hostname_note(&mut section, hostname.as_ref(), &name);
        defines.push(section);
    }

    /// `config.vm.network KIND, ...`.
    fn network(&mut self, section: &mut Section, node: &Node, args: &[Node]) {
        let kind = args.first().and_then(literal_string).unwrap_or_default();
        match kind.as_str() {
            "forwarded_port" => self.forwarded_port(section, node, &args[1..]),
            "private_network" => self.changed(
                section,
                node,
                "private_network is not needed: the machines of one envy project reach each other by name on their own network; the address is not kept".into(),
            ),
            "public_network" => self.not_converted(
                section,
                node,
                "public_network: envy never bridges a machine onto the host's network; forward the ports you need (`forward`, with host_ip = \"0.0.0.0\" to share one)".into(),
            ),
            _ => {
                let message = format!("`{}` has no Envfile equivalent", self.snippet(node));
                self.not_converted(section, node, message);
            }
        }
    }

    fn forwarded_port(&mut self, section: &mut Section, node: &Node, args: &[Node]) {
        let mut table = toml::Table::new();
        for (key, value) in options(args) {
            let entry = match key.as_str() {
                "guest" | "host" => literal_int(value).map(Value::Integer),
                "host_ip" => literal_string(value).map(Value::String),
                "protocol" => literal_string(value).map(Value::String),
                "auto_correct" => literal_bool(value).map(Value::Boolean),
                // A label Vagrant uses to override a forward; envy has no use for it.
                "id" => continue,
                _ => {
                    let message = format!("forwarded_port option `{key}` has no Envfile equivalent; the forward is kept without it");
                    self.changed(section, value, message);
                    continue;
                }
            };
            let Some(entry) = entry else {
                let message = format!("forwarded_port {key} is computed by Ruby: the forward is left out");
                return self.not_converted(section, node, message);
            };
            table.insert(if key == "auto_correct" { "auto".into() } else { key }, entry);
        }
        if !table.contains_key("guest") || !table.contains_key("host") {
            return self.not_converted(section, node, "a forwarded_port needs literal `guest` and `host` ports".into());
        }
        section.forward.push((self.line(node), Value::Table(table)));
    }

    /// `config.vm.synced_folder HOST, GUEST, options`.
    fn synced_folder(&mut self, section: &mut Section, node: &Node, args: &[Node]) {
        let (Some(host), Some(guest)) = (args.first().and_then(literal_string), args.get(1).and_then(literal_string)) else {
            return self.not_converted(section, node, "a synced_folder needs literal host and guest paths".into());
        };
        let mut readonly = false;
        for (key, value) in options(&args[2..]) {
            match key.as_str() {
                "disabled" if literal_bool(value) == Some(true) => {
                    section.disabled_sync.push(guest);
                    return;
                }
                "disabled" => {}
                "create" => {}
                "mount_options" => {
                    let Node::Array(list) = value else { continue };
                    let options: Vec<String> = list.elements.iter().filter_map(literal_string).collect();
                    readonly = options.iter().any(|o| o.split(',').any(|o| o == "ro"));
                    let others: Vec<&str> = options.iter().flat_map(|o| o.split(',')).filter(|o| *o != "ro" && *o != "rw").collect();
                    if !others.is_empty() {
                        let message = format!("mount options {} are not kept (envy mounts with its own)", others.join(","));
                        self.changed(section, value, message);
                    }
                }
                "type" => {
                    let message = format!(
                        "synced folder type {}: envy bind-mounts the folder (container) or shares it over virtio-9p (qemu)",
                        literal_string(value).unwrap_or_default()
                    );
                    self.changed(section, value, message);
                }
                _ => {
                    let message = format!("synced_folder option `{key}` is not kept");
                    self.changed(section, value, message);
                }
            }
        }
        if host.starts_with('~') || host.contains('$') {
            return self.not_converted(section, node, format!("synced folder {host:?}: write the host path out in full"));
        }
        if !guest.starts_with('/') {
            return self.not_converted(section, node, format!("synced folder guest path {guest:?} is not absolute"));
        }
        let host_path = normalize(&self.base.join(&host));
        let outside = host_path.is_absolute() || host_path.starts_with("..");
        let host_text = if host_path.as_os_str().is_empty() { ".".to_string() } else { host_path.display().to_string() };
        if outside {
            let message = format!("synced folder {host:?} is outside the project: kept with allow_outside = true");
            self.changed(section, node, message);
        }
        let value = sync_value(&host_text, &guest, readonly, outside);
        section.sync.push((guest, value));
    }

    /// `config.vm.provision KIND, options` or its block form.
    fn provision(&mut self, section: &mut Section, node: &Node, args: &[Node], block: Option<&lib_ruby_parser::nodes::Block>) {
        let kind = args.first().and_then(literal_string).unwrap_or_default();
        if kind == "file" && block.is_none() {
            return self.file_provision(section, node, &args[1..]);
        }
        if kind != "shell" {
            let hint = match kind.as_str() {
                "ansible" | "ansible_local" => ": run ansible-playbook from a shell step instead",
                "file" => ": write it as config.vm.provision \"file\", source: ..., destination: ...",
                _ => ": envy provisions with shell and file steps only",
            };
            return self.not_converted(section, node, format!("the {kind:?} provisioner is not converted{hint}"));
        }
        let mut settings = options(&args[1..]);
        if let Some(block) = block {
            let var = block_params(block).into_iter().next().unwrap_or_default();
            for statement in statements(block.body.as_deref()) {
                match statement {
                    Node::Send(s) if s.method_name.ends_with('=') && s.args.len() == 1 && root_var(statement) == Some(var.as_str()) => {
                        settings.push((s.method_name.trim_end_matches('=').to_string(), &s.args[0]));
                    }
                    other => {
                        let message = format!("`{}` in a shell provisioner block is not converted", self.snippet(other));
                        self.not_converted(section, other, message);
                    }
                }
            }
        }
        let mut action = None;
        let mut always = false;
        for (key, value) in settings {
            match key.as_str() {
                "inline" => match literal_string(value) {
                    Some(script) => action = Some(("shell", script)),
                    None => return self.not_converted(section, node, "the inline script is computed by Ruby (a variable or #{...}): write it out".into()),
                },
                "path" => match literal_string(value) {
                    Some(url) if url.contains("://") => {
                        return self.not_converted(section, node, format!("provision script {url} is a URL: download it into the project"))
                    }
                    Some(path) => action = Some(("script", normalize(&self.base.join(path)).display().to_string())),
                    None => return self.not_converted(section, node, "the script path is computed by Ruby".into()),
                },
                "run" => match literal_string(value).as_deref() {
                    Some("always") => always = true,
                    Some("once") => {}
                    Some("never") => return self.changed(section, node, "a provisioner with run: \"never\" is left out".into()),
                    _ => return self.not_converted(section, node, "the provisioner's run: is not \"once\", \"always\" or \"never\"".into()),
                },
                "privileged" if literal_bool(value) == Some(false) => {
                    self.changed(section, value, "privileged: false: envy runs provision steps as root".into())
                }
                "privileged" | "name" | "keep_color" | "sensitive" => {}
                other if SHELL_OPTIONS_THAT_MATTER.contains(&other) => {
                    let message = format!("shell provisioner option `{other}` has no Envfile equivalent, so the step is left out");
                    return self.not_converted(section, node, message);
                }
                other => {
                    let message = format!("shell provisioner option `{other}` is not kept");
                    self.changed(section, value, message);
                }
            }
        }
        let Some((key, text)) = action else {
            return self.not_converted(section, node, "a shell provisioner needs `inline` or `path`".into());
        };
        let step = match (key, always) {
            ("shell", false) => Value::String(text),
            _ => {
                let mut table = toml::Table::new();
                table.insert(key.into(), Value::String(text));
                if always {
                    table.insert("run".into(), Value::String("always".into()));
                }
                Value::Table(table)
            }
        };
        section.provision.push(step);
    }

    /// `config.vm.provision "file", source:, destination:` as a `{ file, to }` step.
    fn file_provision(&mut self, section: &mut Section, node: &Node, args: &[Node]) {
        let (mut source, mut destination) = (None, None);
        for (key, value) in options(args) {
            match (key.as_str(), literal_string(value)) {
                ("source", Some(s)) => source = Some(s),
                ("destination", Some(d)) => destination = Some(d),
                ("source" | "destination", None) => return self.not_converted(section, node, format!("the file provisioner's {key} is computed by Ruby")),
                ("run", _) => return self.not_converted(section, node, "run: on a file provisioner is not converted".into()),
                (other, _) => {
                    let message = format!("file provisioner option `{other}` is not kept");
                    self.changed(section, value, message);
                }
            }
        }
        let (Some(source), Some(destination)) = (source, destination) else {
            return self.not_converted(section, node, "a file provisioner needs `source` and `destination`".into());
        };
        if !destination.starts_with('/') {
            let message = format!("file destination {destination:?} is relative to the SSH user's home: write it as an absolute path");
            return self.not_converted(section, node, message);
        }
        self.changed(section, node, "the file provisioner's copy is made as root and owned by root:root (Vagrant's by the SSH user)".into());
        let mut table = toml::Table::new();
        table.insert("file".into(), Value::String(normalize(&self.base.join(&source)).display().to_string()));
        table.insert("to".into(), Value::String(destination));
        section.provision.push(Value::Table(table));
    }

    /// `config.vm.provider NAME do |p, override| ... end`.
    fn provider(&mut self, section: &mut Section, node: &Node, args: &[Node], block: Option<&lib_ruby_parser::nodes::Block>) {
        let name = args.first().and_then(literal_string).unwrap_or_default();
        let vm = VM_PROVIDERS.contains(&name.as_str());
        if name == "docker" {
            section.provider = Some("container");
        } else if !vm {
            return self.not_converted(section, node, format!("the {name:?} provider has no envy equivalent"));
        }
        let Some(block) = block else { return };
        let params = block_params(block);
        let var = params.first().cloned().unwrap_or_default();
        let override_var = params.get(1);
        for statement in statements(block.body.as_deref()) {
            if override_var.is_some_and(|o| root_var(statement) == Some(o.as_str())) {
                self.machine_statement(statement, override_var.map(String::as_str).unwrap_or_default(), section, None);
                continue;
            }
            match statement {
                Node::Send(s) if vm && root_var(statement) == Some(var.as_str()) && s.args.len() == 1 && matches!(s.method_name.as_str(), "memory=" | "cpus=") => {
                    match literal_int(&s.args[0]) {
                        Some(n) if s.method_name == "memory=" => section.memory = Some(n),
                        Some(n) => section.cpus = Some(n),
                        None => {
                            let message = format!("`{}`: the value is computed by Ruby", self.snippet(statement));
                            self.not_converted(section, statement, message);
                        }
                    }
                }
                Node::Send(s) if name == "docker" && s.method_name == "image=" => {
                    let image = s.args.first().and_then(literal_string).unwrap_or_default();
                    let message = format!("docker image {image:?}: envy runs boxes, not Docker images; set `box` to one (a catalog name or a URL with its sha256)");
                    self.not_converted(section, statement, message);
                }
                other => {
                    let message = format!("`{}` ({name} setting) has no Envfile equivalent", self.snippet(other));
                    self.not_converted(section, other, message);
                }
            }
        }
    }
}

/// Writes the Envfile: the configure block's settings in [defaults] (or in the one
/// machine when there is no define), and each define as [machine.NAME]. Vagrant merges
/// lists (folders, provisioners) from the outside in; the Envfile replaces them, so each
/// machine gets the merged list (forwards were handed out by `give_forwards_to_machines`).
fn render(top: &Section, machines: &[Section]) -> String {
    let mut out = String::from(
        "# Converted from a Vagrantfile by `envy init --from-vagrantfile`; docs/envfile.md has every key.\n\
         # Lines with TODO mark what was not converted. envy's machines are containers unless\n\
         # provider = \"qemu\" (a full VM, as Vagrant's were).\n",
    );
    let top_sync = top.sync.clone();
    let without_disabled = |sync: Vec<(String, Value)>, disabled: &[&String]| -> Vec<Value> {
        sync.into_iter().filter(|(guest, _)| !disabled.contains(&guest)).map(|(_, v)| v).collect()
    };
    if machines.is_empty() {
        out.push_str(&format!("\n[machine.{}]\n", top.name));
        let disabled: Vec<&String> = top.disabled_sync.iter().collect();
        let forward = top.forward.iter().map(|(_, f)| f.clone()).collect();
        let lists = [forward, without_disabled(top_sync, &disabled), top.provision.clone()];
        section_body(&mut out, top, true, Some(lists));
        return out;
    }
    out.push_str("\n[defaults]\n");
    section_body(&mut out, top, false, None);
    for machine in machines {
        out.push_str(&format!("\n[machine.{}]\n", machine.name));
        let disabled: Vec<&String> = top.disabled_sync.iter().chain(&machine.disabled_sync).collect();
        let sync = top_sync.iter().cloned().chain(machine.sync.iter().cloned()).collect();
        let merged = |outer: &[Value], own: &[Value]| outer.iter().chain(own).cloned().collect::<Vec<_>>();
        let lists = [
            machine.forward.iter().map(|(_, f)| f.clone()).collect(),
            without_disabled(sync, &disabled),
            merged(&top.provision, &machine.provision),
        ];
        section_body(&mut out, machine, top.box_name.is_none(), Some(lists));
    }
    out
}

/// The keys of one section. A box is a TODO when `box_needed` and the section sets
/// none; `lists` (forward, sync, provision) are written in machines only.
fn section_body(out: &mut String, section: &Section, box_needed: bool, lists: Option<[Vec<Value>; 3]>) {
    let mut comments = section.comments.clone();
    comments.sort_by_key(|(line, _)| *line);
    for (_, comment) in comments {
        out.push_str(&format!("# {comment}\n"));
    }
    match &section.box_name {
        Some((value, vagrant_box)) => {
            out.push_str(&format!("box = {}  # Vagrant's {vagrant_box}\n", Value::String(value.clone())))
        }
        None if box_needed => {
            out.push_str("# TODO: the Vagrantfile sets no box: set one (a catalog name such as debian-12, or a URL with its sha256)\n");
            out.push_str("box = \"TODO-box\"\n");
        }
        None => {}
    }
    let mut line = |key: &str, value: Value| out.push_str(&format!("{key} = {value}\n"));
    if let Some(provider) = section.provider {
        line("provider", Value::String(provider.into()));
    }
    if let Some(cpus) = section.cpus {
        line("cpus", Value::Integer(cpus));
    }
    if let Some(memory) = section.memory {
        line("memory", Value::String(format!("{memory}MiB")));
    }
    if let Some([forward, sync, provision]) = lists {
        list(out, "forward", &forward);
        list(out, "sync", &sync);
        list(out, "provision", &provision);
    }
}

/// One `sync` entry: the short string form where it can say it all.
fn sync_value(host: &str, guest: &str, readonly: bool, outside: bool) -> Value {
    if !outside && !host.contains(':') {
        return Value::String(format!("{host}:{guest}{}", if readonly { ":ro" } else { "" }));
    }
    let mut table = toml::Table::new();
    table.insert("host".into(), Value::String(host.into()));
    table.insert("guest".into(), Value::String(guest.into()));
    if readonly {
        table.insert("readonly".into(), Value::Boolean(true));
    }
    if outside {
        table.insert("allow_outside".into(), Value::Boolean(true));
    }
    Value::Table(table)
}

/// `key = [ ... ]`, one element a line (nothing when the list is empty).
fn list(out: &mut String, key: &str, values: &[Value]) {
    if values.is_empty() {
        return;
    }
    out.push_str(&format!("{key} = [\n"));
    for value in values {
        out.push_str(&format!("    {value},\n"));
    }
    out.push_str("]\n");
}

/// The statements of a body: a `begin` holds several, anything else is one.
fn statements(body: Option<&Node>) -> Vec<&Node> {
    match body {
        None => Vec::new(),
        Some(Node::Begin(b)) => b.statements.iter().collect(),
        Some(other) => vec![other],
    }
}

/// `Vagrant.configure(...)`.
fn is_configure(call: &Node) -> bool {
    matches!(call, Node::Send(s) if s.method_name == "configure"
        && matches!(s.recv.as_deref(), Some(Node::Const(c)) if c.name == "Vagrant"))
}

/// The names of a block's parameters (`|config|`, `|vb, override|`).
fn block_params(block: &lib_ruby_parser::nodes::Block) -> Vec<String> {
    let Some(Node::Args(args)) = block.args.as_deref() else { return Vec::new() };
    let mut names = Vec::new();
    for arg in &args.args {
        match arg {
            Node::Arg(a) => names.push(a.name.clone()),
            Node::Procarg0(p) => names.extend(p.args.iter().filter_map(|a| match a {
                Node::Arg(a) => Some(a.name.clone()),
                _ => None,
            })),
            _ => {}
        }
    }
    names
}

/// `VAR.vm.METHOD args` → (METHOD, args).
fn vm_call<'n>(node: &'n Node, var: &str) -> Option<(&'n str, &'n [Node])> {
    let Node::Send(call) = node else { return None };
    let Some(Node::Send(vm)) = call.recv.as_deref() else { return None };
    let Some(Node::Lvar(root)) = vm.recv.as_deref() else { return None };
    (vm.method_name == "vm" && vm.args.is_empty() && root.name == var).then_some((call.method_name.as_str(), call.args.as_slice()))
}

/// The local variable a chain of calls starts from (`config` in `config.ssh.x = 1`).
fn root_var(node: &Node) -> Option<&str> {
    match node {
        Node::Send(s) => root_var(s.recv.as_deref()?),
        Node::Lvar(l) => Some(&l.name),
        _ => None,
    }
}

/// Whether a call chain passes through `method` (`config.ssh.forward_agent = true`).
fn chain_has(node: &Node, method: &str) -> bool {
    match node {
        Node::Send(s) => s.method_name == method || s.recv.as_deref().is_some_and(|r| chain_has(r, method)),
        _ => false,
    }
}

/// The `key: value` options of a call (keyword arguments or a trailing hash).
fn options(args: &[Node]) -> Vec<(String, &Node)> {
    let pairs = args.iter().flat_map(|a| match a {
        Node::Kwargs(k) => k.pairs.iter().collect::<Vec<_>>(),
        Node::Hash(h) => h.pairs.iter().collect(),
        _ => Vec::new(),
    });
    pairs
        .filter_map(|p| match p {
            Node::Pair(pair) => literal_string(&pair.key).map(|k| (k, &*pair.value)),
            _ => None,
        })
        .collect()
}

/// A string or symbol written out in full: no `#{...}` for Ruby to fill in.
fn literal_string(node: &Node) -> Option<String> {
    match node {
        Node::Str(s) => s.value.to_string().ok(),
        Node::Sym(s) => s.name.to_string().ok(),
        Node::Dstr(d) => d.parts.iter().map(literal_string).collect(),
        Node::Heredoc(h) => h.parts.iter().map(literal_string).collect(),
        _ => None,
    }
}

/// An integer, or a string holding one (`vb.memory = "2048"`).
fn literal_int(node: &Node) -> Option<i64> {
    match node {
        Node::Int(i) => i.value.replace('_', "").parse().ok(),
        other => literal_string(other)?.trim().parse().ok(),
    }
}

fn literal_bool(node: &Node) -> Option<bool> {
    match node {
        Node::True(_) => Some(true),
        Node::False(_) => Some(false),
        _ => None,
    }
}

/// A Vagrant name as an envy machine name: lowercase, with '-' for anything else.
fn machine_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .to_string();
    if !out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out.insert_str(0, "m-");
    }
    out.truncate(32);
    out
}

fn valid_machine_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 32 && name.starts_with(|c: char| c.is_ascii_lowercase())
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Removes `.` and resolves `..` lexically, keeping leading `..` of a relative path.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
