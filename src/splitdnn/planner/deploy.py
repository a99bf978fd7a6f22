"""Planning a SplitInference: the spec plus its model's graph summary (and per-tier profiles) as a planner
Problem, a plan as split points, and the predicted figures the operator writes to status.

    problem = problem_for(si, summary, profiles)   # blocks_of(summary) + times + the spec's links and constraints
    points, figures = choose(si, summary, profiles)       # planner.mode auto
    figures = predicted(si, summary, points, profiles)    # any split, before measurements

The operator (reconcile and the feedback loop), the closed-loop test and `splitdnn.feedback.step` all build
their problem here; the CLI builds its own from profile files (`planner.profile.problem_from_profiles`) through
the same `blocks_of` and `assemble`. Every tier must run a slice (one agent per tier serves it), so every tier is
in the `use` constraint. This module is the only planning code that reads a SplitInference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from splitdnn.graph import GraphSummary
from splitdnn.spec import Tier
from splitdnn.units import parse_duration, parse_rate

from . import Plan, evaluate_plan, plan
from .blocks import assemble, blocks_of
from .problem import Problem

# A tier's speed when nothing better is known (no profile yet): FLOP/s of the tier before its overheadRatio.
# Once stage times are measured, the calibration (planner.calibrate) fits a compute scale and a call cost over it.
DEFAULT_TIER_FLOPS = 2e9
# A link without a `rate` is "fast": 1 GB/s.
DEFAULT_LINK_BANDWIDTH = 1e9


def objective_of(si: Any) -> str:
    return str((si.spec.get("planner") or {}).get("objective", "throughput"))


def fps_of(si: Any) -> float | None:
    """The workload's offered frame rate, or None (no drop-rate prediction) when unset or 0."""
    return float((si.spec.get("workload") or {}).get("fps") or 0) or None


def constraints_of(si: Any) -> dict[str, Any]:
    """The spec's constraints as given (CRD spelling; `Problem.from_json` converts them), with every tier used."""
    c = dict((si.spec.get("planner") or {}).get("constraints") or {})
    c["use"] = list(dict.fromkeys([*c.get("use", []), *si.tier_names]))
    return c


def problem_for(
    si: Any,
    summary: GraphSummary,
    profiles: Mapping[str, Mapping[str, Any]] | None = None,
    tier_flops: Mapping[str, float] | None = None,
) -> Problem:
    """The planner problem before measurements: per-block compute from `profiles` ({tier: profile document},
    made on that tier's nodes) or FLOPs estimates (block FLOPs / tier speed × (1 + overheadRatio)), and a link
    per consecutive tier pair from the spec's netem (latency = delay, bandwidth = rate, or fast) and the sender's
    maxMessageBytes."""
    profiles = profiles or {}
    tier_flops = tier_flops or {}
    blocks = blocks_of(summary)
    times: dict[str, list[float]] = {}
    calls: dict[str, float] = {}  # a profile's fixed per-call cost × (1 + overheadRatio), like its blocks
    for t in si.tiers:
        scale = 1 + float(t.get("overheadRatio", 0) or 0)
        speed = float(tier_flops.get(t["name"], DEFAULT_TIER_FLOPS))
        measured = list((profiles.get(t["name"]) or {}).get("blocks") or [])
        if len(measured) != len(blocks):
            measured = []
        if measured and (profiles.get(t["name"]) or {}).get("call_seconds"):
            calls[t["name"]] = float(profiles[t["name"]]["call_seconds"]) * scale
        times[t["name"]] = [
            (float(measured[k]["time"]) if measured and measured[k].get("name") == b["name"] else b["flops"] / speed)
            * scale
            for k, b in enumerate(blocks)
        ]
    links = []
    for a, b in zip(si.tiers, si.tiers[1:]):
        netem = a.get("netem") or {}
        links.append(
            {
                "from": a["name"],
                "to": b["name"],
                "latency": parse_duration(netem["delay"]) if netem.get("delay") else 0.0,
                "bandwidth": parse_rate(netem["rate"]) if netem.get("rate") else DEFAULT_LINK_BANDWIDTH,
                # the sender's chunking: what the calibration's send cost counts messages with
                "max_message_bytes": int(a.get("maxMessageBytes") or Tier.max_message_bytes),
            }
        )
    return assemble(
        si.tier_names,
        blocks,
        times,
        summary.input_bytes,
        links,
        constraints_of(si),
        where=f"SplitInference {si.name}",
        call_seconds=calls,
    )


def split_of(problem: Problem, points: Sequence[str]) -> tuple[int, ...]:
    """Split points (one per tier boundary) → the planner's block ends (`Plan.ends`)."""
    names = [b.name for b in problem.blocks]
    ends = []
    for p in points:
        if p not in names:
            raise ValueError(f"split point {p!r} is not a block boundary of the planner (a multi-tensor boundary)")
        ends.append(names.index(p) + 1)
    return (*ends, len(names))


def points_of(problem: Problem, p: Plan) -> list[str]:
    """A plan's split points: the last layer of every tier but the last (all tiers are used)."""
    names = [b.name for b in problem.blocks]
    return [names[e - 1] for e in p.ends[:-1]]


def choose(
    si: Any, summary: GraphSummary, profiles: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[list[str], dict[str, Any]]:
    """planner.mode auto: the best split for the spec's objective, from per-tier profiles where they exist and
    FLOPs estimates elsewhere, and the links' netem. Returns (split points, predicted figures); raises
    splitdnn.planner.Infeasible when the constraints allow no split."""
    problem = problem_for(si, summary, profiles)
    best = plan(problem, objective=objective_of(si), top=1, fps=fps_of(si))[0]
    points = points_of(problem, best)
    return points, _figures(si, problem, best, bool(profiles))


def predicted(
    si: Any, summary: GraphSummary, points: Sequence[str], profiles: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """Predicted latency, bottleneck (figure and where), bytes and drop rate of `points` before measurements."""
    problem = problem_for(si, summary, profiles)
    p = evaluate_plan(problem, split_of(problem, points), fps_of(si))
    return _figures(si, problem, p, bool(profiles))


def _figures(si: Any, problem: Problem, p: Plan, profiled: bool) -> dict[str, Any]:
    out = p.to_status(objective_of(si), "profiles" if profiled else "FLOPs estimates")
    # where the bottleneck is: the slowest stage, or the slowest link transfer
    stages = {f"tier {t}": c for t, c in p.compute.items()}
    names = list(problem.tiers)
    for a, b in zip(names, names[1:]):
        link = problem.links.get((a, b))
        if link and p.upload.get(a):
            stages[f"link {a}→{b}"] = p.upload[a] / link.bandwidth
    out["bottleneckAt"] = max(stages, key=lambda k: stages[k]) if stages else None
    # the slowest tier by these figures (it replaces build_plan's FLOPs-only guess, which profiles can overturn)
    if p.compute and max(p.compute.values()) > 0:
        out["bottleneckTier"] = max(p.compute, key=lambda k: p.compute[k])
    return out
