#!/bin/bash
# Makes the tiny VM's root filesystem (boxes/recipes/tiny-vm.sh) into a disk that boots
# by itself, the way a stock cloud image does: an MBR partition table, GRUB in the MBR
# and the gap after it, an ext4 partition holding the kernel, initrd and grub.cfg.
# No loop device and no mount: mkfs.ext4 writes the partition at its offset, and GRUB's
# images are placed with dd. The result is a bare qcow2 (`envy box add` wraps it with a
# generated manifest, boot = "firmware"); QEMU starts it without -kernel.
#
# Usage: tiny-vm-bios.sh OUT.qcow2 [ROOTFS]   (ROOTFS: a changed copy of tiny-vm.sh's)
# PART_MIB sizes the partition (default 160, room for the tiny VM) and CMDLINE is the
# kernel's command line (benches/cloud-image.sh puts a whole Debian system in 2 GiB).
# Needs: what tiny-vm.sh needs, e2fsprogs, qemu-utils, fdisk (sfdisk), grub-pc-bin.
set -euo pipefail

out=${1:?usage: tiny-vm-bios.sh OUT.qcow2}
need() { command -v "$1" >/dev/null || { echo "tiny-vm-bios.sh: $1 is missing; install the Debian package $2" >&2; exit 1; }; }
need mkfs.ext4 e2fsprogs
need qemu-img qemu-utils
need sfdisk fdisk
need grub-mkimage grub-common
grub_dir=/usr/lib/grub/i386-pc
[ -f "$grub_dir/boot.img" ] || { echo "tiny-vm-bios.sh: $grub_dir/boot.img is missing; install the Debian package grub-pc-bin" >&2; exit 1; }

rootfs=${2:-$("$(dirname "$0")/tiny-vm.sh")}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The root filesystem, plus a grub.cfg that boots its kernel from the first partition.
cp -a "$rootfs" "$work/root"
kernel=$(cd "$work/root/boot" && ls vmlinuz-* | head -1)
initrd=$(cd "$work/root/boot" && ls initrd.img-* | head -1)
mkdir -p "$work/root/boot/grub"
cat > "$work/root/boot/grub/grub.cfg" <<EOT
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
menuentry tiny-vm {
  linux /boot/$kernel ${CMDLINE:-console=ttyS0 root=/dev/vda1 rw}
  initrd /boot/$initrd
}
EOT

# 1 MiB for the MBR and GRUB's core image, then the ext4 partition.
part_mib=${PART_MIB:-160}
raw=$work/disk.raw
truncate -s $((part_mib + 1))M "$raw"
echo "start=2048, type=83, bootable" | sfdisk --quiet "$raw"
mkfs.ext4 -q -F -L envy-root -E offset=$((2048 * 512)) -d "$work/root" "$raw" "${part_mib}M"

# GRUB: boot.img's code into the MBR (its partition table kept), core.img from sector 1;
# core.img's default block list points right behind itself, so no grub-install is needed.
grub-mkimage -O i386-pc -o "$work/core.img" -p '(hd0,msdos1)/boot/grub' \
  biosdisk part_msdos ext2 normal linux configfile serial terminal echo
[ "$(stat -c %s "$work/core.img")" -lt $((2047 * 512)) ] || { echo "tiny-vm-bios.sh: core.img does not fit before the partition" >&2; exit 1; }
dd if="$grub_dir/boot.img" of="$raw" bs=446 count=1 conv=notrunc status=none
dd if="$work/core.img" of="$raw" bs=512 seek=1 conv=notrunc status=none

qemu-img convert -f raw -O qcow2 "$raw" "$out"
