//! A real OCI registry for tests (Debian's docker-registry, the CNCF distribution
//! registry) on a free 127.0.0.1 port with its own storage, optionally behind htpasswd;
//! and images made by the real tools: umoci builds OCI layouts, skopeo pushes them.
//! Tests using it require `REGISTRY` (and `WITH_PASSWORDS` or `WITH_TOKENS`).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, Need};

/// The registry, and the tools that make and push images, with busybox for their rootfs.
pub const REGISTRY: &[Need] = &[
    Need::Tool("docker-registry", "docker-registry"),
    Need::Tool("umoci", "umoci"),
    Need::Tool("skopeo", "skopeo"),
    Need::Tool("busybox", "busybox-static"),
];
/// A registry behind htpasswd (`Registry::start` with credentials).
pub const WITH_PASSWORDS: &[Need] = &[Need::Tool("htpasswd", "apache2-utils")];
/// A registry behind Bearer tokens (`Registry::start_with_tokens`).
pub const WITH_TOKENS: &[Need] = &[Need::Tool("openssl", "openssl")];

/// A running registry; killed when dropped.
pub struct Registry {
    child: Child,
    pub port: u16,
    /// The registry's storage root (blobs under docker/registry/v2/blobs).
    pub storage: PathBuf,
    /// `user:password` when the registry wants them.
    pub creds: Option<String>,
    /// The token service of a registry behind Bearer auth.
    pub tokens: Option<TokenServer>,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; with `creds` (`user:password`) it asks for Basic auth
    /// checked against an htpasswd file (bcrypt, made by `htpasswd -B`).
    pub fn start(creds: Option<&str>) -> Registry {
        Registry::launch(creds, false)
    }

    /// Starts a registry behind Bearer auth: its challenge names a token service (a
    /// small server here) that gives anyone a token for `team/app`, an RS256 JWT made
    /// with openssl under a self-signed certificate the registry trusts.
    pub fn start_with_tokens() -> Registry {
        Registry::launch(None, true)
    }

    fn launch(creds: Option<&str>, tokens: bool) -> Registry {
        let dir = tempfile::Builder::new().prefix("envy-registry-").tempdir().unwrap();
        let storage = dir.path().join("storage");
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        let tokens = tokens.then(|| {
            let server = TokenServer::start(dir.path());
            config.push_str(&format!(
                "auth:\n  token: {{realm: \"http://127.0.0.1:{}/token\", service: envy-test, issuer: envy-test-issuer, rootcertbundle: {}}}\n",
                server.port,
                dir.path().join("cert.pem").display()
            ));
            server
        });
        if let Some(creds) = creds {
            let (user, password) = creds.split_once(':').unwrap();
            let out = Command::new("htpasswd").args(["-Bbn", user, password]).output().unwrap();
            assert!(out.status.success());
            std::fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
            config.push_str(&format!("auth:\n  htpasswd: {{realm: envy-test, path: {}}}\n", dir.path().join("htpasswd").display()));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "docker-registry did not listen on 127.0.0.1:{port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { child, port, storage, creds: creds.map(String::from), tokens, _dir: dir }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes `layout:tag` (an OCI layout) to `repo:dest_tag` with skopeo; `extra` are
    /// more skopeo flags (`--all`, `--dest-compress-format zstd`).
    pub fn push(&self, layout: &Path, tag: &str, repo_tag: &str, extra: &[&str]) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]).args(extra);
        if let Some(c) = &self.creds {
            cmd.args(["--dest-creds", c]);
        }
        let out = cmd
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo_tag}", self.host()))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The file holding a blob in the registry's storage.
    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.storage.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs umoci with `args`, panicking with its stderr on failure.
