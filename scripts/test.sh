#!/usr/bin/env bash
# The test command (README, .ci/run): install what the tests need, then run every test level.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Kubernetes control plane binaries (Go module proxy) for the `controlplane` tests: cached under
# ~/.cache/splitdnn, a no-op in well under a second when warm (see scripts/build-k8s.sh for the cold timing).
bash scripts/build-k8s.sh
# A real S3-compatible server (versitygw, Go module proxy) for the s3:// model-source tests; cached likewise.
bash scripts/build-s3.sh
# kind e2e prerequisites: Docker, the offline base/node/project images, kind/kubectl/helm. Cached under
# ~/.cache/splitdnn and in Docker; prints its own timing breakdown. The `kind_e2e` tests run with the rest.
bash scripts/e2e.sh prepare
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests (exit 5): the selection or the test tree is broken" >&2
  exit 1
fi
exit "$rc"
