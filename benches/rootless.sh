#!/usr/bin/env bash
# Times envy's container provider as root beside envy as a normal user (its machines in
# the user's own namespace, src/userns.rs), on the same busybox box, in one run:
#   1. `envy up` of an already-fetched box to ready
#   2. `envy exec -- true`
# The user is envy-rootless (made with useradd if missing, as the tests do).
# Needs root (to switch user), runc, slirp4netns, iproute2, uidmap, busybox-static and hyperfine.
# Usage: benches/rootless.sh [path/to/envy]   (default: target/release/envy, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."

. benches/lib.sh
bench_require_tools runc:runc slirp4netns:slirp4netns ip:iproute2 newuidmap:uidmap busybox:busybox-static hyperfine:hyperfine
bench_require_root
ENVY=$(bench_envy "${1:-}")
user=envy-rootless
id "$user" >/dev/null 2>&1 || useradd -m -s /bin/sh "$user"

work=$(mktemp -d /tmp/envy-bench.XXXXXX)
chmod 755 "$work"
cleanup() {
  set +e
  as root destroy --force >/dev/null 2>&1
  as user destroy --force >/dev/null 2>&1
  holder=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$work/user/home/run/userns.pid" 2>/dev/null)
  [ -n "$holder" ] && kill "$holder"
  rm -rf "$work"
}
trap cleanup EXIT
# as root|user ARGS...: envy run the same way for both sides (setpriv, a clean
# environment, the side's own project and ENVY_HOME), so only the mode differs.
as() {
  local side=$1 who=root; shift
  [ "$side" = user ] && who=$user
  setpriv --reuid="$who" --regid="$who" --clear-groups env -i HOME="$(getent passwd "$who" | cut -d: -f6)" PATH="$PATH" CI=1 \
    ENVY_HOME="$work/$side/home" sh -c 'cd "$0" && exec "$@"' "$work/$side" "$ENVY" "$@"
}
export -f as
export ENVY user work

bench_busybox_box "$ENVY" "$work/rootfs" "$work/bench.box" bench
chmod 644 "$work/bench.box"
for side in root user; do
  mkdir -p "$work/$side"
  printf '[machine.m]\nbox = { path = "%s" }\nprovider = "container"\nsync = [".:/project"]\n' "$work/bench.box" >"$work/$side/Envfile"
done
chown -R "$user:" "$work/user"
# Fetch (unpack) the box on each side: not part of the timing. The normal user is told
# once per up that its limits are not applied (no delegated cgroup here): not shown.
for side in root user; do as "$side" -q up --no-provision 2>/dev/null; done

echo "== up to ready (box already fetched)"
hyperfine --shell=bash --warmup 1 --runs 10 --export-json "$work/up.json" \
  --prepare "as root -q halt --force >/dev/null 2>&1; as user -q halt --force >/dev/null 2>&1" \
  -n "envy up (root)" "as root -q up --no-provision 2>/dev/null" \
  -n "envy up (normal user)" "as user -q up --no-provision 2>/dev/null"

echo "== exec true"
for side in root user; do as "$side" -q up --no-provision 2>/dev/null; done
hyperfine --shell=bash --warmup 3 --runs 30 --export-json "$work/exec.json" \
  -n "envy exec -- true (root)" "as root exec m -- true" \
  -n "envy exec -- true (normal user)" "as user exec m -- true"

python3 - "$work/up.json" "$work/exec.json" <<'PY'
import json, sys
for path in sys.argv[1:]:
    r = json.load(open(path))["results"]
    root, user = r[0]["mean"], r[1]["mean"]
    print(f"{r[0]['command']}: {root*1000:.1f} ms, {r[1]['command']}: {user*1000:.1f} ms, normal user / root {user/root:.2f}x")
PY
