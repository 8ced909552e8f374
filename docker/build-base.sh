#!/usr/bin/env bash
# Build a local Debian bookworm base image with Python, for machines that cannot reach Docker Hub
# (python:3.11-slim is out of reach there). The result, embedserve-base:bookworm, has Debian's
# python3 (3.11) and python3-venv, so docker/Dockerfile builds on it with
#   --build-arg BASE_IMAGE=embedserve-base:bookworm
#
# Usage: docker/build-base.sh            (skips the work when the image already exists)
#        FORCE=1 docker/build-base.sh    (rebuilds it)
# Needs: root (debootstrap), debootstrap, a running Docker engine.
#
# Notes from setting this up on a Debian bookworm VM behind a TLS-intercepting proxy:
# - The engine: `apt-get install -y docker.io debootstrap`, then `dockerd >/tmp/dockerd.log 2>&1 &`.
#   Plain dockerd (overlay2, iptables, cgroup v1) came up with no extra flags; had it not,
#   --iptables=false and --storage-driver=vfs (or fuse-overlayfs) are the usual fall-backs.
# - Debian's docker.io is Engine 20.10; a newer docker CLI (28.x) without the buildx plugin refuses
#   BuildKit ("BuildKit is enabled but the buildx component is missing"), and the Dockerfile needs
#   BuildKit for its build-only secret. docker/test.sh therefore picks a client that can: buildx if
#   present, else a CLI older than 23 (Debian's /usr/bin/docker) with DOCKER_BUILDKIT=1.
# - debootstrap fetches over plain http from deb.debian.org and checks the Release signatures with
#   debian-archive-keyring, so it needs no proxy CA, and none ends up in the image: the base image
#   holds only Debian's own ca-certificates bundle.
set -euo pipefail

IMAGE=${BASE_IMAGE_TAG:-embedserve-base:bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
DOCKER=${DOCKER:-docker}

if [[ -z "${FORCE:-}" ]] && "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "build-base: $IMAGE already exists (FORCE=1 rebuilds it)"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "build-base: debootstrap is missing (apt-get install -y debootstrap)" >&2
    exit 1
fi
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO=sudo

ROOTFS=$(mktemp -d /tmp/embedserve-rootfs.XXXXXX)
cleanup() { $SUDO rm -rf --one-file-system "$ROOTFS"; }
trap cleanup EXIT

start=$(date +%s)
echo "build-base: debootstrap $SUITE (minbase) from $MIRROR into $ROOTFS"
# python3-venv brings ensurepip's wheels (pip, setuptools) so `python3 -m venv` works;
# ca-certificates lets the server reach the Hugging Face Hub over TLS at run time.
$SUDO debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR"

# Trim what an image never needs: apt's package cache and lists, docs, man pages, locales.
$SUDO rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/var/log/*.log "$ROOTFS"/var/cache/debconf/*-old
$SUDO find "$ROOTFS"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
# The container's own resolver comes from the engine at run time.
$SUDO rm -f "$ROOTFS"/etc/resolv.conf "$ROOTFS"/etc/hostname

$SUDO tar -C "$ROOTFS" --numeric-owner -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $SUITE + python3 python3-venv ca-certificates" \
    - "$IMAGE" >/dev/null

echo "build-base: $IMAGE built in $(( $(date +%s) - start ))s," \
    "$("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
