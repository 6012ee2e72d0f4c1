#!/bin/bash
# A stock-like cloud image (GRUB + systemd + cloud-init: benches/cloud-image.sh) booted
# to a working root login, `envy up` beside qemu-system-x86_64 started by hand with the
# options envy uses (src/provider/qemu/cmdline.rs): q35, the same accelerator (TCG
# unless ENVY_ACCEL says otherwise), CPUs and memory, a virtio disk over a fresh qcow2
# overlay, user networking with an SSH forward, and a NoCloud seed (vfat, label cidata)
# whose user-data authorizes a key for root. Every boot is a first boot (a fresh
# overlay, cloud-init's per-instance modules run). Runs alternate, RUNS (2) of each.
# The raw run is timed to the first `ssh root@127.0.0.1 true` that succeeds, tried
# every 0.25 s with ConnectTimeout=3 (which also bounds the wait for the banner). No
# banner pre-check of 0.5 s as in benches/qemu.sh: this guest, busy with cloud-init
# under TCG, sends its banner later than that, and such a loop never got in until the
# guest was idle (165 s instead of ~80 s in one run).
# After each boot, once the guest is idle, it saves `systemd-analyze critical-chain`,
# `blame` and `cloud-init analyze show/blame` to PROFILE_DIR (target/bench-cloud-boot).
# Usage: cargo build && benches/cloud_boot.sh   (ENVY=path/to/envy to pick a binary;
#        RAW_ED25519=1 gives the raw seed envy's single host key too)
# Needs: qemu-system-x86, qemu-utils, openssh-client, dosfstools, mtools, bc, and what
# cloud-image.sh needs (it installs nothing itself).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
envy=${ENVY:-${CARGO_TARGET_DIR:-$root/target}/debug/envy}
export ENVY_ACCEL=${ENVY_ACCEL:-tcg}
runs=${RUNS:-2}
cpus=${CPUS:-1}
memory_mib=${MEMORY_MIB:-1024}
profiles=${PROFILE_DIR:-$root/target/bench-cloud-boot}
. "$root/benches/lib.sh"
bench_require_tools qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils ssh:openssh-client \
  ssh-keygen:openssh-client mkfs.vfat:dosfstools mcopy:mtools bc:bc
[ -x "$envy" ] || { echo "cloud_boot.sh: no envy binary at $envy; run cargo build first" >&2; exit 1; }

work=$(mktemp -d /tmp/envy-bench-cloud.XXXXXX)
cleanup() {   # raw_boot runs in a $(...) subshell: its QEMU is known by the pid file
  [ -s "$work/raw.pid" ] && kill "$(cat "$work/raw.pid")" 2>/dev/null || true
  (cd "$work/project" 2>/dev/null && "$envy" destroy --force bench >/dev/null 2>&1) || true
  rm -rf "$work"
}
trap cleanup EXIT
export ENVY_HOME=$work/home
mkdir -p "$profiles"
now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc; }

echo "== the image (benches/cloud-image.sh)"
"$root/benches/cloud-image.sh" "$work/cloud.qcow2"
"$envy" -q box add "$work/cloud.qcow2" --name cloud-bench >/dev/null   # stored outside the timing

mkdir -p "$work/project"
cat > "$work/project/Envfile" <<ENVFILE
[machine.bench]
box = "cloud-bench"
provider = "qemu"
cpus = $cpus
memory = "${memory_mib}MiB"
ENVFILE

# What both profiles hold, from inside the guest once every boot job has finished.
profile_script='systemctl is-system-running --wait >/dev/null; cloud-init status --wait >/dev/null
echo "## systemd-analyze"; systemd-analyze
echo "## systemd-analyze critical-chain"; systemd-analyze critical-chain --no-pager
echo "## systemd-analyze critical-chain ssh.service"; systemd-analyze critical-chain --no-pager ssh.service
echo "## systemd-analyze blame (top 25)"; systemd-analyze blame --no-pager | head -25
echo "## cloud-init analyze show"; cloud-init analyze show
echo "## cloud-init analyze blame (top 25)"; cloud-init analyze blame | head -25'

