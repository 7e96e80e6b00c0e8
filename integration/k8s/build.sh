#!/usr/bin/env bash
# Builds the upstream binaries the integration tests run -- kube-apiserver,
# etcd and kube-proxy -- from the versions pinned in integration/k8s/go.mod,
# into a cache directory, and prints that directory on stdout (only that:
# progress goes to stderr).
#
#   integration/k8s/build.sh            # build if missing, print the dir
#   NFTPROXY_K8S_CACHE=/tmp/k8s build.sh
#   NFTPROXY_K8S_REBUILD=1 build.sh     # rebuild even if present
#
# The directory is ${NFTPROXY_K8S_CACHE:-$HOME/.cache/nftproxy-k8s}/<version>/
# where <version> names the Kubernetes and etcd releases plus a hash of go.sum,
# so a change of pinned versions builds into a fresh directory. Binaries are
# built only when missing. A cold build takes several minutes on 2 cores (most
# of it kube-apiserver); a warm one is a few milliseconds.
#
# Concurrent callers (e.g. test packages run in parallel) are serialised with
# flock; a build goes to a temporary directory and is renamed into place, so
# a half-built binary is never seen.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if ! command -v go >/dev/null 2>&1; then
	for d in /usr/local/go/bin "$HOME/go/bin"; do
		if [ -x "$d/go" ]; then PATH="$PATH:$d"; break; fi
	done
fi
command -v go >/dev/null 2>&1 || { echo "build.sh: go not found in PATH" >&2; exit 1; }
# This module alone decides what is built: no go.work, and no GOFLAGS from the
# caller's environment (e.g. -race, which needs cgo, or -mod=vendor).
export GOWORK=off
unset GOFLAGS

modver() { # version of a required module, from go.mod
	awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' go.mod
}
k8s_version="$(modver k8s.io/kubernetes)"
etcd_version="$(modver go.etcd.io/etcd/server/v3)"
[ -n "$k8s_version" ] && [ -n "$etcd_version" ] || { echo "build.sh: cannot read versions from go.mod" >&2; exit 1; }
sum="$(cat go.mod go.sum cmd/etcd/main.go | sha256sum | cut -c1-12)"
version="k8s-${k8s_version}_etcd-${etcd_version}_${sum}"

cache="${NFTPROXY_K8S_CACHE:-${HOME:-/root}/.cache/nftproxy-k8s}"
dir="$cache/$version"
binaries=(kube-apiserver etcd kube-proxy)

complete() {
	local b
	for b in "${binaries[@]}"; do [ -x "$dir/$b" ] || return 1; done
}

if [ -z "${NFTPROXY_K8S_REBUILD:-}" ] && complete; then
	echo "$dir"
	exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -n "${NFTPROXY_K8S_REBUILD:-}" ]; then
	rm -rf "$dir"
fi
if complete; then # built by whoever held the lock before us
	echo "$dir"
	exit 0
fi

# Leftovers of a build that was killed; no build runs while we hold the lock.
rm -rf "$cache"/.build.*
tmp="$(mktemp -d "$cache/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 143' TERM INT HUP

# kube-apiserver reports its version from these (otherwise v0.0.0-master).
minor="${k8s_version#v*.}"; minor="${minor%%.*}"
major="${k8s_version#v}"; major="${major%%.*}"
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags="$ldflags -X $p.gitVersion=$k8s_version -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done

echo "build.sh: building kube-apiserver $k8s_version, kube-proxy $k8s_version, etcd $etcd_version into $dir (first time: several minutes)" >&2
start=$(date +%s)
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-proxy \
	./cmd/etcd >&2
echo "build.sh: built in $(( $(date +%s) - start ))s" >&2

mkdir -p "$dir"
for b in "${binaries[@]}"; do
	[ -x "$tmp/$b" ] || { echo "build.sh: $b was not built" >&2; exit 1; }
	mv -f "$tmp/$b" "$dir/$b"
done
echo "$dir"
