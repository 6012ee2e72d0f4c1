#!/usr/bin/env bash
# Times envy's container provider beside raw runc on the same rootfs, in one run:
#   1. `envy up` of an already-fetched box to ready  vs  overlay mount + netns + `runc run -d`
#   2. `envy exec -- true`                           vs  `runc exec <id> true`
#      `envy status`                                 vs  `runc state <id>`
#   3. `envy up` of N machines of one box (MANY, default 100) vs the same N made by hand,
#      twice as many at a time as the host has cores, as envy starts them (xargs -P);
#      and the disk of envy's N (upper layers); then `envy destroy` of the N vs the same
#      taken down by hand (runc delete --force, veth, netns, overlay), as many at a time
# Needs root, runc, slirp4netns, iproute2, busybox-static and hyperfine.
# Usage: benches/container.sh [path/to/envy]   (default: target/release/envy, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."

. benches/lib.sh
bench_require_tools runc:runc slirp4netns:slirp4netns ip:iproute2 busybox:busybox-static hyperfine:hyperfine
bench_require_root
ENVY=$(bench_envy "${1:-}")

work=$(mktemp -d /tmp/envy-bench.XXXXXX)
export ENVY_HOME=$work/home CI=1
raw=$work/raw
cleanup() {
  set +e
  (cd "$work/project" 2>/dev/null && "$ENVY" destroy --force >/dev/null 2>&1)
  (cd "$work/many" 2>/dev/null && "$ENVY" destroy --force >/dev/null 2>&1)
  raw_down
  raw_many_down
  rm -rf "$work"
}
# The raw side does by hand what envy does: overlay, project netns + bridge +
# slirp4netns, machine netns + veth + address, runc run -d.
raw_down() {
  runc --root "$raw/runc" delete --force rawbench >/dev/null 2>&1
  [ -s "$raw/slirp.pid" ] && kill "$(cat "$raw/slirp.pid")" 2>/dev/null && rm -f "$raw/slirp.pid"
  mountpoint -q "$raw/rootfs" && umount "$raw/rootfs"
  for point in "$raw"/sync/*; do mountpoint -q "$point" && umount "$point"; done
  rm -rf "$raw/sync"
  rm -rf "$raw/upper" "$raw/work"
  ip netns delete envyrawbench 2>/dev/null
  ip netns delete envyrawproj 2>/dev/null
  true
}
raw_up() {
  mkdir -p "$raw/upper" "$raw/work" "$raw/rootfs"
  mount -t overlay overlay -o "lowerdir=$lower,upperdir=$raw/upper,workdir=$raw/work" "$raw/rootfs"
  # envy's bundle mounts the project, and its Envfile and lock read-only over it, from
  # bind mounts in the machine dir: the raw side makes the same three.
  mkdir -p "$raw/sync/0" && touch "$raw/sync/guard-0" "$raw/sync/guard-1"
  mount --bind "$work/project" "$raw/sync/0"
  mount --bind "$work/project/Envfile" "$raw/sync/guard-0"
  mount --bind "$work/project/Envfile.lock" "$raw/sync/guard-1"
  ip netns add envyrawproj
  printf 'link set lo up\nlink add br0 type bridge\nlink set br0 up\n' | ip -n envyrawproj -batch -
  slirp4netns --disable-host-loopback --netns-type=path /run/netns/envyrawproj tap0 >/dev/null 2>&1 &
  echo $! >"$raw/slirp.pid"
  until ip -n envyrawproj link show tap0 >/dev/null 2>&1; do sleep 0.001; done
  ip netns add envyrawbench
  printf 'link set tap0 master br0 up\nlink add verawbench type veth peer name eth0 netns /run/netns/envyrawbench\nlink set verawbench master br0 up\n' | ip -n envyrawproj -batch -
  printf 'link set lo up\naddress add 10.0.2.20/24 dev eth0\nlink set eth0 up\nroute add default via 10.0.2.2\n' | ip -n envyrawbench -batch -
  runc --root "$raw/runc" run --detach --bundle "$raw" rawbench </dev/null >/dev/null 2>&1
}
# N raw machines: one project network (bridge + slirp4netns), then per machine an
# overlay, a netns with its veth and address, and `runc run -d` (raw_machine I).
raw_many_up() {
  ip netns add envyrawmany
  printf 'link set lo up\nlink add br0 type bridge\nlink set br0 up\n' | ip -n envyrawmany -batch -
  slirp4netns --disable-host-loopback --netns-type=path /run/netns/envyrawmany tap0 >/dev/null 2>&1 &
  echo $! >"$raw/many/slirp.pid"
  until ip -n envyrawmany link show tap0 >/dev/null 2>&1; do sleep 0.001; done
  ip -n envyrawmany link set tap0 master br0 up
}
raw_machine() {
  local i=$1 dir=$raw/many/m$1 id=envyraw$1
  mkdir -p "$dir/upper" "$dir/work" "$dir/rootfs"
  cp "$raw/many/hosts" "$raw/many/resolv.conf" "$dir/"
  sed -e "s#RAWDIR#$dir#g" -e "s#RAWID#$id#g" "$raw/many/config.template" >"$dir/config.json"
  mount -t overlay overlay -o "lowerdir=$lower,upperdir=$dir/upper,workdir=$dir/work" "$dir/rootfs"
  ip netns add "$id"
  printf 'link add ve%s type veth peer name eth0 netns /run/netns/%s\nlink set ve%s master br0 up\n' "$i" "$id" "$i" | ip -n envyrawmany -batch -
  printf 'link set lo up\naddress add 10.0.2.%s/24 dev eth0\nlink set eth0 up\nroute add default via 10.0.2.2\n' "$((i + 20))" | ip -n "$id" -batch -
  runc --root "$raw/runc" run --detach --bundle "$dir" "$id" </dev/null >/dev/null 2>&1
}
# One raw machine taken down (raw_machine_down I): what `envy destroy` does for it.
raw_machine_down() {
  local i=$1 dir=$raw/many/m$1 id=envyraw$1
  runc --root "$raw/runc" delete --force "$id" >/dev/null 2>&1
  ip -n envyrawmany link delete "ve$i" 2>/dev/null
  ip netns delete "$id" 2>/dev/null
  umount "$dir/rootfs" 2>/dev/null
  rm -rf "$dir"
}
raw_many_down() (
  set +e
  for id in $(runc --root "$raw/runc" list -q 2>/dev/null | grep '^envyraw[0-9]'); do
    runc --root "$raw/runc" delete --force "$id" >/dev/null 2>&1
    ip netns delete "$id" 2>/dev/null
  done
  [ -s "$raw/many/slirp.pid" ] && kill "$(cat "$raw/many/slirp.pid")" 2>/dev/null
  for point in "$raw"/many/m*/rootfs; do mountpoint -q "$point" && umount "$point"; done
  ip netns delete envyrawmany 2>/dev/null
  rm -rf "$raw/many"
  true
)
trap cleanup EXIT

