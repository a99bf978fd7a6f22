"""One step of the closed loop (issue #5), shared by the operator's timer and the local actuator of the tests.

    problem = base_problem(si, summary)            # blocks + FLOPs-estimated times + the spec's links (netem)
    s = step(si, current_points, problem, Prometheus(url), now=time.time(), last_change=...)
    s.measurements   # what Prometheus says (drop rate, per-stage compute, link RTT/bandwidth), for status.measured
    s.decision       # adapt.decide's verdict and reason
    s.new_points     # the split points to deploy when s.decision.resplit

A step reads the measurements (`adapt.read_measurements`), re-calibrates the base problem to them for the split
deployed now (`planner.recalibrate`: per-tier compute scaled to the measured stage time, the measured links'
latency = RTT/2 and bandwidth), plans the best split under those figures (`planner.plan`, the spec's objective,
`workload.fps`), evaluates the deployed split under the *same* figures (`planner.evaluate_plan`), and lets
`adapt.decide` weigh them against the SLO, the margin and the cooldown. Everything here is pure apart from the
Prometheus queries, so the Kopf shell and the test shell run the same code.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass, field

from splitdnn.adapt import OBJECTIVE_FIGURE, Decision, Measurements, Policy, decide, read_measurements
from splitdnn.prom import PrometheusError
from splitdnn.units import parse_duration, parse_rate

# A tier's speed when nothing better is known (no profile yet): FLOP/s of the tier before its overheadRatio.
# Only the ratios between blocks of one tier matter once a stage time has been measured (recalibrate rescales).
DEFAULT_TIER_FLOPS = 2e9
# A link without a `rate` is "fast": 1 GB/s.
DEFAULT_LINK_BANDWIDTH = 1e9


def window_for(policy: Policy) -> str:
    """The PromQL range window: two intervals (at least 2 s), so each step sees a full interval of frames."""
    return f"{max(2.0, 2 * policy.interval_seconds):g}s"


def planner_constraints(si) -> dict:
    """The spec's Scission-style constraints in the planner's JSON form; every tier must run a slice (an agent
    per tier serves its slice, and a split point is the last layer of a tier)."""
    c = dict((si.spec.get("planner") or {}).get("constraints") or {})
    out = {"use": list(dict.fromkeys([*c.get("use", []), *si.tier_names]))}
    if c.get("pin"):
        out["pin"] = dict(c["pin"])
    if c.get("forbid"):
        out["forbid"] = {k: list(v) for k, v in c["forbid"].items()}
    if c.get("skip"):
        out["skip"] = list(c["skip"])
    if c.get("maxUploadBytes"):
        out["max_upload_bytes"] = dict(c["maxUploadBytes"])
    if c.get("maxTime"):
        out["max_time"] = {k: parse_duration(v) for k, v in c["maxTime"].items()}
    if c.get("maxTimeShare"):
        out["max_time_share"] = dict(c["maxTimeShare"])
    return out


def blocks_of(summary) -> list[dict]:
    """Plannable blocks of a `controller.plan.ModelSummary`: layers between consecutive single-tensor cuts, each
    named after its last layer (so a block name is a split point); leading InputLayers are not a block."""
    layers = list(summary.layers)
    classes = list(summary.classes) or [""] * len(layers)
    first = 0
    while first < len(layers) - 1 and classes[first] == "InputLayer":
        first += 1
    bounds = [
        i
        for i, name in enumerate(layers[:-1])
        if i >= first and len(summary.cut_tensors.get(name, [None])) == 1 and name in summary.cut_bytes
    ]
    blocks, start = [], 0
    for last in bounds + [len(layers) - 1]:
        if last < start:
            continue
        out_bytes = summary.cut_bytes.get(layers[last]) if last < len(layers) - 1 else summary.output_bytes
        blocks.append(
            {
                "name": layers[last],
                "layers": [start, last],
                "out_bytes": int(out_bytes or 0),
                "flops": int(sum(summary.flops[start : last + 1])),
            }
        )
        start = last + 1
    return blocks


def base_problem(si, summary, profiles: dict | None = None, tier_flops: dict | None = None):
    """The planner problem before measurements: per-block compute from `profiles` ({tier: profile document},
    made on that tier's nodes) or FLOPs estimates (block FLOPs / tier speed × (1 + overheadRatio)), and a link
    per consecutive tier pair from the spec's netem (latency = delay, bandwidth = rate, or fast)."""
    from splitdnn.planner import Problem

    profiles = profiles or {}
    tier_flops = tier_flops or {}
    blocks = blocks_of(summary)
    data_blocks = []
    for k, b in enumerate(blocks):
        times = {}
        for t in si.tiers:
            ratio = float(t.get("overheadRatio", 0) or 0)
            prof = profiles.get(t["name"])
            if prof and len(prof.get("blocks", [])) == len(blocks) and prof["blocks"][k]["name"] == b["name"]:
                times[t["name"]] = float(prof["blocks"][k]["time"]) * (1 + ratio)
            else:
                times[t["name"]] = b["flops"] / float(tier_flops.get(t["name"], DEFAULT_TIER_FLOPS)) * (1 + ratio)
        data_blocks.append({"name": b["name"], "layers": b["layers"], "out_bytes": b["out_bytes"], "time": times})
    links = []
    for a, b in zip(si.tiers, si.tiers[1:]):
        netem = a.get("netem") or {}
        links.append(
            {
                "from": a["name"],
                "to": b["name"],
                "latency": parse_duration(netem["delay"]) if netem.get("delay") else 0.0,
                "bandwidth": parse_rate(netem["rate"]) if netem.get("rate") else DEFAULT_LINK_BANDWIDTH,
            }
        )
    return Problem.from_json(
        {
            "tiers": si.tier_names,
            "input_bytes": int(summary.input_bytes),
            "blocks": data_blocks,
            "links": links,
            "constraints": planner_constraints(si),
        },
        f"SplitInference {si.name}",
    )


def cuts_of(problem, points: list[str]) -> tuple:
    """Split points (layer names, one per tier boundary) → the planner's cumulative block boundaries."""
    names = [b.name for b in problem.blocks]
    cuts = []
    for p in points:
        if p not in names:
            raise ValueError(f"split point {p!r} is not a block boundary of the planner (a multi-tensor cut)")
        cuts.append(names.index(p) + 1)
    return tuple(cuts) + (len(names),)


def points_of(problem, plan) -> list[str]:
    """A plan's split points: the last layer of every tier but the last (all tiers are used)."""
    names = [b.name for b in problem.blocks]
    return [names[c - 1] for c in plan.cuts[:-1]]


def plan_status(plan, objective: str, source: str) -> dict:
    """A Plan as status JSON (`status.plan.predicted`, resplit figures)."""
    return {
        "objective": objective,
        "latencySeconds": round(plan.latency, 6),
        "bottleneckSeconds": round(plan.bottleneck, 6),
        "bytesPerFrame": int(plan.bytes),
        **({"dropRate": round(plan.drop_rate, 4)} if plan.drop_rate is not None else {}),
        "computeSeconds": {t: round(v, 6) for t, v in plan.compute.items()},
        "source": source,
    }


@dataclass
class Step:
    time: float
    current_points: list
    measurements: Measurements | None = None
    error: str | None = None  # Prometheus unreachable / refused: no decision, keep the split
    current_plan: object = None  # planner.Plan of the deployed split under the measured figures
    best_plan: object = None
    best_points: list = field(default_factory=list)
    decision: Decision | None = None

    @property
    def resplit(self) -> bool:
        return bool(self.decision and self.decision.resplit)

    @property
    def new_points(self) -> list:
        return list(self.best_points) if self.resplit else list(self.current_points)

    def figures(self, objective: str) -> dict:
        """The measured and predicted figures behind the decision (for status and Events)."""
        out = {"measured": self.measurements.to_status() if self.measurements else None}
        if self.current_plan is not None:
            out["current"] = plan_status(self.current_plan, objective, "measured")
        if self.best_plan is not None:
            out["best"] = {"splitPoints": list(self.best_points), **plan_status(self.best_plan, objective, "measured")}
        return out


def step(
    si,
    current_points: list,
    problem,
    prometheus,
    now: float | None = None,
    last_change: float | None = None,
    policy: Policy | None = None,
    window: str | None = None,
    namespace: str | None = None,
) -> Step:
    """One pass of the loop. Never raises for Prometheus trouble: `Step.error` says what went wrong.
    `namespace`: also match the series' `namespace` label (what Kubernetes service discovery adds)."""
    from splitdnn.planner import Infeasible, evaluate_plan, plan, recalibrate

    now = _time.time() if now is None else now
    policy = policy or Policy.from_spec(si.spec.get("adaptation") or {})
    window = window or window_for(policy)
    s = Step(time=now, current_points=list(current_points))
    try:
        s.measurements = read_measurements(prometheus, si.name, namespace, window)
    except PrometheusError as exc:
        s.error = str(exc)
        return s
    m = s.measurements
    objective = (si.spec.get("planner") or {}).get("objective", "throughput")
    fps = float((si.spec.get("workload") or {}).get("fps") or 0) or None
    cuts = cuts_of(problem, current_points)
    known = set(problem.tiers)
    measured = recalibrate(
        problem,
        cuts,
        {t: v for t, v in m.compute_seconds.items() if t in known},
        {t: v for t, v in m.link_rtt_seconds.items() if t in known},
        {t: v for t, v in m.link_bandwidth_bytes_per_second.items() if t in known},
    )
    s.current_plan = evaluate_plan(measured, cuts, fps)
    try:
        s.best_plan = plan(measured, objective=objective, top=1, fps=fps)[0]
        s.best_points = points_of(measured, s.best_plan)
    except Infeasible as exc:
        s.decision = Decision(False, f"no feasible plan under the measured figures: {exc}")
        return s
    figure = OBJECTIVE_FIGURE[objective]
    s.decision = decide(
        policy,
        m.drop_rate,
        list(current_points),
        getattr(s.current_plan, figure),
        s.best_points,
        getattr(s.best_plan, figure),
        objective,
        now,
        last_change,
    )
    return s


def resplit_entry(s: Step, objective: str, when: str) -> dict:
    """An entry of `status.resplits`: {time, from, to, reason, figures}."""
    return {
        "time": when,
        "from": list(s.current_points),
        "to": list(s.best_points),
        "reason": s.decision.reason,
        "figures": s.figures(objective),
    }
