//! The normal user the tests run envy as (`envy-rootless`): made with `useradd` the
//! first time any test binary needs it (Debian's useradd also gives it a subordinate id
//! range), once per process and under a lock in /tmp across processes, since test
//! binaries of several checkouts may ask at the same moment.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The user's name, shared with the other tests that run envy unprivileged.
pub const NAME: &str = "envy-rootless";

/// Who the user is.
#[derive(Debug, Clone)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// The user, made if absent; callers require `need::TEST_USER`.
pub fn rootless() -> &'static User {
    static USER: OnceLock<User> = OnceLock::new();
    USER.get_or_init(|| {
        let _lock = envy::fsutil::FileLock::acquire(std::path::Path::new("/tmp/envy-rootless-user.lock"), |_| {}).expect("the lock on making the test user");
        if lookup().is_none() {
            let out = Command::new("useradd").args(["-m", "-s", "/bin/sh", NAME]).output().expect("useradd runs");
            assert!(out.status.success(), "useradd -m -s /bin/sh {NAME} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        lookup().unwrap_or_else(|| panic!("user {NAME} does not exist after useradd"))
    })
}

fn lookup() -> Option<User> {
    let user = nix::unistd::User::from_name(NAME).ok().flatten()?;
    Some(User { uid: user.uid.as_raw(), gid: user.gid.as_raw(), home: user.dir })
}

/// A temp dir (under /tmp, which the user can reach) owned by the user, 0700.
pub fn owned_dir(user: &User, prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("temp dir");
    std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid)).expect("chown of the temp dir to the test user");
    dir
}
