#!/usr/bin/env bash
# Runs envy's whole test suite against the real tools (runc, QEMU, slirp4netns, an
# HTTP server on 127.0.0.1). Installs the Debian packages it needs first. Run as root:
# containers, overlay mounts and network namespaces need it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
if [ "$(id -u)" -ne 0 ]; then
  echo "error: the tests start containers and network namespaces; run as root" >&2
  exit 1
fi
# Every QEMU test runs under TCG: on hosts whose /dev/kvm is a software hypervisor a
# KVM boot crawls. Users get KVM by default where it works.
export ENVY_ACCEL=tcg
export CI="${CI:-1}"
# The full tier: a test whose needs (root, a tool, QEMU boots, the network) are not met
# fails instead of being skipped as a plain `cargo test` does (docs/testing.md).
export ENVY_TEST_FULL=1
cargo build --locked --all-targets
cargo test --locked --no-fail-fast -- --test-threads=2
