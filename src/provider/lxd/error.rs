//! What can go wrong talking to an LXD or Incus daemon, as sentences that say what to
//! do; `src/error.rs` maps them to exit code 5.

/// An LXD/Incus request failed, or the daemon is not what envy needs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No daemon answers where envy looks for a local one.
    #[error("no LXD or Incus daemon answers on {tried}; start one (`lxd --group root &` then `lxd waitready`), set LXD_DIR to its directory, or name a remote with `remote = \"NAME\"` in the Envfile")]
    NoDaemon { tried: String },
    /// The daemon could not be reached or the connection broke.
    #[error("cannot talk to {server} while {doing}: {cause}; check that it runs and is reachable, then run the command again (`envy status` shows the true state)")]
    Unreachable { server: String, doing: String, cause: String },
    /// The API refused the request; `message` is the daemon's own words.
    #[error("{server} refused {doing} (HTTP {status}): {message}")]
    Api { server: String, doing: String, status: u16, message: String },
    /// An operation ran and failed on the daemon.
    #[error("{server} failed while {doing}: {message}")]
    Failed { server: String, doing: String, message: String },
    /// The daemon answered something envy cannot read.
    #[error("{server} answered {doing} with something envy cannot read: {problem}")]
    BadAnswer { server: String, doing: String, problem: String },
    /// The instance name envy would use is taken by something envy did not make.
    #[error("{server} already has an instance {name} that envy did not make (it has no user.envy.project key); envy neither reuses nor deletes it: rename or remove it with `lxc`, or rename the machine in the Envfile")]
    NotEnvys { server: String, name: String },
    /// A remote showed another certificate than the one pinned when it was added.
    #[error("remote {remote} ({address}) showed a server certificate with sha256 {seen}, but envy pinned {pinned} when the remote was added; \
             envy refuses to talk to it. If the server's certificate was replaced on purpose, check the new fingerprint with its administrator, \
             then run `envy remote remove {remote}` and add it again")]
    CertificateChanged { remote: String, address: String, pinned: String, seen: String },
    /// Something envy does not do on LXD (yet), with the way around it.
    #[error("{0}")]
    Unsupported(String),
    /// A local file envy needs for the upload or the remote could not be used.
    #[error("{doing} {path}: {cause}")]
    Io { doing: &'static str, path: std::path::PathBuf, cause: std::io::Error },
}

impl Error {
    /// The API said there is no such object (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { status: 404, .. })
    }
}
