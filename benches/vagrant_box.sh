#!/usr/bin/env bash
# Times adding a libvirt Vagrant box in Packer's order (box.img first, then
# metadata.json and the Vagrantfile), gzip'd, in one run:
#   envy box add FILE            (hash the file, tell what it is, unpack the disk)
# beside the raw tools doing the same work:
#   sha256sum FILE; tar -xzf FILE box.img
# envy reads the tar once: telling a Vagrant box needs its first header only, so the
# disk is inflated once, as tar does. Ratio = envy / raw (below 1: envy faster).
# SIZE_MIB of disk data; ENVY=PATH times another binary (default: a
# release build). Needs: cargo, qemu-img, tar, gzip, python3.
set -euo pipefail

SIZE_MIB=${SIZE_MIB:-512}
RUNS=${RUNS:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
. "$here/benches/lib.sh"
bench_require_tools qemu-img:qemu-utils tar:tar gzip:gzip python3:python3
envy=$(cd "$here" && bench_envy "${ENVY:-}")

work=$(mktemp -d /tmp/envy-vagrant-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/box"
# A qcow2 holding SIZE_MIB of base64'd random data: it compresses about as much as a
# real disk's used clusters do (gzip to ~75 %), so inflating it costs what it would.
head -c "$((SIZE_MIB * 3 << 18))" /dev/urandom | base64 -w 0 >"$work/raw.img"
qemu-img convert -q -f raw -O qcow2 "$work/raw.img" "$work/box/box.img"
rm "$work/raw.img"
echo '{"provider": "libvirt", "format": "qcow2", "virtual_size": 1}' >"$work/box/metadata.json"
printf 'Vagrant.configure("2") do |config|\nend\n' >"$work/box/Vagrantfile"
tar -czf "$work/lv.box" -C "$work/box" box.img metadata.json Vagrantfile
rm -r "$work/box"
echo "== lv.box: $(du -h "$work/lv.box" | cut -f1) (box.img first, as Packer writes it)"

now() { date +%s.%N; }
best_envy=999 best_raw=999
for run in $(seq "$RUNS"); do
    rm -rf "$work/home" "$work/out" && mkdir -p "$work/home" "$work/out"
    sync
    t0=$(now)
    ENVY_HOME=$work/home "$envy" -q box add "$work/lv.box" >/dev/null
    t1=$(now)
    sha256sum "$work/lv.box" >/dev/null
    tar -xzf "$work/lv.box" -C "$work/out" box.img
    sync -f "$work/out/box.img"
    t2=$(now)
    envy_s=$(python3 -c "print($t1-$t0)") raw_s=$(python3 -c "print($t2-$t1)")
    best_envy=$(python3 -c "print(min($best_envy, $envy_s))") best_raw=$(python3 -c "print(min($best_raw, $raw_s))")
    echo "   run $run: envy $(printf %.3f "$envy_s") s, sha256sum + tar -xzf $(printf %.3f "$raw_s") s"
done
stored=$(find "$work/home/boxes" -name disk.qcow2 | head -1)
cmp -s "$stored" "$work/out/box.img" || { echo "error: envy stored another disk than tar unpacked" >&2; exit 1; }
echo "== best of $RUNS: envy $(printf %.3f "$best_envy") s, raw $(printf %.3f "$best_raw") s, ratio $(python3 -c "print(f'{$best_envy/$best_raw:.2f}')")"
