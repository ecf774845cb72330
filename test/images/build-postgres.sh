#!/usr/bin/env bash
# Builds the PostgreSQL 15 image the integration tests run, without any
# container registry:
#
#   1. base image (slow, once): mmdebstrap --variant=minbase with postgresql-15
#      from this machine's own apt sources, piped into `docker import`;
#   2. final image (cheap, every run): test/images/postgres/Dockerfile FROM the
#      base, adding an entrypoint compatible with the official postgres image
#      and the hafe extension files from backend-ext/extension/.
#
# Environment:
#   HAFE_PG_IMAGE       final image name (default hafe-postgres:15). A name not
#                       starting with "hafe-postgres" is taken as the user's own
#                       image (e.g. postgres:17 from their registry) and
#                       nothing is built.
#   HAFE_PG_BASE_IMAGE  base image name (default hafe-pg-base:15).
#   HAFE_PG_REBUILD_BASE=1  rebuild the base even if it exists.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

image="${HAFE_PG_IMAGE:-hafe-postgres:15}"
base="${HAFE_PG_BASE_IMAGE:-hafe-pg-base:15}"
pgver=15

log() { printf '[build-postgres] %s\n' "$*" >&2; }
elapsed() { echo "$(($(date +%s) - $1))s"; }

# Parallel test packages (go test ./...) may all ask for the image at once:
# one build at a time.
exec 9>"${TMPDIR:-/tmp}/hafe-build-postgres.lock"
flock -w 1200 9 || { log "timed out waiting for another image build"; exit 1; }

case "$image" in
hafe-postgres*) ;;
*)
	if docker image inspect "$image" >/dev/null 2>&1; then
		log "HAFE_PG_IMAGE=$image is not ours and exists locally: nothing to build"
	else
		log "HAFE_PG_IMAGE=$image is not ours: nothing to build (testcontainers will pull it)"
	fi
	exit 0
	;;
esac

if ! docker version >/dev/null 2>&1; then
	log "docker daemon does not answer"
	exit 1
fi

# ---- base image -------------------------------------------------------------
if [[ "${HAFE_PG_REBUILD_BASE:-0}" != 1 ]] && docker image inspect "$base" >/dev/null 2>&1; then
	log "base image $base exists: skipping mmdebstrap"
else
	command -v mmdebstrap >/dev/null || {
		log "mmdebstrap missing (apt-get install -y mmdebstrap)"
		exit 1
	}
	# The machine's own apt sources, exactly as apt uses them here.
	sources=()
	[[ -s /etc/apt/sources.list ]] && sources+=(/etc/apt/sources.list)
	for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
		[[ -s "$f" ]] && sources+=("$f")
	done
	if ((${#sources[@]} == 0)); then
		log "no apt sources found under /etc/apt"
		exit 1
	fi
	# shellcheck disable=SC1091
	suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
	log "building base image $base: mmdebstrap $suite minbase + postgresql-$pgver (sources: ${sources[*]})"
	t0=$(date +%s)
	# No main cluster in the image: the entrypoint runs initdb itself. (The hooks
	# are run by mmdebstrap with the rootfs as $1: single quotes on purpose.)
	# shellcheck disable=SC2016
	setup_hook='mkdir -p "$1/etc/postgresql-common/createcluster.d" && echo "create_main_cluster = false" >"$1/etc/postgresql-common/createcluster.d/hafe.conf"'
	# shellcheck disable=SC2016
	customize_hook='rm -rf "$1/var/lib/postgresql/'$pgver'/main" "$1/etc/postgresql/'$pgver'/main" "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin; mkdir -p "$1/var/run/postgresql"; chroot "$1" chown postgres:postgres /var/run/postgresql'
	tarball="$(mktemp --tmpdir --suffix=.tar hafe-pg-rootfs.XXXXXX)"
	trap 'rm -f "$tarball"' EXIT
	timeout 900 mmdebstrap \
		--variant=minbase \
		--include="postgresql-$pgver" \
		--aptopt='Acquire::Check-Valid-Until "false"' \
		--aptopt='Acquire::Check-Date "false"' \
		--dpkgopt='path-exclude=/usr/share/man/*' \
		--dpkgopt='path-exclude=/usr/share/doc/*' \
		--dpkgopt='path-include=/usr/share/doc/*/copyright' \
		--dpkgopt='path-exclude=/usr/share/info/*' \
		--setup-hook="$setup_hook" \
		--customize-hook="$customize_hook" \
		--quiet \
		"$suite" "$tarball" "${sources[@]}"
	log "rootfs tarball: $(du -h "$tarball" | cut -f1) in $(elapsed "$t0")"
	t1=$(date +%s)
	timeout 300 docker import \
		--message "hafe: $suite minbase + postgresql-$pgver (mmdebstrap)" \
		"$tarball" "$base" >/dev/null
	rm -f "$tarball"
	log "docker import $base in $(elapsed "$t1")"
fi

# ---- final image --------------------------------------------------------------
ctx="$(mktemp -d --tmpdir hafe-pg-ctx.XXXXXX)"
trap 'rm -rf "$ctx"' EXIT
cp "$here/postgres/Dockerfile" "$here/postgres/docker-entrypoint.sh" "$ctx/"
mkdir "$ctx/extension"
n=0
shopt -s nullglob
for f in "$repo"/backend-ext/extension/hafe.control "$repo"/backend-ext/extension/hafe--*.sql; do
	cp "$f" "$ctx/extension/"
	n=$((n + 1))
done
shopt -u nullglob
if ((n == 0)); then
	log "no hafe extension files in backend-ext/extension/ yet: image ships none"
else
	log "shipping $n hafe extension file(s): $(cd "$ctx/extension" && echo *)"
fi
t2=$(date +%s)
if ! out="$(timeout 300 docker build --build-arg "BASE=$base" --label "dev.hafe.extension-files=$n" -t "$image" "$ctx" 2>&1)"; then
	printf '%s\n' "$out" >&2
	log "docker build $image failed"
	exit 1
fi
log "built $image in $(elapsed "$t2")"
# The image this one replaced, if no other tag holds it (dangling, ours only).
docker image prune -f --filter "label=dev.hafe.extension-files" >/dev/null 2>&1 || true
