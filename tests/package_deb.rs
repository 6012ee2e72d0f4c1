//! The Debian package: scripts/package-deb.sh builds it with cargo-deb around the
//! test's own envy binary (no release build in the tests), dpkg installs it into a
//! clean root in a temp dir, the installed envy runs from there, and dpkg removes it
//! leaving nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{require, Need};

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Every file and symlink under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_deb_installs_into_a_clean_root_runs_and_removes_cleanly() {
    // dpkg installs files owned by root.
    require!([Need::Root, Need::Tool("dpkg", "dpkg"), Need::Tool("dpkg-deb", "dpkg"), Need::Tool("gzip", "gzip")]);
    let has_cargo_deb = Command::new("cargo").args(["deb", "--version"]).output().is_ok_and(|o| o.status.success());
    assert!(has_cargo_deb, "this test needs cargo-deb: cargo install --locked cargo-deb (scripts/test.sh does)");

    let tmp = tempfile::Builder::new().prefix("envy-deb-").tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = Command::new("bash")
        .arg(repo.join("scripts/package-deb.sh"))
        .arg("--fast")
        .arg(&out_dir)
        .env("ENVY_BIN", assert_cmd::cargo::cargo_bin("envy"))
        .output()
        .unwrap();
    ok(built, "scripts/package-deb.sh");
    let debs: Vec<PathBuf> = std::fs::read_dir(&out_dir).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(debs.len(), 1, "one package: {debs:?}");
    let deb = &debs[0];

    // What it declares and holds.
    let depends = ok(Command::new("dpkg-deb").args(["-f"]).arg(deb).arg("Depends").output().unwrap(), "dpkg-deb -f");
    for package in ["runc", "qemu-system-x86", "qemu-utils", "slirp4netns", "openssh-client", "e2fsprogs", "libc6"] {
        assert!(depends.split(',').any(|d| d.trim().starts_with(package)), "Depends lacks {package}: {depends}");
    }
    let contents = ok(Command::new("dpkg-deb").arg("-c").arg(deb).output().unwrap(), "dpkg-deb -c");
    let installed = [
        "usr/bin/envy",
        "usr/share/bash-completion/completions/envy",
        "usr/share/zsh/vendor-completions/_envy",
        "usr/share/fish/vendor_completions.d/envy.fish",
        "usr/share/man/man1/envy.1.gz",
    ];
    // Entry names, with or without tar's leading "./" (cargo-deb versions differ).
    let entries: Vec<&str> = contents.lines().filter_map(|l| l.split_whitespace().last()).map(|e| e.trim_start_matches("./")).collect();
    for path in installed {
        assert!(entries.contains(&path), "the package lacks {path}:\n{contents}");
    }
    // This host has every dependency: dpkg's own check against its database, changing nothing.
    ok(Command::new("dpkg").args(["--dry-run", "-i"]).arg(deb).output().unwrap(), "dpkg --dry-run -i");

    // A clean root: an empty dpkg database of its own. Its dependencies live on the host,
    // not in the root, hence --force-depends there (the dry run above checked them).
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let before = files_under(&root);
    let dpkg = |args: &[&str]| Command::new("dpkg").arg(format!("--root={}", root.display())).args(args).output().unwrap();
    ok(dpkg(&["--force-depends", "--force-script-chrootless", "-i", &deb.display().to_string()]), "dpkg -i");
    for path in installed {
        assert!(root.join(path).is_file(), "{path} is not installed");
    }

    let envy = root.join("usr/bin/envy");
    let home = tmp.path().join("home");
    let run = |args: &[&str]| Command::new(&envy).args(args).env("ENVY_HOME", &home).env("CI", "1").output().unwrap();
    let version = ok(run(&["--version"]), "envy --version");
    assert_eq!(version, format!("envy {}\n", env!("CARGO_PKG_VERSION")));
    let doctor = run(&["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout)
        .unwrap_or_else(|e| panic!("envy doctor --json is not JSON ({e}): {}", String::from_utf8_lossy(&doctor.stdout)));
    assert!(report["checks"].as_array().is_some_and(|c| !c.is_empty()), "{report}");
    let completions = ok(run(&["completions", "bash"]), "envy completions bash");
    assert_eq!(completions, std::fs::read_to_string(root.join(installed[1])).unwrap(), "the installed completions are the binary's");
    let man = ok(Command::new("gzip").arg("-dc").arg(root.join(installed[4])).output().unwrap(), "gzip -dc");
    assert!(man.contains(".TH envy 1"), "{man}");

    ok(dpkg(&["--force-script-chrootless", "--purge", "envy"]), "dpkg --purge");
    let left: Vec<String> = files_under(&root).into_iter().filter(|f| !before.contains(f) && !f.starts_with("var/lib/dpkg/")).collect();
    assert_eq!(left, Vec::<String>::new(), "dpkg --purge left files behind");
    assert!(!dpkg(&["-s", "envy"]).status.success(), "dpkg still lists envy");
}
