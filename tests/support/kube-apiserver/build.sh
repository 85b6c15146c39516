#!/usr/bin/env bash
# Builds kube-apiserver (k8s.io/kubernetes) and etcd (go.etcd.io/etcd/server/v3) from the Go
# modules named in this directory's go.mod, into a cache outside the clone:
#   ${STRATA_KUBE_CACHE:-$HOME/.cache/strata}/kube-<version>/bin/{kube-apiserver,etcd}
# The Go module and build caches live under the same root, so a second run (or CI in a fresh
# clone on the same machine) rebuilds nothing. Prints the bin directory on success.
#
#   build.sh           build unless up to date (stamp: go.mod, go.sum and the flags)
#   build.sh --check   no build: print the bin directory if up to date, else say why and exit 1
#
# On failure it writes the failing command and the tail of its output to
# kube-<version>/build-failed.txt (tests/support/kubeapi.py puts that in its skip reason) and exits 1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/go.mod")"
root="${STRATA_KUBE_CACHE:-$HOME/.cache/strata}"
out="$root/kube-$version"
bin="$out/bin"
ver_pkg=k8s.io/component-base/version
ldflags="-s -w -X $ver_pkg.gitVersion=$version -X $ver_pkg.gitMajor=1"
ldflags+=" -X $ver_pkg.gitMinor=$(echo "$version" | cut -d. -f2) -X $ver_pkg.gitTreeState=clean"
stamp="$( (cat "$here/go.mod" "$here/go.sum"; echo "$ldflags") | sha256sum | cut -c1-16)"
if [[ -x "$bin/kube-apiserver" && -x "$bin/etcd" && "$(cat "$out/stamp" 2>/dev/null)" == "$stamp" ]]; then
    echo "$bin"
    exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
    if [[ -f "$out/build-failed.txt" ]]; then
        cat "$out/build-failed.txt" >&2
    else
        echo "kube-apiserver $version is not built in $bin (run: make kube-apiserver)" >&2
    fi
    exit 1
fi
mkdir -p "$bin"
# One build at a time (other clones on this machine share the cache); the winner's result counts.
exec 9>"$out/.lock"
flock 9
if [[ -x "$bin/kube-apiserver" && -x "$bin/etcd" && "$(cat "$out/stamp" 2>/dev/null)" == "$stamp" ]]; then
    echo "$bin"
    exit 0
fi
rm -f "$out/build-failed.txt"
export GOMODCACHE="$root/go/mod" GOCACHE="$root/go/build" GOFLAGS="-mod=readonly -buildvcs=false"
export CGO_ENABLED=0
if ! command -v go >/dev/null 2>&1; then
    echo "command failed: go is not on PATH" > "$out/build-failed.txt"
    cat "$out/build-failed.txt" >&2
    exit 1
fi
log="$out/build.log"
: > "$log"
start=$(date +%s)
# STRATA_KUBE_BUILD_TIMEOUT (seconds, default 3600): the whole build's budget; a build cut short
# is recorded as failed (and resumes from the Go build cache next time).
budget="${STRATA_KUBE_BUILD_TIMEOUT:-3600}"
run() {
    local left=$(( budget - ($(date +%s) - start) )) rc=0
    (( left > 0 )) || left=1
    echo "+ $*" >> "$log"
    (cd "$here" && timeout "$left" nice -n 10 "$@") >> "$log" 2>&1 || rc=$?
    if (( rc != 0 )); then
        {
            if (( rc == 124 )); then echo "timed out after ${budget}s (STRATA_KUBE_BUILD_TIMEOUT): $*"
            else echo "command failed with exit code $rc (in tests/support/kube-apiserver): $*"; fi
            tail -n 30 "$log"
        } > "$out/build-failed.txt"
        echo "build failed: $*; see $out/build-failed.txt" >&2
        exit 1
    fi
}
run go build -trimpath -ldflags "$ldflags" -o "$bin/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
mv "$bin/kube-apiserver.tmp" "$bin/kube-apiserver"
run go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3
mv "$bin/etcd.tmp" "$bin/etcd"
echo "$stamp" > "$out/stamp"
echo "built in $(( $(date +%s) - start )) s" >> "$log"
echo "$bin"
