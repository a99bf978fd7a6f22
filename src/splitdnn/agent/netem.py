"""Link shaping with iproute2 `tc` on an interface's egress: what the agent pod's init container runs.

`plan()` is pure (parameters + what the kernel supports -> tc argv lists + what is applied and what is not);
`probe()` asks the kernel which qdiscs exist by trying them on the device; `apply()`/`clear()` run tc.

- netem available: `root netem [limit N] [delay D [J]] [loss L%]`, with a `tbf` child for `rate` (netem's own
  `rate` when tbf is missing).
- netem missing (as on this project's CI kernels): `rate` with a root `tbf` (or `htb` class when tbf is missing);
  delay, jitter, loss and limit are reported as not applied, and the agent emulates them in-process.

The report (`--report FILE`, JSON) is what the agent reads: `{"dev", "kernel": {"netem","tbf","htb"},
"applied": {param: text}, "not_applied": {param: text}, "commands": [[argv]], "errors": [str]}`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from splitdnn.units import parse_duration, parse_percent, parse_rate

QDISCS = ("netem", "tbf", "htb")
UNKNOWN_QDISC = "Specified qdisc kind is unknown"  # iproute2's message when the kernel lacks the module


class NetemError(ValueError):
    """Bad link parameters (the init container exits non-zero for these only)."""


@dataclass(frozen=True)
class NetemParams:
    delay: str | None = None
    jitter: str | None = None
    loss: str | None = None
    rate: str | None = None
    limit: int | None = None

    def given(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, "")}

    def validate(self) -> NetemParams:
        try:
            delay = parse_duration(self.delay) if self.delay else 0.0
            jitter = parse_duration(self.jitter) if self.jitter else 0.0
            if self.loss:
                parse_percent(self.loss)
            if self.rate and parse_rate(self.rate) <= 0:
                raise ValueError(f"bad rate {self.rate!r}: must be positive")
        except ValueError as exc:
            raise NetemError(str(exc)) from None
        if jitter and not delay:
            raise NetemError(f"jitter {self.jitter} needs a delay (netem varies the delay by the jitter)")
        if jitter > delay:
            raise NetemError(f"jitter {self.jitter} is larger than the delay {self.delay}: delays would go negative")
        if self.limit is not None and int(self.limit) < 1:
            raise NetemError(f"bad limit {self.limit!r}: a queue of at least 1 packet")
        return self


def _us(text: str) -> str:
    return f"{round(parse_duration(text) * 1e6)}us"


def _bits(text: str) -> str:
    return f"{round(parse_rate(text) * 8)}bit"


def tbf_args(rate_text: str) -> list[str]:
    """tbf sized for the rate: burst ≈ 10 ms of traffic (≥ 2 full frames), queue ≈ 200 ms of traffic."""
    rate = parse_rate(rate_text)
    burst = max(int(rate / 100), 3028)
    limit = max(int(rate * 0.2), 3 * burst)
    return ["tbf", "rate", _bits(rate_text), "burst", str(burst), "limit", str(limit)]


def plan(dev: str, params: NetemParams, kernel: dict) -> tuple[list[list[str]], dict, dict]:
    """-> (tc commands to run in order, applied {param: text}, not applied {param: text})."""
    params.validate()
    given = params.given()
    tc = ["tc", "qdisc", "replace", "dev", dev]
    commands: list[list[str]] = []
    applied: dict = {}
    netem_part = {k: given[k] for k in ("delay", "jitter", "loss", "limit") if k in given}
    if netem_part and kernel.get("netem"):
        args = ["root", "handle", "1:", "netem"]
        if "limit" in given:
            args += ["limit", str(int(given["limit"]))]
        if "delay" in given:
            args += ["delay", _us(given["delay"])] + ([_us(given["jitter"])] if "jitter" in given else [])
        if "loss" in given:
            args += ["loss", f"{parse_percent(given['loss']) * 100:g}%"]
        if "rate" in given and not kernel.get("tbf"):
            args += ["rate", _bits(given["rate"])]
            applied["rate"] = given["rate"]
        commands.append(tc + args)
        applied.update(netem_part)
        if "rate" in given and kernel.get("tbf"):
            commands.append(tc + ["parent", "1:1", "handle", "10:"] + tbf_args(given["rate"]))
            applied["rate"] = given["rate"]
    elif "rate" in given and kernel.get("tbf"):
        commands.append(tc + ["root", "handle", "1:"] + tbf_args(given["rate"]))
        applied["rate"] = given["rate"]
    elif "rate" in given and kernel.get("htb"):
        burst = str(max(int(parse_rate(given["rate"]) / 100), 3028))
        commands.append(tc + ["root", "handle", "1:", "htb", "default", "10"])
        commands.append(
            [
                "tc",
                "class",
                "replace",
                "dev",
                dev,
                "parent",
                "1:",
                "classid",
                "1:10",
                "htb",
                "rate",
                _bits(given["rate"]),
                "ceil",
                _bits(given["rate"]),
                "burst",
                burst,
            ]
        )
        applied["rate"] = given["rate"]
    not_applied = {k: v for k, v in given.items() if k not in applied}
    return commands, applied, not_applied


Runner = Callable[[list[str]], subprocess.CompletedProcess]


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=20)


def probe(dev: str, run: Runner = _run) -> dict:
    """Which of netem/tbf/htb the kernel has, by adding each as the root qdisc of `dev` (then removing it).

    Raises NetemError when the device does not exist; other failures (no NET_ADMIN, no tc binary) mark the qdisc
    absent, so the pod still starts and the agent emulates everything in-process.
    """
    trials = {
        "netem": ["netem", "delay", "0us"],
        "tbf": ["tbf", "rate", "1gbit", "burst", "100000", "limit", "100000"],
        "htb": ["htb"],
    }
    found = {}
    for kind, args in trials.items():
        try:
            proc = run(["tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", *args])
        except FileNotFoundError:
            return dict.fromkeys(QDISCS, False)
        if "Cannot find device" in proc.stderr:
            raise NetemError(f"no network device {dev!r}")
        found[kind] = proc.returncode == 0
        if found[kind]:
            run(["tc", "qdisc", "del", "dev", dev, "root"])
    return found


def clear(dev: str, run: Runner = _run) -> bool:
    """Remove the root qdisc of `dev` (back to the default). True if there was one to remove."""
    try:
        proc = run(["tc", "qdisc", "del", "dev", dev, "root"])
    except FileNotFoundError:
        return False
    if "Cannot find device" in proc.stderr:
        raise NetemError(f"no network device {dev!r}")
    return proc.returncode == 0


def apply(dev: str, params: NetemParams, run: Runner = _run, report: str | None = None) -> dict:
    """Probe, clear, then apply what the kernel supports. Returns (and writes to `report`) the report."""
    params.validate()
    kernel = probe(dev, run) if params.given() else {}
    clear(dev, run)
    commands, applied, not_applied = plan(dev, params, kernel)
    errors = []
    if params.given() and not any(kernel.values()):
        errors.append("no qdisc could be added (no tc binary, no NET_ADMIN, or a kernel without netem/tbf/htb)")
    for argv in commands:
        try:
            proc = run(argv)
        except FileNotFoundError:
            errors.append("tc not found: install iproute2")
            break
        if proc.returncode != 0:
            errors.append(f"{' '.join(argv)}: {proc.stderr.strip()}")
    if errors:  # all or nothing: a half-applied shaping is worse than emulating everything in-process
        clear(dev, run)
        not_applied, applied = params.given(), {}
    result = {
        "dev": dev,
        "kernel": kernel,
        "applied": applied,
        "not_applied": not_applied,
        "commands": commands,
        "errors": errors,
    }
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps(result, indent=2) + "\n")
    return result


def load_report(path: str | None) -> dict | None:
    """The init container's report, or None when there is no file (then the agent emulates everything given)."""
    if not path or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text())
