//! Where a container machine keeps its files inside its machine dir.

use std::path::{Path, PathBuf};

/// The machine dir's files; every path envy creates there is named here.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        Layout { dir: dir.to_path_buf() }
    }

    /// The bundle dir runc is given (it holds config.json).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The machine's own layer: everything it changed.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    /// overlayfs's scratch dir (same filesystem as upper).
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    /// The merged root filesystem runc runs.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    /// Output of the init process and runc's own messages.
    pub fn log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
    pub fn snapshots(&self) -> PathBuf {
        self.dir.join("snapshots")
    }
    /// Where a snapshot is unpacked before it replaces upper/.
    pub fn restore_tmp(&self) -> PathBuf {
        self.dir.join("upper.restoring")
    }
    /// The previous upper/ while a restore swaps it out.
    pub fn upper_old(&self) -> PathBuf {
        self.dir.join("upper.old")
    }
    /// Frozen layers (layers.rs), each a dir named by a number.
    pub fn layers(&self) -> PathBuf {
        self.dir.join("layers")
    }
    /// The machine's chain of frozen layers, bottom first.
    pub fn chain(&self) -> PathBuf {
        self.dir.join("layers.json")
    }
    /// Where `share --push` merges the machine's layers into one.
    pub fn merging(&self) -> PathBuf {
        self.dir.join("layer.merging")
    }
    /// The digest of the box the machine was created on: commands that get no box
    /// (snapshot restore) find its rootfs in the store by it.
    pub fn box_record(&self) -> PathBuf {
        self.dir.join("box")
    }
    /// Mount points of the sync folders (bind mounts of the opened host folders).
    pub fn sync_stage(&self) -> PathBuf {
        self.dir.join("sync")
    }

    /// Every file and dir this provider creates, for removal on destroy.
    pub fn owned(&self) -> [PathBuf; 15] {
        [
            self.upper(),
            self.layers(),
            self.chain(),
            self.merging(),
            self.box_record(),
            self.restore_tmp(),
            self.upper_old(),
            self.sync_stage(),
            self.work(),
            self.rootfs(),
            self.config(),
            self.log(),
            self.hosts(),
            self.resolv_conf(),
            self.snapshots(),
        ]
    }

    /// Whether the machine has been created (its layer exists).
    pub fn exists(&self) -> bool {
        self.upper().is_dir()
    }
}
