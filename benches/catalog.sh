#!/usr/bin/env bash
# Times resolving a catalog name through a simplestreams mirror on 127.0.0.1, in one run:
#   envy box outdated --json   (catalog, index.json, images.json, pick the newest build)
# beside the raw tools doing the same reads:
#   curl index.json; curl images.json | python3 (parse, pick the product's newest rootfs)
# The mirror (python3 -m http.server) lists PRODUCTS products with 3 builds of 4 items
# each, about the size of images.linuxcontainers.org's. Ratio = envy / raw (below 1:
# envy faster). ENVY=PATH times another binary (default: a release build).
# Needs: cargo, curl, python3.
set -euo pipefail

PRODUCTS=${PRODUCTS:-1500}
RUNS=${RUNS:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
. "$here/benches/lib.sh"
bench_require_tools curl:curl python3:python3
envy=$(cd "$here" && bench_envy "${ENVY:-}")

work=$(mktemp -d /tmp/envy-catalog-bench-XXXXXX)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/mirror/streams/v1" "$work/catalog" "$work/project" "$work/home"
python3 - "$work/mirror/streams/v1" "$PRODUCTS" <<'EOF'
import hashlib, json, sys
out, n = sys.argv[1], int(sys.argv[2])
h = lambda s: hashlib.sha256(s.encode()).hexdigest()
products = {}
for i in range(n):
    key = f"distro{i}:rel:amd64:default"
    versions = {}
    for d in ("20250101_05:24", "20250102_05:24", "20250103_05:24"):
        base = f"images/distro{i}/rel/amd64/default/{d}"
        versions[d] = {"items": {
            "incus.tar.xz": {"ftype": "incus.tar.xz", "sha256": h(base + "i"), "size": 600, "path": f"{base}/incus.tar.xz",
                             "combined_sha256": h(base + "c"), "combined_rootxz_sha256": h(base + "r"), "combined_squashfs_sha256": h(base + "s")},
            "root.tar.xz": {"ftype": "root.tar.xz", "sha256": h(base + "t"), "size": 90000000, "path": f"{base}/rootfs.tar.xz"},
            "root.squashfs": {"ftype": "squashfs", "sha256": h(base + "q"), "size": 120000000, "path": f"{base}/rootfs.squashfs"},
            "disk.qcow2": {"ftype": "disk-kvm.img", "sha256": h(base + "d"), "size": 400000000, "path": f"{base}/disk.qcow2"},
        }}
    products[key] = {"arch": "amd64", "aliases": f"distro{i}/rel/default,distro{i}/rel", "os": f"Distro{i}", "release": "rel",
                     "variant": "default", "versions": versions}
json.dump({"content_id": "images", "datatype": "image-downloads", "format": "products:1.0", "products": products},
          open(f"{out}/images.json", "w"))
json.dump({"format": "index:1.0", "index": {"images": {"datatype": "image-downloads", "path": "streams/v1/images.json",
          "products": list(products)}}}, open(f"{out}/index.json", "w"))
EOF
last=$((PRODUCTS - 1))
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$work/mirror" && exec python3 -m http.server --bind 127.0.0.1 "$port" >/dev/null 2>&1) &
server_pid=$!
for _ in $(seq 50); do curl -fs -o /dev/null "http://127.0.0.1:$port/streams/v1/index.json" && break; sleep 0.1; done
mirror="http://127.0.0.1:$port"
printf '[[box]]\nname = "d"\n[[box.upstream]]\nprovider = "container"\nsimplestreams = "%s/"\nproduct = "distro%s/rel"\n' \
    "$mirror" "$last" >"$work/catalog/d.toml"
printf '[machine.web]\nbox = "d"\nprovider = "container"\n' >"$work/project/Envfile"
echo "== images.json: $(du -h "$work/mirror/streams/v1/images.json" | cut -f1), $PRODUCTS products"

now() { date +%s.%N; }
best_envy=999 best_raw=999
for run in $(seq "$RUNS"); do
    t0=$(now)
    ENVY_HOME=$work/home ENVY_CATALOG=$work/catalog "$envy" -q -C "$work/project" box outdated --json >"$work/envy.json"
    t1=$(now)
    curl -fsS -o /dev/null "$mirror/streams/v1/index.json"
    curl -fsS "$mirror/streams/v1/images.json" | python3 -c '
import json, sys
p = json.load(sys.stdin)["products"][sys.argv[1]]["versions"]
print(p[max(p)]["items"]["root.tar.xz"]["sha256"])' "distro$last:rel:amd64:default" >"$work/raw.txt"
    t2=$(now)
    envy_s=$(python3 -c "print($t1-$t0)") raw_s=$(python3 -c "print($t2-$t1)")
    best_envy=$(python3 -c "print(min($best_envy, $envy_s))") best_raw=$(python3 -c "print(min($best_raw, $raw_s))")
    echo "   run $run: envy $(printf %.3f "$envy_s") s, curl + python3 $(printf %.3f "$raw_s") s"
done
grep -q "sha256:$(cat "$work/raw.txt")" "$work/envy.json" || { echo "error: envy and the raw tools picked different builds" >&2; exit 1; }
echo "== best of $RUNS: envy $(printf %.3f "$best_envy") s, raw $(printf %.3f "$best_raw") s, ratio $(python3 -c "print(f'{$best_envy/$best_raw:.2f}')")"
