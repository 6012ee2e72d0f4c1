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
  [debugfs]=e2fsprogs
  [filefrag]=e2fsprogs   # a test reads which blocks a snapshot shares
  [mkfs.xfs]=xfsprogs   # a test runs a machine on XFS, where copies clone blocks
  [losetup]=mount
  [ip]=iproute2   # the tests and benches compare envy with ip; envy runs none
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
  # The tests make the tarballs upstreams serve: LXC rootfs.tar.xz, Vagrant .box (gzip).
  [xz]=xz-utils
  [gzip]=gzip
  # A terminal for `envy exec -t` under test (script), and the host libraries the
  # CVE-2019-5736 test copies into a container (ldd).
  [script]=bsdutils
  [ldd]=libc-bin
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
elif [ ! -r /dev/net/tun ] || [ ! -w /dev/net/tun ]; then
  echo "error: /dev/net/tun is not open to $(id -un), and envy's networks need it; Debian's udev makes it 0666: sudo chmod 0666 /dev/net/tun" >&2
  exit 1
fi
