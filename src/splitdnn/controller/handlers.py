"""Kopf handlers for SplitInference. Importing this module registers them (done by `splitdnn operator`).

One reconcile function serves create, update (spec), resume and the drift-repair timer, so they all converge to
the same children: validate → plan → render → adopt (owner references) → server-side apply → status.
Invalid specs put the resource in Failed (condition + Event naming the problem) and leave its current children
alone; the operator keeps running and a fixed spec recovers. There are no deletion handlers and so no finalizer:
owner references let the garbage collector delete the children, even while the operator is down.
"""

from __future__ import annotations

import logging
import os

import kopf

from splitdnn.controller import kube as kube_mod
from splitdnn.controller import plan as plan_mod
from splitdnn.controller import render
from splitdnn.controller import status as status_mod
from splitdnn.planner import deploy
from splitdnn.spec import GROUP, PLURAL, VERSION, SpecError, from_resource

RESYNC_SECONDS = float(os.environ.get("SPLITDNN_RESYNC_SECONDS", "10"))
# How often the feedback timer wakes up; each SplitInference is measured every `adaptation.interval` of its own.
ADAPT_TICK_SECONDS = float(os.environ.get("SPLITDNN_ADAPT_TICK_SECONDS", "2"))
RESPLIT_HISTORY = 20
# Match the agents' series on the `namespace` label too (Kubernetes service discovery adds it; a Prometheus that
# does not relabel so has no such label: leave it off then).
PROMQL_NAMESPACE = os.environ.get("SPLITDNN_PROMQL_NAMESPACE", "") in ("1", "true", "yes")
EVENT_COMPONENT = "splitdnn-operator"

_kube: kube_mod.Kube | None = None

try:
    from prometheus_client import Counter, Gauge

    RECONCILES = Counter("splitdnn_operator_reconciles_total", "Reconcile passes", ["cause", "result"])
    PHASE = Gauge(
        "splitdnn_operator_phase", "1 for the current phase of each SplitInference", ["namespace", "name", "phase"]
    )
except ImportError:  # pragma: no cover - prometheus_client is a dependency; metrics are optional
    RECONCILES = PHASE = None


def _observe(body, cause: str, result: str, phase: str | None) -> None:
    if RECONCILES is None:
        return
    RECONCILES.labels(cause=cause, result=result).inc()
    if phase:
        meta = body["metadata"]
        for p in status_mod.PHASES:
            PHASE.labels(namespace=meta.get("namespace", ""), name=meta["name"], phase=p).set(1 if p == phase else 0)


def kube() -> kube_mod.Kube:
    global _kube
    if _kube is None:
        _kube = kube_mod.Kube(kube_mod.api_client())
    return _kube


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    # Keep kopf's bookkeeping in annotations under our prefix; status stays ours.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="splitdnn.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="splitdnn.io", key="last-handled-configuration"
    )
    settings.posting.reporting_component = EVENT_COMPONENT
    settings.posting.reporting_instance = os.environ.get("POD_NAME", "splitdnn-operator")
    settings.posting.loggers = False  # Events only for decisions (kopf.info/warn below), not every log line
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 4
    kube()  # fail fast on a bad kubeconfig


def _load_summary(si):
    """(summary or None, problems)."""
    shape = tuple(si.input_shape) if si.input_shape else None
    try:
        return plan_mod.model_summary(si.model_source, shape), []
    except plan_mod.ModelUnavailable:
        return None, []
    except Exception as exc:  # ModelSourceError, ValueError from Keras builders: the user's model is wrong
        msg = str(exc) if str(exc).startswith("unknown model") else f"cannot load model {si.model_source!r}: {exc}"
        return None, [msg]