# A busybox root filesystem, built into a box and fetched once (not timed).
mkdir -p "$work/project"
bench_busybox_box "$ENVY" "$work/rootfs" "$work/project/bench.box" bench
cat >"$work/project/Envfile" <<'TOML'
[machine.m]
box = { path = "bench.box" }
provider = "container"
sync = [".:/project"]
TOML
cd "$work/project"
"$ENVY" -q up --no-provision   # fetches (unpacks) the box: not part of the timing
# envy's container ids, whichever runtime made them (its own, or runc).
container_ids() { ls "$ENVY_HOME/run/containers" 2>/dev/null; runc --root "$ENVY_HOME/run/runc" list -q 2>/dev/null; true; }
id=$(container_ids | head -1)
machine_dir=$(bench_machine_dir m)
# The box's unpacked rootfs, found by the digest envy recorded for the machine.
lower=$ENVY_HOME/boxes/$(cat "$machine_dir/box")/rootfs

# The raw bundle: envy's own config.json, pointed at the raw dir, netns and cgroup.
mkdir -p "$raw"
cp "$machine_dir/hosts" "$machine_dir/resolv.conf" "$raw/"
# envy keeps its network namespaces in its runtime dir; the raw side's are ip netns's.
sed -e "s#$machine_dir#$raw#g" -e "s#$id#envyrawbench#g" -e "s#$ENVY_HOME/run/netns/envyrawbench#/run/netns/envyrawbench#" \
  "$machine_dir/config.json" >"$raw/config.json"
