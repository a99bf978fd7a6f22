#!/usr/bin/env bash
# Make sure a Docker engine is running: install Debian's docker.io if dockerd is missing, start dockerd in the
# background if it is not answering, and wait until it answers. Idempotent; a warm run only runs `docker info`.
# Log: $SPLITDNN_CACHE/logs/dockerd.log
#
# Machines whose root lacks capabilities in its bounding set (this project's sandboxes lack CAP_SYS_RESOURCE)
# cannot start privileged containers with stock runc ("unable to apply caps: operation not permitted"), and kind's
# nodes are privileged. There dockerd runs with scripts/docker/runc-capfilter as its default runtime, which drops
# the capabilities the machine cannot grant from each container's spec. A running dockerd without it is restarted.
set -euo pipefail
cd "$(dirname "$0")/.."
SPLITDNN_CACHE="${SPLITDNN_CACHE:-$HOME/.cache/splitdnn}"
log="$SPLITDNN_CACHE/logs/dockerd.log"
mkdir -p "$(dirname "$log")"
RUNTIME_NAME=splitdnn-runc
RUNTIME_PATH=/usr/local/libexec/splitdnn/runc-capfilter

caps_incomplete() {
  local bnd last
  bnd=$((16#$(awk '/^CapBnd:/ {print $2}' /proc/self/status)))
  last=$(cat /proc/sys/kernel/cap_last_cap)
  [[ $bnd -ne $(( (1 << (last + 1)) - 1 )) ]]
}
flags=(--storage-driver=overlay2)
need_filter=0
if caps_incomplete; then
  need_filter=1
  if ! cmp -s scripts/docker/runc-capfilter "$RUNTIME_PATH" 2>/dev/null; then
    mkdir -p "$(dirname "$RUNTIME_PATH")"; install -m 0755 scripts/docker/runc-capfilter "$RUNTIME_PATH"
  fi
  flags+=(--add-runtime "$RUNTIME_NAME=$RUNTIME_PATH" --default-runtime "$RUNTIME_NAME")
fi

if docker info >/dev/null 2>&1; then
  if [[ $need_filter -eq 0 || "$(docker info --format '{{.DefaultRuntime}}' 2>/dev/null)" == "$RUNTIME_NAME" ]]; then exit 0; fi
  pid=$(cat /var/run/docker.pid 2>/dev/null || true)
  [[ -n "$pid" ]] || { echo "[docker-up] dockerd runs without $RUNTIME_NAME and its pid is unknown: restart it with: dockerd ${flags[*]}" >&2; exit 1; }
  echo "[docker-up] restarting dockerd (pid $pid) with the $RUNTIME_NAME runtime (privileged containers need it here)" >&2
  kill "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "[docker-up] installing docker.io from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi
command -v docker >/dev/null 2>&1 || { echo "[docker-up] no docker client" >&2; exit 1; }
if ! pgrep -x dockerd >/dev/null 2>&1; then
  echo "[docker-up] starting dockerd ${flags[*]} (log: $log)" >&2
  # containerd from the docker.io package is started by dockerd itself.
  nohup setsid dockerd "${flags[@]}" >>"$log" 2>&1 </dev/null &
fi
for _ in $(seq 1 120); do
  docker info >/dev/null 2>&1 && { echo "[docker-up] docker is up (default runtime $(docker info --format '{{.DefaultRuntime}}'))" >&2; exit 0; }
  sleep 0.5
done
echo "[docker-up] dockerd did not answer within 60 s; last log lines:" >&2
tail -n 30 "$log" >&2
exit 1
