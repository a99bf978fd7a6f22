#!/usr/bin/env bash
# Raise the host's inotify limits to what kind's known-issues page asks for ("Pod errors due to too many open
# files"): every kind node runs systemd, containerd and a kubelet as the same host user (root), and they share
# that user's inotify instances (Debian's default 128). A 4-node cluster idles at ~70 of them; pods that cannot
# get one fail to start. Only ever raises a limit, and says so; a no-op when the limits are already high enough.
set -euo pipefail
raise() {  # raise <sysctl key> <minimum>
  local key="$1" want="$2" have
  have=$(sysctl -n "$key")
  if (( have < want )); then
    if sysctl -qw "$key=$want" 2>/dev/null; then
      echo "[kind-host-limits] $key: $have -> $want (kind known issues: too many open files)" >&2
    else
      echo "[kind-host-limits] warning: cannot raise $key from $have to $want (not root?); kind pods may fail with 'too many open files'" >&2
    fi
  fi
}
raise fs.inotify.max_user_instances 512
raise fs.inotify.max_user_watches 524288
