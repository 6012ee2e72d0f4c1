#!/bin/bash
# Builds the tiny VM test box's root filesystem: busybox + dropbear + a Debian kernel
# and a busybox initramfs, booting to SSH in seconds even without KVM (TCG).
#
# Usage: tiny-vm.sh [OUT_DIR]
#   OUT_DIR defaults to ${CARGO_TARGET_DIR:-target}/boxes/tiny-vm-<hash of this script>.
#   Prints the rootfs directory on stdout. A finished build is reused (cached by the
#   script's and the agent's content: change either and a new build happens).
#
# Needs: apt-get (Debian bookworm sources), dpkg-deb, busybox-static, dropbear-bin, gzip.
# The guest side of the contract (seed disk, user-data parsing) is documented in
# docs/box-format.md, "Guest contract (qemu)".
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
agent=$here/../../src/boxes/agent.sh
script_hash=$(cat "$0" "$agent" | sha256sum | cut -c1-16)
out=${1:-${CARGO_TARGET_DIR:-$here/../../target}/boxes/tiny-vm-$script_hash}
rootfs=$out/rootfs
if [ -f "$out/.done" ]; then echo "$rootfs"; exit 0; fi
# One build at a time (parallel tests call this); a waiter finds it done.
mkdir -p "$(dirname "$out")"
exec 9>"$out.lock"
flock 9
if [ -f "$out/.done" ]; then echo "$rootfs"; exit 0; fi

need() { command -v "$1" >/dev/null || { echo "tiny-vm.sh: $1 is missing; install the Debian package $2" >&2; exit 1; }; }
need busybox busybox-static
need dropbear dropbear-bin
need dpkg-deb dpkg
need apt-get apt

# The generic kernel, not -cloud-amd64: the cloud flavour lacks 9p (sync folders).
kernel_pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kernel_pkg" ] || { echo "tiny-vm.sh: cannot resolve linux-image-amd64; run apt-get update" >&2; exit 1; }