def reconcile(body, patch, logger: logging.Logger, *, cause: str) -> None:
    meta = body["metadata"]
    name, namespace = meta["name"], meta.get("namespace", "default")
    generation = meta.get("generation", 0)
    previous = dict(body.get("status") or {})
    resource = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {"name": name, "namespace": namespace},
        "spec": effective_spec(dict(body.get("spec") or {}), previous),
    }
    try:
        si = from_resource(resource)
    except SpecError as exc:
        return _fail(body, patch, previous, generation, [str(exc)], logger)
    summary, problems = _load_summary(si)
    estimate, profiling_state = None, None
    if not problems and summary and si.spec.get("planner", {}).get("mode") == "auto" and not si.spec.get("splitPoints"):
        from splitdnn.planner import Infeasible

        profiles = {}
        try:  # per-tier profiling Jobs; their results land in the ConfigMap <name>-profiles
            from splitdnn.controller import profiling

            prof = profiling.sync(kube().api, si, body, render.agent_image(), logger)
            for note in prof.notes:
                kopf.info(body, reason="Profiling", message=note)
            for tier, why in prof.on_estimates.items():  # one Event when a tier is left on estimates
                if why != (previous.get("profiling") or {}).get(tier):
                    kopf.warn(body, reason="ProfilingFailed", message=f"{tier}: {why}")
            profiling_state = prof.state
            # all profiles at once: one roll from the estimates' split, not one per arriving profile
            profiles = {} if prof.waiting else prof.profiles
        except Exception as exc:  # noqa: BLE001 - no profiles: FLOPs estimates
            logger.warning("profiling: %s", exc)
        try:  # the planner chooses; the feedback loop's later choices come through effective_spec
            points, estimate = deploy.choose(si, summary, profiles)
            si.spec["splitPoints"] = points
        except Infeasible as exc:
            problems.append(f"planner.mode auto: {exc}")
    problems += plan_mod.problems(si, summary)
    if problems:
        return _fail(body, patch, previous, generation, problems, logger)

    plan = plan_mod.build_plan(si, summary)
    if summary:
        try:
            plan["predicted"].update(
                estimate or deploy.predicted(si, summary, plan["splitPoints"], _profiles(namespace, name, si))
            )
        except ValueError as exc:  # a multi-tensor cut the planner's blocks do not have: no estimate
            plan["predicted"]["estimateError"] = str(exc)
    objs = render.render_all(si, plan)
    kopf.adopt(objs, owner=body)
    k = kube()
    existing = k.children(namespace, name)
    missing = [
        f"{o['kind']}/{o['metadata']['name']}" for o in objs if (o["kind"], o["metadata"]["name"]) not in existing
    ]
    old_points = previous.get("splitPoints")
    from kubernetes.client.exceptions import ApiException

    try:
        for o in objs:
            k.apply(o)
    except ApiException as exc:
        if exc.status in (400, 422):  # the rendered objects are refused: the spec made them invalid
            return _fail(
                body,
                patch,
                previous,
                generation,
                [f"API refused a child object: {exc.reason}: {(exc.body or '')[:300]}"],
                logger,
            )
        raise kopf.TemporaryError(f"applying children failed: {exc.status} {exc.reason}", delay=5) from exc

    # (a new split brings new per-split Services, so some children are always missing then: not drift)
    split_changed = old_points is not None and old_points != plan["splitPoints"]
    if cause == "timer" and missing and len(missing) < len(objs) and not split_changed:
        kopf.warn(body, reason="DriftRepaired", message=f"re-created {', '.join(missing)}")
        logger.info("drift repaired: %s", missing)
    elif missing and len(missing) == len(objs):
        kopf.info(
            body,
            reason="Deployed",
            message=f"created {len(si.tiers)} tiers ({', '.join(si.tier_names)}) split at "
            f"{','.join(plan['splitPoints']) or '-'}",
        )
    if split_changed and len(missing) < len(objs):
        kopf.info(
            body,
            reason="SplitChanged",
            message=f"rolling tiers from {','.join(old_points) or '-'} to {','.join(plan['splitPoints'])}",
        )

    retire_splits(k, body, existing, plan["splitId"], logger)
    deployments = {n: o for (kind, n), o in k.children(namespace, name).items() if kind == "Deployment"}
    new = status_mod.running_status(si, plan, deployments, previous, generation)
    if profiling_state:
        new["profiling"] = profiling_state
    _write_status(body, patch, previous, new)
    _observe(body, cause, "ok", new["phase"])


