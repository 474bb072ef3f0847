#!/usr/bin/env bash
# Builds what a real node runs besides the kubelet (which cluster/build.sh makes with the control plane):
# containerd, its runc shim and ctr (cluster/containerd/go.mod), Helm (cluster/helm/go.mod), and the
# Pod sandbox ("pause") image, compiled from the kubelet's own pause.c and saved as an OCI archive.
# runc and the CNI plugins are Debian's (installed by `make node`). Everything is cached per version
# outside the clone, so later runs on the same machine reuse it. Prints the directory that holds it all.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version() { sed -n "s|^\s*$1 v\([0-9.]*\).*|\1|p" "$2"; }
containerd="$(version github.com/containerd/containerd/v2 "$here/containerd/go.mod")"
helm="$(version helm.sh/helm/v4 "$here/helm/go.mod")"
release="$(version k8s.io/kubernetes "$here/go.mod")"
[ -n "$containerd" ] && [ -n "$helm" ] && [ -n "$release" ] || {
  echo "cluster/node.sh: no containerd, Helm or Kubernetes version in cluster/*/go.mod" >&2; exit 2; }
cache="${TRATREE_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tratree/node-containerd-v$containerd-helm-v$helm-k8s-v$release}"
files=(bin/containerd bin/containerd-shim-runc-v2 bin/ctr bin/helm pause.tar)

have_all() { for f in "${files[@]}"; do [ -s "$cache/$f" ] || return 1; done; }
if have_all; then echo "$cache"; exit 0; fi
for tool in runc gcc buildah; do
  command -v "$tool" >/dev/null || { echo "cluster/node.sh: $tool is not installed (make node installs it)" >&2; exit 2; }
done
[ -x /usr/lib/cni/bridge ] || { echo "cluster/node.sh: no CNI plugins in /usr/lib/cni (make node installs them)" >&2; exit 2; }

mkdir -p "${cache%/*}"
tmp="$(mktemp -d "${cache%/*}/.node.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
export CGO_ENABLED=0 GOFLAGS=-mod=mod
echo "building containerd v$containerd and Helm v$helm into $cache (cold: a few minutes)" >&2
(cd "$here/containerd" && go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
  -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=v$containerd" -o "$tmp/bin/" \
  github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
  github.com/containerd/containerd/v2/cmd/ctr)
(cd "$here/helm" && go build -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=v$helm" \
  -o "$tmp/bin/" helm.sh/helm/v4/cmd/helm)

# The sandbox image: the kubelet's pause.c, static, alone in an image made from scratch.
src="$(cd "$here" && go mod download -json k8s.io/kubernetes | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
gcc -Os -static -DVERSION="v$release" -o "$tmp/pause" "$src/build/pause/linux/pause.c"
strip "$tmp/pause"
ctr="$(buildah from scratch)"
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
buildah copy --chmod 0755 "$ctr" "$tmp/pause" /pause >/dev/null
buildah config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
buildah commit --quiet "$ctr" "localhost/tratree/pause:$release" >/dev/null
buildah push --quiet "localhost/tratree/pause:$release" "oci-archive:$tmp/pause.tar:localhost/tratree/pause:$release"
rm -f "$tmp/pause"
chmod 755 "$tmp"
rm -rf "$cache"
mv "$tmp" "$cache"
trap - EXIT
buildah rm "$ctr" >/dev/null
echo "$cache"
