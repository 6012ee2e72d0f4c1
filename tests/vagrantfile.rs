//! `envy init --from-vagrantfile` on Vagrantfiles shaped like real ones: each written
//! Envfile is read back with envy's own parser and checked key by key, what was not
//! converted is reported with its Vagrantfile line, and one result is brought up.

use envy::envfile::{self, Envfile, MachineSpec, ProvisionAction};
use envy::model::{BoxRef, Protocol};

use crate::common::{self, need, require, TestEnv};

/// A project holding `vagrantfile` (and empty `files`), converted by the real binary.
struct Converted {
    env: TestEnv,
    vagrantfile: String,
    /// The Envfile's text.
    text: String,
    envfile: Envfile,
    /// What `envy init` printed: the notes.
    stdout: String,
}

fn convert(vagrantfile: &str, files: &[&str]) -> Converted {
    let env = TestEnv::new();
    std::fs::write(env.project.join("Vagrantfile"), vagrantfile).unwrap();
    for file in files {
        let path = env.project.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "echo hi\n").unwrap();
    }
    let out = env.envy().args(["init", "--from-vagrantfile"]).output().unwrap();
    assert!(out.status.success(), "envy init failed: {}", String::from_utf8_lossy(&out.stderr));
    let path = env.project.join("Envfile");
    let text = std::fs::read_to_string(&path).unwrap();
    let envfile = envfile::load(&path, envy::provider::container::KIND).unwrap_or_else(|e| panic!("{e}\n{text}"));
    Converted { env, vagrantfile: vagrantfile.to_string(), text, envfile, stdout: String::from_utf8(out.stdout).unwrap() }
}

impl Converted {
    fn machine(&self, name: &str) -> &MachineSpec {
        self.envfile.machine(name).unwrap_or_else(|| panic!("no machine {name} in\n{}", self.text))
    }

    fn names(&self) -> Vec<&str> {
        self.envfile.machines.iter().map(|m| m.name.as_str()).collect()
    }

    /// The 1-based line of the Vagrantfile holding `needle`.
    fn line(&self, needle: &str) -> usize {
        self.vagrantfile.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle:?} is not in the Vagrantfile")) + 1
    }

    /// The line holding `needle` is listed under "not converted" with `fragment`, and
    /// the Envfile carries a TODO comment for it.
    fn not_converted(&self, needle: &str, fragment: &str) {
        let line = self.line(needle);
        let listed = self.stdout.split_once("not converted (marked TODO").map_or("", |(_, after)| after);
        assert!(
            listed.lines().any(|l| l.contains(&format!("Vagrantfile:{line}: ")) && l.contains(fragment)),
            "line {line} ({fragment}) is not listed as not converted:\n{}",
            self.stdout
        );
        let comment = format!("# TODO (Vagrantfile line {line}, not converted): ");
        assert!(self.text.lines().any(|l| l.starts_with(&comment) && l.contains(fragment)), "no TODO for line {line} in\n{}", self.text);
    }

    /// The line holding `needle` is listed as converted with a difference.
    fn changed(&self, needle: &str, fragment: &str) {
        let line = self.line(needle);
        let listed = self.stdout.split_once("not converted (marked TODO").map_or(self.stdout.as_str(), |(before, _)| before);
        assert!(
            listed.lines().any(|l| l.contains(&format!("Vagrantfile:{line}: ")) && l.contains(fragment)),
            "line {line} ({fragment}) is not listed as changed:\n{}",
            self.stdout
        );
        assert!(self.text.contains(&format!("# Vagrantfile line {line}: ")), "no comment for line {line} in\n{}", self.text);
    }

    fn no_notes(&self) {
        assert!(self.stdout.trim().is_empty(), "unexpected notes:\n{}", self.stdout);
    }
}

fn catalog(name: &str) -> BoxRef {
    BoxRef::Catalog { name: name.into(), version: None }
}

fn shell(cmd: &str) -> ProvisionAction {
    ProvisionAction::Shell(cmd.into())
}

fn guest_paths(m: &MachineSpec) -> Vec<&str> {
    m.sync.iter().map(|s| s.guest.as_str()).collect()
}

fn forwards(m: &MachineSpec) -> Vec<(String, u16, u16, Protocol, bool)> {
    m.forwards.iter().map(|f| (f.host_ip.to_string(), f.host_port, f.guest_port, f.protocol, f.auto)).collect()
}