def retire_splits(k: kube_mod.Kube, body, existing: dict, current: str, logger) -> list[str]:
    """Delete the per-split Services of earlier splits once no pod of that split is left (terminating pods are
    still draining frames of the old split, and reach each other through those Services). Returns the names."""
    meta = body["metadata"]
    namespace, name = meta.get("namespace", "default"), meta["name"]
    old = {}
    for (kind, n), o in existing.items():
        split = (o["metadata"].get("labels") or {}).get(render.LABEL_SPLIT)
        if kind == "Service" and split and split != current:
            old.setdefault(split, []).append(n)
    deleted = []
    for split, names in sorted(old.items()):
        if k.has_pods(namespace, f"{render.LABEL_SI}={name},{render.LABEL_SPLIT}={split}"):
            continue
        for n in sorted(names):
            k.delete_service(namespace, n)
            deleted.append(n)
        kopf.info(body, reason="SplitRetired", message=f"split {split} has no pods left: deleted {', '.join(names)}")
        logger.info("split %s retired: deleted %s", split, names)
    return deleted


def _profiles(namespace: str, name: str, si) -> dict:
    """Per-tier profiles from the ConfigMap `<name>-profiles` (key `<tier>.json`), where they exist and are for
    this model; FLOPs estimates stand in for the rest."""
    from kubernetes import client

    from splitdnn.controller import profiling

    try:
        return profiling.read_profiles(client.CoreV1Api(kube().api), namespace, si)
    except Exception:  # noqa: BLE001 - no cluster (unit tests): estimates only
        return {}


def _fail(body, patch, previous, generation, problems, logger):
    new = status_mod.failed_status(previous, generation, problems)
    _observe(body, "invalid", "failed", "Failed")
    if (
        previous.get("phase") != "Failed"
        or previous.get("message") != new["message"]
        or previous.get("observedGeneration") != generation
    ):
        kopf.warn(body, reason="InvalidSpec", message=new["message"][:1000])
        logger.warning("invalid spec: %s", new["message"])
    _write_status(body, patch, previous, new)


def _write_status(body, patch, previous, new):
    if not status_mod.status_changed(previous, new):
        return
    if new.get("phase") != previous.get("phase"):
        reason = {
            "Running": "Running",
            "Degraded": "Degraded",
            "Deploying": "Deploying",
            "Pending": "Pending",
            "Failed": "Failed",
        }[new["phase"]]
        if new["phase"] in ("Running", "Deploying", "Pending"):
            kopf.info(body, reason=reason, message=new.get("message", ""))
        elif new["phase"] == "Degraded":
            kopf.warn(body, reason=reason, message=new.get("message", ""))
    for key, value in new.items():
        patch.status[key] = value


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_change(body, patch, logger, reason, **_):
    reconcile(body, patch, logger, cause=str(reason))


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS / 2)
def resync(body, patch, logger, **_):
    """Repairs drift (a deleted or edited child comes back) and refreshes per-tier readiness."""
    reconcile(body, patch, logger, cause="timer")


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": render.MANAGER})
def on_child_deployment(body, logger, **_):
    """A tier's Deployment changed (pods became ready, a rollout finished): refresh the owner's status now
    instead of at the next timer pass. Only readiness is recomputed, from the plan already in the status; the
    write is conditional on the owner's resourceVersion, so it never overwrites a newer status."""
    si_name = (body.get("metadata", {}).get("labels") or {}).get(render.LABEL_SI)
    namespace = body.get("metadata", {}).get("namespace")
    if si_name and namespace:
        refresh_status(namespace, si_name, logger)


