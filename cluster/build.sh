#!/usr/bin/env bash
# Builds the real Kubernetes the tests start (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl and etcd, and a node's kubelet and kube-proxy) from the Go module proxy, at the release pinned in go.mod.
# Binaries are cached per release outside the clone, so later runs on the same machine reuse them.
# Prints the directory that holds the binaries.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
release="$(sed -n 's/^\s*k8s.io\/kubernetes v\([0-9.]*\).*/\1/p' "$here/go.mod")"
etcd="$(sed -n 's/^\s*go.etcd.io\/etcd\/server\/v3 v\([0-9.]*\).*/\1/p' "$here/go.mod")"
[ -n "$release" ] && [ -n "$etcd" ] || { echo "cluster/build.sh: no k8s.io/kubernetes or etcd version in $here/go.mod" >&2; exit 2; }
cache="${TRATREE_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tratree/kubernetes-v$release-etcd-v$etcd}"
bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy etcd)

have_all() { for b in "${bins[@]}"; do [ -x "$cache/bin/$b" ] || return 1; done; }
if have_all; then echo "$cache/bin"; exit 0; fi

minor="${release#*.}"; minor="${minor%%.*}"
pkg=component-base/version
# Without these the binaries report v0.0.0-master: kubectl warns of skew and Helm's kubeVersion checks fail.
ldflags="-s -w -X k8s.io/$pkg.gitVersion=v$release -X k8s.io/$pkg.gitMajor=1 -X k8s.io/$pkg.gitMinor=$minor \
 -X k8s.io/$pkg.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=v$release"
tmp="$(mktemp -d "${cache%/*}/.build.XXXXXX" 2>/dev/null || { mkdir -p "${cache%/*}"; mktemp -d "${cache%/*}/.build.XXXXXX"; })"
trap 'rm -rf "$tmp"' EXIT
cd "$here"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
echo "building Kubernetes v$release and etcd v$etcd into $cache/bin (cold: many minutes)" >&2
go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kube-proxy
go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
chmod 755 "$tmp"
mkdir -p "$cache"
rm -rf "$cache/bin"
mv "$tmp" "$cache/bin"
trap - EXIT
echo "$cache/bin"
