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
    MODEL_READY = "ModelReady"  # the tier pods' slicers fetched, loaded and sliced the model (their reports)


class Reason(StrEnum):
    """status.conditions[].reason"""

    SPEC_VALID = "SpecValid"
    INVALID_SPEC = "InvalidSpec"
    ALL_TIERS_READY = "AllTiersReady"
    TIERS_NOT_READY = "TiersNotReady"
    PROMETHEUS_QUERIED = "PrometheusQueried"
    PROMETHEUS_UNAVAILABLE = "PrometheusUnavailable"
    MODEL_SLICED = "ModelSliced"  # (a failing slicer's reason is its own word: NotFound, DigestMismatch, ...)
    MODEL_BUILDING = "ModelBuilding"  # the model Job is fetching the model and reading its graph
    MODEL_BUILT = "ModelBuilt"  # the model Job stored the model's file and graph (the tiers' reports may add more)


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
    MODEL_FAILED = "ModelFailed"  # a tier pod's slicer could not fetch, load or slice the model


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


def model_status(previous: dict, generation: int, building: str | None, failure: tuple[str, str] | None) -> dict:
    """The status while the model Job builds the graph (`building`: what it waits for), or after it failed
    (`failure`: reason, message). The children, if any (an earlier healthy spec's), are left serving: only the
    phase and the conditions say what is wrong with this one."""
    previous = previous or {}
    prev_conditions = previous.get("conditions", [])
    kept = [c for c in prev_conditions if c.get("type") not in (Condition.VALID, Condition.MODEL_READY)]
    if failure is not None:
        reason, message = failure
        model = _condition(prev_conditions, Condition.MODEL_READY, "False", reason, message)
        phase = Phase.FAILED
    else:
        message = str(building)
        model = _condition(prev_conditions, Condition.MODEL_READY, "Unknown", Reason.MODEL_BUILDING, message)
        phase = Phase(previous["phase"]) if previous.get("phase") in (Phase.RUNNING, Phase.DEGRADED) else Phase.PENDING
    status = {**previous, "phase": phase.value, "message": message, "observedGeneration": generation}
    # (a Deployment's change must not refresh this status from the old plan's tiers: `reconcile.refresh` skips it)
    status["modelJob"] = {"state": "failed" if failure else "building", "message": message}
    status["conditions"] = [
        _condition(prev_conditions, Condition.VALID, "True", Reason.SPEC_VALID, "the spec is valid"),
        *kept,
        model,
    ]
    return status


def model_built(status: dict, previous: dict, digest: str) -> None:
    """ModelReady True once the model Job has built the model, unless the tiers' reports said more (sliced) or
    worse (a failed fetch)."""
    conditions = status.setdefault("conditions", [])
    current = next((c for c in conditions if c.get("type") == Condition.MODEL_READY), None)
    if current is not None and current.get("status") != "Unknown":
        return
    built = _condition(
        (previous or {}).get("conditions", []),
        Condition.MODEL_READY,
        "True",
        Reason.MODEL_BUILT,
        f"sha256 {digest}: fetched and read by the model Job",
    )
    status["conditions"] = [c for c in conditions if c is not current] + [built]


CONFIG_ERRORS = ("CreateContainerConfigError", "CreateContainerError")


def slicer_report(state: dict) -> dict | None:
    """What a tier pod's slicer init container said (`kube.slicer_reports` gives its `state`: the termination
    `message`, `exitCode`, `reason`, or the `waiting` reason and `waitingMessage`): `splitdnn slice --report`'s
    JSON — `slices` (and `model`: the file's sha256 and bytes) on success, `error` (`reason`, `message`) when it
    failed — or, for what the slicer could not write itself (killed, a missing Secret), an `error` made from the
    pod's status. None: nothing said yet."""
    message = state.get("message") or ""
    if state.get("waiting") in CONFIG_ERRORS:
        text = state.get("waitingMessage") or state["waiting"]
        missing = "secret" in text.lower() and "not found" in text.lower()
        return {"error": {"reason": "SecretNotFound" if missing else state["waiting"], "message": text[:300]}}
    if state.get("exitCode") is None:
        return None
    try:
        doc = json.loads(message)
    except ValueError:
        doc = None
    if state["exitCode"] == 0:
        return doc if isinstance(doc, dict) else {"unreadable": message[:200]}
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        return doc
    last = next((line for line in reversed(message.splitlines()) if line.strip()), "")  # the log's last line
    what = f"exit code {state['exitCode']}" + (f": {last.strip()[:300]}" if last else "")
    return {"error": {"reason": state.get("reason") or "SlicerFailed", "message": f"it failed ({what})"}}


