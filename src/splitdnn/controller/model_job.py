"""The model Job, seen from the operator: what the artifact store holds for a SplitInference's model, and the Job
that builds what it lacks (`splitdnn artifacts build`, TensorFlow, in the agent image on `modelJob.nodeSelector`).

The operator itself never imports TensorFlow: it reads the graph the Job stored (`refs/models/<key>.json`), plans
from it, checks the split points against it, and only then renders tier pods, which fetch their slices. So a model
that cannot be fetched or loaded fails in the Job, before any tier pod exists; the previous split keeps serving.
A failed build is recorded in the store with its reason (`artifacts.build`); the Job's pod tells what the build
could not record itself (a missing Secret, an OOM kill). After `RETRY_SECONDS` a failed Job is replaced, so a
server that comes back or a Secret created later recovers without an edit.
"""

from __future__ import annotations

import time
from typing import Any

from splitdnn.artifacts import ArtifactError, Store, slice_refs, usable
from splitdnn.controller import render
from splitdnn.controller import status as status_mod
from splitdnn.controller.reconcile import ModelState
from splitdnn.graph import GraphSummary
from splitdnn.spec import SplitInference

RETRY_SECONDS = 60.0
STORE_TIMEOUT = 5.0


def _planned_points(si: SplitInference) -> list[str] | None:
    """The split a model Job can slice before the graph is known: spec.splitPoints unless the planner chooses."""
    return None if si.planner_chooses else list(si.spec.get("splitPoints") or [])


def _finished(job: dict) -> str | None:
    st = job.get("status") or {}
    if st.get("succeeded"):
        return "succeeded"
    if st.get("failed") or any(
        c.get("type") == "Failed" and c.get("status") == "True" for c in st.get("conditions") or []
    ):
        return "failed"
    return None


class ModelJobs:
    """The store and the Jobs for one reconcile pass (`kube`: controller.kube.Kube; `owner`: the resource body)."""

    def __init__(self, kube: Any, owner: Any):
        self.kube, self.owner = kube, owner
        self.url = render.artifacts_url()
        self.store = Store(self.url, timeout=STORE_TIMEOUT)
        self.image = render.agent_image()
        self.node_selector = render.model_job_node_selector()
        self.limit = render.max_model_bytes()

    def model(self, si: SplitInference) -> ModelState:
        """The model's graph from the store, or why not yet (a Job building it), or why never (its failure)."""
        key = render.model_key(si)
        try:
            ref = self.store.get_ref("models", key)
        except ArtifactError as exc:
            return ModelState(key=key, building=f"waiting for the artifact store: {exc}")
        if usable(ref) is not None:
            assert ref is not None
            return ModelState(
                key=key, summary=GraphSummary.from_json(ref["graph"]), digest=ref["digest"], bytes=ref["bytes"]
            )
        failure = self.job(si, _planned_points(si), (ref or {}).get("error"))
        if failure is not None:
            return ModelState(key=key, failure=failure)
        return ModelState(key=key, building=f"model Job {self.name(si, _planned_points(si))} is building the graph")

    def slices(self, si: SplitInference, plan: dict) -> tuple[str, str] | None:
        """Start the Job for the plan's slices unless the store has them; the tiers' fetch waits for it. A failure
        to slice (the Job's, or recorded in the store) as (reason, message)."""
        try:
            model = self.store.get_ref("models", plan["modelKey"])
            good = usable(model)
            refs = slice_refs(self.store, good, plan["splitPoints"], si.typed.cooperative) if good else []
        except (ArtifactError, ValueError):
            return None  # the next pass looks again; the tiers' fetch says what it finds
        if refs and all(usable(r) for r in refs):
            return None
        error = next((r["error"] for r in refs if r and "error" in r), None)
        return self.job(si, list(plan["splitPoints"]), error)

    def name(self, si: SplitInference, points: list[str] | None) -> str:
        return render.model_job_name(render.model_key(si), points, si.typed.cooperative)

    def job(self, si: SplitInference, points: list[str] | None, error: dict | None) -> tuple[str, str] | None:
        """Make sure a Job builds what is missing (`error`: the failure the store recorded, if any); returns the
        failure as (reason, message) while there is one."""
        name = self.name(si, points)

        def failure(found: dict) -> tuple[str, str]:
            # the same words whether the store or the Job's pod tells it (artifacts.failure words both; a new message
            # is a new ModelFailed Event: one failure told two ways made two, found in kind)
            return found["reason"], f"model Job {name}: {found['message']}"

        recorded = failure(error) if error else None
        job = self.kube.get_job(si.namespace, name)
        if job is None:
            if error is None or time.time() - float(error.get("time") or 0) > RETRY_SECONDS:
                obj = render.render_model_job(si, points, self.image, self.url, self.limit, self.node_selector)
                import kopf

                kopf.adopt(obj, owner=self.owner)
                self.kube.create_job(si.namespace, obj)
            return recorded
        # what the Job's pod says: a missing Secret (it never starts), a kill before the build could record it
        said = [status_mod.slicer_report(s) or {} for s in self.kube.container_reports(si.namespace, name).values()]
        from_pod = next((failure(d["error"]) for d in said if "error" in d), None)
        done = _finished(job)
        if done is None:
            return from_pod or recorded
        if done == "succeeded" and error is None:  # built, but the store has lost it (an emptyDir restarted)
            self.kube.delete_job(si.namespace, name)
            return None
        if _age(job) > RETRY_SECONDS:  # failed a while ago: try again (the server may be back)
            self.kube.delete_job(si.namespace, name)
        return recorded or from_pod or ("ModelJobFailed", f"model Job {name} failed without a report")


def _age(job: dict) -> float:
    """Seconds since the Job finished (its last condition's transition)."""
    from splitdnn.controller.reconcile import epoch

    st = job.get("status") or {}
    stamps = [epoch(c.get("lastTransitionTime")) for c in st.get("conditions") or []]
    stamps += [epoch(st.get("completionTime")), epoch(st.get("startTime"))]
    known = [t for t in stamps if t is not None]
    return time.time() - max(known) if known else 0.0
