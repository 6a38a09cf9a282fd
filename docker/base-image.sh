#!/usr/bin/env bash
# Make a local base image for docker/Dockerfile from Debian's packages, for a build host that can
# reach a Debian mirror but no image registry (PYTHON_IMAGE then names this image):
#
#   docker/base-image.sh [TAG]            # default TAG: local/debian-python:bookworm
#   DEBIAN_MIRROR=http://mirror.example/debian docker/base-image.sh
#
# Debian bookworm's python3 is CPython 3.11.2 (docker/constraints.txt was made on 3.11.7: the same
# minor version, so the same wheels). Needs root (debootstrap) and a running Docker engine.
set -euo pipefail

tag=${1:-local/debian-python:bookworm}
suite=bookworm

# The mirror this machine's apt already uses (deb822 .sources or one-line .list), unless given.
mirror=${DEBIAN_MIRROR:-}
if [[ -z "$mirror" ]]; then
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '$1 == "URIs:" && $2 !~ /security/ {print $2; exit}')
fi
if [[ -z "$mirror" ]]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}')
fi
[[ -n "$mirror" ]] || { echo "base-image.sh: no Debian mirror found; set DEBIAN_MIRROR" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "base-image.sh: apt-get install debootstrap" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
echo "base-image.sh: debootstrap $suite from $mirror (1-2 minutes)"
# minbase: the essential packages and apt; passwd brings groupadd/useradd for the image's user.
if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
    "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -20 "$work/debootstrap.log" >&2
    exit 1
fi
# The downloaded .deb files and package lists are not needed in an image.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
version=$(chroot "$rootfs" python3 --version)
tar -C "$rootfs" -c . | docker import --change 'CMD ["python3"]' - "$tag" >/dev/null
echo "base-image.sh: $tag ($version)"
