#!/usr/bin/env bash
# Times snapshots and sharing beside the raw tools, in one run:
#   1. container: `envy snapshot save` of a running machine (a copy of its upper layer),
#      right after the data was written (with how long envy held it still) and again after
#      `sync` (a reflink shares blocks on disk, so data still in the page cache is written
#      out first), of a halted one (a rename), and `restore`, with 1 MiB, 100 MiB and
#      1 GiB changed, beside `tar --zstd` of the same layer (what an archive of it costs)
#      and `cp -a` of it (a plain copy: a reflink where the filesystem has them, as
#      envy's copy is);
#   2. halted VM: `envy snapshot save` with a 1 GiB vs a 10 GiB disk, beside
#      `qemu-img snapshot -c` on a copy of the same overlay (the cost must not grow);
#   3. `envy share` of the container with 1 GiB changed beside `tar | zstd -3 -T0` of its root filesystem,
#      with throughput, SHARE_RUNS times each, alternating, and the ratio of the totals.
# Needs root, runc, slirp4netns, busybox-static, qemu, and what boxes/recipes/tiny-vm.sh needs.
# Usage: benches/snapshot.sh [path/to/envy]   (default: target/release/envy, built if missing)
# Environment:
#   BENCH_FS=xfs|btrfs    the work dir (ENVY_HOME: machines' upper and snapshot layers, and
#                         the raw tools' files) on a fresh filesystem of that kind, an 8 GiB
#                         sparse image loop-mounted for the run and removed after it: there
#                         copy_file_range clones extents (reflinks) instead of copying bytes.
#                         Needs xfsprogs or btrfs-progs. Default: the host's filesystem (/tmp).
#   BENCH_ONLY=container  only section 1.
#   SHARE_RUNS=N          how many times section 3 runs each side (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. benches/lib.sh
bench_require_root
ENVY=$(bench_envy "${1:-}")

case ${BENCH_FS:-} in
  '') ;;
  xfs) bench_require_tools mkfs.xfs:xfsprogs losetup:mount ;;
  btrfs) bench_require_tools mkfs.btrfs:btrfs-progs losetup:mount ;;
  *) echo "error: BENCH_FS=$BENCH_FS is not known (xfs, btrfs, or unset for the host's filesystem)" >&2; exit 1 ;;
esac
case ${BENCH_ONLY:-} in
  '' | container) ;;
  *) echo "error: BENCH_ONLY=$BENCH_ONLY is not known (container, or unset for every section)" >&2; exit 1 ;;
esac

work=$(mktemp -d /tmp/envy-snapbench.XXXXXX)
image= loop=
export ENVY_HOME=$work/home CI=1 ENVY_ACCEL=tcg
cleanup() {
  set +e
  for p in "$work"/ct "$work"/vm1 "$work"/vm10; do
    [ -f "$p/Envfile" ] && (cd "$p" && "$ENVY" destroy --force >/dev/null 2>&1)
  done
  if [ -n "$loop" ]; then
    cd /   # the sections run inside the work dir
    mountpoint -q "$work" && { umount "$work" || umount -l "$work"; }
    losetup -d "$loop"
  fi
  [ -n "$image" ] && rm -f "$image"
  rm -rf "$work"
}
trap cleanup EXIT

if [ -n "${BENCH_FS:-}" ]; then
  image=$work.img
  truncate -s 8G "$image"
  loop=$(losetup --find --show "$image")
  case $BENCH_FS in
    xfs) mkfs.xfs -q -m reflink=1 "$loop" ;;
    btrfs) mkfs.btrfs -q "$loop" >/dev/null ;;
  esac
  mount "$loop" "$work"
fi
echo "== work dir $work on $(findmnt -no FSTYPE,SOURCE -T "$work" | xargs), kernel $(uname -r)"

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.3f'; }
# $1 / $2, with $3 decimals (default 2).
ratio() { echo "$1 / $2" | bc -l | xargs printf "%.${3:-2}f"; }

# A busybox container box.
bench_busybox_box "$ENVY" "$work/busybox-rootfs" "$work/busybox.box" busybox

echo "== container snapshots (changed data in the machine's own layer)"
mkdir -p "$work/ct"
cat > "$work/ct/Envfile" <<EOT
[machine.ct]
box = { path = "$work/busybox.box" }
EOT
cd "$work/ct"
"$ENVY" -q up
printf '%-10s %13s %8s %13s %12s %10s %11s %9s %11s %10s\n' changed "save running" paused "after sync" "save halted" restore "tar --zstd" "cp -a" "halted/tar" "synced/cp"
for mib in 1 100 1024; do
  "$ENVY" exec -- sh -c "head -c $((mib << 20)) /dev/urandom > /root/data-$mib"
  # -v: envy says how long it held the machine still ("held still for N ms").
  t0=$(now); "$ENVY" -v snapshot save "r$mib" >/dev/null 2>"$work/save.log"; t1=$(now)
  paused=$(grep -o 'held still for [0-9]* ms' "$work/save.log" | grep -o '[0-9]*' || echo '?')
  sync --file-system "$ENVY_HOME"
  s0=$(now); "$ENVY" -q snapshot save "s$mib"; s1=$(now)
  "$ENVY" -q halt
  t2=$(now); "$ENVY" -q snapshot save "h$mib"; t3=$(now)
  "$ENVY" -q snapshot restore "r$mib"; t4=$(now)
  # The halted save's layer, the one the chain ends in.
  machine_dir=$(bench_machine_dir ct)
  layer=$machine_dir/layers/$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['layers'][-1])" "$machine_dir/snapshots/h$mib.json")
  r0=$(now); tar --zstd -cf "$work/raw-$mib.tar.zst" -C "$layer" .; r1=$(now)
  c0=$(now); cp -a --reflink=auto "$layer" "$work/raw-$mib.copy"; c1=$(now)
  rm -rf "$work/raw-$mib.tar.zst" "$work/raw-$mib.copy"
  printf '%-10s %12ss %6sms %12ss %11ss %9ss %10ss %8ss %11s %10s\n' "${mib} MiB" "$(secs "$t0" "$t1")" "$paused" "$(secs "$s0" "$s1")" "$(secs "$t2" "$t3")" \
    "$(secs "$t3" "$t4")" "$(secs "$r0" "$r1")" "$(secs "$c0" "$c1")" \
    "$(ratio "$(secs "$t2" "$t3")" "$(secs "$r0" "$r1")")" "$(ratio "$(secs "$s0" "$s1")" "$(secs "$c0" "$c1")")"
  "$ENVY" -q up
