#!/usr/bin/env bash
# The test command (README, .ci/run): install what the tests need, then run every test level.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests (exit 5): the selection or the test tree is broken" >&2
  exit 1
fi
exit "$rc"
