#!/usr/bin/env bash
# Build the offline base image `splitdnn/base:bookworm` without any container registry:
#   debootstrap (Debian mirror from apt's configuration) -> rootfs tarball -> `docker import`.
# Cached by a content key (suite, package list, mirror, this script):
#   $SPLITDNN_CACHE/base/<key>/rootfs.tar.gz   the debootstrap tarball (survives `docker system prune`)
#   image label splitdnn.base.key=<key>        a warm run with the image present exits in < 1 s
# Usage: scripts/build-base-image.sh [--arch amd64|arm64] [--print-tag]
#   --arch arm64: a foreign-architecture base, splitdnn/base:<suite>-arm64 (debootstrap's second stage and every
#   later RUN execute under qemu-user through binfmt_misc: scripts/qemu-user.sh registers it).
set -euo pipefail
cd "$(dirname "$0")/.."
SPLITDNN_CACHE="${SPLITDNN_CACHE:-$HOME/.cache/splitdnn}"
SUITE="${BASE_SUITE:-bookworm}"
ARCH="$(dpkg --print-architecture)"
if [[ "${1:-}" == "--arch" ]]; then ARCH="${2:?--arch needs amd64 or arm64}"; shift 2; fi
HOST_ARCH="$(dpkg --print-architecture)"
suffix=""; [[ "$ARCH" == "$HOST_ARCH" ]] || suffix="-$ARCH"
TAG="${BASE_IMAGE:-splitdnn/base:$SUITE$suffix}"
# minbase + what every image on top needs to reach PyPI/Debian over HTTPS
INCLUDE="ca-certificates,python3,python3-venv,python3-pip,python-is-python3,iproute2,procps"
RECIPE=1   # bump when the rootfs recipe below changes (the cache key does not hash this script)
if [[ "${1:-}" == "--print-tag" ]]; then echo "$TAG"; exit 0; fi

mirror="${DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
  mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
    | grep -oE 'https?://[^ ]*/debian/?' | grep -v security | sed -n 1p || true)
  mirror="${mirror:-http://deb.debian.org/debian}"
fi
key_parts=("$SUITE" "$INCLUDE" "$mirror" "$RECIPE")
[[ -z "$suffix" ]] || key_parts+=("$ARCH")   # the host architecture's key stays what it was
key=$(printf '%s\n' "${key_parts[@]}" | sha256sum | cut -c1-12)
# The host's extra CA certificates (an egress proxy's CA, say) go into the image, so that apt, pip and Python inside
# builds FROM it reach the registries the host reaches. They are part of the image key, not of the rootfs key.
ca_dir=/usr/local/share/ca-certificates
ca_key=$( (cd "$ca_dir" 2>/dev/null && find . -name '*.crt' -type f -print0 | sort -z | xargs -0 -r sha256sum) | sha256sum | cut -c1-12)
image_key="$key-$ca_key"
start=$SECONDS

if docker image inspect "$TAG" --format '{{ index .Config.Labels "splitdnn.base.key" }}' 2>/dev/null | grep -qx "$image_key"; then
  echo "[base] $TAG is current (key $image_key)" >&2; exit 0
fi
dir="$SPLITDNN_CACHE/base/$key"
tarball="$dir/rootfs.tar.gz"
[[ -z "$suffix" ]] || bash scripts/qemu-user.sh "$ARCH"   # the emulator every foreign RUN executes under
if [[ ! -f "$tarball" ]]; then
  command -v debootstrap >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  rm -rf "$dir" "$dir.tmp"; mkdir -p "$dir.tmp/rootfs"
  echo "[base] debootstrap $SUITE from $mirror (a few minutes)" >&2
  nice -n 10 debootstrap --arch="$ARCH" --variant=minbase --include="$INCLUDE" "$SUITE" "$dir.tmp/rootfs" "$mirror" > "$dir.tmp/debootstrap.log" 2>&1 \
    || { tail -n 30 "$dir.tmp/debootstrap.log" >&2; exit 1; }
  r="$dir.tmp/rootfs"
  # container hygiene, as the official debian images do
  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r"/tmp/* "$r"/dev/*
  echo "deb $mirror $SUITE main" > "$r/etc/apt/sources.list"
  echo "deb $mirror $SUITE-updates main" >> "$r/etc/apt/sources.list"
  echo "deb http://deb.debian.org/debian-security $SUITE-security main" >> "$r/etc/apt/sources.list"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' > "$r/etc/apt/apt.conf.d/90splitdnn-norecommends"
  # pip inside the images: Debian marks the system Python externally managed; images use it as their only Python.
  rm -f "$r"/usr/lib/python3*/EXTERNALLY-MANAGED
  tar --numeric-owner -C "$r" -czf "$dir.tmp/rootfs.tar.gz" .
  rm -rf "$r"
  mv "$dir.tmp" "$dir"
fi
rootfs_tag="splitdnn/base-rootfs:$SUITE$suffix-$key"
platform=(); [[ -z "$suffix" ]] || platform=(--platform "linux/$ARCH")
if ! docker image inspect "$rootfs_tag" >/dev/null 2>&1; then
  if [[ -z "$suffix" ]]; then
    echo "[base] docker import $tarball -> $rootfs_tag" >&2
    docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
      --change 'CMD ["/bin/bash"]' "$tarball" "$rootfs_tag" >/dev/null
  else
    # `docker import --platform` is ignored by a non-experimental daemon (the image says amd64, and builds with
    # --platform then refuse it); a FROM-scratch build with --platform records the architecture
    echo "[base] $tarball -> $rootfs_tag (linux/$ARCH)" >&2
    rctx=$(mktemp -d)
    ln "$tarball" "$rctx/rootfs.tar.gz" 2>/dev/null || cp "$tarball" "$rctx/rootfs.tar.gz"
    printf 'FROM scratch\nADD rootfs.tar.gz /\nENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8\nCMD ["/bin/bash"]\n' \
      > "$rctx/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q "${platform[@]}" -t "$rootfs_tag" "$rctx" >/dev/null
    rm -rf "$rctx"
  fi
fi
ctx=$(mktemp -d); trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/ca"
cp "$ca_dir"/*.crt "$ctx/ca/" 2>/dev/null || true
cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM $rootfs_tag
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null 2>&1
# pip in a venv uses its own certifi bundle unless told otherwise
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
LABEL splitdnn.base.key=$image_key
DOCKERFILE
DOCKER_BUILDKIT=0 docker build -q "${platform[@]}" -t "$TAG" "$ctx" >/dev/null
echo "[base] $TAG built in $((SECONDS - start)) s (key $image_key)" >&2
