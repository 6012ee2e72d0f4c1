//! The box pipeline's errors: each names the box, file, URL or digest involved and
//! says what to do next. All map to exit code 4 (`crate::error::code::BOX`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes that arrived hash to something else than the pin.
    #[error("{what} has the wrong {algorithm} digest: expected {expected}, got {got}; nothing was stored and the partial download was deleted. Check the digest you gave, or the source")]
    WrongDigest { what: String, algorithm: &'static str, expected: String, got: String },
    /// --sha256 and a URL's #sha256= fragment name different digests.
    #[error(
        "{url} is pinned twice with different digests: --sha256 {flag} and #sha256={fragment}; keep one"
    )]
    PinConflict { url: String, flag: String, fragment: String },
    /// Ctrl-C or SIGTERM arrived during the download (exit code 130).
    #[error("interrupted while downloading {url}; what arrived is kept, and the next command that needs the box resumes it")]
    Interrupted { url: String },
    /// The server closed the body before the announced length, even after retries.
    #[error("download of {url} stopped after {got} of {expected} bytes ({attempts} attempts); run the command again to resume from the partial file")]
    Truncated { url: String, got: u64, expected: u64, attempts: u32 },
    /// The server answered with an error status we do not retry (4xx) or kept failing (5xx).
    #[error("{url} answered HTTP {status}{}", retry_note(*.attempts))]
    HttpStatus { url: String, status: u16, attempts: u32 },
    /// Connection-level failure that outlasted the retries.
    #[error("cannot download {url} after {attempts} attempts: {message}; check the URL, the network or the proxy setting")]
    Network { url: String, attempts: u32, message: String },
    /// An archive entry we refuse to unpack.
    #[error("refusing {archive}: entry `{entry}` {reason}; nothing was stored")]
    HostileEntry { archive: String, entry: String, reason: String },
    /// A file of a tree being packed changed while it was read (the tree was not held still).
    #[error("{} changed while {} was packed; nothing was written: hold the machine still (halt it) and try again", .file.display(), .dir.display())]
    TreeChanged { dir: PathBuf, file: PathBuf },
    /// The archive is not one envy can read.
    #[error("{archive} is not a box: {reason}")]
    NotABox { archive: String, reason: String },
    /// A qemu box's root filesystem that could never boot to envy's SSH login.
    #[error("{rootfs} cannot be a qemu box: it has no {missing}, so a VM made from it would never reach SSH; {advice}")]
    CannotBoot { rootfs: String, missing: String, advice: String },
    /// debugfs could not write envy's first-boot agent into a new disk image.
    #[error("cannot install envy's first-boot agent into {}: {problem}", .disk.display())]
    AgentInstall { disk: PathBuf, problem: String },
    /// The box manifest is malformed or inconsistent with its payload.
    #[error("box manifest of {archive} is invalid: {reason}")]
    BadManifest { archive: String, reason: String },
    /// No stored box matches what was asked for.
    #[error("no box {what} in the store {}; `envy box list` shows what is there, `envy box add` fetches one", .store.display())]
    Missing { what: String, store: PathBuf },
    /// More than one stored box matches a name or digest prefix.
    #[error("`{what}` matches several boxes ({candidates}); give more digits of the digest")]
    Ambiguous { what: String, candidates: String },
    /// A stored file no longer matches its verified digest.
    #[error("stored box {digest} is corrupt: {file} should have sha256 {expected} but has {got}; run `envy box remove {short}` and add the box again", short = &.digest[..12])]
    Corrupt { digest: String, file: String, expected: String, got: String },
    /// A part of a stored box that unpacking made (its root filesystem) is gone.
    #[error("{} is missing; run `envy box verify {short}`, or remove the box and add it again", .path.display(), short = &.digest[..12])]
    Incomplete { path: PathBuf, digest: String },
    /// A URL without a pinned digest, and no --insecure.
    #[error("{url} has no digest to check; pin it with --sha256 HEX or a `#sha256=HEX` URL fragment, or pass --insecure to accept whatever arrives")]
    Unpinned { url: String },
    /// A digest string that is not hex of the right length.
    #[error("`{value}` is not a {algorithm} digest ({len} hex digits expected)")]
    BadDigest { value: String, algorithm: &'static str, len: usize },
    /// An `oci://` reference that does not parse.
    #[error("`{reference}` is not an image reference: {reason}; write oci://REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]")]
    BadReference { reference: String, reason: String },
    /// A blob whose length is not its descriptor's.
    #[error("{what} has {got} bytes but its descriptor says {expected}; nothing was stored")]
    WrongSize { what: String, expected: u64, got: u64 },
    /// The registry cannot be reached at all.
    #[error("registry {registry} does not answer at {url}: {message}; check that it runs and the reference's host and port")]
    RegistryDown { registry: String, url: String, message: String },
    /// The registry refused the request (401/403) with the credentials envy had.
    #[error("registry {registry} refused {what} (HTTP {status}); envy tried {tried}. Log in with `docker login {registry}` (envy reads the `auth` entries of the Docker config) or check the repository's permissions")]
    Unauthorized { registry: String, what: String, status: u16, tried: String },
    /// A tag, manifest or blob the registry does not have.
    #[error("{reference}: {what} was not found in the registry (HTTP 404); check the repository and tag (`skopeo list-tags docker://…` lists the tags)")]
    NotInRegistry { reference: String, what: String },
    /// A registry answer envy cannot use (unknown media type, malformed JSON, …).
    #[error("{reference}: {reason}; nothing was stored")]
    BadImage { reference: String, reason: String },
    /// The registry did not take part of a push.
    #[error("pushing {reference}: the registry refused {what} (HTTP {status}: {body}); check the repository name and your push rights")]
    PushRefused { reference: String, what: String, status: u16, body: String },
    /// An index with no manifest for the host's platform.
    #[error("{reference} has no image for {wanted}; it has {available}. Pick an image built for {wanted}")]
    NoPlatform { reference: String, wanted: String, available: String },
    /// A catalog could not be read or has no such entry.
    #[error("catalog {location}: {message}")]
    Catalog { location: String, message: String },
    /// A catalog entry that follows upstream, and upstream could not be read or has no
    /// such build (offline, moved, out of date).
    #[error("cannot find the newest build of box {what} upstream (tried {tried}): {message}. A box already pinned in Envfile.lock and stored needs no network; if this one should come from elsewhere, fix the catalog entry or config `vagrant_api`")]
    Upstream { what: String, tried: String, message: String },
    /// A URL pinned in Envfile.lock that upstream now fills with another build (a
    /// "latest" directory's fixed file name), found in its checksum list before any
    /// download.
    #[error("{url} now serves another build: its checksum list gives {now}, the pin is {pinned}; nothing was downloaded")]
    UpstreamMoved { url: String, pinned: String, now: String },
    /// A box file offered over plain HTTP from a host that is neither this machine nor
    /// one the config trusts.
    #[error("{what} is offered at {url}, plain HTTP to {host}, which is not this machine; envy fetches boxes from other hosts over HTTPS only. Ask the box's publisher for an https URL, or list \"{host}\" in config `insecure_registries` if that network is trusted")]
    PlainHttp { what: String, url: String, host: String },
    /// The box does not serve the provider a machine asks for.
    #[error("box {name} ({short}) is made for {providers}, not for the {wanted} provider that machine {machine} uses; pick another box or provider", short = &.digest[..12])]
    WrongProvider { name: String, digest: String, providers: String, wanted: String, machine: String },
    /// The disk under a box being written (in ENVY_HOME, or a share's output) filled
    /// up; nothing half-written is kept.
    #[error("cannot write {}: the disk is full; free space on it, or write elsewhere (`envy box prune` removes unused boxes; ENVY_HOME may point at a larger disk)", .path.display())]
    NoSpace { path: PathBuf, #[source] source: std::io::Error },
    /// A local file or folder could not be read or written.
    /// (The I/O error is part of the message, not a separate cause, so the report
    /// does not print it twice.)
    #[error("{doing} {}: {cause}", .path.display())]
    Io { doing: &'static str, path: PathBuf, cause: std::io::Error },
}

fn retry_note(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (after {attempts} attempts); the server is failing, try again later")
    } else {
        "; check the URL (or the catalog entry that gave it)".to_string()
    }
}

impl Error {
    /// Wraps an I/O error with what was being done to which path; a full disk gets
    /// its own error.
    pub fn io(doing: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |cause| {
            if is_disk_full(&cause) {
                Error::NoSpace { path, source: cause }
            } else {
                Error::Io { doing, path, cause }
            }
        }
    }
}

/// ENOSPC or EDQUOT, however deeply a library wrapped it.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}
