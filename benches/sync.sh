#!/usr/bin/env bash
# Times a VM's sync folder over virtiofs and over 9p beside the host, in one run, on the
# tiny VM box (TCG unless ENVY_ACCEL says otherwise):
#  1. a stat of every file in a FILES-file tree (what `git status` does; the busybox guest
#     has no git, so `find -exec stat` of the same tree stands in, on the host too)
#  2. one sequential read of a READ_MIB MiB file (`cat > /dev/null`), caches dropped
#     on the host first
# Prints each time and the ratios virtiofs/host, 9p/host and 9p/virtiofs.
# Needs: cargo, python3, /usr/lib/qemu/virtiofsd (qemu-system-common), the tiny VM box's
# tools (see boxes/recipes/tiny-vm.sh), root (virtiofsd's sandbox).
set -euo pipefail

FILES=${FILES:-20000}
READ_MIB=${READ_MIB:-1024}
here=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
export ENVY_ACCEL=${ENVY_ACCEL:-tcg}

# envy only starts the VM and runs the commands: its own build profile does not matter.
(cd "$here" && cargo build --quiet)
envy=$CARGO_TARGET_DIR/debug/envy
rootfs=$("$here/boxes/recipes/tiny-vm.sh")
box=$(dirname "$rootfs")/tiny-vm.box
work=$(mktemp -d /tmp/envy-bench-XXXXXX)
export ENVY_HOME=$work/home
cleanup() {
    (cd "$work/project" && "$envy" destroy --force >/dev/null 2>&1) || true
    rm -rf "$work"
}
trap cleanup EXIT
[ -f "$box" ] || "$envy" box build --kind qemu --name tiny-vm --version 1 --rootfs "$rootfs" -o "$box" >/dev/null

now() { date +%s.%N; }
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.3f}')" "$1" "$2"; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.3f}')" "$1" "$2"; }

echo "== making a $FILES-file tree and a $READ_MIB MiB file"
mkdir -p "$work/project/tree"
python3 - "$work/project/tree" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.txt"), "w") as f:
        f.write(f"file {i}\n")
PY
head -c $((READ_MIB << 20)) /dev/urandom > "$work/project/big"
cat > "$work/project/Envfile" <<E
[machine.vm]
box = { path = "$box" }
provider = "qemu"
memory = "512MiB"
cpus = 1
sync = [".:/project"]
E

walk='find /project/tree -type f -exec stat -c %s {} + > /dev/null'
read_big='cat /project/big > /dev/null'

declare -A result
measure() { # label, command (run in the guest, or on the host when label is host)
    local t0 t1
    sync; echo 3 > /proc/sys/vm/drop_caches
    t0=$(now)
    if [ "$1" = host ]; then sh -c "${2//\/project/$work/project}"; else (cd "$work/project" && "$envy" exec -- sh -c "$2"); fi
    t1=$(now)
    secs "$t0" "$t1"
}
for transport in virtiofs 9p; do
    echo "== $transport"
    export ENVY_VIRTIOFSD=$([ "$transport" = 9p ] && echo none || echo /usr/lib/qemu/virtiofsd)
    (cd "$work/project" && "$envy" up >/dev/null 2>&1)
    # An empty exec: its cost (SSH round trip) is taken off each guest figure.
    t0=$(now); (cd "$work/project" && "$envy" exec -- true); base=$(secs "$t0" "$(now)")
    # Each first walk warms the guest's dentry cache as `git status` would have.
    result[$transport-walk]=$(python3 -c "print(f'{$(measure "$transport" "$walk") - $base:.3f}')")
    result[$transport-read]=$(python3 -c "print(f'{$(measure "$transport" "$read_big") - $base:.3f}')")
    (cd "$work/project" && "$envy" halt --force >/dev/null 2>&1)
done
result[host-walk]=$(measure host "$walk")
result[host-read]=$(measure host "$read_big")

printf '%-28s %10s %10s %10s %12s %12s %12s\n' test host virtiofs 9p virtiofs/host 9p/host 9p/virtiofs
for t in walk read; do
    printf '%-28s %10s %10s %10s %12s %12s %12s\n' \
        "$([ $t = walk ] && echo "stat $FILES files" || echo "read $READ_MIB MiB")" \
        "${result[host-$t]}" "${result[virtiofs-$t]}" "${result[9p-$t]}" \
        "$(ratio "${result[virtiofs-$t]}" "${result[host-$t]}")" "$(ratio "${result[9p-$t]}" "${result[host-$t]}")" \
        "$(ratio "${result[9p-$t]}" "${result[virtiofs-$t]}")"
done
