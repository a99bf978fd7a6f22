#!/usr/bin/env bash
# Install splitdnn and its test tools into a virtualenv, idempotently.
# The venv lives outside the repo, keyed by a hash of pyproject.toml, so a clean clone reuses a warm one;
# `.venv` in the repo points at it. Override the location with SPLITDNN_VENV.
set -euo pipefail
cd "$(dirname "$0")/.."
key=$(sha256sum pyproject.toml scripts/install.sh | sha256sum | cut -c1-12)
venv=${SPLITDNN_VENV:-$HOME/.cache/splitdnn/venv-$key}
start=$SECONDS
# System tools the tests use for real: Prometheus (feedback loop), iproute2 (tc, network namespaces).
missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v tc >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[install] apt-get install ${missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "[install] warning: ${missing[*]} missing and cannot apt-get install (not root): tests needing them will skip" >&2
  fi
fi
if [ ! -f "$venv/.complete" ]; then
  echo "[install] creating $venv (TensorFlow is large: ~2 minutes on a warm pip cache)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet -e ".[test]"
  # tensorflow-serving-api pins the full `tensorflow` wheel; its protos only need tensorflow-cpu's.
  "$venv/bin/pip" install --quiet --no-deps "tensorflow-serving-api>=2.21,<2.22"
  touch "$venv/.complete"
else
  # the package itself is editable; re-point it at this checkout (cheap) in case the venv came from another clone
  "$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e . >/dev/null 2>&1 || "$venv/bin/pip" install --quiet --no-deps -e .
fi
ln -sfn "$venv" .venv
echo "[install] venv ready at $venv ($((SECONDS - start)) s)" >&2
