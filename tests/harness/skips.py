"""A CI that cannot pass by skipping (a pytest plugin; tests/conftest.py registers its hooks).

Under `CI=true` a skipped test is reported as failed unless tests/skip-allowlist.txt allows its skip reason for its
test id. `SPLITDNN_STRICT_SKIPS=1` fails every skip, allow-listed or not (scripts/netem-vm.sh sets it in the VM,
where the allow-listed tests must run). Every run prints the skip count before pytest's closing line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ALLOWLIST = Path(__file__).resolve().parent.parent / "skip-allowlist.txt"


@dataclass(frozen=True)
class Rule:
    test: str  # a pytest node id, where `*` matches anything: tests/test_x.py::test_y[*]
    reason: re.Pattern


def parse(text: str, source: str = "allow-list") -> list[Rule]:
    """`<test id glob> | <reason regex>` a line; `#` comments and blank lines are ignored."""
    rules = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        test, sep, reason = (part.strip() for part in line.partition("|"))
        if not sep or not test or not reason:
            raise ValueError(f"{source}:{n}: expected '<test id glob> | <reason regex>', got {line!r}")
        rules.append(Rule(test, re.compile(reason)))
    return rules


def allowed(rules: list[Rule], nodeid: str, reason: str) -> bool:
    return any(
        re.fullmatch(".*".join(map(re.escape, r.test.split("*"))), nodeid) and r.reason.search(reason) for r in rules
    )


def skip_reason(longrepr) -> str:
    """The reason of a skip report (pytest keeps (path, line, 'Skipped: reason'))."""
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


@dataclass
class Policy:
    enforce: bool
    strict: bool
    rules: list
    allowed: int = 0
    refused: int = 0
    tolerated: int = 0  # skips outside the allow-list while not enforcing

    @classmethod
    def from_env(cls) -> Policy:
        strict = os.environ.get("SPLITDNN_STRICT_SKIPS") == "1"
        enforce = strict or os.environ.get("CI", "").lower() in ("true", "1")
        path = Path(os.environ.get("SPLITDNN_SKIP_ALLOWLIST", ALLOWLIST))
        return cls(enforce, strict, [] if strict else parse(path.read_text(), str(path)))

    def judge(self, report) -> None:
        """Count a skip; under enforcement turn one whose reason is not allowed for its test into a failure."""
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        reason = skip_reason(report.longrepr)
        if allowed(self.rules, report.nodeid, reason):
            self.allowed += 1
        elif self.enforce:
            self.refused += 1
            why = (
                "SPLITDNN_STRICT_SKIPS=1: no skip is allowed"
                if self.strict
                else ("CI=true: this skip reason is not allowed for this test in tests/skip-allowlist.txt")
            )
            report.outcome = "failed"
            report.longrepr = f"skipped, which fails the run ({why}): {reason}"
        else:
            self.tolerated += 1

    def summary(self) -> str:
        total = self.allowed + self.refused + self.tolerated
        mode = (
            "every skip fails (SPLITDNN_STRICT_SKIPS=1)"
            if self.strict
            else "CI=true: skips not on tests/skip-allowlist.txt fail"
            if self.enforce
            else "not enforced (CI is not true)"
        )
        return (
            f"skips: {total} ({self.allowed} allow-listed, {self.refused} failed as not allowed, "
            f"{self.tolerated} not on the allow-list); {mode}"
        )


POLICY = pytest.StashKey[Policy]()


def pytest_configure(config):
    config.stash[POLICY] = Policy.from_env()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    item.config.stash[POLICY].judge(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    collector.config.stash[POLICY].judge(outcome.get_result())


def pytest_terminal_summary(terminalreporter, config):
    terminalreporter.write_line(config.stash[POLICY].summary())
