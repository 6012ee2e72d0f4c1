#!/usr/bin/env bash
# Times pulling a multi-layer image from a local registry, in one run:
#   envy box add oci://…   (fetch + verify every blob, apply the layers into rootfs/)
# beside the raw tools doing the same work:
#   skopeo copy docker://… oci:DIR:TAG   then   umoci unpack --image DIR:TAG BUNDLE
# The registry is Debian's docker-registry on 127.0.0.1; the image (a busybox base and
# LAYERS layers of LAYER_MIB MiB incompressible data plus 1000 small files each) is made
# by umoci and pushed by skopeo. Ratio = envy / raw (below 1: envy faster). Run as root.
# Needs: cargo, docker-registry, skopeo, umoci, busybox-static, python3.
set -euo pipefail

LAYERS=${LAYERS:-3}
LAYER_MIB=${LAYER_MIB:-128}
RUNS=${RUNS:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}

for tool in docker-registry skopeo umoci python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install $tool)" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "missing /bin/busybox (apt-get install busybox-static)" >&2; exit 1; }

(cd "$here" && cargo build --release --quiet)
envy=$CARGO_TARGET_DIR/release/envy

work=$(mktemp -d /tmp/envy-oci-bench-XXXXXX)
registry_pid=
cleanup() {
    [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.2f}')" "$1" "$2"; }
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}')" "$1" "$2"; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<EOF
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $work/storage}
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$work/registry.yml" >/dev/null 2>&1 &
registry_pid=$!
for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$port))" 2>/dev/null && break; sleep 0.1; done

echo "== making the image: busybox + $LAYERS layers of $LAYER_MIB MiB (+1000 small files each)"
layout=$work/layout
umoci init --layout "$layout"
umoci new --image "$layout:img"
mkdir -p "$work/base/bin" "$work/base/etc"
cp /bin/busybox "$work/base/bin/busybox"
for applet in $(/bin/busybox --list); do ln -sf busybox "$work/base/bin/$applet"; done
echo "root:x:0:0:root:/root:/bin/sh" > "$work/base/etc/passwd"
tar -C "$work/base" -cf "$work/layer-base.tar" .
umoci raw add-layer --image "$layout:img" "$work/layer-base.tar"
for n in $(seq 1 "$LAYERS"); do
    mkdir -p "$work/l$n/data/$n" "$work/l$n/etc/conf-$n"
    head -c $((LAYER_MIB << 20)) /dev/urandom > "$work/l$n/data/$n/blob"
    for i in $(seq 1 1000); do echo "setting $n.$i" > "$work/l$n/etc/conf-$n/file-$i"; done
    tar -C "$work/l$n" -cf "$work/layer-$n.tar" .
    umoci raw add-layer --image "$layout:img" "$work/layer-$n.tar"
    rm -rf "$work/l$n" "$work/layer-$n.tar"
done
skopeo copy --quiet --dest-tls-verify=false "oci:$layout:img" "docker://127.0.0.1:$port/bench/img:1"
rm -rf "$layout"
size=$(du -sh "$work/storage" | cut -f1)
ref="127.0.0.1:$port/bench/img:1"

for run in $(seq 1 "$RUNS"); do
    echo "== run $run: pulling $ref ($size in the registry)"
    sync
    t0=$(now)
    skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$work/raw:img"
    t1=$(now)
    umoci unpack --image "$work/raw:img" "$work/bundle" >/dev/null
    t2=$(now)
    raw=$(secs "$t0" "$t2")
    echo "   skopeo copy $(secs "$t0" "$t1") s + umoci unpack $(secs "$t1" "$t2") s = $raw s"
    rm -rf "$work/raw" "$work/bundle"

    sync
    t0=$(now)
    ENVY_HOME=$work/home CI=1 NO_PROXY=127.0.0.1 "$envy" -q box add "oci://$ref" >/dev/null
    t1=$(now)
    mine=$(secs "$t0" "$t1")
    echo "   envy box add $mine s"
    echo "   ratio envy/raw: $(ratio "$mine" "$raw")"
    rm -rf "$work/home"
done
