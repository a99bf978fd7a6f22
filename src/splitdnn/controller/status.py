"""Pure status computation: child Deployments + validation result → the SplitInference status."""

from __future__ import annotations

import datetime as _dt
import json
from enum import StrEnum

from splitdnn.controller.render import REPLICAS, object_name


class Phase(StrEnum):
    """status.phase (str-valued: the status holds the plain strings)."""

    PENDING = "Pending"
    DEPLOYING = "Deploying"
    RUNNING = "Running"
    DEGRADED = "Degraded"
    FAILED = "Failed"


PHASES = tuple(Phase)


class Condition(StrEnum):
    """status.conditions[].type"""

    VALID = "Valid"
    READY = "Ready"
    METRICS_AVAILABLE = "MetricsAvailable"  # the feedback loop's


class Reason(StrEnum):
    """status.conditions[].reason"""

    SPEC_VALID = "SpecValid"
    INVALID_SPEC = "InvalidSpec"
    ALL_TIERS_READY = "AllTiersReady"
    TIERS_NOT_READY = "TiersNotReady"
    PROMETHEUS_QUERIED = "PrometheusQueried"
    PROMETHEUS_UNAVAILABLE = "PrometheusUnavailable"


class EventReason(StrEnum):
    """The reasons of the Events the operator posts (besides one per phase change, whose reason is the phase)."""

    DEPLOYED = "Deployed"
    SPLIT_CHANGED = "SplitChanged"
    DRIFT_REPAIRED = "DriftRepaired"
    SPLIT_RETIRED = "SplitRetired"
    INVALID_SPEC = "InvalidSpec"
    PROFILING = "Profiling"
    PROFILING_FAILED = "ProfilingFailed"
    RESPLIT = "Resplit"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    METRICS_AVAILABLE = "MetricsAvailable"
    SWITCHED_OVER = "SwitchedOver"  # the loop's new split serves: every tier of it ready


