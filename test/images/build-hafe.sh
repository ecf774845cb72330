#!/usr/bin/env bash
# Builds the hafe container image: a static binary of ./cmd/hafe
# (CGO_ENABLED=0) in an image FROM scratch (the Dockerfile at the repository root).
# The image carries the binary's sha256 as label dev.hafe.binary-sha256; when
# an image with that label exists, it is (re)tagged instead of rebuilt.
#
# Environment:
#   HAFE_IMAGE   image name (default hafe:dev)
#   HAFE_PKG     package to build (default ./cmd/hafe), relative to the repo
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
image="${HAFE_IMAGE:-hafe:dev}"
pkg="${HAFE_PKG:-./cmd/hafe}"
label=dev.hafe.binary-sha256

log() { printf '[build-hafe] %s\n' "$*" >&2; }

# Parallel test packages (go test ./...) may all ask for the image at once:
# one build at a time.
exec 9>"${TMPDIR:-/tmp}/hafe-build-hafe.lock"
flock -w 1200 9 || { log "timed out waiting for another image build"; exit 1; }

ctx="$(mktemp -d --tmpdir hafe-img-ctx.XXXXXX)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/tmp"
chmod 1777 "$ctx/rootfs/tmp"

t0=$(date +%s)
(cd "$repo" && CGO_ENABLED=0 timeout 600 go build -trimpath -buildvcs=false \
	-ldflags='-s -w' -o "$ctx/rootfs/hafe" "$pkg")
sum="$(sha256sum "$ctx/rootfs/hafe" | cut -d' ' -f1)"
log "built $pkg in $(($(date +%s) - t0))s, sha256 ${sum:0:12}, $(du -h "$ctx/rootfs/hafe" | cut -f1)"

if ! docker version >/dev/null 2>&1; then
	log "docker daemon does not answer"
	exit 1
fi

current="$(docker image inspect -f "{{index .Config.Labels \"$label\"}}" "$image" 2>/dev/null || true)"
if [[ "$current" == "$sum" ]]; then
	log "$image already holds this binary: nothing to build"
	exit 0
fi
existing="$(docker images -q --filter "label=$label=$sum" | head -n1)"
if [[ -n "$existing" ]]; then
	docker tag "$existing" "$image"
	log "tagged existing image ${existing} holding this binary as $image"
	exit 0
fi

cp "$repo/Dockerfile" "$ctx/"
if ! out="$(timeout 300 docker build --build-arg "HAFE_SHA256=$sum" -t "$image" "$ctx" 2>&1)"; then
	printf '%s\n' "$out" >&2
	log "docker build $image failed"
	exit 1
fi
log "built $image"
# The image this one replaced, if no other tag holds it (dangling, ours only).
docker image prune -f --filter "label=$label" >/dev/null 2>&1 || true