pub fn umoci(args: &[&str]) {
    let out = Command::new("umoci").args(args).output().unwrap();
    assert!(out.status.success(), "umoci {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// An OCI layout at `layout` whose `tag` is one layer holding the busybox test rootfs
/// (made with `umoci new` + `umoci raw add-layer`), with `config` umoci config flags.
pub fn busybox_image(layout: &Path, tag: &str, config: &[&str]) {
    let work = layout.with_extension("work");
    std::fs::create_dir_all(&work).unwrap();
    if !layout.join("index.json").exists() {
        umoci(&["init", "--layout", &layout.display().to_string()]);
    }
    let image = format!("{}:{tag}", layout.display());
    umoci(&["new", "--image", &image]);
    let rootfs = work.join(format!("{tag}-rootfs"));
    super::busybox_rootfs(&rootfs);
    let tar = work.join(format!("{tag}-base.tar"));
    let out = Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".").output().unwrap();
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    umoci(&["raw", "add-layer", "--image", &image, &tar.display().to_string()]);
    if !config.is_empty() {
        let mut args = vec!["config", "--image", &image];
        args.extend_from_slice(config);
        umoci(&args);
    }
}

/// Appends a layer made from `entries` (built with the tar crate, so a test can write
/// whiteouts and hostile names) to `layout:tag`, as `new_tag`.
pub fn add_layer(layout: &Path, tag: &str, new_tag: &str, tar_bytes: &[u8]) {
    let tar = layout.with_extension(format!("{new_tag}.layer.tar"));
    std::fs::write(&tar, tar_bytes).unwrap();
    add_layer_tar(layout, tag, new_tag, &tar);
}

/// Appends the uncompressed layer tar at `tar` to `layout:tag`, as `new_tag`.
pub fn add_layer_tar(layout: &Path, tag: &str, new_tag: &str, tar: &Path) {
    umoci(&[
        "raw",
        "add-layer",
        "--image",
        &format!("{}:{tag}", layout.display()),
        "--tag",
        new_tag,
        &tar.display().to_string(),
    ]);
}

fn owned_by_root(h: &mut tar::Header) {
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
}

/// A tar stream builder for hand-made layers.
pub struct LayerTar(tar::Builder<Vec<u8>>);

impl LayerTar {
    pub fn new() -> LayerTar {
        LayerTar(tar::Builder::new(Vec::new()))
    }
    pub fn file(mut self, path: &str, body: &[u8]) -> LayerTar {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        owned_by_root(&mut h);
        self.0.append_data(&mut h, path, body).unwrap();
        self
    }
    pub fn dir(mut self, path: &str) -> LayerTar {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Directory);
        owned_by_root(&mut h);
        self.0.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }
    pub fn symlink(mut self, path: &str, target: &str) -> LayerTar {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_entry_type(tar::EntryType::Symlink);
        owned_by_root(&mut h);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    /// A file whose name is written into the header as is (the tar crate refuses `..`).
    pub fn raw_file(mut self, name: &str, body: &[u8]) -> LayerTar {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        owned_by_root(&mut h);
        h.set_cksum();
        self.0.append(&h, body).unwrap();
        self
    }
    pub fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// A token service for Bearer auth: answers every GET with the same token and records
/// what each request carried (its query and Authorization header).
pub struct TokenServer {
    pub port: u16,
    /// (request line, Authorization header or "") of every request.
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl TokenServer {
    fn start(dir: &Path) -> TokenServer {
        use base64::Engine as _;
        use std::io::{BufRead, BufReader, Write};
        let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=envy-test-tokens", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(made.status.success(), "openssl req: {}", String::from_utf8_lossy(&made.stderr));
        let der = Command::new("openssl").args(["x509", "-outform", "DER", "-in"]).arg(&cert).output().unwrap().stdout;
        let b64 = base64::engine::general_purpose::STANDARD;
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "x5c": [b64.encode(&der)] });
        let claims = serde_json::json!({
            "iss": "envy-test-issuer", "sub": "", "aud": "envy-test", "jti": "envy-test",
            "exp": now + 3600, "nbf": now - 60, "iat": now - 60,
            "access": [{ "type": "repository", "name": "team/app", "actions": ["pull", "push"] }],
        });
        let signing_input = format!("{}.{}", url.encode(header.to_string()), url.encode(claims.to_string()));
        let mut sign = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        sign.stdin.take().unwrap().write_all(signing_input.as_bytes()).unwrap();
        let signature = sign.wait_with_output().unwrap().stdout;
        let token = format!("{signing_input}.{}", url.encode(signature));

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(&stream);
                let (mut first, mut auth) = (String::new(), String::new());
                reader.read_line(&mut first).unwrap_or(0);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("authorization") {
                            auth = value.trim().to_string();
                        }
                    }
                }
                record.lock().unwrap().push((first.trim().to_string(), auth));
                let body = serde_json::json!({ "token": token, "expires_in": 3600 }).to_string();
                let _ = (&stream).write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                        .as_bytes(),
                );
            }
        });
        TokenServer { port, seen }
    }
}
