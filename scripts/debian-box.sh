#!/usr/bin/env bash
# Builds the debian-12 container box the quick start and the examples use, from
# Debian's packages with mmdebstrap, and adds it to envy's store under that name.
# Usage: scripts/debian-box.sh ENVY_BIN [CACHE_DIR]  (or ENVY_BOX_CACHE for the cache)
set -euo pipefail
envy=$1
cache=${2:-${ENVY_BOX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/envy-boxes}}
packages=python3,busybox,ca-certificates
mkdir -p "$cache"
# The cache key follows the package list, so changing it rebuilds the box.
box="$cache/debian-12-$(echo "$packages" | sha256sum | cut -c1-12).box"
# One build at a time; a waiter finds the box built.
exec 9>"$box.lock"
flock 9
# Reproducible: the same package versions and SOURCE_DATE_EPOCH give the same digest
# (mmdebstrap clamps every timestamp to it). The default is bookworm's release day.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1686355200}
if [ ! -s "$box" ]; then
  echo "==> building a Debian 12 root filesystem with mmdebstrap (about 30 s)"
  # The host's own apt sources (its mirror, proxy and snapshot settings), no mirror of ours.
  sources=()
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -s "$f" ] && grep -qv '^[[:space:]]*\(#\|$\)' "$f" && sources+=("$f")
  done
  [ ${#sources[@]} -gt 0 ] || { echo "error: this host has no apt sources for mmdebstrap to use" >&2; exit 1; }
  mmdebstrap --quiet --variant=minbase --include="$packages" \
    bookworm "$cache/debian-12-rootfs.tar" "${sources[@]}"
  "$envy" box build --rootfs "$cache/debian-12-rootfs.tar" --name debian-12 --version local -o "$box.tmp"
  mv "$box.tmp" "$box"
  rm -f "$cache/debian-12-rootfs.tar"
fi
"$envy" box add "$box" --name debian-12
echo "debian-12 box: sha256 $(sha256sum "$box" | cut -d' ' -f1)"
