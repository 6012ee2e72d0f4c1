#!/usr/bin/env bash
# What `forward_auto`'s watcher costs: its CPU time (user + system, its own and its
# children's, from /proc/PID/stat) over SECONDS_WATCHED of watching a machine with three
# listening ports, beside a shell loop doing the same look with the raw tools once a
# second. Prints each as % of one core, and the ratio.
#   container: `nsenter --net ss -Hltn` (sock_diag, as the watcher asks) and
#     `cat /proc/PID/net/tcp{,6}` (what the watcher asked first: the kernel walks every
#     socket bucket of the host);
#   qemu (the tiny VM box, TCG unless ENVY_ACCEL says otherwise): `ssh` through the
#     machine's ControlMaster running `cat /proc/net/tcp /proc/net/tcp6`, as the watcher
#     does; also the CPU the looks cost the ssh master and QEMU (the guest's side, under
#     TCG), against a window where nothing looks.
# Usage: benches/forward_auto.sh [container] [qemu]      (both by default)
# Needs: root, runc, slirp4netns, busybox (busybox-static), iproute2 (ss), util-linux
# (nsenter); for qemu: qemu-system-x86, qemu-utils, openssh-client, and what
# boxes/recipes/tiny-vm.sh needs.
set -euo pipefail

providers=${*:-container qemu}

SECONDS_WATCHED=${SECONDS_WATCHED:-60}
here=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
PROFILE=${PROFILE:-debug}
(cd "$here" && if [ "$PROFILE" = release ]; then cargo build --release --quiet; else cargo build --quiet; fi)
ENVY=$CARGO_TARGET_DIR/$PROFILE/envy

