"""The CI skip policy (tests/harness/skips.py): under CI=true a skip fails unless tests/skip-allowlist.txt allows it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import skips

TESTS = Path(__file__).resolve().parent


def test_the_repo_allowlist_names_only_the_netem_vm_tests_and_the_sch_netem_reason():
    rules = skips.parse(skips.ALLOWLIST.read_text())
    assert rules and all(r.test.startswith("tests/test_netem_kernel.py::") for r in rules)
    assert all(r.reason.pattern == "sch_netem is absent on this kernel" for r in rules)
    import test_netem_kernel

    names = {r.test.split("::")[1] for r in rules}
    assert names == {n for n in dir(test_netem_kernel) if n.startswith("test_")}  # the VM runs all of them
    assert skips.allowed(
        rules, "tests/test_netem_kernel.py::test_netem_loss_is_applied_by_the_kernel", test_netem_kernel.NO_NETEM
    )


@pytest.mark.parametrize("line", ["tests/x.py::t", "| reason", "tests/x.py::t |  "])
def test_a_bad_allowlist_line_names_its_place(line):
    with pytest.raises(ValueError, match=r"list:2: expected '<test id glob> \| <reason regex>'"):
        skips.parse("# comment\n" + line, "list")


def test_globs_and_reasons_must_both_match():
    rules = skips.parse("tests/a.py::t[*] | no (foo|bar) here")
    assert skips.allowed(rules, "tests/a.py::t[1]", "no bar here")
    assert not skips.allowed(rules, "tests/a.py::u", "no bar here")
    assert not skips.allowed(rules, "tests/a.py::tx", "no bar here")  # `[` is literal, not a character class
    assert not skips.allowed(rules, "tests/a.py::t[1]", "no baz here")


SAMPLE = """
import pytest

def test_allowed():
    pytest.skip("sch_netem is absent on this kernel")

@pytest.mark.skipif(True, reason="no prometheus binary")
def test_refused():
    pass

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False

def test_passes():
    pass
"""


def run_sample(tmp_path, **env) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    allowlist = tmp_path / "allow.txt"
    allowlist.write_text("test_sample.py::test_allowed | sch_netem is absent\n")
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "SPLITDNN_STRICT_SKIPS")}
    environ.update(
        PYTHONPATH=str(TESTS), SPLITDNN_SKIP_ALLOWLIST=str(allowlist), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", **env
    )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "harness.skips",
            "-p",
            "no:cacheprovider",
            "-q",
            "-ra",
            "test_sample.py",
        ],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_outside_ci_skips_are_counted_not_failed(tmp_path):
    proc = run_sample(tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert "skips: 2 (1 allow-listed, 0 failed as not allowed, 1 not on the allow-list)" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("1 passed, 2 skipped, 1 xfailed")


def test_under_ci_a_skip_off_the_allowlist_fails(tmp_path):
    proc = run_sample(tmp_path, CI="true")
    assert proc.returncode == 1, proc.stdout
    assert "skips: 2 (1 allow-listed, 1 failed as not allowed, 0 not on the allow-list)" in proc.stdout
    assert (
        "test_refused - skipped, which fails the run (CI=true" in proc.stdout and "no prometheus binary" in proc.stdout
    )
    assert proc.stdout.strip().splitlines()[-1].startswith("1 passed, 1 skipped, 1 xfailed, 1 error")


def test_strict_mode_fails_every_skip(tmp_path):
    proc = run_sample(tmp_path, SPLITDNN_STRICT_SKIPS="1")
    assert proc.returncode == 1, proc.stdout
    assert "skips: 2 (0 allow-listed, 2 failed as not allowed" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("1 failed, 1 passed, 1 xfailed, 1 error")
