//! envy's integration tests, as one test binary (the layout of ripgrep's tests/): one
//! module per area below, the shared fixtures in `common`. A test says what it needs
//! from the host with `common::require!` (see tests/common/need.rs): a plain
//! `cargo test` runs what this host can and names what it skipped; scripts/test.sh
//! (ENVY_TEST_FULL=1, as root) runs everything. docs/testing.md has the layout and
//! where a new test goes.

mod common;

mod box_archive;
mod box_build;
mod box_download;
mod box_store;
mod catalog;
mod cli;
mod container_lifecycle;
mod container_snapshot;
mod debian;
mod dirs;
mod envfile;
mod error_codes;
mod forward_auto;
mod full_disk;
mod layout;
mod lifecycle;
mod lxd;
mod oci;
mod ownership;
mod package_deb;
mod provider;
mod provisioning;
mod qemu_cli;
mod qemu_lifecycle;
mod qemu_network;
mod qemu_not_ready;
mod qemu_virtiofs;
mod rootless;
mod run_replica;
mod security;
mod share;
mod snapshot_archive;
mod vagrant_box;
mod vagrantfile;