done
[ "${BENCH_ONLY:-}" = container ] && exit 0
upper=$(bench_machine_dir ct)/upper
# The machine's frozen layers, top first, over the box: the raw side mounts the same.
chain=$(python3 -c "import json,sys; print(''.join(sys.argv[2] + '/layers/' + str(i) + ':' for i in reversed(json.load(open(sys.argv[1])))))" "$(bench_machine_dir ct)/layers.json" "$(bench_machine_dir ct)")

echo
echo "== envy share beside tar | zstd -3 -T0 of the same root filesystem, ${SHARE_RUNS:=3} runs each, alternating"
"$ENVY" -q halt
lower=$(find "$ENVY_HOME/boxes" -maxdepth 2 -type d -name rootfs | head -1)
# Read-only, the machine's own layer as the top lower one: envy share mounts that
# layer too while this stays mounted.
merged=$work/merged; mkdir -p "$merged"
mount -t overlay overlay -o "ro,lowerdir=$upper:$chain$lower" "$merged"
size=$(du -sm --apparent-size "$merged" | cut -f1)
total_envy=0; total_raw=0
for run in $(seq "$SHARE_RUNS"); do
  # Untimed syncs: neither side pays for writing back what the other left dirty
  # (neither syncs its output).
  rm -f "$work/ct.box" "$work/raw-share.tar.zst"; sync
  s0=$(now); "$ENVY" -q share -o "$work/ct.box" >/dev/null; s1=$(now)
  sync
  r0=$(now); tar -C "$merged" -cf - . | zstd -q -3 -T0 > "$work/raw-share.tar.zst"; r1=$(now)
  es=$(secs "$s0" "$s1"); rs=$(secs "$r0" "$r1")
  total_envy=$(echo "$total_envy + $es" | bc -l); total_raw=$(echo "$total_raw + $rs" | bc -l)
  printf 'run %s: envy share %ss (%s MiB/s)   tar|zstd %ss (%s MiB/s)   ratio %s\n' "$run" \
    "$es" "$(ratio "$size" "$es" 0)" "$rs" "$(ratio "$size" "$rs" 0)" "$(ratio "$es" "$rs")"
done
umount "$merged"
printf 'all %s runs (%s MiB): envy share %ss, tar|zstd %ss, ratio %s\n' "$SHARE_RUNS" "$size" "$(printf '%.3f' "$total_envy")" "$(printf '%.3f' "$total_raw")" "$(ratio "$total_envy" "$total_raw")"
"$ENVY" -q destroy --force
cd "$root"

echo
echo "== halted VM snapshots: 1 GiB vs 10 GiB disk"
tiny_rootfs=$(boxes/recipes/tiny-vm.sh)
"$ENVY" -q box build --kind qemu --rootfs "$tiny_rootfs" --name tiny-vm -o "$work/tiny.box" >/dev/null
printf '%-8s %12s %22s %8s\n' disk "envy save" "qemu-img snapshot -c" ratio
for gib in 1 10; do
  p=$work/vm$gib; mkdir -p "$p"
  cat > "$p/Envfile" <<EOT
[machine.vm]
box = { path = "$work/tiny.box" }
provider = "qemu"
memory = "256MiB"
disk = "${gib}GiB"
EOT
  (cd "$p" && "$ENVY" -q up && "$ENVY" exec -- sh -c 'head -c 8388608 /dev/urandom > /root/data; sync' && "$ENVY" -q halt)
  # This project's disk: the only overlay written since its Envfile (state is in ENVY_HOME).
  overlay=$(find "$ENVY_HOME/projects" -name overlay.qcow2 -newer "$p/Envfile" | head -1)
  cp --sparse=always "$overlay" "$work/raw-$gib.qcow2"
  t0=$(now); (cd "$p" && "$ENVY" -q snapshot save disk); t1=$(now)
  r0=$(now); qemu-img snapshot -c raw -U "$work/raw-$gib.qcow2" 2>/dev/null || qemu-img snapshot -c raw "$work/raw-$gib.qcow2"; r1=$(now)
  printf '%-8s %11ss %21ss %8s\n' "${gib} GiB" "$(secs "$t0" "$t1")" "$(secs "$r0" "$r1")" "$(ratio "$(secs "$t0" "$t1")" "$(secs "$r0" "$r1")")"
  (cd "$p" && "$ENVY" -q destroy --force)
done
