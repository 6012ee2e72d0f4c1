#!/bin/bash
# Times the qemu provider beside the raw tools it drives, in one run on the same box
# (boxes/recipes/tiny-vm.sh), under TCG unless ENVY_ACCEL says otherwise:
#   1. boot to SSH: `envy up` vs qemu-system-x86_64 started by hand with the same disk,
#      seed, kernel and accelerator, until the same `ssh root@127.0.0.1` answers: the
#      first boot of a fresh overlay, then the mean of BOOTS (3) re-boots;
#   2. warm exec: `envy exec -- true` vs `ssh` through the same ControlMaster socket;
#   3. overlay creation: `qemu-img create -b` over a 1 GiB and a 10 GiB backing disk.
# Usage: cargo build && benches/qemu.sh        (ENVY=path/to/envy to pick a binary)
# Needs: qemu-system-x86, qemu-utils, openssh-client, hyperfine, and what tiny-vm.sh needs.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
envy=${ENVY:-${CARGO_TARGET_DIR:-$root/target}/debug/envy}
export ENVY_ACCEL=${ENVY_ACCEL:-tcg}
runs=${RUNS:-10}
boots=${BOOTS:-3}   # re-boots averaged for "again" (single boots are noisy on a shared host)
for tool in qemu-system-x86_64 qemu-img ssh hyperfine; do
    command -v "$tool" >/dev/null || { echo "qemu.sh: $tool is missing (apt-get install qemu-system-x86 qemu-utils openssh-client hyperfine)" >&2; exit 1; }
done
[ -x "$envy" ] || { echo "qemu.sh: no envy binary at $envy; run cargo build first" >&2; exit 1; }

work=$(mktemp -d /tmp/envy-bench-qemu.XXXXXX)
raw_pid=
cleanup() {
    [ -n "$raw_pid" ] && kill "$raw_pid" 2>/dev/null || true
    (cd "$work/project" 2>/dev/null && "$envy" destroy --force bench >/dev/null 2>&1) || true
    rm -rf "$work"
}
trap cleanup EXIT
export ENVY_HOME=$work/home
now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc; }

echo "== building the tiny box"
rootfs=$("$root/boxes/recipes/tiny-vm.sh")
cmdline="console=ttyS0 root=/dev/vda rw"
"$envy" box build --kind qemu --rootfs "$rootfs" --name tiny-vm --cmdline "$cmdline" -o "$work/tiny.box" >/dev/null

mkdir -p "$work/project"
cat > "$work/project/Envfile" <<ENVFILE
[machine.bench]
box = { path = "../tiny.box" }
provider = "qemu"
cpus = 1
memory = "256MiB"
ENVFILE

echo "== 1. boot to SSH ($ENVY_ACCEL): first boot (fresh overlay, the guest makes its host keys), then a re-boot"
"$envy" box add "$work/tiny.box" >/dev/null 2>&1 || true   # store it first: boot times exclude unpacking
cd "$work/project"
t0=$(now); "$envy" up bench >/dev/null; t1=$(now)
envy_first=$(elapsed "$t0" "$t1")
envy_again=0
for _ in $(seq "$boots"); do
    "$envy" halt bench >/dev/null
    t0=$(now); "$envy" up bench >/dev/null; t1=$(now)
    envy_again=$(echo "$envy_again + $(elapsed "$t0" "$t1") / $boots" | bc -l)
done

. "$root/benches/lib.sh"
machine=$(bench_machine_dir bench)
port=$(sed -n 's/.*"ssh_port": *\([0-9]*\).*/\1/p' "$machine/qemu.json")
ssh_opts=(-i "$machine/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no
          -o "UserKnownHostsFile=$machine/known_hosts" -o LogLevel=ERROR -p "$port")

echo "== 2. warm exec"
hyperfine -N --warmup 3 --runs "$runs" --export-json "$work/exec.json" \
    "$envy exec bench -- true" \
    "ssh ${ssh_opts[*]} -o ControlPath=$machine/ssh.ctl -o ControlMaster=no root@127.0.0.1 true" | grep -E 'Time|±|faster' || true

# The raw runs boot the same backing disk and kernel with the same seed and key.
backing=$(qemu-img info -U --output=json "$machine/overlay.qcow2" | sed -n 's/.*"backing-filename": *"\([^"]*\)".*/\1/p' | head -n1)
cp "$machine/seed.img" "$work/seed.img"
cp "$machine/id_ed25519" "$work/key"; chmod 600 "$work/key"
"$envy" destroy --force bench >/dev/null

qemu-img create -q -f qcow2 -F qcow2 -b "$backing" "$work/raw.qcow2"
accel_cpu=max; [ "$ENVY_ACCEL" = kvm ] && accel_cpu=host
raw_boot() {   # prints seconds from start to the first `ssh true` answered
    local port t0 t1
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    t0=$(now)
    qemu-system-x86_64 -nodefaults -display none -machine q35 -accel "$ENVY_ACCEL" -cpu "$accel_cpu" -smp 1 -m 256M \
        -kernel "$rootfs"/boot/vmlinuz-* -initrd "$rootfs"/boot/initrd.img-* -append "$cmdline" \
        -drive "file=$work/raw.qcow2,if=virtio,format=qcow2" -drive "file=$work/seed.img,if=virtio,format=raw,readonly=on" \
        -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0 \
        -serial "file:$work/raw-console.log" -daemonize -pidfile "$work/raw.pid"
    raw_pid=$(cat "$work/raw.pid")
    # Poll like envy does: wait for the SSH banner (cheap, sub-second), then ssh.
    until timeout 0.5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && head -c4 <&3" 2>/dev/null | grep -q SSH- \
          && ssh -i "$work/key" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no \
          -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=3 -p "$port" root@127.0.0.1 \
          'sync' </dev/null >/dev/null 2>&1; do sleep 0.25; done
    t1=$(now)
    kill "$raw_pid"; while kill -0 "$raw_pid" 2>/dev/null; do sleep 0.05; done; raw_pid=
    elapsed "$t0" "$t1"
}
raw_first=$(raw_boot)
raw_again=0
for _ in $(seq "$boots"); do raw_again=$(echo "$raw_again + $(raw_boot) / $boots" | bc -l); done

echo "== 3. overlay creation (qemu-img create -b)"
for size in 1G 10G; do qemu-img create -q -f qcow2 "$work/base-$size.qcow2" "$size"; done
hyperfine -N --warmup 2 --runs "$runs" --prepare "rm -f $work/o.qcow2" \
    "qemu-img create -q -f qcow2 -F qcow2 -b $work/base-1G.qcow2 $work/o.qcow2" \
    "qemu-img create -q -f qcow2 -F qcow2 -b $work/base-10G.qcow2 $work/o.qcow2" | grep -E 'Time|±|faster' || true

echo
ratio() { echo "scale=2; $1 / $2" | bc; }
echo "boot to SSH, first ($ENVY_ACCEL): envy up ${envy_first}s, raw qemu ${raw_first}s, ratio $(ratio "$envy_first" "$raw_first")"
printf 'boot to SSH, again (%s, mean of %s): envy up %.2fs, raw qemu %.2fs, ratio %s\n' \
    "$ENVY_ACCEL" "$boots" "$envy_again" "$raw_again" "$(ratio "$envy_again" "$raw_again")"
python3 - "$work/exec.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
e, s = r[0]["mean"] * 1000, r[1]["mean"] * 1000
print(f"warm exec: envy exec {e:.1f} ms, ssh via ControlMaster {s:.1f} ms, ratio {e / s:.2f}")
PY
