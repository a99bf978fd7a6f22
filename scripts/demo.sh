#!/usr/bin/env bash
# The main job on the embedded default: install, inspect the built-in CNN14, slice it and verify the slices.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/splitdnn inspect cnn14
.venv/bin/splitdnn slice cnn14 --at conv2d,flatten --out out/cnn14-slices