def tier_runtime(tier, index: int, report: dict | None, previous: dict | None) -> dict:
    """status.tiers[] `runtime` (and `runtimeNote`: why not litert) of tier `index` (a spec.Tier). A tier without
    `runtime` runs litert where its slice converted to .tflite (`agent.runtime.choose`): its pods' `slicer_report`
    says which; until one is in, the `previous` status entry of the same split stands, or nothing is said."""
    from splitdnn.agent.runtime import choose

    if tier.runtime is not None or tier.devices > 1:
        runtime, why = choose(tier.runtime, {}, cooperative=tier.devices > 1)
    elif report is not None and "slices" in report:
        try:
            entry = report["slices"][index]
            runtime, why = choose(None, entry)
        except (KeyError, IndexError, TypeError):
            return {"runtimeNote": f"unreadable slicer report: {json.dumps(report)[:200]}"}
    elif report is not None and "unreadable" in report:
        return {"runtimeNote": f"unreadable slicer report: {report['unreadable']!r}"}
    else:
        return {k: v for k, v in (previous or {}).items() if k in ("runtime", "runtimeNote")}
    return {"runtime": runtime, **({"runtimeNote": why} if why and tier.devices == 1 else {})}


def model_failed(status: dict) -> bool:
    """The status is Failed because a slicer could not fetch, load or slice the model (not an invalid spec)."""
    return any(
        c.get("type") == Condition.MODEL_READY and c.get("status") == "False" for c in status.get("conditions") or []
    )


def running_status(
    si, plan: dict, deployments: dict, previous: dict, generation: int, reports: dict | None = None
) -> dict:
    """`deployments`: Deployment name → API dict (missing ones absent). `reports`: the tier pods' slicer reports
    by (split id, tier) (`kube.slicer_reports`), for each tier's runtime."""
    previous = previous or {}
    same_split = (previous.get("plan") or {}).get("splitId") == plan.get("splitId")
    previous_tiers = {t.get("name"): t for t in previous.get("tiers") or []} if same_split else {}
    said = {tier: slicer_report(state) for (split, tier), state in (reports or {}).items() if split == plan["splitId"]}
    tiers = []
    for i, t in enumerate(si.tiers):
        name = object_name(si.name, t["name"])
        r = deployment_ready(deployments.get(name))
        report = said.get(t["name"])
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
    failure = next(  # the first tier (device side first) whose slicer failed
        (
            (t["name"], said_t["error"])
            for t in si.tiers
            if (said_t := said.get(t["name"])) and isinstance(said_t.get("error"), dict)
        ),
        None,
    )
    if failure is not None:
        phase, message = Phase.FAILED, f"tier {failure[0]}: {failure[1].get('message', '')}"
    elif not not_ready:
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
            *[
                c
                for c in prev_conditions
                if c.get("type") not in (Condition.VALID, Condition.READY, Condition.MODEL_READY)
            ],
        ],
    }
    sliced = next((r["model"] for r in said.values() if r and isinstance(r.get("model"), dict)), None)
    if failure is not None:
        reason = str(failure[1].get("reason") or "SlicerFailed")
        status["conditions"].append(_condition(prev_conditions, Condition.MODEL_READY, "False", reason, message))
    elif sliced is not None or any(r and "slices" in r for r in said.values()):
        what = f"sha256 {sliced['sha256']}" if sliced else si.model_source
        status["conditions"].append(
            _condition(prev_conditions, Condition.MODEL_READY, "True", Reason.MODEL_SLICED, f"sliced {what}")
        )
    else:  # nothing said yet: what was said stands
        status["conditions"] += [c for c in prev_conditions if c.get("type") == Condition.MODEL_READY]
    if sliced is not None:
        status["model"] = {"digest": sliced.get("sha256"), "bytes": sliced.get("bytes")}
    elif previous.get("model") and failure is None:
        status["model"] = previous["model"]
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
