"""One pass of the feedback loop for one SplitInference, without Kopf: the shell (handlers.py) checks `due`,
reads the stored profiles, hands over a Prometheus client and writes what `run` returns (a status patch and
Events). When the pass re-splits, the shell reconciles right away with the patched status (`reconcile.with_status`),
so the tiers roll to the new split through the same reconcile as every other change."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from splitdnn import feedback
from splitdnn.adapt import Policy
from splitdnn.controller import status as status_mod
from splitdnn.controller.reconcile import Event, ModelLookup, epoch, in_process, parse
from splitdnn.controller.status import Condition, EventReason, Phase, Reason
from splitdnn.planner import deploy

RESPLIT_HISTORY = 20  # entries kept in status.resplits
# why a pass re-split, for the operator's splitdnn_operator_resplits_total{reason} (adapt.decide re-splits only
# when the measured drop rate is over the SLO and another split is predicted better by the margin)
DROP_RATE_OVER_SLO = "DropRateOverSLO"


@dataclass
class Pass:
    result: str  # what it did (for logs and tests)
    status: dict = field(default_factory=dict)  # keys of the status to set
    events: list[Event] = field(default_factory=list)
    resplit: bool = False
    resplit_reason: str | None = None  # a short cause for the re-split counter's label (None: no re-split)


def due(body: dict, now: float) -> str | None:
    """Why this is no time for a pass (None: it is)."""
    meta = body["metadata"]
    previous = body.get("status") or {}
    if previous.get("phase") not in (Phase.RUNNING, Phase.DEGRADED) or previous.get("observedGeneration") != meta.get(
        "generation"
    ):
        return "not deployed yet"
    policy = Policy.from_spec((body.get("spec") or {}).get("adaptation") or {})
    checked = epoch((previous.get("measured") or {}).get("time"))
    if checked is not None and now - checked < policy.interval_seconds:
        return "not due"
    return None


def last_change(previous: dict) -> float | None:
    """The last re-split, or the tiers becoming ready (a fresh deployment's warm-up is not judged)."""
    ready = next(
        (c for c in previous.get("conditions") or [] if c.get("type") == Condition.READY and c.get("status") == "True"),
        None,
    )
    changes = [
        t
        for t in (
            epoch(((previous.get("resplits") or [{}])[-1]).get("time")),
            epoch(ready.get("lastTransitionTime")) if ready else None,
        )
        if t is not None
    ]
    return max(changes) if changes else None


def run(
    body: dict,
    now: float,
    prometheus: Any,
    profiles: dict | None = None,
    promql_namespace: bool = False,
    lookup: ModelLookup = in_process,
) -> Pass:
    """Measure (through `prometheus`, a splitdnn.prom.Prometheus or anything with its `scalar`/`by_label`; None
    when no URL is set), re-plan with the measured figures, maybe re-split. Never raises for Prometheus trouble:
    the MetricsAvailable condition (and an Event on the transition) say so and the split stays. `lookup` gives
    the model's graph (the operator's reads the artifact store: it has no TensorFlow)."""
    if why := due(body, now):
        return Pass(why)
    meta = body["metadata"]
    namespace = meta.get("namespace", "default")
    previous = dict(body.get("status") or {})
    spec = dict(body.get("spec") or {})
    adaptation = spec.get("adaptation") or {}
    policy = Policy.from_spec(adaptation)
    measured_prev = previous.get("measured") or {}
    stamp = status_mod.stamp(now)
    current = list(previous.get("splitPoints") or spec.get("splitPoints") or [])
    conditions = list(previous.get("conditions") or [])
    url = adaptation.get("prometheusUrl")

    def cannot_plan(exc: Exception) -> Pass:  # a model or split the planner cannot express: say so, keep it
        return Pass("cannot plan", {"measured": {**measured_prev, "time": stamp, "error": f"cannot plan: {exc}"}})

    try:
        si = parse(body)
        model = lookup(si)
        if model.summary is None:
            raise ValueError(
                "the model's graph is not built: " + (model.failure[1] if model.failure else str(model.building))
            )
        problem = deploy.problem_for(si, model.summary, profiles or {})
    except Exception as exc:  # noqa: BLE001 - whatever stops planning is reported in status.measured.error
        return cannot_plan(exc)
    if not url or prometheus is None:
        s = feedback.Step(time=now, current_points=current, error="adaptation.prometheusUrl is not set")
    else:
        try:
            s = feedback.step(
                si,
                current,
                problem,
                prometheus,
                now=now,
                last_change=last_change(previous),
                policy=policy,
                namespace=namespace if promql_namespace else None,
                calibration=previous.get("calibration"),
            )
        except ValueError as exc:  # a split the planner cannot express (multi-tensor cut)
            return cannot_plan(exc)
    if s.error or s.measurements is None:
        error = (s.error or "no measurements")[:1000]
        conditions, _ = status_mod.set_condition(
            conditions, Condition.METRICS_AVAILABLE, "False", Reason.PROMETHEUS_UNAVAILABLE, error
        )
        events = []
        # one Event per outage (measured.error is only written here, so a status rewrite by another handler
        # cannot make it flap)
        if not measured_prev.get("error"):
            events.append(
                Event(EventReason.METRICS_UNAVAILABLE, f"{error[:900]}; keeping split {','.join(current)}", True)
            )
        measured = {**{k: v for k, v in measured_prev.items() if k != "decision"}, "time": stamp, "error": error}
        return Pass("prometheus unavailable", {"conditions": conditions, "measured": measured}, events)
    conditions, _ = status_mod.set_condition(
        conditions, Condition.METRICS_AVAILABLE, "True", Reason.PROMETHEUS_QUERIED, f"measured at {url}"
    )
    events = []
    if measured_prev.get("error") and not str(measured_prev["error"]).startswith("cannot plan"):
        events.append(Event(EventReason.METRICS_AVAILABLE, f"Prometheus at {url} answers again"))
    m = s.measurements
    objective = (spec.get("planner") or {}).get("objective", "throughput")
    figures = s.figures(objective)
    patch: dict = {
        "conditions": conditions,
        "measured": {
            **m.to_status(),
            "time": stamp,
            "window": feedback.window_for(policy),
            "decision": s.decision.reason if s.decision else None,
            "predicted": {k: v for k, v in figures.items() if k != "measured"},
            "error": None,
        },
    }
    if m.drop_rate is not None:
        patch["frameDropRate"] = round(m.drop_rate, 6)
    if s.calibration is not None:  # the fit the next pass starts from (planner/calibrate.py)
        patch["calibration"] = s.calibration
    if not s.resplit or s.decision is None:
        return Pass("kept: " + (s.decision.reason if s.decision else ""), patch, events)
    entry = feedback.resplit_entry(s, objective, stamp)
    patch["resplits"] = (list(previous.get("resplits") or []) + [entry])[-RESPLIT_HISTORY:]
    patch["adapted"] = {
        "splitPoints": list(s.best_points),
        "specSplitPoints": list(spec.get("splitPoints") or []),
        "time": stamp,
    }
    message = f"{','.join(current)} → {','.join(s.best_points)}: {s.decision.reason}"
    events.append(Event(EventReason.RESPLIT, message[:1000]))
    return Pass("resplit", patch, events, resplit=True, resplit_reason=DROP_RATE_OVER_SLO)