def refresh_status(namespace: str, name: str, logger) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    k = kube()
    co = client.CustomObjectsApi(k.api)
    try:
        obj = co.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return
        raise
    previous = dict(obj.get("status") or {})
    generation = obj["metadata"].get("generation", 0)
    plan = previous.get("plan")
    # Failed, or a spec change not reconciled yet: the change handler / timer own the status then.
    if previous.get("phase") in (None, "Failed") or not plan or previous.get("observedGeneration") != generation:
        return
    try:
        si = from_resource(
            {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "metadata": {"name": name, "namespace": namespace},
                "spec": obj.get("spec") or {},
            }
        )
    except SpecError:
        return
    deployments = {n: o for (kind, n), o in k.children(namespace, name).items() if kind == "Deployment"}
    new = status_mod.running_status(si, plan, deployments, previous, generation)
    if not status_mod.status_changed(previous, new):
        return
    body = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": obj["metadata"]}
    try:
        co.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "status": new},
        )
    except ApiException as exc:
        if exc.status == 409:  # the owner changed meanwhile; its handlers will write a fresher status
            return
        raise
    if new["phase"] != previous.get("phase"):
        (kopf.warn if new["phase"] == "Degraded" else kopf.info)(body, reason=new["phase"], message=new["message"])
    _observe(body, "child", "ok", new["phase"])


# --- the feedback loop (issue #5) ---------------------------------------------------------------------------------


def effective_spec(spec: dict, status: dict) -> dict:
    """The spec with the split the feedback loop chose (`status.adapted`), as long as adaptation is on and the
    user has not changed `splitPoints` since (a new spec split wins, and the loop starts from it)."""
    adapted = (status or {}).get("adapted") or {}
    if (
        (spec.get("adaptation") or {}).get("enabled")
        and adapted.get("splitPoints")
        and list(adapted.get("specSplitPoints") or []) == list(spec.get("splitPoints") or [])
    ):
        spec = dict(spec)
        spec["splitPoints"] = list(adapted["splitPoints"])
    return spec


def _epoch(stamp) -> float | None:
    import datetime as dt

    if not stamp:
        return None
    try:
        return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except (TypeError, ValueError):
        return None


def _adaptation_enabled(spec, **_) -> bool:
    return bool((spec or {}).get("adaptation", {}).get("enabled"))


@kopf.timer(
    GROUP, VERSION, PLURAL, interval=ADAPT_TICK_SECONDS, initial_delay=ADAPT_TICK_SECONDS, when=_adaptation_enabled
)
def adapt(body, patch, logger, **_):
    """Every `adaptation.interval`: measure in Prometheus, re-plan with the measured figures, maybe re-split."""
    import time

    feedback_pass(body, patch, logger, now=time.time())


