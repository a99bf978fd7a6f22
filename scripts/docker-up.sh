#!/usr/bin/env bash
# Make sure a Docker engine is running: install Debian's docker.io if dockerd is missing,
# start dockerd in the background if it is not answering, and wait until it answers.
# Idempotent; a warm run only runs `docker info`.  Log: $SPLITDNN_CACHE/logs/dockerd.log
set -euo pipefail
SPLITDNN_CACHE="${SPLITDNN_CACHE:-$HOME/.cache/splitdnn}"
log="$SPLITDNN_CACHE/logs/dockerd.log"
mkdir -p "$(dirname "$log")"
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "[docker-up] installing docker.io from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi
command -v docker >/dev/null 2>&1 || { echo "[docker-up] no docker client" >&2; exit 1; }
if ! pgrep -x dockerd >/dev/null 2>&1; then
  echo "[docker-up] starting dockerd (log: $log)" >&2
  # containerd from the docker.io package is started by dockerd itself.
  nohup setsid dockerd --storage-driver=overlay2 >>"$log" 2>&1 </dev/null &
fi
for _ in $(seq 1 120); do
  docker info >/dev/null 2>&1 && { echo "[docker-up] docker is up" >&2; exit 0; }
  sleep 0.5
done
echo "[docker-up] dockerd did not answer within 60 s; last log lines:" >&2
tail -n 30 "$log" >&2
exit 1
