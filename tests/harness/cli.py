"""Run the `splitdnn` CLI as a user would, from tests. (A module of its own: `from conftest import ...` is
ambiguous once a sub-folder such as tests/e2e has a conftest.py too.)"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args, check=True, timeout=600):
    """Run `python -m splitdnn ARGS`; returns the CompletedProcess (stdout/stderr as text)."""
    proc = subprocess.run(
        [sys.executable, "-m", "splitdnn", *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"splitdnn {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc
