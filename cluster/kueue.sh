#!/usr/bin/env bash
# Builds Kueue's controller manager from the Go module proxy (cluster/kueue/go.mod pins the release) and
# keeps, beside it, the release's own CRDs and webhook configurations (from the module's config/), which
# the Kueue tests install on the tests' control plane. Cached per version outside the clone; prints the
# directory that holds it all.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kueue="$(sed -n 's|^\s*sigs.k8s.io/kueue v\([0-9.]*\).*|\1|p' "$here/kueue/go.mod")"
[ -n "$kueue" ] || { echo "cluster/kueue.sh: no sigs.k8s.io/kueue version in cluster/kueue/go.mod" >&2; exit 2; }
cache="${TRATREE_KUEUE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tratree/kueue-v$kueue}"
if [ -x "$cache/bin/kueue" ] && [ -s "$cache/webhooks.yaml" ] && [ -d "$cache/crds" ]; then echo "$cache"; exit 0; fi
command -v go >/dev/null || { echo "cluster/kueue.sh: go is not installed" >&2; exit 2; }
mkdir -p "${cache%/*}"
tmp="$(mktemp -d "${cache%/*}/.kueue.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "building Kueue v$kueue into $cache (cold: a few minutes)" >&2
export CGO_ENABLED=0 GOFLAGS=-mod=mod
(cd "$here/kueue" && go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=v$kueue" \
  -o "$tmp/bin/" sigs.k8s.io/kueue/cmd/kueue)
src="$(cd "$here/kueue" && go mod download -json sigs.k8s.io/kueue | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
mkdir -p "$tmp/crds"
cp "$src"/config/components/crd/bases/*.yaml "$tmp/crds/"
cp "$src/config/components/webhook/manifests.yaml" "$tmp/webhooks.yaml"
chmod -R u+w "$tmp"
chmod 755 "$tmp"
rm -rf "$cache"
mv "$tmp" "$cache"
trap - EXIT
echo "$cache"
