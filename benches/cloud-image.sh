#!/bin/bash
# A Debian 12 disk image shaped like Debian's own "genericcloud" one, made here because
# this machine reaches no image server, only Debian's package mirror: GRUB in the MBR,
# one ext4 partition, linux-image-cloud-amd64, systemd, udev, OpenSSH, cloud-init with
# the ifupdown renderer and DHCP client bookworm's images use, cloud-guest-utils
# (growpart), sudo, timesyncd and the QEMU guest agent, and the cloud images' own
# settings that matter at boot: no SSH host keys and an empty machine-id (both made at
# first boot), a /etc/network/interfaces that reads cloud-init's interfaces.d, and the
# serial console on the kernel command line. It does not configure cloud-init's
# datasource list: like the generic image, ds-identify finds the NoCloud seed itself.
# The rootfs tarball is cached under target/test-boxes by its package list.
# Usage: benches/cloud-image.sh OUT.qcow2
# Needs: mmdebstrap, and what boxes/recipes/tiny-vm-bios.sh needs.
set -euo pipefail

out=${1:?usage: cloud-image.sh OUT.qcow2}
root=$(cd "$(dirname "$0")/.." && pwd)
packages=linux-image-cloud-amd64,systemd-sysv,udev,openssh-server,cloud-init,cloud-guest-utils,ifupdown,isc-dhcp-client,iproute2,netbase,sudo,systemd-timesyncd,qemu-guest-agent,ca-certificates
cache=$root/target/test-boxes
tarball=$cache/debian-12-cloud-$(printf %s "$packages" | sha256sum | cut -c1-12).tar
mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
  echo "==> building a Debian 12 cloud root filesystem with mmdebstrap (a few minutes)" >&2
  "$root/scripts/debian-rootfs.sh" "$packages" "$tarball.$$.tar"
  mv "$tarball.$$.tar" "$tarball"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -x --numeric-owner -f "$tarball" -C "$work"
# Made at first boot, as in Debian's images: cloud-init's ssh module writes the host
# keys, systemd the machine id.
rm -f "$work"/etc/ssh/ssh_host_*
: > "$work/etc/machine-id"
printf 'LABEL=envy-root / ext4 rw,discard,errors=remount-ro 0 1\n' > "$work/etc/fstab"
printf 'auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n' > "$work/etc/network/interfaces"
echo localhost > "$work/etc/hostname"
# 2 GiB, the size of Debian's genericcloud image.
PART_MIB=2047 CMDLINE="console=tty0 console=ttyS0,115200 consoleblank=0 root=/dev/vda1 rw" \
  "$root/boxes/recipes/tiny-vm-bios.sh" "$out" "$work"
