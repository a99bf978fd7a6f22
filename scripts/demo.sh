#!/usr/bin/env bash
# The main job on the embedded default: install, inspect the built-in CNN14, slice it and verify the slices,
# then run Cho 2021's Type 1 configuration locally (device → edge → cloud agents, 50 frames, summary table).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/splitdnn inspect cnn14
.venv/bin/splitdnn slice cnn14 --at conv2d,flatten --out out/cnn14-slices
# run the example SplitInference on this machine: one agent process per tier, in-process link emulation
.venv/bin/splitdnn run examples/cnn14.yaml