. "$here/benches/lib.sh"
bench_require_root
work=$(mktemp -d /tmp/envy-bench-XXXXXX)
export ENVY_HOME=$work/home
cleanup() {
    for project in "$work"/project*; do
        (cd "$project" 2>/dev/null && "$ENVY" -q destroy --force) || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
hz=$(getconf CLK_TCK)

# A process's CPU ticks: its own (user + system), with its reaped children's.
cpu_ticks() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$1/stat"; }
watcher_pid() { sed 's/.*"pid":\([0-9]*\).*/\1/' "$(bench_machine_dir "$1")/forward-auto.pid"; }

# One loop's CPU over the window: its own ticks plus its children's.
loop_ticks() {
    (while sleep 1; do "$@" >/dev/null; done) &
    local pid=$!
    sleep "$SECONDS_WATCHED"
    cpu_ticks "$pid"
    kill "$pid"
}
percent() { awk -v t="$1" -v s="$SECONDS_WATCHED" -v hz="$hz" 'BEGIN { printf "%.3f%%", 100 * t / hz / s }'; }

# Three servers listening in machine $1, for the watcher to find.
start_servers() {
    for port in 15173 15174 15175; do
        "$ENVY" -q exec "$1" -- sh -c "mkdir -p /w && httpd -p $port -h /w"
    done
}

bench_container() {
    mkdir -p "$work/project"
    bench_busybox_box "$ENVY" "$work/rootfs" "$work/project/bench.box" bench
    cat >"$work/project/Envfile" <<'TOML'
[machine.m]
box = { path = "bench.box" }
provider = "container"
forward_auto = true
TOML
    cd "$work/project"
    "$ENVY" -q up
    start_servers m
    sleep 3

    watcher=$(watcher_pid m)
    init=$("$ENVY" status --json | sed -n 's/.*"pid": \([0-9]*\).*/\1/p' | head -1)
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
    "$ENVY" -q destroy --force
}

bench_qemu() {
    export ENVY_ACCEL=${ENVY_ACCEL:-tcg}
    rootfs=$("$here/boxes/recipes/tiny-vm.sh")
    mkdir -p "$work/project-vm"
    "$ENVY" -q box build --kind qemu --rootfs "$rootfs" --name tiny-vm --cmdline "console=ttyS0 root=/dev/vda rw" -o "$work/tiny.box" >/dev/null
    cat >"$work/project-vm/Envfile" <<'TOML'
[machine.vm]
box = { path = "../tiny.box" }
provider = "qemu"
cpus = 1
memory = "256MiB"
forward_auto = true
TOML
    cd "$work/project-vm"
    "$ENVY" -q up
    start_servers vm
    sleep 5
    "$ENVY" status --json | grep -q '"guest_port": 15175' || { echo "forward_auto.sh: the VM's ports were not forwarded" >&2; exit 1; }

    machine=$(bench_machine_dir vm)
    watcher=$(watcher_pid vm)
    qemu=$("$ENVY" status --json | sed -n 's/.*"pid": \([0-9]*\).*/\1/p' | head -1)
    port=$(sed -n 's/.*"ssh_port": *\([0-9]*\).*/\1/p' "$machine/qemu.json")
    ctl=$(find "$machine" "$ENVY_HOME" -name '*ssh.ctl' -type s | head -1)
    ssh_opts=(-i "$machine/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no
              -o "UserKnownHostsFile=$machine/known_hosts" -o HostKeyAlias=envy-machine -o LogLevel=ERROR
              -o "ControlPath=$ctl" -o ControlMaster=no -p "$port")
    master=$(ssh "${ssh_opts[@]}" -O check 127.0.0.1 2>&1 | sed -n 's/.*pid=\([0-9]*\).*/\1/p')
    [ -n "$master" ] || { echo "forward_auto.sh: no ssh ControlMaster at $ctl" >&2; exit 1; }

    # Window 1: the watcher looks; window 2: a raw ssh loop looks (the watcher stopped);
    # window 3: nothing looks (what QEMU and the master cost idle).
    m0=$(cpu_ticks "$master"); q0=$(cpu_ticks "$qemu"); w0=$(cpu_ticks "$watcher")
    sleep "$SECONDS_WATCHED"
    w1=$(cpu_ticks "$watcher"); m1=$(cpu_ticks "$master"); q1=$(cpu_ticks "$qemu")
    kill "$watcher"; while [ -e "/proc/$watcher" ]; do sleep 0.1; done
    m2=$(cpu_ticks "$master"); q2=$(cpu_ticks "$qemu")
    raw=$(loop_ticks ssh "${ssh_opts[@]}" -T 127.0.0.1 cat /proc/net/tcp /proc/net/tcp6)
    m3=$(cpu_ticks "$master"); q3=$(cpu_ticks "$qemu")
    sleep "$SECONDS_WATCHED"
    m4=$(cpu_ticks "$master"); q4=$(cpu_ticks "$qemu")

    w=$((w1 - w0))
    echo "VM ($ENVY_ACCEL), one look a second over $SECONDS_WATCHED s ($PROFILE build):"
    echo "  forward_auto watcher (with its ssh clients): $(percent "$w") ($w ticks)"
    echo "  raw loop, ssh -O ControlPath cat /proc/net/tcp{,6}: $(percent "$raw") ($raw ticks)"
    [ "$raw" -gt 0 ] && awk -v w="$w" -v r="$raw" 'BEGIN { printf "  ratio watcher/raw loop: %.2f\n", w / r }'
    echo "  ssh master: watcher $(percent $((m1 - m0))), raw loop $(percent $((m3 - m2))), idle $(percent $((m4 - m3)))"
    echo "  QEMU (guest side): watcher $(percent $((q1 - q0))), raw loop $(percent $((q3 - q2))), idle $(percent $((q4 - q3)))"
    cd "$work"
}

for provider in $providers; do
    case $provider in
        container) bench_container ;;
        qemu) bench_qemu ;;
        *) echo "forward_auto.sh: unknown provider $provider (container or qemu)" >&2; exit 2 ;;
    esac
done
