#!/usr/bin/env bash
# A Debian 12 root filesystem tarball from Debian's packages with mmdebstrap (minbase
# plus PACKAGES), fetched through this host's own apt sources (its mirror, proxy and
# snapshot settings), no mirror of ours. Used by debian-box.sh and by the tests.
# Usage: scripts/debian-rootfs.sh PACKAGES OUT.tar   (PACKAGES: comma-separated)
# Reproducible: the same package versions and SOURCE_DATE_EPOCH give the same bytes
# (mmdebstrap clamps every timestamp to it). The default is bookworm's release day.
set -euo pipefail
packages=$1
out=$2
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1686355200}
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -s "$f" ] && grep -qv '^[[:space:]]*\(#\|$\)' "$f" && sources+=("$f")
done
[ ${#sources[@]} -gt 0 ] || { echo "error: this host has no apt sources for mmdebstrap to use" >&2; exit 1; }
mmdebstrap --quiet --variant=minbase --include="$packages" bookworm "$out" "${sources[@]}"
