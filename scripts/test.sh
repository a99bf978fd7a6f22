#!/usr/bin/env bash
# The test command (README, .ci/run): install what the tests need, then run every test level.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Lint, format and types (configured in pyproject.toml): a finding fails the run before the slow steps.
.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
.venv/bin/mypy
# Kubernetes control plane binaries (Go module proxy) for the `controlplane` tests: cached under
# ~/.cache/splitdnn, a no-op in well under a second when warm (see scripts/build-k8s.sh for the cold timing).
bash scripts/build-k8s.sh
# A real S3-compatible server (versitygw, Go module proxy) for the s3:// model-source tests; cached likewise.
bash scripts/build-s3.sh
# kind e2e prerequisites: Docker, the offline base/node/project images, kind/kubectl/helm. Cached under
# ~/.cache/splitdnn and in Docker; prints its own timing breakdown. The `kind_e2e` tests run with the rest.
bash scripts/e2e.sh prepare
# The arm64 TensorFlow-free agent image (tests/test_agent_lite_image.py runs it under qemu-user): cold ~6 min here
# (debootstrap and pip under emulation), cached like the others.
bash scripts/build-base-image.sh --arch arm64
bash scripts/build-images.sh --arch arm64 agent-lite
set +e
log=$(mktemp /tmp/splitdnn-test.XXXXXX)
.venv/bin/python -m pytest "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests (exit 5): the selection or the test tree is broken" >&2
  exit 1
fi
# The tests that need a kernel with sch_netem (this machine's has none; tests/skip-allowlist.txt lets only them skip
# above) run in a VM with Debian's kernel: installs its pieces when cold, ~2-4 min here, see README "Tests".
set +e
bash scripts/netem-vm.sh 2>&1 | tee -a "$log"
vm_rc=${PIPESTATUS[0]}
set -e
# One closing line for both pytest runs, last: CI reads the last one.
awk '/^(=+ )?[0-9]+ (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?)(, [0-9]+ [a-z]+)* in [0-9.]+s/ {
       gsub(/=/, ""); for (i = 1; i < NF; i++) if ($(i + 1) ~ /^(passed|failed|skipped|error|errors)/) {
         k = $(i + 1); sub(/,$/, "", k); if (k == "errors") k = "error"; n[k] += $i } }
     END { printf "all: %d passed, %d failed, %d skipped\n", n["passed"], n["failed"] + n["error"], n["skipped"] }' "$log"
rm -f "$log"
[ "$rc" -ne 0 ] && exit "$rc"
exit "$vm_rc"
