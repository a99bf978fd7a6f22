#!/usr/bin/env bash
# Build (or reuse from the cache) everything the real control plane harness needs:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl   (k8s.io/kubernetes from the Go module proxy)
#   etcd                                                                 (go.etcd.io/etcd/server/v3 from the Go module proxy)
#   kwok, kwokctl                                                        (sigs.k8s.io/kwok)
#   helm                                                                 (helm.sh/helm/v3)
# Everything lands in a cache OUTSIDE the repo, keyed by version:
#   $SPLITDNN_CACHE/k8s/<K8S_VERSION>/bin/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl}
#   $SPLITDNN_CACHE/etcd/<ETCD_VERSION>/bin/etcd
#   $SPLITDNN_CACHE/kwok/<KWOK_VERSION>/bin/{kwok,kwokctl}
#   $SPLITDNN_CACHE/helm/<HELM_VERSION>/bin/helm
#   $SPLITDNN_CACHE/bin/  -> symlinks to all of the above (put it on PATH)
# Idempotent: a warm run only checks that the files exist and exits in well under a second.
# Usage: scripts/build-k8s.sh [--print-bin-dir] [--only k8s|etcd|kwok|helm|node]...
#   (node = kubelet, kubeadm, kube-proxy for a kind node image; built only when asked for)
set -euo pipefail

# Kubernetes 1.33: the Go module proxy reachable here serves no v0.32.x of several staging modules that the
# control plane imports (k8s.io/kube-controller-manager, kube-scheduler, csi-translation-lib, endpointslice,
# cri-client: "403 not available"), so 1.32 cannot be built from it; 1.33 is the oldest line it serves whole.
# The kubelet of 1.33 still runs on cgroup v1 (it stops by default only from 1.35).
K8S_VERSION="${K8S_VERSION:-v1.33.13}"
ETCD_VERSION="${ETCD_VERSION:-v3.5.21}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
HELM_VERSION="${HELM_VERSION:-v3.17.3}"
HELM_K8S_MINOR="${HELM_K8S_MINOR:-32}"   # helm v3.17 is built on k8s.io/client-go v0.32
SPLITDNN_CACHE="${SPLITDNN_CACHE:-$HOME/.cache/splitdnn}"
GO="${GO:-}"
NICE="${NICE:-nice -n 10}"

source "$(dirname "$0")/lib/go-env.sh" build-k8s

BIN="$SPLITDNN_CACHE/bin"
K8S_BIN="$SPLITDNN_CACHE/k8s/$K8S_VERSION/bin"
ETCD_BIN="$SPLITDNN_CACHE/etcd/$ETCD_VERSION/bin"
KWOK_BIN="$SPLITDNN_CACHE/kwok/$KWOK_VERSION/bin"
HELM_BIN="$SPLITDNN_CACHE/helm/$HELM_VERSION/bin"
WORK="$SPLITDNN_CACHE/work"

ONLY=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --print-bin-dir) echo "$BIN"; exit 0 ;;
    --only) ONLY+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "build-k8s: unknown argument $1" >&2; exit 2 ;;
  esac
