#!/usr/bin/env bash
# Times `envy box add` beside the raw tools doing the same work, in one run:
#  1. download + verify of a ~1 GiB qcow2 from 127.0.0.1: envy vs `curl -o` then `sha256sum`
#  2. envy's peak RSS during that download (/usr/bin/time -v)
#  3. unpacking a ~1 GiB rootfs tarball: envy's unpack step vs `tar -x` of the same tar,
#     and the whole local `envy box add` vs `cp` + `sha256sum` + `tar -x`
# Needs: cargo, curl, python3, qemu-img (qemu-utils), GNU time (package `time`).
set -euo pipefail

SIZE_MIB=${SIZE_MIB:-1024}
here=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}

for tool in curl python3 qemu-img sha256sum tar; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install ${tool/qemu-img/qemu-utils})" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "missing /usr/bin/time (apt-get install time)" >&2; exit 1; }

(cd "$here" && cargo build --release --quiet)
envy=$CARGO_TARGET_DIR/release/envy

work=$(mktemp -d /tmp/envy-bench-XXXXXX)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}')" "$1" "$2"; }

echo "== making test data (${SIZE_MIB} MiB, incompressible)"
head -c $((SIZE_MIB << 20)) /dev/urandom > "$work/disk.raw"
qemu-img convert -f raw -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
mkdir -p "$work/tree/data" "$work/tree/etc"
split -b 64M -d "$work/disk.raw" "$work/tree/data/blob-"
rm "$work/disk.raw"
for i in $(seq 1 2000); do echo "config $i" > "$work/tree/etc/file-$i"; done
tar -C "$work/tree" -cf "$work/rootfs.tar" .
rm -rf "$work/tree"
qcow_sha=$(sha256sum "$work/disk.qcow2" | cut -d' ' -f1)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$work" && exec python3 -m http.server --bind 127.0.0.1 "$port" >/dev/null 2>&1) &
server_pid=$!
for _ in $(seq 50); do curl -fs -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
url="http://127.0.0.1:$port/disk.qcow2"
cat "$work/disk.qcow2" "$work/rootfs.tar" > /dev/null   # both sides start from a warm page cache

echo "== download + verify of $(du -h "$work/disk.qcow2" | cut -f1) qcow2"
t0=$(now)
curl -fsS -o "$work/curl.qcow2" "$url"
t1=$(now)
echo "$qcow_sha  $work/curl.qcow2" | sha256sum -c --quiet
t2=$(now)
raw_dl=$(python3 -c "print($t2-$t0)")
echo "   curl $(python3 -c "print(f'{$t1-$t0:.2f}')") s, sha256sum $(python3 -c "print(f'{$t2-$t1:.2f}')") s"
rm "$work/curl.qcow2"

export ENVY_HOME=$work/home CI=1
t0=$(now)
/usr/bin/time -v -o "$work/time.txt" "$envy" -q box add "$url" --sha256 "$qcow_sha" >/dev/null
t1=$(now)
envy_dl=$(python3 -c "print($t1-$t0)")
rss_kib=$(awk -F: '/Maximum resident set size/ {gsub(/ /,"",$2); print $2}' "$work/time.txt")
rm -rf "$ENVY_HOME"

echo "== unpack of $(du -h "$work/rootfs.tar" | cut -f1) rootfs tarball"
# envy stages the tarball (a hashing copy), then unpacks that fresh copy: the raw side
# does the same (cp, sha256sum, tar -x), so both unpack steps run with the copy's
# dirty pages still being written back. `tar -x` of the cached original is shown too.
mkdir "$work/tar-x"
sync
t0=$(now)
tar -C "$work/tar-x" -xf "$work/rootfs.tar"
t1=$(now)
raw_x_cached=$(python3 -c "print($t1-$t0)")
rm -rf "$work/tar-x"

mkdir "$work/manual"
sync
t0=$(now)
cp "$work/rootfs.tar" "$work/manual/rootfs.tar"
sha256sum "$work/manual/rootfs.tar" >/dev/null
t1=$(now)
mkdir "$work/manual/rootfs" && tar -C "$work/manual/rootfs" -xf "$work/manual/rootfs.tar"
t2=$(now)
raw_x=$(python3 -c "print($t2-$t1)")
raw_add=$(python3 -c "print($t2-$t0)")
rm -rf "$work/manual"

sync
t0=$(now)
ENVY_LOG=envy=debug "$envy" box add "$work/rootfs.tar" >/dev/null 2>"$work/add.log"
t1=$(now)
envy_add=$(python3 -c "print($t1-$t0)")
envy_x=$(sed -n 's/.*unpacked rootfs of .* in \([0-9.]*\) s.*/\1/p' "$work/add.log")

printf '\n%-44s %9s %9s %7s\n' "operation" "raw (s)" "envy (s)" "ratio"
printf '%-44s %9.2f %9.2f %7s\n' "download+verify (curl -o; sha256sum)" "$raw_dl" "$envy_dl" "$(ratio "$envy_dl" "$raw_dl")"
printf '%-44s %9.2f %9.2f %7s\n' "rootfs unpack step (tar -x of a fresh copy)" "$raw_x" "$envy_x" "$(ratio "$envy_x" "$raw_x")"
printf '%-44s %9.2f %9.2f %7s\n' "rootfs unpack step (tar -x, cached, synced)" "$raw_x_cached" "$envy_x" "$(ratio "$envy_x" "$raw_x_cached")"
printf '%-44s %9.2f %9.2f %7s\n' "local add (cp; sha256sum; tar -x)" "$raw_add" "$envy_add" "$(ratio "$envy_add" "$raw_add")"
echo "envy peak RSS during download: $((rss_kib / 1024)) MiB (target < 64 MiB)"
