#!/usr/bin/env bash
# Assemble everything a kind cluster needs, offline (no container registry; only the Go module proxy and Debian):
#   kind, helm, kubectl                       host tools (go install / Go-built)
#   kubelet, kubeadm, kube-proxy, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
#                                             k8s.io/kubernetes from the Go module proxy through a wrapper go.mod
#                                             (the same approach and caches as the operator's scripts/build-k8s.sh)
#   etcd, coredns (a slim build with the plugins kubeadm's Corefile uses)   Go module proxy
#   crictl: sigs.k8s.io/cri-tools is not served by the Go proxy reachable here (403 for every version), so the node
#           gets scripts/kind-node/crictl (a small ctr-based shim for what kind calls: `crictl inspecti`, images, ps)
#   pause                                     build/pause/linux/pause.c from the k8s.io/kubernetes module, gcc -static
#   control-plane images                      registry.k8s.io/{kube-*,etcd,coredns/coredns,pause} tags, built locally
#   node image splitdnn/kind-node:<k8s>-<key> Debian bookworm (splitdnn/base) + systemd, containerd, runc, CNI plugins,
#                                             iptables ... from Debian; kind's own node files (entrypoint, units) from
#                                             the kind module; the images above preloaded into containerd; a small
#                                             bridge CNI (kind-bridge-cni, a DaemonSet) instead of kindnetd.
# Outputs (cached, keyed by version):  $SPLITDNN_CACHE/kind/<K8S>-kind<KIND>/
#   bin/{kind,helm,kubectl,...}   node-image.txt (the image reference)   images/*.tar   timings.txt
# Idempotent: a warm run checks files and the docker image label and exits in seconds.
# Usage: scripts/build-kind-node.sh [--print-image|--print-bin-dir|--only go|images|node]
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

K8S_VERSION="${K8S_VERSION:-v1.33.13}"   # 1.32.x cannot be built from the Go proxy here (staging modules v0.32.x: 403)
KIND_VERSION="${KIND_VERSION:-v0.29.0}"   # entrypoint still supports cgroup v1 hosts (cgroupns=private); made for 1.33
ETCD_VERSION="${ETCD_VERSION:-v3.5.24}"   # kubeadm 1.33 wants registry.k8s.io/etcd:3.5.24-0
COREDNS_VERSION="${COREDNS_VERSION:-v1.12.0}"   # kubeadm 1.33 constants.CoreDNSVersion
HELM_VERSION="${HELM_VERSION:-v3.17.3}"
PAUSE_TAG="3.10"                          # kubeadm 1.33 constants.PauseVersion
ETCD_TAG="${ETCD_VERSION#v}-0"
NODE_RECIPE=1                             # bump when the node image recipe (below / kind-node/) changes
SPLITDNN_CACHE="${SPLITDNN_CACHE:-$HOME/.cache/splitdnn}"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
NICE="${NICE:-nice -n 10}"
BASE_IMAGE="${BASE_IMAGE:-splitdnn/base:bookworm}"

export GOCACHE="${GOCACHE:-$SPLITDNN_CACHE/go-build}"
export GOMODCACHE="${GOMODCACHE:-$SPLITDNN_CACHE/go-mod}"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export GOTOOLCHAIN=local
export CGO_ENABLED=0
export DOCKER_BUILDKIT=0   # no registry: BuildKit would try to pull frontends; the legacy builder needs nothing
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"

OUT="$SPLITDNN_CACHE/kind/$K8S_VERSION-kind$KIND_VERSION"
BIN="$OUT/bin"
IMG="$OUT/images"
WORK="$SPLITDNN_CACHE/kind/work"
OPERATOR_K8S_BIN="$SPLITDNN_CACHE/k8s/$K8S_VERSION/bin"   # read-only: reuse the operator's binaries when present

node_key() {
  { echo "$K8S_VERSION $KIND_VERSION $ETCD_VERSION $COREDNS_VERSION $PAUSE_TAG $NODE_RECIPE"
    docker image inspect "$BASE_IMAGE" --format '{{ .Id }}' 2>/dev/null
    find "$REPO/scripts/kind-node" -type f -print0 | sort -z | xargs -0 sha256sum | cut -d' ' -f1
  } | sha256sum | cut -c1-12
}
NODE_REPO="splitdnn/kind-node"

case "${1:-}" in
  --print-bin-dir) echo "$BIN"; exit 0 ;;
  --print-image) cat "$OUT/node-image.txt"; exit 0 ;;
esac
ONLY="${2:-}"; [[ "${1:-}" == "--only" ]] || ONLY=""
want() { [[ -z "$ONLY" || "$ONLY" == "$1" ]]; }