#[test]
fn a_single_machine_is_named_after_its_hostname() {
    let c = convert(
        r#"# -*- mode: ruby -*-
# vi: set ft=ruby :
Vagrant.configure("2") do |config|
  config.vm.box = "debian/bookworm64"
  config.vm.hostname = "blog"
  config.vm.network "forwarded_port", guest: 4000, host: 4000
end
"#,
        &[],
    );
    c.no_notes();
    assert_eq!(c.names(), ["blog"]);
    let m = c.machine("blog");
    assert_eq!(m.box_ref, catalog("debian-12"));
    assert_eq!(m.provider, envy::provider::container::KIND);
    assert_eq!((m.cpus, m.memory), (2, 1 << 30), "envy's defaults where the Vagrantfile sets none");
    assert_eq!(forwards(m), [("127.0.0.1".into(), 4000, 4000, Protocol::Tcp, false)]);
    // Vagrant's default synced folder.
    assert_eq!(guest_paths(m), ["/vagrant"]);
    assert_eq!(m.sync[0].host, c.envfile.project_dir);
    assert!(m.provision.is_empty());
}

#[test]
fn defines_become_machines_with_the_outer_lists_merged_in() {
    let c = convert(
        r#"Vagrant.configure("2") do |config|
  config.vm.box = "generic/debian12"
  config.vm.provision "shell", inline: "apt-get update"
  config.vm.network "forwarded_port", guest: 22, host: 2222, auto_correct: true

  config.vm.define "web", primary: true do |web|
    web.vm.hostname = "web"
    web.vm.network "forwarded_port", guest: 80, host: 8080
    web.vm.provision "shell", inline: "apt-get install -y nginx"
  end

  config.vm.define :db_server do |db|
    db.vm.hostname = "database"
    db.vm.provider "virtualbox" do |vb|
      vb.memory = 2048
    end
  end
end
"#,
        &[],
    );
    assert_eq!(c.names(), ["web", "db-server"]);
    let web = c.machine("web");
    assert_eq!(web.box_ref, catalog("debian-12"));
    assert_eq!(
        forwards(web),
        [("127.0.0.1".into(), 2222, 22, Protocol::Tcp, true), ("127.0.0.1".into(), 8080, 80, Protocol::Tcp, false)],
        "the outer forward first"
    );
    let steps: Vec<_> = web.provision.iter().map(|p| (p.action.clone(), p.always)).collect();
    assert_eq!(steps, [(shell("apt-get update"), false), (shell("apt-get install -y nginx"), false)]);
    assert_eq!(guest_paths(web), ["/vagrant"]);
    let db = c.machine("db-server");
    assert_eq!(db.box_ref, catalog("debian-12"));
    assert_eq!(db.memory, 2048 << 20);
    assert!(db.forwards.is_empty(), "host port 2222 is web's");
    c.not_converted("host: 2222", "host port 2222 is forwarded to an earlier machine already: give machine db-server a host port of its own");
    assert_eq!(db.provision.len(), 1, "the outer provisioner runs in every machine");
    c.changed("define \"web\"", "primary");
    c.changed(":db_server", "named db-server");
    c.changed("\"database\"", "hostname \"database\" is not kept: a machine's hostname is its name, db-server");
    assert!(!c.stdout.contains(&format!("Vagrantfile:{}:", c.line("web.vm.hostname"))), "web's hostname is its name");
}

#[test]
fn forwarded_ports_keep_address_protocol_and_auto_correct() {
    let c = convert(
        r#"Vagrant.configure("2") do |config|
  config.vm.box = "debian/bookworm64"
  config.vm.hostname = "api.internal"
  config.vm.network "forwarded_port", guest: 3000, host: 3000, auto_correct: true
  config.vm.network :forwarded_port, guest: 53, host: 5353, protocol: "udp", id: "dns"
  config.vm.network "forwarded_port", guest: 5432, host: 15432, host_ip: "127.0.0.1"
  config.vm.network "forwarded_port", guest: 9000, host: 9000, host_ip: "0.0.0.0", guest_ip: "10.0.2.15"
  config.vm.network "forwarded_port", guest: 8000, host: PORT
end
"#,
        &[],
    );
    let m = c.machine("api");
    c.changed("api.internal", "hostname \"api.internal\" is not kept: a machine's hostname is its name, api");
    assert_eq!(
        forwards(m),
        [
            ("127.0.0.1".into(), 3000, 3000, Protocol::Tcp, true),
            ("127.0.0.1".into(), 5353, 53, Protocol::Udp, false),
            ("127.0.0.1".into(), 15432, 5432, Protocol::Tcp, false),
            ("0.0.0.0".into(), 9000, 9000, Protocol::Tcp, false),
        ]
    );
    c.changed("guest_ip", "guest_ip");
    c.not_converted("host: PORT", "computed by Ruby");
}

