#!/bin/sh
# envy's first-boot agent: in a VM without cloud-init, it does what envy's NoCloud seed
# asks (docs/box-format.md, "Guest contract (qemu)"): hostname, root's SSH key, the
# first NIC on QEMU's user network, the sync folder mounts and bootcmd. `envy box build
# --kind qemu` installs it as /usr/lib/envy/envy-agent and has the init run it at every
# boot, before the SSH server starts. It reads envy's own line layout of user-data.
#
# envy-agent --login-user NAME: run by envy over SSH for a Vagrant box, whose SSH server
# already runs: NAME's authorized keys become the machine's (Vagrant's insecure key
# goes) and the host keys are left as the running server serves them.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
login_user=
[ "${1:-}" = --login-user ] && login_user=${2:?--login-user needs a name}

say() { echo "envy-agent: $*"; }

# The seed: the vfat disk labelled cidata (envy attaches it as the second disk).
seed=
n=0
while [ -z "$seed" ] && [ $n -lt 50 ]; do
    seed=$(blkid -L cidata 2>/dev/null || findfs LABEL=cidata 2>/dev/null) || seed=
    [ -n "$seed" ] || [ ! -b /dev/disk/by-label/cidata ] || seed=/dev/disk/by-label/cidata
    [ -n "$seed" ] || { sleep 0.1; n=$((n + 1)); }
done
[ -n "$seed" ] || [ ! -b /dev/vdb ] || seed=/dev/vdb
[ -n "$seed" ] || { say "no cidata seed found"; exit 1; }
run=/run/envy-agent
mkdir -p "$run/seed"
mount -t vfat -o ro "$seed" "$run/seed" || { say "cannot mount the seed $seed"; exit 1; }
cp "$run/seed/user-data" "$run/seed/meta-data" "$run/" 2>/dev/null
umount "$run/seed"
ud=$run/user-data
[ -f "$ud" ] && [ -f "$run/meta-data" ] || { say "the seed $seed has no user-data or meta-data"; exit 1; }

# A quoted scalar's text: envy writes JSON-quoted strings without escapes in them.
scalar() { sed -n "s/^$1: *\"\{0,1\}\([^\"]*\)\"\{0,1\}\$/\1/p" "$2" | head -n1; }

# A new host key once per instance: the box's own are shared by every machine made from it.
instance=$(scalar instance-id "$run/meta-data")
state=/var/lib/envy-agent
if [ -z "$login_user" ] && [ "$(cat "$state/instance-id" 2>/dev/null)" != "$instance" ]; then
    if command -v ssh-keygen >/dev/null && ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1; then
        # One ed25519 key, as envy's seed asks of cloud-init: RSA and ECDSA keys take
        # tens of seconds to make under TCG, and ssh picks ed25519 first.
        rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
        ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key && say "made a new SSH host key for $instance"
    fi
    mkdir -p "$state" && echo "$instance" > "$state/instance-id"
fi

h=$(scalar hostname "$ud")
if [ -n "$h" ]; then
    hostname "$h"
    echo "$h" > /etc/hostname
    grep -q "^127.0.1.1 $h\$" /etc/hosts 2>/dev/null || echo "127.0.1.1 $h" >> /etc/hosts
fi

# ssh_authorized_keys: one JSON-quoted key per item; they replace the user's keys.
keys=$(sed -n '/^ssh_authorized_keys:/,/^[^ ]/ s/^  - "\(.*\)"$/\1/p' "$ud")
authorize() { # USER
    home=$(awk -F: -v u="$1" '$1 == u { print $6 }' /etc/passwd)
    [ -n "$home" ] || { say "no user $1"; return 1; }
    mkdir -p "$home/.ssh" && chmod 700 "$home/.ssh"
    printf '%s\n' "$keys" > "$home/.ssh/authorized_keys.envy" &&
        chmod 600 "$home/.ssh/authorized_keys.envy" &&
        chown -R "$1" "$home/.ssh" &&
        mv -f "$home/.ssh/authorized_keys.envy" "$home/.ssh/authorized_keys"
}
authorize root || exit 1
[ -z "$login_user" ] || authorize "$login_user" || exit 1

# The first NIC (QEMU's user network, MAC 52:54:00:12:34:56), when nothing else gave it
# an address: the fixed addresses of QEMU's user-mode network.
nic=$(grep -l '52:54:00:12:34:56' /sys/class/net/*/address 2>/dev/null | head -n1 | cut -d/ -f5)
ip link set lo up
if [ -n "$nic" ] && ! ip -4 addr show dev "$nic" | grep -q inet; then
    ip link set "$nic" up && ip addr add 10.0.2.15/24 dev "$nic" && ip route add default via 10.0.2.2
    [ -L /etc/resolv.conf ] || echo 'nameserver 10.0.2.3' > /etc/resolv.conf
fi

# mounts: - ["tag", "/guest/path", "9p" or "virtiofs", "options", "0", "0"]
sed -n '/^mounts:/,/^[^ ]/ s/^  - \[\(.*\)\]$/\1/p' "$ud" | while IFS= read -r entry; do
    tag=$(echo "$entry" | awk -F'", "' '{gsub(/^"/, "", $1); print $1}')
    dir=$(echo "$entry" | awk -F'", "' '{print $2}')
    fstype=$(echo "$entry" | awk -F'", "' '{print $3}')
    opts=$(echo "$entry" | awk -F'", "' '{print $4}' | sed 's/,nofail//; s/nofail,//; s/^nofail$/defaults/')
    if grep -q "^$tag $dir " /proc/mounts; then continue; fi
    mkdir -p "$dir" && mount -t "$fstype" -o "$opts" "$tag" "$dir" || say "cannot mount $tag on $dir"
done

# bootcmd (cloud-init runs it at every boot): block-literal items (`  - |`), each a
# shell script, run in order.
rm -f "$run"/bootcmd.*
awk -v dir="$run" '/^bootcmd:/ {on=1; next} on && /^[^ ]/ {on=0} on && /^  - \|/ {n++; next} on {sub(/^    /, ""); print > (dir "/bootcmd." (n + 9))}' "$ud"
for script in "$run"/bootcmd.*; do [ -f "$script" ] && sh "$script"; done

# Keys of the Envfile's own user_data that only cloud-init acts on.
others=$(sed -n '/^# from the Envfile.s user_data/,$ s/^\([a-z_]*\):.*/\1/p' "$ud" | tr '\n' ' ')
[ -z "$others" ] || say "ignored (they need cloud-init): $others"
say "done"
