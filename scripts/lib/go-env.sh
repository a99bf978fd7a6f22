# Sourced by the scripts that build Go programs from the Go module proxy (build-k8s.sh, build-s3.sh,
# build-prometheus.sh): finds the toolchain ($GO, else `go` on PATH, else /usr/local/go) and sets the project's
# keyed Go caches under $SPLITDNN_CACHE and static, reproducible-enough builds. $1: the caller, for the error.
if [[ -z "${GO:-}" ]]; then
  if command -v go >/dev/null 2>&1; then GO="$(command -v go)"
  elif [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go
  else echo "$1: no Go toolchain found (install Go >= 1.25 or set GO=...)" >&2; exit 1; fi
fi
export GOCACHE="${GOCACHE:-$SPLITDNN_CACHE/go-build}"
export GOMODCACHE="${GOMODCACHE:-$SPLITDNN_CACHE/go-mod}"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"
