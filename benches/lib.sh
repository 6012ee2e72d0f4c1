# Shared by the benches/ scripts (source it): the checks they start with, a busybox box,
# and where envy keeps a machine's files (its state lives under $ENVY_HOME, not in the
# project: docs/architecture.md, "State and truth").

bench_require_root() {
  [ "$(id -u)" -eq 0 ] || { echo "error: run as root (containers, mounts, namespaces)" >&2; exit 1; }
}

# bench_require_tools TOOL:PACKAGE...
bench_require_tools() {
  local spec
  for spec in "$@"; do
    command -v "${spec%%:*}" >/dev/null || { echo "error: ${spec%%:*} is missing (apt-get install ${spec#*:})" >&2; exit 1; }
  done
}

# bench_envy [PATH]: the envy binary to time (default target/release/envy, built if missing).
bench_envy() {
  local envy=${1:-target/release/envy}
  [ -x "$envy" ] || cargo build --release --bin envy >&2
  realpath "$envy"
}

# bench_busybox_box ENVY ROOTFS OUT NAME: a busybox root filesystem built into a box.
bench_busybox_box() {
  local envy=$1 rootfs=$2 out=$3 name=$4 applet
  mkdir -p "$rootfs"/{bin,etc,root,tmp,proc,sys,dev}
  cp "$(command -v busybox)" "$rootfs/bin/busybox"
  for applet in $(busybox --list); do [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"; done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
  "$envy" -q box build --rootfs "$rootfs" --name "$name" --version 1 -o "$out" >/dev/null
}

# bench_machine_dir NAME: the state dir of machine NAME (one project per ENVY_HOME here).
bench_machine_dir() {
  find "$ENVY_HOME/projects" -mindepth 3 -maxdepth 3 -type d -path "*/machines/$1" | head -1
}
