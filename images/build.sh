#!/usr/bin/env bash
# Builds tratree's images here, with buildah and nothing pulled: `images/build.sh [IMAGE...]` (default:
# operator cpu trainer explorer). The base is Debian bookworm made with debootstrap (python3, pip, the
# host's CA certificates, so pip and apt reach their registries through this machine's TLS proxy),
# cached under ~/.cache/tratree/images and imported as localhost/tratree/base:bookworm. Layers are
# cached in containers-storage (outside the clone); each image is also saved as an OCI archive under
# the cache, named by its image ID, for a node's containerd to import. Prints a table of build times and
# sizes; the last lines are "IMAGE ARCHIVE" pairs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${TRATREE_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tratree/images}"
tag="${TRATREE_IMAGE_TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$root/charts/tratree/Chart.yaml")}"
# only PyPI is reachable here: its torch 2.13.0 is the CUDA 13.0 build (it runs on the CPU too, and on
# drivers >= 580); the Dockerfiles' own defaults (PyTorch's CPU and CUDA 12.6 indexes) are for machines
# that reach download.pytorch.org
torch_index="${TORCH_INDEX:-https://pypi.org/simple}"
base=localhost/tratree/base:bookworm
images=("$@")
[ ${#images[@]} -gt 0 ] || images=(operator cpu trainer explorer)
for name in "${images[@]}"; do
  [ -f "$root/images/$name.Dockerfile" ] || { echo "images/build.sh: no images/$name.Dockerfile" >&2; exit 2; }
done
for tool in buildah podman debootstrap; do
  command -v "$tool" >/dev/null || { echo "images/build.sh: $tool is not installed (make images installs it)" >&2; exit 2; }
done
mkdir -p "$cache"
# no CAP_SYS_RESOURCE here: a container may not raise its limits above this shell's, so it is given
# them explicitly (buildah's defaults are higher); runc was refused nproc 65536 here and given 32768
nproc=$(( $(ulimit -Hu) < 32768 ? $(ulimit -Hu) : 32768 ))
limits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=$nproc:$nproc")

make_base() {
  local tarball="$cache/base-bookworm.tar" dir
  if ! [ -s "$tarball" ]; then
    echo "making the base with debootstrap (about a minute)" >&2
    dir="$(mktemp -d "$cache/.base.XXXXXX")"
    debootstrap --variant=minbase --include=python3,python3-pip,python-is-python3,ca-certificates \
      bookworm "$dir" http://deb.debian.org/debian >&2
    # this machine's proxy CAs, added the way Debian adds any (they survive a later ca-certificates update)
    cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$dir" update-ca-certificates >/dev/null
    cp /etc/apt/apt.conf.d/99artifact-registry "$dir/etc/apt/apt.conf.d/" 2>/dev/null || true
    # pip installs into the system Python, as it does in python:*-slim
    rm -f "$dir"/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/locale/* "$dir"/var/lib/apt/lists/* \
      "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb
    tar -C "$dir" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$dir"
  fi
  if ! podman image exists "$base"; then
    podman import --change 'CMD ["python3"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      "$tarball" "$base" >/dev/null
  fi
}

human() { numfmt --to=iec --suffix=B "$1"; }
start=$SECONDS
make_base
rows=()
pairs=()
for name in "${images[@]}"; do
  image="ghcr.io/tratree/tratree-$name:$tag"
  t0=$SECONDS
  echo "building $image" >&2
  buildah bud --layers --pull=never --network host --runtime runc "${limits[@]}" \
    --build-arg "BASE=$base" --build-arg "TORCH_INDEX=$torch_index" \
    -f "$root/images/$name.Dockerfile" -t "$image" "$root" >&2
  built=$((SECONDS - t0))
  id="$(podman image inspect --format '{{.Id}}' "$image")"
  archive="$cache/$name-${id:0:12}.oci.tar"
  if ! [ -s "$archive" ]; then
    rm -f "$cache/$name"-*.oci.tar
    podman save --format oci-archive -o "$archive.tmp" "$image" >&2
    mv "$archive.tmp" "$archive"
  fi
  size="$(podman image inspect --format '{{.Size}}' "$image")"
  rows+=("$(printf '%-9s %8ss %10s  %s' "$name" "$built" "$(human "$size")" "${id:0:12}")")
  pairs+=("$image $archive")
done
printf '%-9s %9s %10s  %s\n' image build size id >&2
printf '%s\n' "${rows[@]}" >&2
echo "all: $((SECONDS - start))s" >&2
printf '%s\n' "${pairs[@]}"
