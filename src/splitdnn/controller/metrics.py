"""The operator's own metrics (prometheus-client's default registry, served by `splitdnn operator --metrics-port`).
The pure core (reconcile.py, feedback_pass.py) computes what they count; the shell (handlers.py) records it here.
The names and labels are in README.md's metrics table (the operator's part).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from splitdnn.controller import status as status_mod

RECONCILES = Counter("splitdnn_operator_reconciles_total", "Reconcile passes", ["cause", "result"])
PHASE = Gauge(
    "splitdnn_operator_phase", "1 for the current phase of each SplitInference", ["namespace", "name", "phase"]
)
RESPLITS = Counter(
    "splitdnn_operator_resplits_total", "Re-splits the feedback loop decided", ["namespace", "name", "reason"]
)
DECISION = Histogram(
    "splitdnn_operator_decision_seconds",
    "One feedback pass: measuring in Prometheus, re-planning and deciding",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
# a rollout takes seconds (a warm agent) to minutes (pulling an image, loading a large model)
SWITCHOVER = Histogram(
    "splitdnn_resplit_switchover_seconds",
    "From a re-split decision to every tier of the new split ready",
    ["namespace", "name"],
    buckets=(1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)


def reconciled(meta: dict, cause: str, result: str, phase: str | None) -> None:
    RECONCILES.labels(cause=cause, result=result).inc()
    if phase:
        for p in status_mod.PHASES:
            PHASE.labels(namespace=meta.get("namespace", ""), name=meta["name"], phase=p.value).set(
                1 if p == phase else 0
            )


def decided(meta: dict, seconds: float, resplit_reason: str | None) -> None:
    """One feedback pass that measured (`seconds` long); `resplit_reason` when it re-split."""
    DECISION.observe(seconds)
    if resplit_reason:
        RESPLITS.labels(namespace=meta.get("namespace", ""), name=meta["name"], reason=resplit_reason).inc()


def switched_over(meta: dict, seconds: float | None) -> None:
    if seconds is not None:
        SWITCHOVER.labels(namespace=meta.get("namespace", ""), name=meta["name"]).observe(seconds)