#[test]
fn synced_folders_keep_read_only_and_note_what_differs() {
    let c = convert(
        r#"Vagrant.configure("2") do |config|
  config.vm.box = "debian/bookworm64"
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.synced_folder "src/", "/srv/app", type: "nfs", create: true
  config.vm.synced_folder "docs", "/srv/docs", mount_options: ["ro"]
  config.vm.synced_folder "../shared", "/shared", owner: "www-data"
  config.vm.synced_folder "~/cache", "/cache"
end
"#,
        &["src/main.rs", "docs/index.md"],
    );
    let m = c.machine("default");
    assert_eq!(guest_paths(m), ["/srv/app", "/srv/docs", "/shared"], "the default /vagrant is disabled");
    let project = &c.envfile.project_dir;
    assert_eq!(m.sync[0].host, project.join("src"));
    assert!(!m.sync[0].readonly);
    assert_eq!(m.sync[1].host, project.join("docs"));
    assert!(m.sync[1].readonly);
    assert_eq!(m.sync[2].host, project.parent().unwrap().join("shared"));
    c.changed("type: \"nfs\"", "type nfs");
    c.changed("../shared", "outside the project");
    c.changed("owner:", "`owner` is not kept");
    c.not_converted("~/cache", "write the host path out in full");
}

#[test]
fn inline_and_path_provisioners_keep_their_order_and_run_always() {
    let c = convert(
        r#"$script = <<-SCRIPT
echo computed
SCRIPT

Vagrant.configure("2") do |config|
  config.vm.box = "debian/bookworm64"
  config.vm.provision "shell", inline: <<-SHELL
    apt-get update
    apt-get install -y postgresql
  SHELL
  config.vm.provision "shell", path: "scripts/bootstrap.sh"
  config.vm.provision "shell", inline: "systemctl restart app", run: "always"
  config.vm.provision "shell", path: "scripts/seed.sh", run: "always", privileged: false
  config.vm.provision "shell", inline: "echo never", run: "never"
  config.vm.provision "shell", path: "scripts/user.sh", args: ["alice"]
  config.vm.provision :shell do |s|
    s.inline = "echo from a block"
  end
  config.vm.provision "shell", inline: $script
end
"#,
        &["scripts/bootstrap.sh", "scripts/seed.sh", "scripts/user.sh"],
    );
    let m = c.machine("default");
    let project = &c.envfile.project_dir;
    let steps: Vec<_> = m.provision.iter().map(|p| (p.action.clone(), p.always)).collect();
    assert_eq!(
        steps,
        [
            (shell("    apt-get update\n    apt-get install -y postgresql\n"), false),
            (ProvisionAction::Script(project.join("scripts/bootstrap.sh")), false),
            (shell("systemctl restart app"), true),
            (ProvisionAction::Script(project.join("scripts/seed.sh")), true),
            (shell("echo from a block"), false),
        ]
    );
    c.changed("privileged: false", "envy runs provision steps as root");
    c.changed("run: \"never\"", "left out");
    c.not_converted("args: [\"alice\"]", "`args`");
    c.not_converted("inline: $script", "computed by Ruby");
    c.not_converted("$script = <<-SCRIPT", "outside the configure block");
}