mkdir -p "$BIN" "$IMG" "$WORK"
TIMINGS=()
T_ALL=$SECONDS
step_start() { T0=$SECONDS; echo "[kind-node] $1 ..." >&2; }
step_end() { TIMINGS+=("$(printf '%-34s %5ss' "$1" "$((SECONDS - T0))")"); }

# ------------------------------------------------------------------ Kubernetes binaries
build_k8s() {
  local names=(kubelet kubeadm kube-proxy kube-apiserver kube-controller-manager kube-scheduler kubectl)
  local missing=() n
  for n in "${names[@]}"; do
    [[ -x "$BIN/$n" ]] && continue
    if [[ -x "$OPERATOR_K8S_BIN/$n" ]] && "$OPERATOR_K8S_BIN/$n" --version 2>/dev/null | grep -q "$K8S_VERSION"; then
      cp "$OPERATOR_K8S_BIN/$n" "$BIN/$n.tmp" && mv "$BIN/$n.tmp" "$BIN/$n"; continue
    fi
    missing+=("$n")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  step_start "kubernetes $K8S_VERSION module"
  local mod="$WORK/k8s-$K8S_VERSION" minor="${K8S_VERSION#v1.}"
  mkdir -p "$mod"
  if [[ ! -f "$mod/go.sum" ]]; then
    local kmod
    kmod="$(cd "$mod" && "$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    [[ -f "$kmod" ]] || { echo "[kind-node] could not download k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
    local goline; goline="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$kmod" | head -1)"
    {
      echo "module splitdnn.local/k8sbuild"; echo; echo "go ${goline:-1.23.0}"; echo
      echo "require k8s.io/kubernetes $K8S_VERSION"; echo; echo "replace ("
      grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/src/' "$kmod" | awk -v v="v0.${minor}" '{print "\t" $1 " => " $1 " " v}'
      echo ")"
    } > "$mod/go.mod"
    { echo '//go:build tools'; echo; echo 'package tools'; echo; echo 'import ('
      for n in "${names[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$n\""; done; echo ')'; } > "$mod/tools.go"
    (cd "$mod" && "$GO" mod tidy >/dev/null 2>"$mod/tidy.log") || { cat "$mod/tidy.log" >&2; rm -f "$mod/go.sum"; exit 1; }
  fi
  step_end "k8s module download"
  local pkg="k8s.io/component-base/version" kminor="${minor%%.*}"
  local ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kminor"
  ldflags+=" -X $pkg.gitCommit=splitdnn-gomod -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$kminor"
  for n in "${missing[@]}"; do
    step_start "go build $n"
    (cd "$mod" && $NICE "$GO" build -trimpath -ldflags "$ldflags" -o "$BIN/$n.tmp" "k8s.io/kubernetes/cmd/$n")
    mv "$BIN/$n.tmp" "$BIN/$n"
    step_end "go build $n"
  done
}

# wrapper-module build: wrapbuild <name> <module@version> <main package> [extra main.go content file]
wrapbuild() {
  local name="$1" modver="$2" pkg="$3" main="${4:-}"
  [[ -x "$BIN/$name" ]] && return 0
  step_start "go build $name ($modver)"
  local mod="$WORK/$name-${modver##*@}"
  mkdir -p "$mod"
  if [[ ! -f "$mod/go.sum" ]]; then
    printf 'module splitdnn.local/%sbuild\n\ngo 1.23\n\nrequire %s %s\n' "$name" "${modver%@*}" "${modver##*@}" > "$mod/go.mod"
    if [[ -n "$main" ]]; then cp "$main" "$mod/main.go"; pkg="."
    else printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$pkg" > "$mod/tools.go"; fi
    (cd "$mod" && "$GO" mod tidy >/dev/null 2>"$mod/tidy.log") || { cat "$mod/tidy.log" >&2; rm -f "$mod/go.sum"; exit 1; }
  fi
  (cd "$mod" && $NICE "$GO" build -trimpath -ldflags "-s -w ${LDX:-}" -o "$BIN/$name.tmp" "$pkg")
  mv "$BIN/$name.tmp" "$BIN/$name"
  step_end "go build $name"
}

goinstall() {  # goinstall <name> <pkg@version> [ldflags]
  [[ -x "$BIN/$1" ]] && return 0
  step_start "go install $2"
  GOBIN="$BIN.gobin" $NICE "$GO" install -trimpath -ldflags "-s -w ${3:-}" "$2"
  mv "$BIN.gobin/$1" "$BIN/$1"; rmdir "$BIN.gobin" 2>/dev/null || true
  step_end "go install $1"
}

