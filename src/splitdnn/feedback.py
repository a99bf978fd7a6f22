"""One step of the closed loop (issue #5), shared by the operator's timer and the local actuator of the tests.

    problem = planner.deploy.problem_for(si, summary)   # blocks + profiled or FLOPs-estimated times + links
    s = step(si, current_points, problem, Prometheus(url), now=time.time(), last_change=...)
    s.measurements   # what Prometheus says (drop rate, per-stage compute, link RTT/bandwidth), for status.measured
    s.decision       # adapt.decide's verdict and reason
    s.new_points     # the split points to deploy when s.decision.resplit

A step reads the measurements (`adapt.read_measurements`), adds them to the calibration's observations (the
previous `status.calibration`, passed back in as `calibration`) and fits the served-stage cost model to every
split observed so far (`planner.calibrate`: per tier a fixed call cost and a compute scale, per link latency =
RTT/2, bandwidth and a per-message cost), plans the best split under those figures (`planner.plan`, the spec's
objective, `workload.fps`), evaluates the deployed split under the *same* figures (`planner.evaluate_plan`), and lets
`adapt.decide` weigh them against the SLO, the margin and the cooldown. Everything here is pure apart from the
Prometheus queries, so the Kopf shell and the test shell run the same code.
"""

from __future__ import annotations

import time as _time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from splitdnn.adapt import OBJECTIVE_FIGURE, Decision, Measurements, Policy, decide, read_measurements
from splitdnn.planner import Infeasible, Plan, Problem, evaluate_plan, plan
from splitdnn.planner.calibrate import Calibration
from splitdnn.planner.deploy import fps_of, objective_of, points_of, split_of
from splitdnn.prom import Prometheus, PrometheusError


def window_for(policy: Policy) -> str:
    """The PromQL range window: two intervals (at least 2 s), so each step sees a full interval of frames."""
    return f"{max(2.0, 2 * policy.interval_seconds):g}s"


@dataclass
class Step:
    time: float
    current_points: list[str]
    measurements: Measurements | None = None
    error: str | None = None  # Prometheus unreachable / refused: no decision, keep the split
    current_plan: Plan | None = None  # the deployed split under the measured figures
    best_plan: Plan | None = None
    best_points: list[str] = field(default_factory=list)
    decision: Decision | None = None
    calibration: dict[str, Any] | None = None  # the new `status.calibration` (fit and observations)

    @property
    def resplit(self) -> bool:
        return bool(self.decision and self.decision.resplit)

    @property
    def new_points(self) -> list[str]:
        return list(self.best_points) if self.resplit else list(self.current_points)

    def figures(self, objective: str) -> dict[str, Any]:
        """The measured and predicted figures behind the decision (for status and Events)."""
        out: dict[str, Any] = {"measured": self.measurements.to_status() if self.measurements else None}
        if self.current_plan is not None:
            out["current"] = self.current_plan.to_status(objective, "measured")
        if self.best_plan is not None:
            out["best"] = {"splitPoints": list(self.best_points), **self.best_plan.to_status(objective, "measured")}
        return out


def step(
    si: Any,
    current_points: list[str],
    problem: Problem,
    prometheus: Prometheus,
    now: float | None = None,
    last_change: float | None = None,
    policy: Policy | None = None,
    window: str | None = None,
    namespace: str | None = None,
    calibration: Mapping[str, Any] | None = None,
) -> Step:
    """One pass of the loop. Never raises for Prometheus trouble: `Step.error` says what went wrong.
    `namespace`: also match the series' `namespace` label (what Kubernetes service discovery adds).
    `problem`: `planner.deploy.problem_for(si, summary, profiles)`, the figures before measurements.
    `calibration`: the previous step's `Step.calibration` (what `status.calibration` holds), so the fit spans
    every split observed; the step's own is in `Step.calibration` (None when Prometheus could not be read)."""
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
    objective, fps = objective_of(si), fps_of(si)
    current = split_of(problem, current_points)
    known = set(problem.tiers)
    cal = Calibration.from_status(calibration)
    # stage times are the deployed split's only when no other split's slices served in the window (a rollout)
    cuts = {c for c in m.slice_cuts if c}
    same_split = not cuts or cuts == set(current_points)

    def mine(values: Mapping[str, float]) -> dict[str, float]:
        return {t: v for t, v in values.items() if t in known}

    cal.observe(
        problem,
        current,
        mine(m.compute_seconds) if same_split else {},
        now,
        mine(m.link_rtt_seconds),
        mine(m.link_bandwidth_bytes_per_second),
        mine(m.link_transfer_seconds) if same_split else {},
        mine(m.link_bytes_per_message) if same_split else {},
    )
    s.calibration = cal.to_status(problem)
    measured = cal.apply(problem, current)
    s.current_plan = evaluate_plan(measured, current, fps)
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
        float(getattr(s.current_plan, figure)),
        s.best_points,
        float(getattr(s.best_plan, figure)),
        objective,
        now,
        last_change,
    )
    return s


def resplit_entry(s: Step, objective: str, when: str) -> dict[str, Any]:
    """An entry of `status.resplits`: {time, from, to, reason, figures}."""
    return {
        "time": when,
        "from": list(s.current_points),
        "to": list(s.best_points),
        "reason": s.decision.reason if s.decision else "",
        "figures": s.figures(objective),
    }
