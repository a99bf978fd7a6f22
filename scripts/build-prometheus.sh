#!/usr/bin/env bash
# Build (or reuse from the cache) the Prometheus server of the chart's `prometheus.enabled` (prometheus_image/):
#   github.com/prometheus/prometheus (Apache-2.0) from the Go module proxy, with only Kubernetes service discovery
#   (build tags remove_all_sd,enable_kubernetes_sd). Debian's `prometheus` package cannot be used in a cluster:
#   Debian builds it without kubernetes_sd_configs ("field kubernetes_sd_configs not found"), so it could not find
#   the tier pods. Static (CGO_ENABLED=0), cross-compiled for --arch arm64.
# It lands in a cache OUTSIDE the repo, keyed by version, tags and architecture:
#   $SPLITDNN_CACHE/prometheus/<VERSION>-k8s-<ARCH>/prometheus
# Idempotent: a warm run only checks that the file exists. Cold: ~3 min on 2 cores with the Go caches of
# scripts/build-k8s.sh warm (client-go is shared), more without.
# Usage: scripts/build-prometheus.sh [--arch amd64|arm64] [--print-binary]
set -euo pipefail

PROMETHEUS_MODULE_VERSION="${PROMETHEUS_MODULE_VERSION:-v0.316.0}"  # Prometheus 3.16.0 (Go module v0.316.0)
SPLITDNN_CACHE="${SPLITDNN_CACHE:-$HOME/.cache/splitdnn}"
GO="${GO:-}"
NICE="${NICE:-nice -n 10}"
ARCH="$(dpkg --print-architecture)"
print=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --arch) ARCH="${2:?--arch needs amd64 or arm64}"; shift 2 ;;
    --print-binary) print=1; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "build-prometheus: unknown argument $1" >&2; exit 2 ;;
  esac
done
TAGS=remove_all_sd,enable_kubernetes_sd
OUT="$SPLITDNN_CACHE/prometheus/$PROMETHEUS_MODULE_VERSION-k8s-$ARCH"
if [[ ! -x "$OUT/prometheus" ]]; then
  source "$(dirname "$0")/lib/go-env.sh" build-prometheus
  T0=$(date +%s)
  minor="${PROMETHEUS_MODULE_VERSION#v0.}"; minor="${minor%%.*}"  # Go module v0.MMmm.p is Prometheus M.mm.p
  version="$((minor / 100)).$((minor % 100)).${PROMETHEUS_MODULE_VERSION##*.}"
  echo "build-prometheus: prometheus $version ($PROMETHEUS_MODULE_VERSION, tags $TAGS, $ARCH; cold: minutes) ..." >&2
  rm -rf "$OUT.tmp"; mkdir -p "$OUT.tmp"
  # `go install pkg@version` cannot cross-compile into GOBIN; `go build` in a throwaway module can
  work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
  (cd "$work" && "$GO" mod init splitdnn.local/prometheus >/dev/null 2>&1 \
    && "$GO" get "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_MODULE_VERSION" 2>/dev/null \
    && GOARCH="$ARCH" $NICE "$GO" build -tags "$TAGS" -trimpath \
      -ldflags "-s -w -X github.com/prometheus/common/version.Version=$version -X github.com/prometheus/common/version.Branch=$PROMETHEUS_MODULE_VERSION" \
      -o "$OUT.tmp/prometheus" github.com/prometheus/prometheus/cmd/prometheus)
  rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
  echo "build-prometheus: built in $(( $(date +%s) - T0 )) s -> $OUT/prometheus" >&2
fi
[[ $print -eq 0 ]] || echo "$OUT/prometheus"