build_pause() {
  [[ -x "$BIN/pause" ]] && return 0
  step_start "gcc pause"
  local src="$GOMODCACHE/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c"
  [[ -f "$src" ]] || (cd /tmp && "$GO" mod download "k8s.io/kubernetes@$K8S_VERSION")
  command -v gcc >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null; }
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_TAG-splitdnn" -o "$BIN/pause.tmp" "$src"
  strip "$BIN/pause.tmp"; mv "$BIN/pause.tmp" "$BIN/pause"
  step_end "gcc pause"
}

if want go; then
  goinstall kind "sigs.k8s.io/kind@$KIND_VERSION"
  goinstall helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  build_pause
  LDX="-X go.etcd.io/etcd/api/v3/version.GitSHA=splitdnn" wrapbuild etcd "go.etcd.io/etcd/server/v3@$ETCD_VERSION" go.etcd.io/etcd/server/v3
  wrapbuild coredns "github.com/coredns/coredns@$COREDNS_VERSION" "" "$REPO/scripts/kind-node/coredns-main.go"
  build_k8s
fi

# ------------------------------------------------------------------ component images (docker save -> $IMG/*.tar)
img_build() {  # img_build <tag> <tarname> <context dir>   (context has a Dockerfile)
  local tag="$1" tar="$IMG/$2.tar" ctx="$3"
  local key; key=$( (cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-12)
  if [[ -f "$tar" && -f "$tar.key" && "$(cat "$tar.key")" == "$key" ]]; then return 0; fi
  step_start "image $tag"
  docker build -q --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$tag" "$ctx" >/dev/null
  docker save "$tag" -o "$tar.tmp"; mv "$tar.tmp" "$tar"; echo "$key" > "$tar.key"
  step_end "image $2"
}

static_ctx() {  # a context with a scratch-based image holding the given binaries in /usr/local/bin
  local dir="$WORK/img/$1"; shift
  rm -rf "$dir"; mkdir -p "$dir/rootfs/usr/local/bin" "$dir/rootfs/etc/ssl/certs" "$dir/rootfs/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$dir/rootfs/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' > "$dir/rootfs/etc/group"
  echo 'hosts: files dns' > "$dir/rootfs/etc/nsswitch.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$dir/rootfs/etc/ssl/certs/"
  local b; for b in "$@"; do cp "$BIN/$b" "$dir/rootfs/usr/local/bin/$b"; done
  echo "$dir"
}

if want images; then
  bash "$REPO/scripts/build-base-image.sh"
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    d=$(static_ctx "$c" "$c")
    printf 'FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/local/bin:/usr/bin:/bin\nENTRYPOINT ["/usr/local/bin/%s"]\n' "$c" > "$d/Dockerfile"
    img_build "registry.k8s.io/$c:$K8S_VERSION" "$c" "$d"
  done
  d=$(static_ctx etcd etcd)
  printf 'FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/local/bin:/usr/bin:/bin\nENTRYPOINT ["/usr/local/bin/etcd"]\n' > "$d/Dockerfile"
  img_build "registry.k8s.io/etcd:$ETCD_TAG" etcd "$d"
  d=$(static_ctx coredns coredns); mv "$d/rootfs/usr/local/bin/coredns" "$d/rootfs/coredns"
  printf 'FROM scratch\nCOPY rootfs/ /\nEXPOSE 53 53/udp\nENTRYPOINT ["/coredns"]\n' > "$d/Dockerfile"
  img_build "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" coredns "$d"
  d=$(static_ctx pause pause); mv "$d/rootfs/usr/local/bin/pause" "$d/rootfs/pause"
  printf 'FROM scratch\nCOPY rootfs/ /\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' > "$d/Dockerfile"
  img_build "registry.k8s.io/pause:$PAUSE_TAG" pause "$d"
  # kube-proxy needs iptables/nft/conntrack userspace: Debian base + packages, plus an iptables mode selector
  d="$WORK/img/kube-proxy"; rm -rf "$d"; mkdir -p "$d"
  cp "$BIN/kube-proxy" "$d/kube-proxy"; cp "$REPO/scripts/kind-node/kube-proxy-wrapper.sh" "$d/"
  cp /etc/ssl/certs/ca-certificates.crt "$d/"
  docker image inspect "$BASE_IMAGE" --format '{{ .Id }}' > "$d/base-id"
  cat > "$d/Dockerfile" <<'EOF'
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      iptables nftables conntrack ipset kmod >/dev/null && rm -rf /var/lib/apt/lists/*
COPY kube-proxy /usr/local/bin/kube-proxy-bin
COPY kube-proxy-wrapper.sh /usr/local/bin/kube-proxy
ENTRYPOINT ["/usr/local/bin/kube-proxy"]
EOF
  img_build "registry.k8s.io/kube-proxy:$K8S_VERSION" kube-proxy "$d"
  # kind-bridge-cni: the DaemonSet that replaces kindnetd (scripts/kind-node/manifests/default-cni.yaml)
  d="$WORK/img/kind-bridge-cni"; rm -rf "$d"; mkdir -p "$d"
  cp "$BIN/kubectl" "$REPO/scripts/kind-node/kind-bridge-cni.sh" "$d/"
  docker image inspect "$BASE_IMAGE" --format '{{ .Id }}' > "$d/base-id"
  cat > "$d/Dockerfile" <<'EOF'
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      iptables nftables conntrack ipset kmod >/dev/null && rm -rf /var/lib/apt/lists/*
COPY kubectl /usr/local/bin/kubectl
COPY kind-bridge-cni.sh /usr/local/bin/kind-bridge-cni
ENTRYPOINT ["/usr/local/bin/kind-bridge-cni"]
EOF
  img_build "splitdnn.local/kind-bridge-cni:v1" kind-bridge-cni "$d"
fi

# ------------------------------------------------------------------ node image
if want node; then
  key=$(node_key)
  ref="$NODE_REPO:$K8S_VERSION-$key"
  if docker image inspect "$ref" >/dev/null 2>&1; then
    echo "$ref" > "$OUT/node-image.txt"
  else
    step_start "node rootfs image"
    d="$WORK/node-ctx"; rm -rf "$d"; mkdir -p "$d/bin"
    kindmod="$(cd /tmp && "$GO" mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
    cp -r "$kindmod/images/base/files" "$d/kind-files"; chmod -R u+w "$d/kind-files"
    cp -r "$REPO/scripts/kind-node" "$d/splitdnn"
    for b in kubelet kubeadm kubectl; do cp "$BIN/$b" "$d/bin/"; done
    echo "$K8S_VERSION" > "$d/version"
    cp /etc/ssl/certs/ca-certificates.crt "$d/"
    cp "$REPO/scripts/kind-node/Dockerfile.node" "$d/Dockerfile"
    docker build -q --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$NODE_REPO:rootfs-$key" "$d" >/dev/null
    step_end "node rootfs image"

    step_start "preload images into containerd"
    cid=$(docker run -d --privileged --tmpfs /run --tmpfs /tmp -v "$IMG:/preload:ro" --entrypoint sleep "$NODE_REPO:rootfs-$key" infinity)
    trap 'docker rm -f "$cid" >/dev/null 2>&1 || true' EXIT
    docker exec "$cid" bash -ec '
      containerd >/tmp/containerd.log 2>&1 &
      for i in $(seq 1 100); do ctr version >/dev/null 2>&1 && break; sleep 0.2; done
      for t in /preload/*.tar; do ctr --namespace=k8s.io images import --all-platforms --no-unpack --digests "$t" >/dev/null; done
      ctr --namespace=k8s.io images ls -q | grep -v "^sha256:" | sort
      pkill containerd; sleep 1
      rm -rf /tmp/* /var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/* 2>/dev/null || true' \
      > "$OUT/preloaded.txt" 2>&1 || { echo "[kind-node] preloading failed:" >&2; cat "$OUT/preloaded.txt" >&2; exit 1; }
    docker commit \
      --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' --change 'CMD []' \
      --change 'ENV container=docker' \
      --change "LABEL splitdnn.kind-node.key=$key splitdnn.k8s.version=$K8S_VERSION" \
      "$cid" "$ref" >/dev/null
    docker rm -f "$cid" >/dev/null; trap - EXIT
    docker rmi "$NODE_REPO:rootfs-$key" >/dev/null 2>&1 || true
    echo "$ref" > "$OUT/node-image.txt"
    step_end "preload + commit"
    sed 's/^/[kind-node]   preloaded: /' "$OUT/preloaded.txt" >&2
  fi
fi

if [[ ${#TIMINGS[@]} -gt 0 ]]; then
  { echo "build-kind-node $(date -u +%FT%TZ)"; printf '  %s\n' "${TIMINGS[@]}"; } | tee -a "$OUT/timings.txt" >&2
fi
echo "[kind-node] total $((SECONDS - T_ALL)) s; bin $BIN; node image $(cat "$OUT/node-image.txt" 2>/dev/null || echo '(not built)')" >&2
