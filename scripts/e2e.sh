#!/usr/bin/env bash
# The kind end-to-end sequence (issue #7), idempotent and cached; prints a timing breakdown.
#   scripts/e2e.sh prepare   docker up, base image, kind node image + kind/kubectl/helm, host inotify limits,
#                            project images
#   scripts/e2e.sh test      prepare, then `pytest -m kind_e2e tests/e2e` (extra args go to pytest)
#   scripts/e2e.sh loop      prepare, then only the closed loop with the chart's Prometheus (tests/e2e/test_loop.py);
#                            its last line on stdout is the scenario's JSON (slo, drop rates, resplit/switch-over
#                            seconds, frame outcomes, splits before/after)
# Caches: $SPLITDNN_CACHE (default ~/.cache/splitdnn): base/, kind/<k8s>-kind<kind>/, go-build/, go-mod/, and
# Docker's own image/layer store. A warm `prepare` takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-test}"; [[ $# -gt 0 ]] && shift
case "$mode" in prepare|test|loop) ;; *) echo "usage: scripts/e2e.sh [prepare|test|loop] [pytest args]" >&2; exit 2;; esac
T=(); start=$SECONDS
step() {  # step <label> <command...>
  local label="$1"; shift; local t0=$SECONDS rc=0
  echo "[e2e] $label ..." >&2
  "$@" || rc=$?
  T+=("$(printf '%-40s %5ss%s' "$label" "$((SECONDS - t0))" "$([[ $rc -ne 0 ]] && echo " (exit $rc)")")")
  return $rc
}
summary() {
  echo "[e2e] timing breakdown:" >&2
  printf '  %s\n' "${T[@]}" >&2
  echo "  $(printf '%-40s %5ss' total "$((SECONDS - start))")" >&2
}
trap summary EXIT

step "docker up" bash scripts/docker-up.sh
step "base image" bash scripts/build-base-image.sh
step "kind node image + tools" bash scripts/build-kind-node.sh
step "host inotify limits" bash scripts/kind-host-limits.sh
rc=0; step "project images" bash scripts/build-images.sh || rc=$?
if [[ $rc -eq 3 ]]; then echo "[e2e] project images skipped: Dockerfile(s) not on this branch (the test skips that part)" >&2
elif [[ $rc -ne 0 ]]; then exit $rc; fi
[[ "$mode" == prepare ]] && exit 0

py="${SPLITDNN_PYTHON:-}"
if [[ -z "$py" ]]; then bash scripts/install.sh; py=.venv/bin/python; fi
if [[ "$mode" == loop ]]; then
  rm -f .pytest-kind/loop.json
  rc=0; step "pytest tests/e2e/test_loop.py" "$py" -m pytest -m kind_e2e tests/e2e/test_loop.py -s "$@" || rc=$?
  summary; trap - EXIT
  # the contract: the scenario's JSON object is the last line (written by the test, even when it failed midway)
  [[ -s .pytest-kind/loop.json ]] && tail -n 1 .pytest-kind/loop.json
  exit $rc
fi
step "pytest -m kind_e2e" "$py" -m pytest -m kind_e2e tests/e2e "$@"
