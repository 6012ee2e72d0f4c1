#!/usr/bin/env bash
# Times `envy run -- CMD` on a two-machine project (db with a `ready` check, web
# reaching it by name) beside the same work done with envy's own commands by hand:
# `envy up` + `envy exec web -- CMD` + `envy destroy --force`. The difference is what
# a throwaway copy costs (its own state, network and ports, the ready wait, cleanup).
# Needs root, runc, slirp4netns, iproute2, busybox-static and hyperfine.
# Usage: benches/run.sh [path/to/envy]   (default: target/release/envy, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."

. benches/lib.sh
bench_require_tools runc:runc slirp4netns:slirp4netns ip:iproute2 busybox:busybox-static hyperfine:hyperfine
bench_require_root
ENVY=$(bench_envy "${1:-}")

work=$(mktemp -d /tmp/envy-bench.XXXXXX)
export ENVY_HOME=$work/home CI=1
cleanup() {
  set +e
  (cd "$work/project" 2>/dev/null && "$ENVY" destroy --force >/dev/null 2>&1)
  rm -rf "$work"
}
trap cleanup EXIT

# A busybox box, fetched once (not timed).
bench_busybox_box "$ENVY" "$work/rootfs" "$work/bench.box" bench
mkdir -p "$work/project/db"
echo hello >"$work/project/db/hello.txt"
cat >"$work/project/Envfile" <<ENVFILE
[defaults]
box = { path = "$work/bench.box" }
sync = [".:/project"]

[machine.db]
provision = ["httpd -p 7000 -h /project/db"]
ready = { tcp = 7000 }

[machine.web]
env = { DB_URL = "http://db:7000" }
ENVFILE
cd "$work/project"
cmd='wget -q -O /dev/null $DB_URL/hello.txt'
"$ENVY" -q run -- true >/dev/null # fetch and unpack the box once

hyperfine --warmup 1 --runs 10 --export-json "$work/run.json" \
  -n "by hand: up + exec + destroy" "$ENVY -q up && $ENVY -q exec web -- sh -c '$cmd' && $ENVY -q destroy --force" \
  -n "envy run" "$ENVY -q run --machine web -- sh -c '$cmd'"
python3 - "$work/run.json" <<'PY'
import json, sys
r = {x["command"]: x["mean"] for x in json.load(open(sys.argv[1]))["results"]}
raw, envy = r["by hand: up + exec + destroy"], r["envy run"]
print(f"by hand {raw*1000:.0f} ms, envy run {envy*1000:.0f} ms, ratio {envy/raw:.2f}")
PY
