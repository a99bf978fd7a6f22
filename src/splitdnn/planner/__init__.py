"""Exact split planner (issue #4).

Python API::

    from splitdnn.planner import Problem, plan, Infeasible
    problem = Problem.load("problem.json")            # or Problem.from_json(dict), or build the dataclasses
    plans = plan(problem, objective="throughput", top=3, fps=10.0)   # best first; raises Infeasible
    p = plans[0]
    p.assignment   # {"device": ("conv2d", "pool") | None, ...}   first and last block per tier, None = unused
    p.ends         # block ends per tier: tier k runs blocks ends[k-1] .. ends[k]-1 (ends[-1] = 0)
    p.latency, p.bottleneck   # seconds: one frame end to end; the stream's period (slowest stage or transfer)
    p.bytes                   # bytes over all hops per frame (the input too, if tier 0 computes nothing)
    p.drop_rate               # with fps: max(0, 1 - (1/bottleneck)/fps), else None

Cost model (served stages): a used tier's stage = its fixed call cost (``Problem.call_seconds``) + Σ its blocks; a
hop's transfer = bytes/bandwidth + messages × the link's ``message_seconds`` (messages = chunks of at most
``max_message_bytes``). latency = Σ stages + Σ over hops (link latency + transfer), where hops go from each used
tier to the next used tier (a link entry for that ordered pair must exist), plus shipping the input from tier 0
when tier 0 is unused. bottleneck = max(used tiers' stages, hops' transfers). Objectives rank by
the objective, then latency, then bytes, then block order (lexicographic on ``ends``).

Strategies (``strategy=``): ``dp`` (default), ``labels``, ``brute`` and any registered under the entry-point
group ``splitdnn.strategies`` (see :mod:`splitdnn.planner.strategies`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .problem import (
    OBJECTIVES,
    Block,
    Compiled,
    Constraints,
    Infeasible,
    Link,
    Problem,
    ProblemError,
    evaluate,
    ranges_of,
    to_seconds,
)
from .problem import (
    Metrics as Metrics,  # re-exported
)

__all__ = [
    "Problem",
    "Block",
    "Link",
    "Constraints",
    "Plan",
    "plan",
    "plan_timed",
    "evaluate_plan",
    "recalibrate",
    "Infeasible",
    "ProblemError",
    "OBJECTIVES",
]


# One serialiser, two spellings: (attribute, `splitdnn plan --json` key, status key, status rounding)
_FIGURES = (
    ("latency", "latency", "latencySeconds", 6),
    ("bottleneck", "bottleneck", "bottleneckSeconds", 6),
    ("bytes", "bytes", "bytesPerFrame", None),
    ("drop_rate", "drop_rate", "dropRate", 4),
)


@dataclass
class Plan:
    ends: tuple[int, ...]  # block ends per tier: tier k runs blocks ends[k-1] .. ends[k]-1 (ends[-1] = 0)
    assignment: dict[str, tuple[str, str] | None]  # tier -> (first block, last block), None = unused
    latency: float  # seconds, one frame end to end
    bottleneck: float  # seconds, the stream's period (slowest stage or transfer)
    bytes: int  # over all hops, per frame
    compute: dict[str, float] = field(default_factory=dict)  # tier -> compute seconds
    upload: dict[str, int] = field(default_factory=dict)  # tier -> bytes sent out per frame
    drop_rate: float | None = None  # with an offered fps

    def to_json(self) -> dict[str, Any]:
        """The `splitdnn plan --json` form of one plan (a contract): assignment and raw figures; `drop_rate`
        only when an fps was given."""
        out: dict[str, Any] = {"assignment": {t: (list(r) if r else None) for t, r in self.assignment.items()}}
        for attr, key, _, _ in _FIGURES:
            if getattr(self, attr) is not None:
                out[key] = getattr(self, attr)
        return out

    def to_status(self, objective: str, source: str) -> dict[str, Any]:
        """The status form (`status.plan.predicted`, the loop's figures; a contract): camelCase, rounded, with
        the objective, per-tier compute and where the figures come from."""
        out: dict[str, Any] = {"objective": objective}
        for attr, _, key, digits in _FIGURES:
            v = getattr(self, attr)
            if v is not None:
                out[key] = int(v) if digits is None else round(v, digits)
        out["computeSeconds"] = {t: round(v, 6) for t, v in self.compute.items()}
        out["source"] = source
        return out


def make_plan(problem: Problem, cp: Compiled, ends: tuple[int, ...], fps: float | None = None) -> Plan:
    m = evaluate(cp, ends)
    if m is None:
        raise ValueError("the split needs a hop between tiers that have no link")
    assignment: dict[str, tuple[str, str] | None] = {}
    for t, (i, j) in zip(problem.tiers, ranges_of(ends, cp.T)):
        assignment[t] = (problem.blocks[i].name, problem.blocks[j - 1].name) if j > i else None
    bn = to_seconds(m.bottleneck)
    drop = None
    if fps is not None:
        drop = 0.0 if bn <= 0 else max(0.0, 1.0 - (1.0 / bn) / fps)
    return Plan(
        tuple(ends),
        assignment,
        to_seconds(m.latency),
        bn,
        m.bytes,
        {t: to_seconds(x) for t, x in zip(problem.tiers, m.compute)},
        {t: u for t, u in zip(problem.tiers, m.upload)},
        drop,
    )


def plan_timed(
    problem: Problem, objective: str = "latency", top: int = 1, fps: float | None = None, strategy: str = "dp"
) -> tuple[list[Plan], float]:
    """Like :func:`plan`, also returning the search time in seconds (compilation excluded)."""
    from . import strategies

    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r} (choose from {', '.join(OBJECTIVES)})")
    if top < 1:
        raise ValueError("top must be >= 1")
    if fps is not None and fps <= 0:
        raise ValueError("fps must be > 0")
    cp = problem.compile()
    strat = strategies.get(strategy)
    t0 = time.perf_counter()
    found = strat.solve(cp, objective, top)
    dt = time.perf_counter() - t0
    if not found:
        raise Infeasible(diagnose(problem))
    return [make_plan(problem, cp, e, fps) for e in found], dt


def plan(
    problem: Problem, objective: str = "latency", top: int = 1, fps: float | None = None, strategy: str = "dp"
) -> list[Plan]:
    """The `top` best distinct plans, best first. Raises :class:`Infeasible` (with the reason) when none exists."""
    return plan_timed(problem, objective, top, fps, strategy)[0]


def evaluate_plan(
    problem: Problem, split: Sequence[int] | Mapping[str, Sequence[str] | None], fps: float | None = None
) -> Plan:
    """Predicted figures of a given split (e.g. the one deployed now, under freshly measured figures).

    split: block ends (ints, one per tier, see `Plan.ends`), or {tier: (first block, last block) | None}.
    Constraints are not checked (the current split may violate new ones); a split needing a hop without a link
    raises ValueError. In model mode blocks are named after their last layer, so assignment[tier][1] is the
    layer after which that tier's slice ends (a split point)."""
    cp = problem.compile()
    if isinstance(split, Mapping):
        names = [b.name for b in problem.blocks]
        ends, prev = [], 0
        for t in problem.tiers:
            r = split.get(t)
            if r:
                first, last = names.index(r[0]), names.index(r[1])
                if first != prev or last < first:
                    raise ValueError(f"tier {t!r}: range {r[0]}..{r[1]} does not continue at block {prev}")
                prev = last + 1
            ends.append(prev)
        if prev != len(names):
            raise ValueError(f"split covers {prev} of {len(names)} blocks")
        split = ends
    e = tuple(int(c) for c in split)
    if len(e) != cp.T or e[-1] != cp.n or any(a > b for a, b in zip(e, e[1:])):
        raise ValueError(f"block ends must be {cp.T} non-decreasing block indices ending at {cp.n}, got {e}")
    return make_plan(problem, cp, e, fps)


def recalibrate(
    problem: Problem,
    split: Sequence[int] | Mapping[str, Sequence[str] | None],
    compute_seconds: Mapping[str, float | None] | None = None,
    link_rtt_seconds: Mapping[str, float | None] | None = None,
    link_bandwidth: Mapping[str, float | None] | None = None,
) -> Problem:
    """A copy of `problem` calibrated to one set of live measurements of the deployed `split` (block ends or
    assignment): `splitdnn.planner.calibrate` with a single split observed.

    compute_seconds {tier: measured stage seconds per frame}: the tier's fixed call cost becomes measured −
    predicted (its block times are kept: one split cannot tell a fixed cost from a compute scale); when the
    measurement is below the prediction, the call cost is 0 and the block times are scaled to it instead.
    link_rtt_seconds / link_bandwidth {sending tier: value}: the link from that tier to the next used tier of the
    split gets latency = rtt / 2 and the measured bandwidth (bytes/s). Several splits observed over time: use
    `calibrate.Calibration` (what `splitdnn.feedback.step` does)."""
    from .calibrate import Calibration

    ends = evaluate_plan(problem, split).ends
    cal = Calibration()
    cal.observe(problem, ends, compute_seconds or {}, 0.0, link_rtt_seconds, link_bandwidth)
    return cal.apply(problem, ends)


def diagnose(problem: Problem) -> str:
    """Explain infeasibility: which constraint groups, when dropped alone, make the problem feasible."""
    from .dp import DPStrategy

    c = problem.constraints
    base = "no plan satisfies the constraints"
    unconstrained = problem.with_constraints(Constraints())
    if not DPStrategy().solve(unconstrained.compile(), "latency", 1):
        return (
            f"{base}: even without constraints no plan exists -- the links do not connect tier "
            f"{problem.tiers[0]!r} (where frames originate) to a tier that can run the blocks"
        )
    culprits = []
    for name in ("pin", "forbid", "use", "skip", "max_upload_bytes", "max_time", "max_time_share"):
        if not getattr(c, name):
            continue
        relaxed = Constraints(**{k: (type(v)() if k == name else v) for k, v in vars(c).items()})
        if DPStrategy().solve(problem.with_constraints(relaxed).compile(), "latency", 1):
            culprits.append(name)
    if culprits:
        return f"{base}; it becomes feasible without any one of: {', '.join(culprits)}"
    groups = [k for k, v in vars(c).items() if v and k != "max_time_share_of"]
    return f"{base}; several constraint groups conflict together ({', '.join(groups)})"
