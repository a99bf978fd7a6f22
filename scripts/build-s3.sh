#!/usr/bin/env bash
# Build (or reuse from the cache) a real S3-compatible server for the s3:// tests of tests/test_storage.py:
#   versitygw (github.com/versity/versitygw, Apache-2.0, from the Go module proxy): an S3 gateway over a POSIX
#   directory that checks AWS Signature Version 4 and refuses a wrong key, as MinIO or AWS do.
# It lands in a cache OUTSIDE the repo, keyed by version:
#   $SPLITDNN_CACHE/versitygw/<VERSION>/bin/versitygw,  linked from $SPLITDNN_CACHE/bin/versitygw
# Idempotent: a warm run only checks that the file exists. Cold: ~15 min of compiling on 2 busy cores (it pulls
# the AWS and Azure SDKs); the test skips the s3:// cases, saying so, when the binary is not there.
# Usage: scripts/build-s3.sh [--print-bin-dir]
set -euo pipefail

VERSITYGW_VERSION="${VERSITYGW_VERSION:-v1.8.0}"
SPLITDNN_CACHE="${SPLITDNN_CACHE:-$HOME/.cache/splitdnn}"
GO="${GO:-}"
NICE="${NICE:-nice -n 10}"
BIN="$SPLITDNN_CACHE/bin"
OUT="$SPLITDNN_CACHE/versitygw/$VERSITYGW_VERSION/bin"

case "${1:-}" in
  --print-bin-dir) echo "$BIN"; exit 0 ;;
  -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
  "") ;;
  *) echo "build-s3: unknown argument $1" >&2; exit 2 ;;
esac

mkdir -p "$BIN"
if [[ -x "$OUT/versitygw" ]]; then
  ln -sfn "$OUT/versitygw" "$BIN/versitygw"
  exit 0
fi

source "$(dirname "$0")/lib/go-env.sh" build-s3

T0=$(date +%s)
echo "build-s3: versitygw $VERSITYGW_VERSION (go install, cold: minutes) ..." >&2
mkdir -p "$OUT.tmp"
GOBIN="$OUT.tmp" $NICE "$GO" install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
mkdir -p "$(dirname "$OUT")"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
ln -sfn "$OUT/versitygw" "$BIN/versitygw"
echo "build-s3: versitygw $VERSITYGW_VERSION built in $(( $(date +%s) - T0 )) s -> $BIN/versitygw" >&2
