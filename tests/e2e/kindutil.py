"""Helpers shared by the kind e2e tests and their fixtures (a plain module: tests/ is not a package)."""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMINGS: list[tuple[str, float]] = []


@contextmanager
def timed(what: str):
    t0 = time.monotonic()
    try:
        yield
    finally:
        TIMINGS.append((what, time.monotonic() - t0))


def sh(*cmd, timeout=600, check=True, capture=True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, timeout=timeout, text=True,
                          capture_output=capture, **kw)
    if check and proc.returncode != 0:
        out = ((proc.stdout or "") + (proc.stderr or ""))[-4000:]
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{out}")
    return proc


def kubectl_json(cluster, *args) -> dict:
    return json.loads(cluster.kubectl(*args, "-o", "json"))


def load_image(cluster, image: str, nodes: list[str] | None = None):
    """`kind load docker-image`, optionally onto some nodes only (the big agent image goes to the workers)."""
    cmd = [cluster.kind_path, "load", "docker-image", "--name", cluster.name, image]
    if nodes:
        cmd += ["--nodes", ",".join(nodes)]
    sh(*cmd, timeout=1200)


def wait_for(what: str, fn, timeout: float, interval: float = 3.0):
    """Poll fn() until it returns a truthy value; fail with the last value/exception after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - report the last error on timeout
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")