done
want() { [[ ${#ONLY[@]} -eq 0 ]] && return 0; local x; for x in "${ONLY[@]}"; do [[ "$x" == "$1" ]] && return 0; done; return 1; }

mkdir -p "$BIN" "$WORK"
TIMINGS=()
T_ALL=$(date +%s)
step_start() { T0=$(date +%s); echo "build-k8s: $1 ..." >&2; }
step_end() { TIMINGS+=("$(printf '%-28s %5ss' "$1" "$(( $(date +%s) - T0 ))")"); }

link() {  # link <dir> <name>...
  local d="$1"; shift
  local n; for n in "$@"; do ln -sfn "$d/$n" "$BIN/$n"; done
}

# ---------------------------------------------------------------- Kubernetes control plane + kubectl
build_k8s() {
  local names=("$@")
  local missing=0 n
  for n in "${names[@]}"; do [[ -x "$K8S_BIN/$n" ]] || missing=1; done
  if [[ $missing -eq 0 ]]; then link "$K8S_BIN" "${names[@]}"; return 0; fi

  step_start "kubernetes $K8S_VERSION: module download"
  local mod="$WORK/k8s-$K8S_VERSION"
  local minor="${K8S_VERSION#v1.}"          # 32.13
  local staging_version="v0.${minor}"       # v0.32.13
  mkdir -p "$mod"
  # The staging module list comes from k8s.io/kubernetes' own go.mod (its `k8s.io/x => ./staging/src/k8s.io/x` lines).
  local kmod
  kmod="$(cd "$mod" && "$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  [[ -f "$kmod" ]] || { echo "build-k8s: could not download k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
  local goline
  goline="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$kmod" | head -1)"
  {
    echo "module splitdnn.local/k8sbuild"
    echo
    echo "go ${goline:-1.23.0}"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/src/' "$kmod" | awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}'
    echo ")"
  } > "$mod/go.mod"
  cat > "$mod/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubeadm"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
EOF
  (cd "$mod" && "$GO" mod tidy >/dev/null 2>"$mod/tidy.log" || { cat "$mod/tidy.log" >&2; exit 1; })
  step_end "k8s module download"

  local pkg="k8s.io/component-base/version"
  local major="1" kminor="${minor%%.*}"
  local build_date; build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$kminor"
  ldflags+=" -X $pkg.gitCommit=splitdnn-gomod -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
  # client-go carries its own copy for the user agent
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=$major -X k8s.io/client-go/pkg/version.gitMinor=$kminor"
  mkdir -p "$K8S_BIN.tmp"
  for n in "${names[@]}"; do
    [[ -x "$K8S_BIN/$n" ]] && continue
    step_start "go build $n"
    (cd "$mod" && $NICE "$GO" build -trimpath -ldflags "$ldflags" -o "$K8S_BIN.tmp/$n" "k8s.io/kubernetes/cmd/$n")
    mkdir -p "$K8S_BIN"; mv "$K8S_BIN.tmp/$n" "$K8S_BIN/$n"
    step_end "go build $n"
  done
  rmdir "$K8S_BIN.tmp" 2>/dev/null || true
  link "$K8S_BIN" "${names[@]}"
}

# ---------------------------------------------------------------- etcd (server/v3 has replace directives, so no `go install`:
# a wrapper module; its requirements pin the sibling etcd modules at the same release)
build_etcd() {
  if [[ -x "$ETCD_BIN/etcd" ]]; then link "$ETCD_BIN" etcd; return 0; fi
  step_start "etcd $ETCD_VERSION"
  local mod="$WORK/etcd-$ETCD_VERSION"
  mkdir -p "$mod" "$ETCD_BIN"
  cat > "$mod/go.mod" <<EOF
module splitdnn.local/etcdbuild

go 1.23

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
  cat > "$mod/tools.go" <<'EOF'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
EOF
  (cd "$mod" && "$GO" mod tidy >/dev/null 2>"$mod/tidy.log" || { cat "$mod/tidy.log" >&2; exit 1; })
  (cd "$mod" && $NICE "$GO" build -trimpath -ldflags "-s -w" -o "$ETCD_BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$ETCD_BIN/etcd.tmp" "$ETCD_BIN/etcd"
  step_end "etcd $ETCD_VERSION"
  link "$ETCD_BIN" etcd
}

# ---------------------------------------------------------------- kwok, kwokctl, helm (plain go install)
goinstall() {  # goinstall <bindir> <name> <pkg@version> [ldflags]
  local d="$1" n="$2" p="$3" ld="${4:-}"
  if [[ -x "$d/$n" ]]; then link "$d" "$n"; return 0; fi
  step_start "go install $p"
  mkdir -p "$d"
  GOBIN="$d" $NICE "$GO" install -trimpath -ldflags "-s -w $ld" "$p"
  step_end "go install $n"
  link "$d" "$n"
}

want etcd && build_etcd
want kwok && goinstall "$KWOK_BIN" kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" \
  "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION#v}"
want kwok && goinstall "$KWOK_BIN" kwokctl "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION" \
  "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION#v}"
want helm && goinstall "$HELM_BIN" helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean $(
     # the Kubernetes version helm assumes for `helm template`/`lint` (its Makefile derives it from client-go)
     for p in pkg/lint/rules pkg/chartutil; do
       printf -- '-X helm.sh/helm/v3/%s.k8sVersionMajor=1 -X helm.sh/helm/v3/%s.k8sVersionMinor=%s ' "$p" "$p" "$HELM_K8S_MINOR"
     done)"
want k8s && build_k8s kube-apiserver kube-controller-manager kube-scheduler kubectl
# Node binaries for a kind node image: only on request (`--only node`), not part of the default run.
for x in "${ONLY[@]}"; do [[ "$x" == node ]] && build_k8s kubelet kubeadm kube-proxy; done

# A manifest of what is in the cache, read by tests/harness/controlplane.py.
cat > "$BIN/versions.env" <<EOF
K8S_VERSION=$K8S_VERSION
ETCD_VERSION=$ETCD_VERSION
KWOK_VERSION=$KWOK_VERSION
HELM_VERSION=$HELM_VERSION
EOF

if [[ ${#TIMINGS[@]} -gt 0 ]]; then
  echo "build-k8s: timing breakdown" >&2
  for t in "${TIMINGS[@]}"; do echo "  $t" >&2; done
fi
echo "build-k8s: total $(( $(date +%s) - T_ALL ))s; binaries in $BIN" >&2