rm -rf "$out.tmp"
mkdir -p "$out.tmp/deb" "$out.tmp/kernel"
(cd "$out.tmp/deb" && apt-get download "$kernel_pkg" >&2 2>/dev/null)
dpkg-deb -x "$out.tmp"/deb/*.deb "$out.tmp/kernel"
kver=$(ls "$out.tmp/kernel/lib/modules")
moddir=$out.tmp/kernel/lib/modules/$kver

r=$out.tmp/rootfs
mkdir -p "$r"/{bin,sbin,etc,dev,proc,sys,run,tmp,root/.ssh,boot,usr/bin,usr/sbin,lib64,lib/x86_64-linux-gnu,var/log,mnt,etc/dropbear,etc/acpi,srv/www}
chmod 700 "$r/root" "$r/root/.ssh"; chmod 1777 "$r/tmp"

# busybox: one static binary, every applet a symlink to it.
cp /bin/busybox "$r/bin/busybox"
for applet in $(busybox --list); do
    [ "$applet" = busybox ] || ln -sf /bin/busybox "$r/bin/$applet"
done

# dropbear (dynamic): its libraries and the loader.
cp /usr/sbin/dropbear "$r/usr/sbin/dropbear"
for lib in $(ldd /usr/sbin/dropbear | awk '/=> \// {print $3}'); do
    cp -L "$lib" "$r/lib/x86_64-linux-gnu/"
done
cp -L /lib64/ld-linux-x86-64.so.2 "$r/lib64/"

cat > "$r/etc/passwd" <<'P'
root:*:0:0:root:/root:/bin/sh
P
echo 'root:x:0:' > "$r/etc/group"
echo /bin/sh > "$r/etc/shells"
echo 'hosts: files dns' > "$r/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n' > "$r/etc/hosts"
echo tiny > "$r/etc/hostname"
echo 'nameserver 10.0.2.3' > "$r/etc/resolv.conf"

# ACPI power button (QMP system_powerdown) -> clean shutdown. busybox acpid's built-in
# table maps the power button to /etc/acpi/PWRF/00000080.
mkdir -p "$r/etc/acpi/PWRF"
cat > "$r/etc/acpi/PWRF/00000080" <<'P'
#!/bin/sh
exec /sbin/envy-poweroff
P
chmod 755 "$r/etc/acpi/PWRF/00000080"

cat > "$r/sbin/envy-poweroff" <<'P'
#!/bin/sh
# Clean shutdown: stop services, flush, unmount, power off.
echo "envy-guest: powering off" > /dev/console
killall dropbear httpd 2>/dev/null
sync
umount -a -r 2>/dev/null
mount -o remount,ro / 2>/dev/null
sync
echo "envy-guest: clean shutdown complete" > /dev/console
poweroff -f
P
chmod 755 "$r/sbin/envy-poweroff"

# The guest's init: busybox init. rcS mounts what the kernel does not; envy's first-boot
# agent (src/boxes/agent.sh, installed here as `envy box build --kind qemu` installs it,
# so the firmware-boot disk made from this rootfs has it too) reads the NoCloud seed:
# hostname, key, first NIC, mounts, bootcmd. Then acpid and dropbear.
ln -sf /bin/busybox "$r/sbin/init"
mkdir -p "$r/etc/init.d" "$r/usr/lib/envy"
cat > "$r/etc/init.d/rcS" <<'P'
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs run /run
mount -o remount,rw /
echo "envy-guest: init started"
P
cat > "$r/sbin/envy-services" <<'P'
#!/bin/sh
acpid -c /etc/acpi -l /var/log/acpid.log
dropbear -R -E -p 22 2>>/var/log/dropbear.log
echo "envy-guest: ready"
P
chmod 755 "$r/etc/init.d/rcS" "$r/sbin/envy-services"
cp "$agent" "$r/usr/lib/envy/envy-agent"
chmod 755 "$r/usr/lib/envy/envy-agent"
cat > "$r/etc/inittab" <<'P'
::sysinit:/etc/init.d/rcS
::sysinit:/usr/lib/envy/envy-agent
::once:/sbin/envy-services
P

# Kernel + modules the initramfs loads (virtio disk/net, ext4, vfat, 9p and virtiofs
# for sync folders, ACPI power button and evdev, through which acpid sees it).
kernel_modules="evdev virtio_pci virtio_blk virtio_net ext4 vfat nls_cp437 nls_iso8859-1 nls_ascii nls_utf8 9p 9pnet_virtio virtiofs button"
cp "$out.tmp/kernel/boot/vmlinuz-$kver" "$r/boot/vmlinuz-$kver"
i=$out.tmp/initramfs
mkdir -p "$i"/{bin,dev,proc,sys,newroot,lib/modules}
cp /bin/busybox "$i/bin/busybox"
for applet in sh mount umount insmod switch_root sleep cat mkdir echo; do ln -s busybox "$i/bin/$applet"; done
# Resolve module dependencies (the `depends=` entry of each .ko), depth first, each once.
declare -A loaded=()
order=()
add_module() {
    local name=$1 file dep
    [ -n "${loaded[$name]:-}" ] && return
    loaded[$name]=1
    file=$(find "$moddir/kernel" -name "$name.ko" -o -name "${name//_/-}.ko" | head -n1)
    [ -n "$file" ] || { echo "tiny-vm.sh: module $name not found in $kver" >&2; exit 1; }
    for dep in $(busybox strings "$file" | sed -n 's/^depends=//p' | tr ',' ' '); do add_module "$dep"; done
    cp "$file" "$i/lib/modules/"
    order+=("$(basename "$file")")
}
for m in $kernel_modules crc32c_generic; do add_module "$m"; done
printf '%s\n' "${order[@]}" > "$i/lib/modules/load-order"

cat > "$i/init" <<'P'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/load-order); do insmod /lib/modules/$m 2>/dev/null; done
root=/dev/vda; init=/sbin/init
for arg in $(cat /proc/cmdline); do
    case $arg in root=*) root=${arg#root=};; init=*) init=${arg#init=};; esac
done
n=0
while [ ! -b "$root" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
# A dead end drops to a rescue shell as Debian's initramfs-tools does, with its words.
rescue() { echo "$1"; PS1='(initramfs) ' exec sh; }
mount -t ext4 -o rw "$root" /newroot || rescue "initramfs: cannot mount $root"
[ -e "/newroot$init" ] || [ -L "/newroot$init" ] || rescue "Target filesystem doesn't have requested $init."
umount /proc /sys
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot "$init"
P
chmod 755 "$i/init"
(cd "$i" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$r/boot/initrd.img-$kver"

# A page for the forwarded-port test (busybox httpd serves /srv/www).
echo "hello from the tiny vm" > "$r/srv/www/index.html"

rm -rf "$out.tmp/deb" "$out.tmp/kernel" "$i"
rm -rf "$rootfs"; mkdir -p "$out"; mv "$r" "$rootfs"; rm -rf "$out.tmp"
touch "$out/.done"
echo "$rootfs"