def feedback_pass(body, patch, logger, now: float) -> str:
    """One pass for one SplitInference; returns what it did (for logs and tests). Never raises for Prometheus
    trouble: the MetricsAvailable condition (and an Event on the transition) say so and the split stays."""
    from splitdnn import feedback
    from splitdnn.adapt import Policy
    from splitdnn.prom import Prometheus

    meta = body["metadata"]
    name, namespace = meta["name"], meta.get("namespace", "default")
    previous = dict(body.get("status") or {})
    spec = dict(body.get("spec") or {})
    adaptation = spec.get("adaptation") or {}
    if previous.get("phase") not in ("Running", "Degraded") or previous.get("observedGeneration") != meta.get(
        "generation"
    ):
        return "not deployed yet"
    policy = Policy.from_spec(adaptation)
    measured_prev = previous.get("measured") or {}
    checked = _epoch(measured_prev.get("time"))
    if checked is not None and now - checked < policy.interval_seconds:
        return "not due"
    stamp = status_mod.now()
    current = list(previous.get("splitPoints") or spec.get("splitPoints") or [])
    conditions = list(previous.get("conditions") or [])
    url = adaptation.get("prometheusUrl")
    try:
        si = from_resource(
            {
                "apiVersion": body.get("apiVersion"),
                "kind": body.get("kind"),
                "metadata": {"name": name, "namespace": namespace},
                "spec": effective_spec(spec, previous),
            }
        )
        summary = plan_mod.model_summary(si.model_source, tuple(si.input_shape) if si.input_shape else None)
        problem = deploy.problem_for(si, summary, _profiles(namespace, name, si))
    except Exception as exc:  # noqa: BLE001 - a model the operator cannot plan for: say so, keep the split
        patch.status["measured"] = {**measured_prev, "time": stamp, "error": f"cannot plan: {exc}"}
        return "cannot plan"
    # the last change: a re-split, or the tiers becoming ready (a fresh deployment's warm-up is not judged)
    ready = next((c for c in conditions if c.get("type") == "Ready" and c.get("status") == "True"), None)
    changes = [
        t
        for t in (
            _epoch(((previous.get("resplits") or [{}])[-1]).get("time")),
            _epoch(ready.get("lastTransitionTime")) if ready else None,
        )
        if t is not None
    ]
    last_change = max(changes) if changes else None
    if not url:
        s = feedback.Step(time=now, current_points=current, error="adaptation.prometheusUrl is not set")
    else:
        try:
            s = feedback.step(
                si,
                current,
                problem,
                Prometheus(url, timeout=5),
                now=now,
                last_change=last_change,
                policy=policy,
                namespace=namespace if PROMQL_NAMESPACE else None,
            )
        except ValueError as exc:  # a split the planner cannot express (multi-tensor cut)
            patch.status["measured"] = {**measured_prev, "time": stamp, "error": f"cannot plan: {exc}"}
            return "cannot plan"
    if s.error:
        conditions, changed = status_mod.set_condition(
            conditions, "MetricsAvailable", "False", "PrometheusUnavailable", s.error[:1000]
        )
        # one Event per outage (measured.error is only written here, so a status rewrite by another handler
        # cannot make it flap)
        if not measured_prev.get("error"):
            kopf.warn(body, reason="MetricsUnavailable", message=f"{s.error[:900]}; keeping split {','.join(current)}")
            logger.warning("metrics unavailable: %s", s.error)
        patch.status["conditions"] = conditions
        patch.status["measured"] = {
            **{k: v for k, v in measured_prev.items() if k != "decision"},
            "time": stamp,
            "error": s.error[:1000],
        }
        return "prometheus unavailable"
    conditions, changed = status_mod.set_condition(
        conditions, "MetricsAvailable", "True", "PrometheusQueried", f"measured at {adaptation.get('prometheusUrl')}"
    )
    if measured_prev.get("error") and not str(measured_prev["error"]).startswith("cannot plan"):
        kopf.info(body, reason="MetricsAvailable", message=f"Prometheus at {url} answers again")
    m = s.measurements
    objective = (spec.get("planner") or {}).get("objective", "throughput")
    figures = s.figures(objective)
    patch.status["conditions"] = conditions
    patch.status["measured"] = {
        **m.to_status(),
        "time": stamp,
        "window": feedback.window_for(policy),
        "decision": s.decision.reason if s.decision else None,
        "predicted": {k: v for k, v in figures.items() if k != "measured"},
        "error": None,
    }
    if m.drop_rate is not None:
        patch.status["frameDropRate"] = round(m.drop_rate, 6)
    if not s.resplit:
        return "kept: " + (s.decision.reason if s.decision else "")
    entry = feedback.resplit_entry(s, objective, stamp)
    resplits = (list(previous.get("resplits") or []) + [entry])[-RESPLIT_HISTORY:]
    adapted = {
        "splitPoints": list(s.best_points),
        "specSplitPoints": list(spec.get("splitPoints") or []),
        "time": stamp,
    }
    patch.status["resplits"] = resplits
    patch.status["adapted"] = adapted
    kopf.info(
        body, reason="Resplit", message=f"{','.join(current)} → {','.join(s.best_points)}: {s.decision.reason}"[:1000]
    )
    logger.info("re-split %s -> %s: %s", current, s.best_points, s.decision.reason)
    # roll the tiers to the new split now, through the same reconcile as every other change
    status_now = {**previous, "conditions": conditions, "adapted": adapted, "resplits": resplits}
    reconcile({**body, "status": status_now}, patch, logger, cause="resplit")
    return "resplit"
