#!/usr/bin/env bash
# Build a Python base image from Debian packages, for machines that cannot pull from a registry.
#
#   docker/build-local-base.sh            # prints the image tag, e.g. sana-serve-base:bookworm-3f2a9c1e0b7d
#   docker compose -f docker/compose.yaml build --build-arg BASE_IMAGE="$(docker/build-local-base.sh)"
#   (or: SANA_SERVE_BASE_IMAGE="$(docker/build-local-base.sh)" docker compose -f docker/compose.yaml build)
#
# debootstrap (minbase) + python3, python3-venv and ca-certificates, imported with `docker import`.
# The tag is a hash of this script, the suite and the mirror: a rerun finds the image already
# there and only prints its tag, and any change to how the base is made gives a new tag.
# Needs root (debootstrap chroots) and the debootstrap package. Only the tag goes to stdout.
set -euo pipefail

SUITE="${SUITE:-bookworm}"                      # bookworm ships Python 3.11 (the CPU torch wheel's cp311)
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
PACKAGES="python3,python3-venv,ca-certificates"

HASH="$( { cat "$0"; echo "$SUITE $MIRROR $PACKAGES"; } | sha256sum | cut -c1-12)"
TAG="${BASE_TAG:-sana-serve-base:$SUITE-$HASH}"

if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "$TAG"
    exit 0
fi

command -v debootstrap >/dev/null || { echo "build-local-base.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "build-local-base.sh: debootstrap needs root" >&2; exit 1; }

ROOTFS="$(mktemp -d /tmp/sana-serve-base.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
echo "build-local-base.sh: debootstrap $SUITE from $MIRROR into $ROOTFS (a few minutes)" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >&2

# Slim the tree the way Debian's own docker images do: no apt lists, caches or man pages.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
       "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/locale/* "$ROOTFS"/tmp/*
echo "deb $MIRROR $SUITE main" > "$ROOTFS/etc/apt/sources.list"

tar -C "$ROOTFS" --numeric-owner -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase --include=$PACKAGES $SUITE ($MIRROR)" \
    - "$TAG" >&2
echo "$TAG"