envy_boot() {   # $1: run number; prints seconds from `envy up` to its return
  local t0 t1
  cd "$work/project"
  t0=$(now); "$envy" -q up bench >/dev/null; t1=$(now)
  "$envy" exec bench -- sh -c "$profile_script" >"$profiles/envy-$1.txt" 2>&1 || true
  "$envy" -q destroy --force bench >/dev/null
  elapsed "$t0" "$t1"
}

ssh-keygen -q -t ed25519 -N '' -C raw-bench -f "$work/key"
raw_ssh() {
  ssh -i "$work/key" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "$@"
}
raw_boot() {    # $1: run number; prints seconds from QEMU's start to the first `ssh true`
  local port t0 t1
  rm -f "$work/raw.qcow2" "$work/seed.img"
  qemu-img create -q -f qcow2 -F qcow2 -b "$work/cloud.qcow2" "$work/raw.qcow2"
  printf 'instance-id: raw-%s\nlocal-hostname: bench\n' "$1$$" >"$work/meta-data"
  printf '#cloud-config\ndisable_root: false\nssh_authorized_keys:\n  - %s\n' "$(cat "$work/key.pub")" >"$work/user-data"
  # RAW_ED25519=1: the raw seed also asks for one host key, as envy's does, so both
  # guests do the same work and the ratio is envy's own cost.
  [ "${RAW_ED25519:-0}" = 1 ] && echo 'ssh_genkeytypes: ["ed25519"]' >>"$work/user-data"
  mkfs.vfat -n cidata -C "$work/seed.img" 2048 >/dev/null 2>&1   # (it warns of the lowercase label envy uses too)
  mcopy -i "$work/seed.img" "$work/meta-data" "$work/user-data" ::
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  local accel_cpu=max; [ "$ENVY_ACCEL" = kvm ] && accel_cpu=host
  t0=$(now)
  qemu-system-x86_64 -nodefaults -no-user-config -display none -machine q35 -accel "$ENVY_ACCEL" -cpu "$accel_cpu" \
    -smp "$cpus" -m "${memory_mib}M" \
    -drive "file=$work/raw.qcow2,if=none,id=disk,format=qcow2,discard=unmap" -device virtio-blk-pci,drive=disk,bootindex=0 \
    -drive "file=$work/seed.img,if=none,id=seed,format=raw,readonly=on" -device virtio-blk-pci,drive=seed \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56 \
    -serial "file:$work/raw-console.log" -daemonize -pidfile "$work/raw.pid"
  local raw_pid; raw_pid=$(cat "$work/raw.pid")
  until raw_ssh -o ConnectTimeout=3 -p "$port" root@127.0.0.1 true </dev/null >/dev/null 2>&1; do sleep 0.25; done
  t1=$(now)
  raw_ssh -p "$port" root@127.0.0.1 "$profile_script" </dev/null >"$profiles/raw-$1.txt" 2>&1 || true
  kill "$raw_pid"; while kill -0 "$raw_pid" 2>/dev/null; do sleep 0.05; done; rm -f "$work/raw.pid"
  elapsed "$t0" "$t1"
}

echo "== boot to a root login ($ENVY_ACCEL, $cpus CPU, $memory_mib MiB), $runs alternating runs each; load: $(cut -d' ' -f1-3 /proc/loadavg)"
envy_sum=0; raw_sum=0
for i in $(seq "$runs"); do
  e=$(envy_boot "$i"); r=$(raw_boot "$i")
  printf 'run %s: envy up %.1fs, raw qemu %.1fs\n' "$i" "$e" "$r"
  envy_sum=$(echo "$envy_sum + $e" | bc -l); raw_sum=$(echo "$raw_sum + $r" | bc -l)
done
echo
printf 'boot to a root login (%s, mean of %s): envy up %.1fs, raw qemu %.1fs, ratio %s; load after: %s\n' \
  "$ENVY_ACCEL" "$runs" "$(echo "$envy_sum / $runs" | bc -l)" "$(echo "$raw_sum / $runs" | bc -l)" \
  "$(echo "scale=3; $envy_sum / $raw_sum" | bc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
echo "profiles: $profiles/{envy,raw}-N.txt"
