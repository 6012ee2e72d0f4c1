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
# The same SOURCE_DATE_EPOCH (debian-rootfs.sh's default) for the box's own timestamps,
# so two builds from the same packages give one digest.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1686355200}
if [ ! -s "$box" ]; then
  echo "==> building a Debian 12 root filesystem with mmdebstrap (about 30 s)"
  "$(dirname "$0")/debian-rootfs.sh" "$packages" "$cache/debian-12-rootfs.tar"
  "$envy" box build --rootfs "$cache/debian-12-rootfs.tar" --name debian-12 --version local -o "$box.tmp"
  mv "$box.tmp" "$box"
  rm -f "$cache/debian-12-rootfs.tar"
fi
"$envy" box add "$box" --name debian-12
echo "debian-12 box: sha256 $(sha256sum "$box" | cut -d' ' -f1)"
