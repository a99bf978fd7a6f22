#!/usr/bin/env bash
# scripts/netem-vm.sh [pytest args]: run the kernel-netem tests in a small VM booted with Debian's kernel, which has
# sch_netem (this machine's kernel has none). virtme-ng boots a snapshot of this machine: the host's root filesystem
# read-only (so the project's venv and this work tree as they are), a tmpfs on /tmp. Software emulation (no KVM: a
# guest hung at boot under nested KVM), so what runs inside is kept small: by default exactly the tests that
# tests/skip-allowlist.txt lets skip on a kernel without sch_netem; there every skip fails (SPLITDNN_STRICT_SKIPS=1).
# Installs what it needs (Debian: qemu-system-x86, linux-image-amd64, busybox-static; PyPI: virtme-ng in its own
# venv under ~/.cache/splitdnn), a no-op when warm. Prints pytest's closing line last; exits with pytest's code.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "${1:-}" = "--guest" ]; then  # inside the VM (root): writable /tmp, nothing written to the shared tree
  shift
  exec 2>&1
  case "$ROOT/" in  # a fresh tmpfs on /tmp, unless the tree is under /tmp (then vng's /tmp overlay, also in RAM)
    /tmp/*) ;;
    *) mount -t tmpfs -o size=512m tmpfs /tmp ;;
  esac
  # no third-party pytest plugins (hypothesis, pytest-kind: seconds of imports each under emulation)
  export HOME=/tmp PYTHONDONTWRITEBYTECODE=1 SPLITDNN_STRICT_SKIPS=1 TMPDIR=/tmp PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
  echo "[netem-vm] guest $(uname -r), $(nproc) CPUs, $(modinfo -F filename sch_netem 2>/dev/null || echo 'no sch_netem');" \
    "up $(( $(date +%s) - ${NETEM_VM_T0:-0} )) s after vng started (kernel uptime $(cut -d' ' -f1 /proc/uptime) s)"
  exec .venv/bin/python -m pytest -p no:cacheprovider "$@"  # its closing line is the last one; vng returns its code
fi

CACHE=${SPLITDNN_CACHE:-$HOME/.cache/splitdnn}
VNG_VERSION=1.42
VNG_VENV=$CACHE/vng-venv
PACKAGES=(qemu-system-x86 linux-image-amd64 busybox-static)
t0=$SECONDS

[ -x .venv/bin/python ] || { echo "error: no .venv here: run scripts/install.sh first" >&2; exit 2; }
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "[netem-vm] apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ "$("$VNG_VENV/bin/vng" --version 2>/dev/null)" != "virtme-ng $VNG_VERSION" ]; then
  echo "[netem-vm] virtme-ng $VNG_VERSION into $VNG_VENV"
  rm -rf "$VNG_VENV"
  python3 -m venv "$VNG_VENV"
  "$VNG_VENV/bin/pip" install -q "virtme-ng==$VNG_VERSION"
fi
# the newest installed kernel whose modules include sch_netem
kver=$(for m in /lib/modules/*/kernel/net/sched/sch_netem.ko*; do
         v=${m#/lib/modules/}; v=${v%%/*}; [ -f "/boot/vmlinuz-$v" ] && echo "$v"
       done | sort -V | tail -n 1)
[ -n "$kver" ] || { echo "error: no /boot/vmlinuz-* with sch_netem (linux-image-amd64 installs one)" >&2; exit 1; }

if [ "$#" -eq 0 ]; then  # default: the allow-listed tests, which must run and pass here
  mapfile -t selection < <(sed -e 's/#.*//' -e 's/|.*//' -e 's/[[:space:]]*$//' tests/skip-allowlist.txt | grep .)
  set -- -q -s --durations=0 "${selection[@]}"
fi
echo "[netem-vm] ready in $((SECONDS - t0)) s; booting $kver under software emulation (about a minute here)"
guest=$(printf '%q ' env "NETEM_VM_T0=$(date +%s)" bash "$ROOT/scripts/netem-vm.sh" --guest "$@")
exec env PATH="$VNG_VENV/bin:$PATH" vng -r "/boot/vmlinuz-$kver" --user root --disable-kvm --cpus 2 --memory 2G \
  --cwd "$ROOT" -- "$guest"