#[test]
fn provider_blocks_give_cpus_and_memory_and_override_reaches_the_machine() {
    let c = convert(
        r#"Vagrant.configure("2") do |config|
  config.vm.provider "virtualbox" do |vb, override|
    override.vm.box = "debian/bookworm64"
    vb.name = "my-vm"
    vb.memory = "4096"
    vb.cpus = 4
    vb.customize ["modifyvm", :id, "--ioapic", "on"]
  end
  config.vm.define "worker" do |w|
    w.vm.provider :libvirt do |lv, override|
      lv.memory = 1536
      lv.cpus = 1
      lv.nested = true
      override.vm.network "forwarded_port", guest: 22, host: 2200
    end
  end
  config.vm.define "api"
end
"#,
        &[],
    );
    assert_eq!(c.names(), ["worker", "api"]);
    let worker = c.machine("worker");
    assert_eq!((worker.cpus, worker.memory), (1, 1536 << 20), "the machine's own provider block wins");
    assert_eq!(forwards(worker), [("127.0.0.1".into(), 2200, 22, Protocol::Tcp, false)]);
    let api = c.machine("api");
    assert_eq!((api.cpus, api.memory), (4, 4096 << 20), "[defaults] from the outer provider block");
    assert_eq!(api.box_ref, catalog("debian-12"), "override.vm.box sets the box");
    assert!(api.forwards.is_empty());
    c.not_converted("vb.name", "virtualbox setting");
    c.not_converted("vb.customize", "virtualbox setting");
    c.not_converted("lv.nested", "libvirt setting");
}

/// The Vagrantfile that `a_converted_docker_project_comes_up_as_a_container` brings up.
const DOCKER_VAGRANTFILE: &str = r#"Vagrant.configure("2") do |config|
  config.vm.box = "debian/bookworm64"
  config.vm.provider :docker do |d|
    d.image = "nginx:latest"
  end
  config.vm.synced_folder "site", "/srv/site"
  config.vm.provision "shell", inline: "echo provisioned > /root/once"
  config.vm.provision "shell", inline: "echo up >> /root/ups", run: "always"
end
"#;

#[test]
fn the_docker_provider_becomes_the_container_provider() {
    let c = convert(DOCKER_VAGRANTFILE, &["site/index.html"]);
    let m = c.machine("default");
    assert_eq!(m.provider, envy::provider::container::KIND);
    assert_eq!(m.box_ref, catalog("debian-12"));
    assert_eq!(guest_paths(m), ["/vagrant", "/srv/site"]);
    assert_eq!(m.provision.iter().map(|p| p.always).collect::<Vec<_>>(), [false, true]);
    c.not_converted("d.image", "envy runs boxes, not Docker images");
}

#[test]
fn loops_variables_plugins_and_unknown_boxes_are_listed_with_their_lines() {
    let c = convert(
        r#"require 'yaml'
NODES = 3

Vagrant.configure("2") do |config|
  config.vagrant.plugins = ["vagrant-hostmanager"]
  config.vm.box = "ubuntu/jammy64"
  config.vm.box_version = "20240101.0.0"
  config.ssh.insert_key = false
  memory = 1024
  if ENV["CI"]
    config.vm.provision "shell", inline: "echo ci"
  end
  config.vm.network "private_network", ip: "192.168.56.10"
  config.vm.network "public_network", bridge: "en0"
  config.vm.provision "ansible_local" do |ansible|
    ansible.playbook = "site.yml"
  end
  config.vm.provision "file", source: "a", destination: "/tmp/a"
  (1..NODES).each do |i|
    config.vm.define "node-#{i}" do |node|
      node.vm.hostname = "node-#{i}"
    end
  end
  config.hostmanager.enabled = true
end
"#,
        &[],
    );
    let m = c.machine("default");
    assert_eq!(m.box_ref, catalog("TODO-ubuntu-jammy64"));
    c.not_converted("ubuntu/jammy64", "envy's catalog has no box for Vagrant's \"ubuntu/jammy64\"");
    c.not_converted("require 'yaml'", "outside the configure block");
    c.not_converted("NODES = 3", "outside the configure block");
    c.not_converted("config.vagrant.plugins", "Vagrant plugins");
    c.changed("box_version", "Envfile.lock");
    c.not_converted("config.ssh.insert_key", "envy manages SSH");
    c.not_converted("memory = 1024", "Ruby variable");
    c.not_converted("if ENV", "condition");
    c.changed("private_network", "reach each other by name");
    c.not_converted("public_network", "never bridges");
    c.not_converted("ansible_local", "ansible-playbook");
    c.changed("\"file\"", "owned by root:root");
    c.not_converted("(1..NODES).each", "a loop");
    c.not_converted("config.hostmanager", "no Envfile equivalent");
    assert!(m.forwards.is_empty());
    assert_eq!(
        m.provision.iter().map(|p| p.action.clone()).collect::<Vec<_>>(),
        [ProvisionAction::File { from: c.envfile.project_dir.join("a"), to: "/tmp/a".into(), mode: None }]
    );
}

