#!/usr/bin/env bash
# Times envy's lxd provider beside the lxc client on the same daemon and image, in one run:
#   `envy up` of a box already uploaded + first `envy exec -- true`
#   vs  `lxc launch` of that image (same raw.lxc init) + `lxc exec -- true`;
#   `envy run --provider lxd --box B -- true` (a throwaway: up, exec, delete)
#   vs  `lxc launch` + `lxc exec -- true` + `lxc delete --force`
# Each side's machine is deleted between runs (not timed). Starts its own LXD daemon
# in a temp LXD_DIR (Debian's lxd), stopped at the end.
# Needs root, lxd, lxd-client, busybox-static and hyperfine.
# Usage: benches/lxd.sh [path/to/envy]   (default: target/release/envy, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."

. benches/lib.sh
bench_require_tools lxd:lxd lxc:lxd-client busybox:busybox-static hyperfine:hyperfine
bench_require_root
ENVY=$(bench_envy "${1:-}")

work=$(mktemp -d /tmp/envy-bench.XXXXXX)
chmod 711 "$work"
export ENVY_HOME=$work/home CI=1 LXD_DIR=$work/lxd
mkdir -p "$LXD_DIR" "$work/project"
cleanup() {
  set +e
  (cd "$work/project" && "$ENVY" destroy --force >/dev/null 2>&1)
  lxc delete --force rawbench >/dev/null 2>&1
  lxd shutdown --timeout 30 >/dev/null 2>&1
  grep -F " $work/" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l
  rm -rf "$work"
}
trap cleanup EXIT
/usr/bin/lxd --group root --logfile "$LXD_DIR/lxd.log" >/dev/null 2>&1 &
lxd waitready --timeout 60
lxd init --preseed <<'YAML'
storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  devices:
    root:
      path: /
      pool: default
      type: disk
YAML

bench_busybox_box "$ENVY" "$work/rootfs" "$work/project/bench.box" bench
cat >"$work/project/Envfile" <<'TOML'
[machine.m]
box = { path = "bench.box" }
provider = "lxd"
TOML
cd "$work/project"
# Fetches the box and uploads its image: not part of the timing.
"$ENVY" -q up --no-provision && "$ENVY" -q destroy --force
image=$(lxc image list --format csv -c l | grep envy-box- | cut -d' ' -f1)

export ENVY image
hyperfine --warmup 1 --runs 10 -N \
  --prepare "$ENVY -q destroy --force" \
  --command-name "envy up + exec true" "sh -c '$ENVY -q up --no-provision && $ENVY exec m -- true'" \
  --prepare "sh -c 'lxc delete --force rawbench || true'" \
  --command-name "lxc launch + exec true" \
  "sh -c 'lxc launch -q $image rawbench -c raw.lxc=\"lxc.init.cmd = /bin/sh /etc/envy-init\" && lxc exec rawbench -- true'" \
  2>&1 | grep -v "^ *$"

# The throwaway of `envy run`, its project folder included (a disk device), beside the
# same three steps by hand.
lxc delete --force rawbench >/dev/null 2>&1 || true
hyperfine --warmup 1 --runs 10 -N \
  --command-name "envy run --box -- true" "$ENVY -q run --provider lxd --box bench.box -- true" \
  --command-name "lxc launch + exec true + delete" \
  "sh -c 'lxc launch -q $image rawbench -c raw.lxc=\"lxc.init.cmd = /bin/sh /etc/envy-init\" && lxc exec rawbench -- true && lxc delete --force rawbench'" \
  2>&1 | grep -v "^ *$"
