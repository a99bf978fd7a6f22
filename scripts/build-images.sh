#!/usr/bin/env bash
# Build the project's images offline on top of the local base image (scripts/build-base-image.sh):
#   splitdnn/agent:dev      from agent_image/Dockerfile
#   splitdnn/operator:dev   from operator/Dockerfile
#   splitdnn/agent-lite:dev from agent_lite_image/Dockerfile (TensorFlow-free LiteRT agent)
#   splitdnn/prometheus:dev from prometheus_image/Dockerfile (the chart's prometheus.enabled; its binary from
#                           scripts/build-prometheus.sh, the only file in its build context)
# All with --build-arg BASE_IMAGE=splitdnn/base:bookworm (the Dockerfiles keep registry defaults for users who
# have one). Python wheels come from PyPI during the build (through the host's egress CA, baked into the base);
# docker's layer cache makes warm re-runs take seconds. The legacy builder is used (DOCKER_BUILDKIT=0): BuildKit
# would try to pull the `# syntax=docker/dockerfile:1` frontend image, and there is no registry here.
# Usage: scripts/build-images.sh [--arch arm64] [agent|operator|agent-lite|prometheus]...   (default: all four).
#   --arch arm64: build on splitdnn/base:bookworm-arm64 (scripts/build-base-image.sh --arch arm64) under
#   qemu-user (scripts/qemu-user.sh), tagged <name>:dev-arm64.
#   SPLITDNN_IMAGE_ARCHIVES=DIR: also write DIR/<name>-<tag>.tar (docker save), for `k3s ctr images import`.
# A missing Dockerfile is reported and skipped with exit code 3 at the end, so callers can tell "not on this branch
# yet" from a failed build.
set -euo pipefail
cd "$(dirname "$0")/.."
export DOCKER_BUILDKIT=0
ARCH="$(dpkg --print-architecture)"
if [[ "${1:-}" == "--arch" ]]; then ARCH="${2:?--arch needs amd64 or arm64}"; shift 2; fi
suffix=""; [[ "$ARCH" == "$(dpkg --print-architecture)" ]] || suffix="-$ARCH"
BASE_IMAGE="${BASE_IMAGE:-splitdnn/base:bookworm$suffix}"
TAG="${SPLITDNN_IMAGE_TAG:-dev}$suffix"
platform=(); [[ -z "$suffix" ]] || platform=(--platform "linux/$ARCH")
[[ -z "$suffix" ]] || bash scripts/qemu-user.sh "$ARCH"   # a foreign RUN executes under qemu-user (binfmt_misc)
SPLITDNN_CACHE="${SPLITDNN_CACHE:-$HOME/.cache/splitdnn}"
mkdir -p "$SPLITDNN_CACHE/logs"
declare -A DOCKERFILE=([agent]=agent_image/Dockerfile [operator]=operator/Dockerfile [agent-lite]=agent_lite_image/Dockerfile
                   [prometheus]=prometheus_image/Dockerfile)
which=("$@"); [[ ${#which[@]} -gt 0 ]] || which=(agent operator agent-lite prometheus)
missing=0
for name in "${which[@]}"; do
  df="${DOCKERFILE[$name]:-}"
  [[ -n "$df" ]] || { echo "[images] unknown image $name" >&2; exit 2; }
  if [[ ! -f "$df" ]]; then
    echo "[images] $df not present on this branch: splitdnn/$name:$TAG not built" >&2; missing=1; continue
  fi
  t0=$SECONDS
  previous="$(docker image inspect -f '{{.Id}}' "splitdnn/$name:$TAG" 2>/dev/null || true)"
  log="$SPLITDNN_CACHE/logs/build-image-$name.log"
  echo "[images] splitdnn/$name:$TAG from $df (base $BASE_IMAGE; log $log)" >&2
  context=.
  if [[ "$name" == prometheus ]]; then  # a context of one file: the binary (docker's cache keys on its content)
    context="$SPLITDNN_CACHE/prometheus/context-$ARCH"; mkdir -p "$context"
    cp -f "$(bash scripts/build-prometheus.sh --arch "$ARCH" --print-binary)" "$context/prometheus"
  fi
  if ! nice -n 10 docker build "${platform[@]}" -f "$df" --build-arg BASE_IMAGE="$BASE_IMAGE" -t "splitdnn/$name:$TAG" "$context" >"$log" 2>&1; then
    tail -n 40 "$log" >&2; echo "[images] FAILED: docker build -f $df" >&2; exit 1
  fi
  # the image this build replaced is now untagged: ~2 GB per source change, which filled the disk after a few
  # dozen rebuilds. Remove it (only that image; layers it shares with the new one stay; in use → left alone).
  current="$(docker image inspect -f '{{.Id}}' "splitdnn/$name:$TAG")"
  if [[ -n "$previous" && "$previous" != "$current" ]]; then
    docker rmi "$previous" >/dev/null 2>&1 && echo "[images] removed the replaced image ${previous:7:12}" >&2 || true
  fi
  # a multi-stage build leaves its build stage behind as an untagged image, ~2 GB per source change (the legacy
  # builder keeps it as cache). Remove the earlier ones, but never a stage this build used: a fully cached build
  # names its (old) stage images in the log ("---> <id>"), and removing them would make the next build start over.
  # (Labelled per image: the agent's build must not remove the operator's current stage.)
  used="$(grep -oE -- '---> [0-9a-f]{12}' "$log" | cut -c6- | sort -u || true)"
  removed=0
  for id in $(docker images -q --filter "label=io.splitdnn.build-stage-of=$name" | sort -u); do
    grep -qx "$id" <<<"$used" && continue
    # (the other architecture's stage is that build's cache: pip under emulation takes minutes)
    [[ "$(docker image inspect -f '{{.Architecture}}' "$id" 2>/dev/null)" == "$ARCH" ]] || continue
    docker rmi "$id" >/dev/null 2>&1 && removed=$((removed + 1)) || true
  done
  [[ $removed -eq 0 ]] || echo "[images] removed $removed earlier build stage(s)" >&2
  if [[ -n "${SPLITDNN_IMAGE_ARCHIVES:-}" ]]; then
    mkdir -p "$SPLITDNN_IMAGE_ARCHIVES"
    docker save -o "$SPLITDNN_IMAGE_ARCHIVES/$name-$TAG.tar" "splitdnn/$name:$TAG"
    echo "[images] wrote $SPLITDNN_IMAGE_ARCHIVES/$name-$TAG.tar ($(du -h "$SPLITDNN_IMAGE_ARCHIVES/$name-$TAG.tar" | cut -f1))" >&2
  fi
  echo "[images] splitdnn/$name:$TAG built in $((SECONDS - t0)) s ($(docker image inspect "splitdnn/$name:$TAG" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))" >&2
done
[[ $missing -eq 0 ]] || exit 3
