"""The Kopf shell: `register(registry, settings)` registers the SplitInference handlers (done by
`splitdnn operator` at start-up). Each handler reads the cluster, calls the pure functions of reconcile.py and
feedback_pass.py, and carries out what they return: apply children, write the status, post Events.

Invalid specs put the resource in Failed (condition + Event naming the problem) and leave its current children
alone; the operator keeps running and a fixed spec recovers. There are no deletion handlers: owner references let
the garbage collector delete the children. Kopf does put its finalizer (kopf.zalando.org/KopfFinalizerMarker) on
every SplitInference, because its timers need one; a SplitInference deleted while the operator is down waits
for the operator (or for that finalizer to be removed by hand).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import kopf

from splitdnn.controller import feedback_pass, model_job, render
from splitdnn.controller import kube as kube_mod
from splitdnn.controller import metrics as metrics_mod
from splitdnn.controller import profiling as profiling_mod
from splitdnn.controller import reconcile as core
from splitdnn.controller import status as status_mod
from splitdnn.controller.settings import Settings
from splitdnn.spec import GROUP, PLURAL, VERSION

EVENT_COMPONENT = "splitdnn-operator"
MANAGED = {"app.kubernetes.io/managed-by": render.MANAGER}
BUILD_POLL_SECONDS = 3  # how often a create/update looks at a model Job that is building the graph
REFRESH_ATTEMPTS = 3  # conditional status writes of one child event (each re-reads the owner after a conflict)
REFRESH_LATER_SECONDS = 2.0  # a Deployment change that came before its pass wrote the status: looked at again


def _post(body: Any, events: list[core.Event]) -> None:
    for e in events:
        (kopf.warn if e.warning else kopf.info)(body, reason=str(e.reason), message=e.message)


class Operator:
    """The handlers' shared state: the settings and one API client."""

    def __init__(self, settings: Settings, kube: kube_mod.Kube | None = None):
        self.settings = settings
        self._kube = kube
        self._locks: dict[tuple[str, str], threading.RLock] = {}
        self._locks_guard = threading.Lock()

    @property
    def kube(self) -> kube_mod.Kube:
        if self._kube is None:
            self._kube = kube_mod.Kube(kube_mod.api_client())
        return self._kube

    def pause(self, point: str, logger: kopf.Logger) -> None:
        """Fault injection (Settings.pause_at): hold this reconcile for good at `point`, so a test can kill the
        operator exactly there."""
        if self.settings.pause_at == point:
            logger.warning("fault injection: paused at %s", point)
            threading.Event().wait()

    @contextlib.contextmanager
    def one_at_a_time(self, body: Any, wait: bool = True) -> Iterator[bool]:
        """Kopf runs a resource's change handler and its timers in parallel threads. Each pass decides from the
        status (what to announce, which split is deployed), so two at once would both announce one transition (two
        ModelFailed Events, found in kind) or render from a status the other has just replaced. Passes of one
        resource hold its lock and write the status before they release it; a timer that finds it held skips its
        tick (`wait=False` yields False), the change handler waits."""
        meta = body["metadata"]
        key = (meta.get("namespace", "default"), meta["name"])
        with self._locks_guard:
            lock = self._locks.setdefault(key, threading.RLock())
        if not lock.acquire(blocking=wait):
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def current(self, body: Any) -> dict | None:
        """`body` with the status as stored now (a handler's body can predate another pass's write); None: gone."""
        meta = body["metadata"]
        stored = self.kube.get_si(meta.get("namespace", "default"), meta["name"])
        return None if stored is None else core.with_status(dict(body), dict(stored.get("status") or {}))

    # --- reconcile -----------------------------------------------------------------------------------------------

    def reconcile(self, body: Any, logger: kopf.Logger, cause: str, wait: bool = True) -> None:
        with self.one_at_a_time(body, wait) as mine:
            if not mine:
                logger.debug("another pass of this resource is running: this %s pass is skipped", cause)
                return
            fresh = self.current(body)
            if fresh is not None:  # (deleted meanwhile: nothing to do)
                self._reconcile(fresh, logger, cause)

    def _reconcile(self, body: Any, logger: kopf.Logger, cause: str) -> None:
        meta = body["metadata"]
        k = self.kube
        jobs = model_job.ModelJobs(k, body)
        d = core.desired(body, jobs.model)
        prof = stored = None
        if d.wants_profiling and d.si is not None:
            try:  # per-tier profiling Jobs; their results land in the ConfigMap <name>-profiles
                prof = profiling_mod.sync(
                    k.api, d.si, body, render.agent_image(), logger, wait=self.settings.profile_wait_seconds
                )
            except Exception as exc:  # noqa: BLE001 - no profiles: FLOPs estimates
                logger.warning("profiling: %s", exc)
        elif d.si is not None and d.summary is not None and not d.problems:
            stored = self.stored_profiles(d.namespace, d.si)
        existing = k.children(d.namespace, d.name) if not d.problems else {}
        out = core.prepare(d, cause, existing, prof, stored)
        if out.plan is not None and d.si is not None:  # its slices: built by a Job now, fetched by the tiers
            if failure := jobs.slices(d.si, out.plan):
                logger.warning("model Job: %s: %s", *failure)
        _post(body, out.events)
        if out.apply:
            from kubernetes.client.exceptions import ApiException

            kopf.adopt(out.apply, owner=body)
            if d.si is not None and (key_secret := render.coop_key_secret(d.si)) is not None:
                # the group key of cooperative tiers: made once, before the pods that read it
                kopf.adopt(key_secret, owner=body)
                key_secret["stringData"] = {render.COOP_KEY: secrets.token_urlsafe(32)}
                if k.create_secret(d.namespace, key_secret):
                    logger.info("created the cooperative group key Secret %s", key_secret["metadata"]["name"])
            first_tier = next((i for i, o in enumerate(out.apply) if o["kind"] == "Deployment"), None)
            try:
                for i, obj in enumerate(out.apply):
                    k.apply(obj)
                    if i == 0:
                        self.pause(core.AFTER_FIRST_APPLY, logger)
                    if i == first_tier and cause == "resplit":
                        self.pause(core.RESPLIT_AFTER_FIRST_TIER, logger)
            except ApiException as exc:
                if exc.status not in (400, 422):
                    raise kopf.TemporaryError(f"applying children failed: {exc.status} {exc.reason}", delay=5) from exc
                out = core.refused(d, str(exc.reason), exc.body or "")  # the spec made the children invalid
                _post(body, out.events)
            else:
                _post(body, out.applied_events)
                for e in out.applied_events:
                    logger.info("%s: %s", e.reason, e.message)
                assert out.plan is not None
                self.retire_splits(body, existing, out.plan["splitId"], logger)
                deployments = {n: o for (kind, n), o in k.children(d.namespace, d.name).items() if kind == "Deployment"}
                # a tier no longer cooperative: its devices go once no pod of its old coordinator is left (a later
                # pass deletes them when the roll is still on now)
                for tier, stale in core.stale_coop_groups(existing, out.apply, deployments).items():
                    if k.count_pods(d.namespace, f"{render.LABEL_SI}={d.name},{render.LABEL_TIER}={tier}") <= 1:
                        for kind, name in stale:
                            k.delete(kind, d.namespace, name)
                            logger.info("deleted %s/%s: tier %s is no longer cooperative", kind, name, tier)
                out = core.settle(d, out, deployments, k.slicer_reports(d.namespace, d.name))
        if any(e.reason == status_mod.EventReason.INVALID_SPEC for e in out.events):
            logger.warning("invalid spec: %s", (out.status or {}).get("message"))
        self.write_status(body, d.previous, out.status or {})
        metrics_mod.reconciled(meta, "invalid" if out.result == "failed" else cause, out.result, out.phase)
        if out.result == "building" and cause != "timer":  # look again soon (the timer would, later)
            raise kopf.TemporaryError(f"waiting: {(out.status or {}).get('message')}", delay=BUILD_POLL_SECONDS)

    def write_status(self, body: Any, previous: dict, new: dict) -> None:
        """The new status, written now (under the resource's lock: the next pass reads it), and its Events."""
        if not status_mod.status_changed(previous, new):
            return
        from kubernetes.client.exceptions import ApiException

        meta = body["metadata"]
        try:
            self.kube.patch_status(meta.get("namespace", "default"), meta["name"], new)
        except ApiException as exc:
            if exc.status == 404:  # deleted meanwhile
                return
            raise
        _post(body, core.status_events(previous, new))

    def retire_splits(self, body: Any, existing: dict, current: str, logger: kopf.Logger) -> list[str]:
        """Delete the per-split Services of earlier splits once no pod of that split is left (terminating pods
        are still draining frames of the old split, and reach each other through those Services)."""
        meta = body["metadata"]
        namespace, name = meta.get("namespace", "default"), meta["name"]
        deleted = []
        for split, names in core.old_splits(existing, current).items():
            if self.kube.has_pods(namespace, f"{render.LABEL_SI}={name},{render.LABEL_SPLIT}={split}"):
                continue
            for n in names:
                self.kube.delete_service(namespace, n)
                deleted.append(n)
            _post(body, [core.retired_event(split, names)])
            logger.info("split %s retired: deleted %s", split, names)
        return deleted

    def stored_profiles(self, namespace: str, si: Any) -> dict:
        """Per-tier profiles from the ConfigMap `<name>-profiles` (key `<tier>.json`), where they exist and are
        for this model; FLOPs estimates stand in for the rest."""
        from kubernetes import client

        try:
            return profiling_mod.read_profiles(client.CoreV1Api(self.kube.api), namespace, si)
        except Exception:  # noqa: BLE001 - an unreadable ConfigMap: estimates only
            return {}

    # --- a child Deployment changed ------------------------------------------------------------------------------

    def refresh_status(
        self, namespace: str, name: str, deployments: dict, logger: kopf.Logger, retry: bool = True
    ) -> None:
        """Readiness from the tier Deployments (`deployments`: name → object, from the index) into the owner's
        status; the write is conditional on the owner's resourceVersion, so it never overwrites a newer status (after
        a conflict it re-reads the owner and recomputes)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        co = client.CustomObjectsApi(self.kube.api)
        for _attempt in range(REFRESH_ATTEMPTS):
            obj = self.kube.get_si(namespace, name)
            if obj is None:
                return
            reports = self.kube.slicer_reports(namespace, name)
            out = core.refresh(obj, deployments, now=time.time(), reports=reports)
            if out is None or out.status is None:
                written = (obj.get("status") or {}).get("observedGeneration") == obj["metadata"].get("generation")
                if retry and not written:
                    self.refresh_later(namespace, name, logger)
                return
            try:
                co.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    name,
                    {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "status": out.status},
                )
            except ApiException as exc:
                # the owner changed meanwhile: recompute from it (this may be the last change of a roll, the
                # only pass that times its switch-over; a timer's write in between must not lose it)
                if exc.status == 409:
                    continue
                # deleted between the read and the write (found by the spec fuzzer, which deletes as it deploys)
                if exc.status == 404:
                    return
                raise
            _post({"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": obj["metadata"]}, out.events)
            metrics_mod.switched_over(obj["metadata"], out.switchover_seconds)
            metrics_mod.reconciled(obj["metadata"], "child", "ok", out.phase)
            return
        logger.info(
            "status of %s/%s kept changing under %d refreshes; the timer's pass takes over",
            namespace,
            name,
            REFRESH_ATTEMPTS,
        )

    def refresh_later(self, namespace: str, name: str, logger: kopf.Logger) -> None:
        """A Deployment changed while the pass that applied it had not written its status yet (that status is
        computed from the Deployments as read just after the apply): look again once it has, with the Deployments
        as they are then, or this change would wait for the timer."""

        def again() -> None:
            try:
                deployments = {
                    n: readiness_view(o)
                    for (kind, n), o in self.kube.children(namespace, name).items()
                    if kind == "Deployment"
                }
                self.refresh_status(namespace, name, deployments, logger, retry=False)
            except Exception as exc:  # noqa: BLE001 - the timer's pass repairs it
                logger.info("delayed status refresh of %s/%s: %s", namespace, name, exc)

        # in this handler's context: Kopf posts Events through context variables (without them the Event of the
        # change this refresh writes was lost: LookupError settings_var, found by test_operator)
        threading.Timer(REFRESH_LATER_SECONDS, contextvars.copy_context().run, (again,)).start()

    # --- the feedback loop ---------------------------------------------------------------------------------------

    def adapt(self, body: Any, logger: kopf.Logger, now: float) -> str:
        with self.one_at_a_time(body, wait=False) as mine:
            fresh = self.current(body) if mine else None
            if fresh is None:
                return "busy" if not mine else "gone"
            return self._adapt(fresh, logger, now)

    def _adapt(self, body: Any, logger: kopf.Logger, now: float) -> str:
        from splitdnn.prom import Prometheus

        if why := feedback_pass.due(body, now):
            return why
        meta = body["metadata"]
        profiles = {}
        try:
            profiles = self.stored_profiles(meta.get("namespace", "default"), core.parse(body))
        except Exception:  # noqa: BLE001 - an invalid spec: feedback_pass.run says so
            pass
        url = ((body.get("spec") or {}).get("adaptation") or {}).get("prometheusUrl")
        started = time.monotonic()
        p = feedback_pass.run(
            body,
            now,
            Prometheus(url, timeout=5) if url else None,
            profiles,
            promql_namespace=self.settings.promql_namespace,
            lookup=model_job.ModelJobs(self.kube, body).model,  # the graph from the store (no TensorFlow here)
        )
        metrics_mod.decided(meta, time.monotonic() - started, p.resplit_reason)
        # a NaN or an Infinity is not JSON: the API would refuse the status (through Kopf's patch, this timer stalled
        # for good without a word); fail loudly instead (Kopf logs it and retries)
        json.dumps(p.status, allow_nan=False)
        # The decision goes to the API before the first tier rolls: an operator that dies mid-roll must find it on
        # restart (else it would roll that tier back to the old split and, the cooldown's start lost, decide again).
        if p.status:
            self.kube.patch_status(meta.get("namespace", "default"), meta["name"], p.status)
        _post(body, p.events)
        for e in p.events:
            (logger.warning if e.warning else logger.info)("%s: %s", e.reason, e.message)
        if p.resplit:  # roll the tiers to the new split now, through the same reconcile as every other change
            self._reconcile(core.with_status(body, {**(body.get("status") or {}), **p.status}), logger, "resplit")
        return p.result


def register(registry: kopf.OperatorRegistry, settings: Settings, kube: kube_mod.Kube | None = None) -> Operator:
    """Register the handlers in `registry`, bound to `settings` (read once at start-up)."""
    op = Operator(settings, kube)
    every, tick = settings.resync_seconds, settings.adapt_tick_seconds
    # (handler ids are given: Kopf would name a handler defined in here "register.<locals>.…"; an index's id is
    # the name of the handlers' keyword argument)

    @kopf.on.startup(id="configure", registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Keep kopf's bookkeeping in annotations under our prefix; status stays ours.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="splitdnn.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="splitdnn.io", key="last-handled-configuration"
        )
        settings.posting.reporting_component = EVENT_COMPONENT
        settings.posting.reporting_instance = op.settings.pod_name
        settings.posting.loggers = False  # Events only for decisions (kopf.info/warn), not every log line
        settings.watching.server_timeout = 120
        settings.watching.client_timeout = 150
        settings.networking.request_timeout = 60
        settings.execution.max_workers = 4
        op.kube  # noqa: B018 - fail fast on a bad kubeconfig

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """KUBECONFIG or the in-cluster ServiceAccount, through the kubernetes client (Kopf's default registry
        brings this; a registry of our own does not)."""
        return kopf.login_via_client(**kwargs)

    @kopf.on.resume(GROUP, VERSION, PLURAL, id="on_change", registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, id="on_change", registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", id="on_change", registry=registry)
    def on_change(body: Any, logger: kopf.Logger, reason: Any, **_: Any) -> None:
        op.reconcile(body, logger, cause=str(reason))  # (each pass writes the status itself, not Kopf's patch)

    @kopf.timer(GROUP, VERSION, PLURAL, id="resync", interval=every, initial_delay=every / 2, registry=registry)
    def resync(body: Any, logger: kopf.Logger, **_: Any) -> None:
        """Repairs drift (a deleted or edited child comes back) and refreshes per-tier readiness."""
        op.reconcile(body, logger, cause="timer", wait=False)  # (a pass already running does it)

    @kopf.index("apps", "v1", "deployments", id="tier_deployments", labels=MANAGED, registry=registry)
    def tier_deployments(body: Any, namespace: Any, labels: Any, **_: Any) -> Any:
        """{(namespace, SplitInference name): (Deployment name, what readiness needs of it)}."""
        si_name = (labels or {}).get(render.LABEL_SI)
        if not si_name or not namespace:
            return None
        return {(namespace, si_name): (body["metadata"]["name"], readiness_view(body))}

    @kopf.on.event("apps", "v1", "deployments", id="on_child_deployment", labels=MANAGED, registry=registry)
    def on_child_deployment(body: Any, logger: kopf.Logger, **kwargs: Any) -> None:
        """A tier's Deployment changed (pods became ready, a rollout finished): refresh the owner's status now
        instead of at the next timer pass. Only readiness is recomputed, from the plan already in the status."""
        meta = body.get("metadata", {})
        si_name = (meta.get("labels") or {}).get(render.LABEL_SI)
        namespace = meta.get("namespace")
        if si_name and namespace:
            index: kopf.Index = kwargs["tier_deployments"]  # (Kopf passes an index by its id)
            deployments = dict(index.get((namespace, si_name), []))
            op.refresh_status(namespace, si_name, deployments, logger)

    def adaptation_enabled(spec: Any, **_: Any) -> bool:
        return bool((spec or {}).get("adaptation", {}).get("enabled"))

    @kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        id="adapt",
        interval=tick,
        initial_delay=tick,
        when=adaptation_enabled,
        registry=registry,
    )
    def adapt(body: Any, logger: kopf.Logger, **_: Any) -> None:
        """Every `adaptation.interval`: measure in Prometheus, re-plan with the measured figures, maybe re-split."""
        op.adapt(body, logger, now=time.time())

    return op


def readiness_view(deployment: Any) -> dict:
    """The parts of a Deployment that status.deployment_ready reads (an index keeps these, not whole objects)."""
    meta, spec, st = deployment.get("metadata", {}), deployment.get("spec", {}), deployment.get("status") or {}
    return {
        "metadata": {"name": meta.get("name"), "generation": meta.get("generation")},
        "spec": {k: spec[k] for k in ("replicas",) if k in spec},
        "status": {
            k: st[k]
            for k in ("readyReplicas", "updatedReplicas", "availableReplicas", "replicas", "observedGeneration")
            if k in st
        },
    }