#[test]
fn a_vagrantfile_in_another_folder_keeps_its_paths() {
    let env = TestEnv::new();
    let vagrant_dir = env.project.join("vagrant");
    std::fs::create_dir_all(vagrant_dir.join("scripts")).unwrap();
    std::fs::write(vagrant_dir.join("scripts/setup.sh"), "true\n").unwrap();
    std::fs::write(
        vagrant_dir.join("Vagrantfile"),
        "Vagrant.configure(\"2\") do |config|\n  config.vm.box = \"debian/bookworm64\"\n  config.vm.provision \"shell\", path: \"scripts/setup.sh\"\nend\n",
    )
    .unwrap();
    env.envy().args(["init", "--from-vagrantfile", "vagrant/Vagrantfile"]).assert().success();
    let envfile = envfile::load(&env.project.join("Envfile"), envy::provider::container::KIND).unwrap();
    let m = &envfile.machines[0];
    assert_eq!(m.sync[0].host, env.project.join("vagrant"), "/vagrant is the Vagrantfile's folder");
    assert_eq!(m.provision[0].action, ProvisionAction::Script(env.project.join("vagrant/scripts/setup.sh")));
}

#[test]
fn broken_ruby_is_refused_with_its_line_and_nothing_is_written() {
    let env = TestEnv::new();
    std::fs::write(env.project.join("Vagrantfile"), "Vagrant.configure(\"2\") do |config|\n  config.vm.box = \"x\"\n  config.vm.network \"forwarded_port\", guest: 80,\n").unwrap();
    let out = env.envy().args(["init", "--from-vagrantfile"]).assert().code(3).get_output().clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("Vagrantfile:4: "), "{stderr}");
    assert!(stderr.contains("fix the Ruby"), "{stderr}");
    assert!(!env.project.join("Envfile").exists());
}

#[test]
fn a_vagrantfile_without_configure_or_at_all_is_refused_and_nothing_is_written() {
    let env = TestEnv::new();
    std::fs::write(env.project.join("Vagrantfile"), "puts 'hello'\n").unwrap();
    let out = env.envy().args(["init", "--from-vagrantfile"]).assert().code(3).get_output().clone();
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no `Vagrant.configure(\"2\") do |config| ... end` block"));
    assert!(!env.project.join("Envfile").exists());

    let out = env.envy().args(["init", "--from-vagrantfile", "nowhere/Vagrantfile"]).assert().code(3).get_output().clone();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!env.project.join("Envfile").exists());

    // An Envfile already there is kept.
    std::fs::write(env.project.join("Envfile"), "# mine\n").unwrap();
    std::fs::write(env.project.join("Vagrantfile"), "Vagrant.configure(\"2\") do |c|\n  c.vm.box = \"debian/bookworm64\"\nend\n").unwrap();
    env.envy().args(["init", "--from-vagrantfile"]).assert().failure();
    assert_eq!(std::fs::read_to_string(env.project.join("Envfile")).unwrap(), "# mine\n");
}

#[test]
fn a_converted_docker_project_comes_up_as_a_container() {
    require!(need::CONTAINERS);
    let c = convert(DOCKER_VAGRANTFILE, &["site/index.html"]);
    let env = &c.env;
    // The catalog name the conversion chose is served by a busybox box added under it.
    let (box_path, _) = common::build_container_box(env, "debian-12");
    env.envy().args(["box", "add"]).arg(&box_path).assert().success();
    let _guard = common::DestroyOnDrop(env);
    env.envy().arg("up").assert().success();
    let cat = |path: &str| -> String {
        let out = env.envy().args(["exec", "--", "cat", path]).output().unwrap();
        assert!(out.status.success(), "cat {path}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(cat("/srv/site/index.html"), "echo hi\n");
    assert_eq!(cat("/vagrant/Vagrantfile"), DOCKER_VAGRANTFILE);
    assert_eq!(cat("/root/once"), "provisioned\n");
    assert_eq!(cat("/root/ups"), "up\n");
    // A second start runs only the run = "always" step again.
    env.envy().arg("halt").assert().success();
    env.envy().arg("up").assert().success();
    assert_eq!(cat("/root/ups"), "up\nup\n");
    assert_eq!(cat("/root/once"), "provisioned\n");
}
