#!/usr/bin/env bash
# What `forward_auto`'s watcher costs while a container runs: its CPU time (user +
# system, from /proc/PID/stat) over SECONDS of watching a machine with three listening
# ports, beside a shell loop doing the same with the raw tools once a second:
# `nsenter --net ss -Hltn` (sock_diag, as the watcher asks) and `cat /proc/PID/net/tcp{,6}`
# (what the watcher asked first: the kernel walks every socket bucket of the host). Prints both as % of one core, and the ratio.
# Needs: root, runc, slirp4netns, busybox (busybox-static), iproute2 (ss), util-linux (nsenter).
set -euo pipefail

SECONDS_WATCHED=${SECONDS_WATCHED:-60}
here=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
PROFILE=${PROFILE:-debug}
(cd "$here" && if [ "$PROFILE" = release ]; then cargo build --release --quiet; else cargo build --quiet; fi)
ENVY=$CARGO_TARGET_DIR/$PROFILE/envy

work=$(mktemp -d /tmp/envy-bench-XXXXXX)
export ENVY_HOME=$work/home
cleanup() {
    (cd "$work/project" 2>/dev/null && "$ENVY" -q destroy --force) || true
    rm -rf "$work"
}
trap cleanup EXIT

rootfs=$work/rootfs
mkdir -p "$rootfs"/{bin,etc,root,tmp,proc,sys,dev} "$work/project"
cp "$(command -v busybox)" "$rootfs/bin/busybox"
for applet in $(busybox --list); do [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
"$ENVY" -q box build --rootfs "$rootfs" --name bench --output "$work/project/bench.box"
cat >"$work/project/Envfile" <<'TOML'
[machine.m]
box = { path = "bench.box" }
provider = "container"
forward_auto = true
TOML
cd "$work/project"
"$ENVY" -q up
for port in 15173 15174 15175; do
    "$ENVY" -q exec m -- sh -c "mkdir -p /w && httpd -p $port -h /w"
done
sleep 3

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
state=$(ls -d "$ENVY_HOME"/projects/*/machines/m)
watcher=$(sed 's/.*"pid":\([0-9]*\).*/\1/' "$state/forward-auto.pid")
init=$("$ENVY" status --json | sed -n 's/.*"pid": \([0-9]*\).*/\1/p' | head -1)
hz=$(getconf CLK_TCK)

# One loop's CPU over the window: its own ticks plus its children's (ss, cat, sleep).
loop_ticks() {
    (while sleep 1; do "$@" >/dev/null; done) &
    local pid=$!
    sleep "$SECONDS_WATCHED"
    awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pid/stat"
    kill "$pid"
}
w0=$(cpu_ticks "$watcher")
ss_ticks=$(loop_ticks nsenter --net="/proc/$init/ns/net" ss -Hltn)
w1=$(cpu_ticks "$watcher")
cat_ticks=$(loop_ticks cat "/proc/$init/net/tcp" "/proc/$init/net/tcp6")

awk -v w="$((w1 - w0))" -v r="$ss_ticks" -v c="$cat_ticks" -v s="$SECONDS_WATCHED" -v hz="$hz" -v p="$PROFILE" 'BEGIN {
    printf "forward_auto watcher (%s build): %.3f%% of one core over %d s (%d ticks)\n", p, 100 * w / hz / s, s, w
    printf "raw loop, nsenter + ss -ltn every second: %.3f%% (%d ticks)\n", 100 * r / hz / s, r
    printf "raw loop, cat /proc/PID/net/tcp{,6} every second: %.3f%% (%d ticks)\n", 100 * c / hz / s, c
    if (r > 0) printf "ratio watcher/ss loop: %.2f\n", w / r
}'