export -f raw_up raw_down raw_machine raw_machine_down
export raw lower

echo "== up to ready (box already fetched; both sides start slirp4netns, bridge, veth)"
hyperfine --shell=bash --warmup 1 --runs 10 --export-json "$work/up.json" \
  --prepare "\"$ENVY\" -q halt --force >/dev/null 2>&1; raw_down" \
  -n "envy up" "\"$ENVY\" -q up --no-provision" \
  -n "raw: overlay + netns/bridge/slirp4netns/veth + runc run -d" "raw_up"
raw_down

echo "== exec true"
"$ENVY" -q up --no-provision
raw_up
hyperfine --shell=none --warmup 3 --runs 30 --export-json "$work/exec.json" \
  -n "envy exec -- true" "$ENVY exec m -- true" \
  -n "runc exec true" "runc --root $raw/runc exec rawbench true"
echo "== status of a running machine"
hyperfine --shell=none --warmup 3 --runs 30 --export-json "$work/status.json" \
  -n "envy status" "$ENVY status" \
  -n "runc state" "runc --root $raw/runc state rawbench"
raw_down

many=${MANY:-100}
echo "== $many machines of one box"
mkdir -p "$work/many"
cp "$work/project/bench.box" "$work/many/"
{ echo '[defaults]'; echo 'box = { path = "bench.box" }'; echo 'provider = "container"'
  for i in $(seq 1 "$many"); do echo "[machine.m$i]"; done; } >"$work/many/Envfile"
cd "$work/many"
start=$(date +%s.%N)
"$ENVY" -q up --no-provision
end=$(date +%s.%N)
envy_many=$(python3 -c "print(f'{$end - $start:.2f}')")
box_kib=$(du -sk "$lower" | cut -f1)
layers_kib=$(du -sck "$ENVY_HOME"/projects/*/machines/*/upper "$ENVY_HOME"/projects/*/machines/*/work | tail -1 | cut -f1)
# The raw side's bundle: envy's m1, pointed at raw dirs, the way the single raw machine is.
m1_dir=$(bench_machine_dir m1)
m1_id=$(container_ids | grep -- '-m1$')
mkdir -p "$raw/many"
cp "$m1_dir/hosts" "$m1_dir/resolv.conf" "$raw/many/"
sed -e "s#$m1_dir#RAWDIR#g" -e "s#$m1_id#RAWID#g" -e "s#$ENVY_HOME/run/netns/RAWID#/run/netns/RAWID#" \
  "$m1_dir/config.json" >"$raw/many/config.template"
start=$(date +%s.%N)
"$ENVY" -q destroy --force
end=$(date +%s.%N)
envy_many_down=$(python3 -c "print(f'{$end - $start:.2f}')")
raw_many_up
start=$(date +%s.%N)
seq 1 "$many" | xargs -P "$((2 * $(nproc)))" -I{} bash -c 'raw_machine {}'
end=$(date +%s.%N)
raw_many=$(python3 -c "print(f'{$end - $start:.2f}')")
start=$(date +%s.%N)
seq 1 "$many" | xargs -P "$((2 * $(nproc)))" -I{} bash -c 'raw_machine_down {}'
end=$(date +%s.%N)
raw_many_down=$(python3 -c "print(f'{$end - $start:.2f}')")
raw_many_down
echo "$many machines up: envy $envy_many s, raw $raw_many s, ratio $(python3 -c "print(f'{$envy_many / $raw_many:.2f}')")x"
echo "$many machines destroyed: envy $envy_many_down s, raw $raw_many_down s, ratio $(python3 -c "print(f'{$envy_many_down / $raw_many_down:.2f}')")x"
echo "box rootfs: ${box_kib} KiB; $many machines' own layers: ${layers_kib} KiB (a copy each would be $((box_kib * many)) KiB)"

python3 - "$work/up.json" "$work/exec.json" "$work/status.json" <<'PY'
import json, sys
for path in sys.argv[1:]:
    r = json.load(open(path))["results"]
    envy, raw = r[0]["mean"], r[1]["mean"]
    print(f"{r[0]['command']}: {envy*1000:.1f} ms, {r[1]['command']}: {raw*1000:.1f} ms, ratio {envy/raw:.2f}x")
PY
