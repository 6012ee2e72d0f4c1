//! Boxes: base images fetched, verified and kept content-addressed. Each concern has
//! its file: where a box comes from (source, catalog, upstream indexes, vagrant_cloud), getting its bytes (download,
//! digest), reading and writing archives (archive, manifest, vagrant; pack writes a box), keeping it (store),
//! making one (build, with the first-boot agent for VMs without cloud-init) and OCI registries (oci). docs/box-format.md describes the formats and rules.

pub mod agent;
mod archive;
mod build;
mod catalog;
mod digest;
mod download;
mod error;
mod manifest;
mod oci;
mod pack;
mod serve;
mod source;
mod store;
mod upstream;
mod vagrant;
mod vagrant_cloud;

pub(crate) use archive::relative_path;
pub use archive::{MAX_PAYLOAD_BYTES, is_opaque_dir, is_whiteout_file, overlay_xattr, pack_layer_dir, pack_rootfs_dir, unpack_upper, KEPT_XATTRS};
pub use pack::{pack_box, Payload};
pub use build::{build, BuildRequest};
pub use digest::{parse_sha256, sha256_file};
pub use error::Error;

pub use manifest::{BootMethod, ContainerPayload, FirstLogin, ImagePayload, Manifest, QemuPayload, FORMAT as MANIFEST_FORMAT};
pub use oci::{pull, push, push_disk, ImageRun, ImageUser, Pulled};
pub use serve::BoxServer;
pub use source::{listed_name, parse_box_ref, BoxSource, OCI_SCHEME};
pub use store::{Corruption, Fetched, Record, Stamp, Store, StoredBox};
pub use upstream::Build;
