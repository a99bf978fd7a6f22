#!/usr/bin/env bash
# Register a qemu-user emulator for a foreign architecture with binfmt_misc, so that docker builds and runs its
# images (scripts/build-base-image.sh --arch arm64, scripts/build-images.sh --arch arm64, the arm64 image test).
#
# Why not Debian bookworm's qemu-user-static (7.2): LiteRT's Interpreter segfaults or hangs under it. Debian trixie's
# qemu-user (10.0, statically linked, so it runs on bookworm) runs it. The .deb comes from the Debian mirror apt
# uses; its version is read from trixie's package index the first time and the emulator is cached by that version
# (QEMU_REFRESH=1 looks for a newer one):
#   $SPLITDNN_CACHE/qemu/<version>/qemu-<arch>-static
# Registration uses the F flag (the kernel opens the interpreter now, so containers need no copy of it) and
# replaces an earlier registration of the same name (e.g. qemu-user-static's). Warm: < 1 s, no download.
# Usage: scripts/qemu-user.sh [--print-version] ARCH     (ARCH: arm64)
set -euo pipefail
SPLITDNN_CACHE="${SPLITDNN_CACHE:-$HOME/.cache/splitdnn}"
SUITE="${QEMU_SUITE:-trixie}"
print_version=0
if [[ "${1:-}" == "--print-version" ]]; then print_version=1; shift; fi
ARCH="${1:?usage: scripts/qemu-user.sh [--print-version] ARCH}"
case "$ARCH" in
  arm64)
    name=qemu-aarch64
    magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
    mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
    ;;
  *) echo "scripts/qemu-user.sh: unsupported architecture $ARCH (arm64 only)" >&2; exit 2 ;;
esac
mirror="${DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
  mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
    | grep -oE 'https?://[^ ]*/debian/?' | grep -v security | sed -n 1p || true)
  mirror="${mirror:-http://deb.debian.org/debian}"
fi
mirror="${mirror%/}"
host="$(dpkg --print-architecture)"

cached() {  # the newest cached emulator, if any (none yet on a cold machine: find fails, which pipefail would pass on)
  { find "$SPLITDNN_CACHE/qemu" -name "$name-static" -type f 2>/dev/null || true; } | sort -V | tail -n 1
}
# the cached emulator (no network: warm runs and offline machines); else the version trixie's index names now
binary=$(cached)
if [[ -z "$binary" || -n "${QEMU_REFRESH:-}" ]]; then
  # (awk stops at the entry, so curl may report a broken pipe: silenced; a real failure is the error below)
  entry=$(curl -fsSL --retry 3 "$mirror/dists/$SUITE/main/binary-$host/Packages.xz" 2>/dev/null | xz -dc \
    | awk '/^Package: qemu-user$/ {p = 1} p && /^(Version|Filename|SHA256):/ {print $2} p && /^$/ {exit}' || true)
  version=$(sed -n 1p <<<"$entry"); filename=$(sed -n 2p <<<"$entry"); sha=$(sed -n 3p <<<"$entry")
  [[ -n "$version" && -n "$filename" ]] || { echo "scripts/qemu-user.sh: no qemu-user in $mirror/dists/$SUITE" >&2; exit 1; }
  binary="$SPLITDNN_CACHE/qemu/${version//:/_}/$name-static"
fi
if [[ $print_version -eq 1 ]]; then basename "$(dirname "$binary")"; exit 0; fi
if [[ ! -x "$binary" ]]; then
  dir=$(dirname "$binary"); tmp="$dir.tmp"
  rm -rf "$tmp"; mkdir -p "$tmp"
  echo "[qemu] fetching qemu-user $version ($SUITE) from $mirror" >&2
  curl -fsSL --retry 3 -o "$tmp/qemu-user.deb" "$mirror/$filename"
  echo "$sha  $tmp/qemu-user.deb" | sha256sum -c --quiet
  dpkg-deb --fsys-tarfile "$tmp/qemu-user.deb" | tar -x -C "$tmp" "./usr/bin/$name"
  mv "$tmp/usr/bin/$name" "$tmp/$name-static"
  rm -rf "$tmp/usr" "$tmp/qemu-user.deb"
  rm -rf "$dir"; mv "$tmp" "$dir"
fi
[[ -e /proc/sys/fs/binfmt_misc/status ]] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
entry_file="/proc/sys/fs/binfmt_misc/$name"
if [[ -e "$entry_file" ]] && grep -qx "interpreter $binary" "$entry_file" && grep -qx "flags: OCF" "$entry_file"; then
  exit 0
fi
[[ -e "$entry_file" ]] && echo -1 > "$entry_file"
# (the kernel decodes the \x escapes of magic and mask itself)
printf ':%s:M::%s:%s:%s:OCF\n' "$name" "$magic" "$mask" "$binary" > /proc/sys/fs/binfmt_misc/register
echo "[qemu] registered $name -> $binary (binfmt_misc, flags OCF)" >&2
