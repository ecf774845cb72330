#!/bin/sh
# gvisorfix.sh prepares a go.work that lets this package build with Go 1.26
# while go.mod pins a gVisor whose pkg/sync does not (google/gvisor#12916:
# runtime_constants_go125.go lacks "&& !go1.26"). It copies the pinned gVisor
# from the module cache, adds the missing constraint, and writes a go.work
# outside the repository that replaces gvisor.dev/gvisor by the copy. Nothing
# in the repository or the module cache is changed.
#
# Usage, from the repository root:
#
#	eval "$(mtcp/simnet/gvisorfix.sh)"
#	go test -tags simnet ./mtcp/simnet
#
# Delete this script once go.mod requires a gVisor with the fix.
set -eu

root=$(GOWORK=off go list -m -f '{{.Dir}}')
set -- $(GOWORK=off go list -m -f '{{.Dir}} {{.Version}}' gvisor.dev/gvisor)
src=$1 version=$2
goversion=$(GOWORK=off go list -m -f '{{.GoVersion}}')
dir=${TMPDIR:-/tmp}/hafe-simnet-gvisor-$version

if [ ! -f "$dir/go.work" ]; then
	rm -rf "$dir"
	mkdir -p "$dir"
	cp -R "$src" "$dir/gvisor"
	chmod -R u+w "$dir/gvisor"
	sed -i.orig 's|^//go:build go1.25$|//go:build go1.25 \&\& !go1.26|' \
		"$dir/gvisor/pkg/sync/runtime_constants_go125.go"
	cat >"$dir/go.work" <<EOF
go $goversion

use $root

replace gvisor.dev/gvisor $version => $dir/gvisor
EOF
fi
echo "export GOWORK=$dir/go.work"