def stamp(seconds: float) -> str:
    """A status time stamp (`2026-01-01T00:00:00Z`) of seconds since the epoch."""
    return _dt.datetime.fromtimestamp(seconds, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def deployment_ready(dep: dict | None, want: int = REPLICAS) -> dict:
    """Readiness of one child Deployment (a dict as read from the API; None = missing) against the replicas the
    operator wants (not the live spec: a Deployment someone scaled to 0 is not a ready tier)."""
    if dep is None:
        return {"exists": False, "ready": False, "replicas": want, "readyReplicas": 0, "updated": False}
    spec, st, meta = dep.get("spec", {}), dep.get("status", {}) or {}, dep.get("metadata", {})
    want = max(want, 1)
    if spec.get("replicas", want) != want:
        return {
            "exists": True,
            "ready": False,
            "replicas": want,
            "readyReplicas": st.get("readyReplicas", 0) or 0,
            "updated": False,
        }
    ready = st.get("readyReplicas", 0) or 0
    updated = st.get("updatedReplicas", 0) or 0
    available = st.get("availableReplicas", 0) or 0
    total = st.get("replicas", 0) or 0
    observed = (st.get("observedGeneration") or 0) >= (meta.get("generation") or 0)
    rolled = observed and updated == want and total == want  # no pod of an older template left
    return {
        "exists": True,
        "ready": rolled and ready == want and available == want,
        "replicas": want,
        "readyReplicas": ready,
        "updated": rolled,
    }


def _condition(previous: list, ctype: str, status: str, reason: str, message: str) -> dict:
    old = next((c for c in previous or [] if c.get("type") == ctype), None)
    since = old.get("lastTransitionTime") if old is not None and old.get("status") == status else None
    return {
        "type": str(ctype),
        "status": status,
        "reason": str(reason),
        "message": message,
        "lastTransitionTime": since or now(),
    }


def failed_status(previous: dict, generation: int, problems: list[str]) -> dict:
    message = "; ".join(problems)
    prev_conditions = (previous or {}).get("conditions", [])
    return {
        "phase": Phase.FAILED.value,
        "message": message,
        "observedGeneration": generation,
        "conditions": [
            _condition(prev_conditions, Condition.VALID, "False", Reason.INVALID_SPEC, message),
            _condition(
                prev_conditions, Condition.READY, "False", Reason.INVALID_SPEC, "not deployed: the spec is invalid"
            ),
        ],
    }


def tier_runtime(tier, index: int, report: str | None, previous: dict | None) -> dict:
    """status.tiers[] `runtime` (and `runtimeNote`: why not litert) of tier `index` (a spec.Tier). A tier without
    `runtime` runs litert where its slice converted to .tflite (`agent.runtime.choose`): its pods' slicer `report`
    (`splitdnn slice --report`, the JSON of their termination message) says which; until one is in, the
    `previous` status entry of the same split stands, or nothing is said."""
    from splitdnn.agent.runtime import choose

    if tier.runtime is not None or tier.devices > 1:
        runtime, why = choose(tier.runtime, {}, cooperative=tier.devices > 1)
    elif report is not None:
        try:
            entry = json.loads(report)["slices"][index]
        except (ValueError, KeyError, IndexError, TypeError):
            return {"runtimeNote": f"unreadable slicer report: {report[:200]!r}"}
        runtime, why = choose(None, entry)
    else:
        return {k: v for k, v in (previous or {}).items() if k in ("runtime", "runtimeNote")}
    return {"runtime": runtime, **({"runtimeNote": why} if why and tier.devices == 1 else {})}


def running_status(
    si, plan: dict, deployments: dict, previous: dict, generation: int, reports: dict | None = None
) -> dict:
    """`deployments`: Deployment name → API dict (missing ones absent). `reports`: the tier pods' slicer reports
    by (split id, tier) (`kube.slicer_reports`), for each tier's runtime."""
    previous = previous or {}
    same_split = (previous.get("plan") or {}).get("splitId") == plan.get("splitId")
    previous_tiers = {t.get("name"): t for t in previous.get("tiers") or []} if same_split else {}
    tiers = []
    for i, t in enumerate(si.tiers):
        name = object_name(si.name, t["name"])
        r = deployment_ready(deployments.get(name))
        report = (reports or {}).get((plan.get("splitId"), t["name"]))
        tiers.append(
            {
                "name": t["name"],
                "slice": f"slice{i}",
                "deployment": name,
                "ready": r["ready"],
                "replicas": r["replicas"],
                "readyReplicas": r["readyReplicas"],
                **tier_runtime(si.typed.tiers[i], i, report, previous_tiers.get(t["name"])),
            }
        )
    ready_count = sum(1 for t in tiers if t["ready"])
    not_ready = [t["name"] for t in tiers if not t["ready"]]
    prev_phase = previous.get("phase")
    same_generation = previous.get("observedGeneration") == generation
    if not not_ready:
        phase, message = Phase.RUNNING, f"all {len(tiers)} tiers ready"
    elif same_generation and prev_phase in (Phase.RUNNING, Phase.DEGRADED):
        phase, message = Phase.DEGRADED, f"tiers not ready: {', '.join(not_ready)}"
    elif ready_count == 0 and not any(deployments.get(object_name(si.name, t["name"])) for t in si.tiers):
        phase, message = Phase.PENDING, "creating the tiers"
    else:
        phase, message = Phase.DEPLOYING, f"tiers not ready yet: {', '.join(not_ready)}"
    points = plan["splitPoints"]
    prev_conditions = previous.get("conditions", [])
    status = {
        "phase": phase.value,
        "message": message,
        "observedGeneration": generation,
        "splitPoints": points,
        "split": ",".join(points) if points else "-",
        "readyTiers": f"{ready_count}/{len(tiers)}",
        "tiers": tiers,
        "plan": plan,
        "conditions": [
            _condition(prev_conditions, Condition.VALID, "True", Reason.SPEC_VALID, "the spec is valid for the model"),
            _condition(
                prev_conditions,
                Condition.READY,
                "True" if not not_ready else "False",
                Reason.ALL_TIERS_READY if not not_ready else Reason.TIERS_NOT_READY,
                message,
            ),
            # conditions other handlers own (the feedback loop's MetricsAvailable) are kept as they are
            *[c for c in prev_conditions if c.get("type") not in (Condition.VALID, Condition.READY)],
        ],
    }
    return status


def set_condition(conditions: list, ctype: str, status: str, reason: str, message: str) -> tuple[list, bool]:
    """`conditions` with `ctype` set; and whether its status changed (a transition worth an Event)."""
    old = next((c for c in conditions or [] if c.get("type") == ctype), None)
    new = _condition(conditions, ctype, status, reason, message)
    rest = [c for c in conditions or [] if c.get("type") != ctype]
    return rest + [new], old is None or old.get("status") != status


def status_changed(old: dict, new: dict) -> bool:
    """Ignore lastTransitionTime-only differences (they are recomputed from the old ones anyway)."""

    def strip(s):
        s = dict(s or {})
        s["conditions"] = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in (s.get("conditions") or [])
        ]
        return s

    keys = set(new)
    return strip({k: (old or {}).get(k) for k in keys}) != strip(new)
