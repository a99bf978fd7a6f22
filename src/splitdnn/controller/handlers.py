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
from splitdnn.controller import render, status as status_mod
from splitdnn.spec import GROUP, PLURAL, VERSION, SpecError, from_resource

RESYNC_SECONDS = float(os.environ.get("SPLITDNN_RESYNC_SECONDS", "10"))
EVENT_COMPONENT = "splitdnn-operator"

_kube: kube_mod.Kube | None = None

try:
    from prometheus_client import Counter, Gauge

    RECONCILES = Counter("splitdnn_operator_reconciles_total", "Reconcile passes", ["cause", "result"])
    PHASE = Gauge("splitdnn_operator_phase", "1 for the current phase of each SplitInference",
                  ["namespace", "name", "phase"])
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
        prefix="splitdnn.io", key="last-handled-configuration")
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
    resource = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                "metadata": {"name": name, "namespace": namespace}, "spec": dict(body.get("spec") or {})}
    try:
        si = from_resource(resource)
    except SpecError as exc:
        return _fail(body, patch, previous, generation, [str(exc)], logger)
    summary, problems = _load_summary(si)
    problems += plan_mod.problems(si, summary)
    if problems:
        return _fail(body, patch, previous, generation, problems, logger)

    plan = plan_mod.build_plan(si, summary)
    objs = render.render_all(si, plan)
    kopf.adopt(objs, owner=body)
    k = kube()
    existing = k.children(namespace, name)
    missing = [f"{o['kind']}/{o['metadata']['name']}" for o in objs
               if (o["kind"], o["metadata"]["name"]) not in existing]
    old_points = previous.get("splitPoints")
    from kubernetes.client.exceptions import ApiException

    try:
        for o in objs:
            k.apply(o)
    except ApiException as exc:
        if exc.status in (400, 422):  # the rendered objects are refused: the spec made them invalid
            return _fail(body, patch, previous, generation, [f"API refused a child object: {exc.reason}: "
                                                             f"{(exc.body or '')[:300]}"], logger)
        raise kopf.TemporaryError(f"applying children failed: {exc.status} {exc.reason}", delay=5)

    if cause == "timer" and missing and len(missing) < len(objs):
        kopf.warn(body, reason="DriftRepaired", message=f"re-created {', '.join(missing)}")
        logger.info("drift repaired: %s", missing)
    elif missing and len(missing) == len(objs):
        kopf.info(body, reason="Deployed",
                  message=f"created {len(si.tiers)} tiers ({', '.join(si.tier_names)}) split at "
                          f"{','.join(plan['splitPoints']) or '-'}")
    if old_points is not None and old_points != plan["splitPoints"] and not missing:
        kopf.info(body, reason="SplitChanged",
                  message=f"rolling tiers from {','.join(old_points) or '-'} to {','.join(plan['splitPoints'])}")

    deployments = {n: o for (kind, n), o in k.children(namespace, name).items() if kind == "Deployment"}
    new = status_mod.running_status(si, plan, deployments, previous, generation)
    _write_status(body, patch, previous, new)
    _observe(body, cause, "ok", new["phase"])


def _fail(body, patch, previous, generation, problems, logger):
    new = status_mod.failed_status(previous, generation, problems)
    _observe(body, "invalid", "failed", "Failed")
    if previous.get("phase") != "Failed" or previous.get("message") != new["message"] \
            or previous.get("observedGeneration") != generation:
        kopf.warn(body, reason="InvalidSpec", message=new["message"][:1000])
        logger.warning("invalid spec: %s", new["message"])
    _write_status(body, patch, previous, new)


def _write_status(body, patch, previous, new):
    if not status_mod.status_changed(previous, new):
        return
    if new.get("phase") != previous.get("phase"):
        reason = {"Running": "Running", "Degraded": "Degraded", "Deploying": "Deploying",
                  "Pending": "Pending", "Failed": "Failed"}[new["phase"]]
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
        si = from_resource({"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                            "metadata": {"name": name, "namespace": namespace}, "spec": obj.get("spec") or {}})
    except SpecError:
        return
    deployments = {n: o for (kind, n), o in k.children(namespace, name).items() if kind == "Deployment"}
    new = status_mod.running_status(si, plan, deployments, previous, generation)
    if not status_mod.status_changed(previous, new):
        return
    body = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": obj["metadata"]}
    try:
        co.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name,
            {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "status": new})
    except ApiException as exc:
        if exc.status == 409:  # the owner changed meanwhile; its handlers will write a fresher status
            return
        raise
    if new["phase"] != previous.get("phase"):
        (kopf.warn if new["phase"] == "Degraded" else kopf.info)(body, reason=new["phase"], message=new["message"])
    _observe(body, "child", "ok", new["phase"])
