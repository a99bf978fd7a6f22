"""planner.mode auto: per-tier profiles measured on the tier's own nodes by profiling Jobs.

For every tier without a profile the operator creates a Job `<si>-profile-<tier>` (the agent image, the tier's
nodeSelector and resources) that runs `splitdnn profile MODEL --tier TIER` and prints the profile document after
a marker line. When the Job has succeeded the operator reads the pod's log, checks the document and stores it in
the ConfigMap `<si>-profiles` under `<tier>.json`, where the planner reads it (FLOPs estimates stand in until
then). A user can also fill that ConfigMap by hand (`splitdnn profile … --out device.json`,
`kubectl create configmap <si>-profiles --from-file=device.json`): tiers with a profile get no Job.

The profiles go into the plan together: while any tier's Job is still running (for at most `wait` seconds after
it was created, Settings.profile_wait_seconds) the plan stays on FLOPs estimates. Profiles arrive seconds apart,
and planning with each as it comes rolled every tier up to three times in a minute, each roll re-slicing the model
in every pod.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from splitdnn.controller.render import MANAGER, _restricted, common_labels

MARKER = "---splitdnn-profile---"
LABEL_ROLE = "splitdnn.io/role"
# how long a running profiling Job holds back the other tiers' profiles by default (a Job whose pod cannot be
# scheduled must not keep the plan on estimates for ever); the operator passes Settings.profile_wait_seconds
WAIT_SECONDS = 600.0


def job_name(si_name: str, tier: str) -> str:
    return f"{si_name}-profile-{tier}"[:63].rstrip("-")


def configmap_name(si_name: str) -> str:
    return f"{si_name}-profiles"


def profiled_runtime(si, index: int) -> str:
    """What the tier's agent runs (its --runtime): the profile must time the same runtime."""
    t = si.typed.tiers[index]
    return "tensorflow" if t.devices > 1 else (t.runtime or "auto")


def render_job(si, index: int, image: str) -> dict:
    tier = si.tiers[index]
    tname = tier["name"]
    runtime = profiled_runtime(si, index)
    script = (
        f"splitdnn profile {shlex.quote(si.model_source)} --tier {shlex.quote(tname)} --runtime {runtime}"
        f" --out /tmp/profile.json >&2 && echo {MARKER} && cat /tmp/profile.json"
    )
    labels = {**common_labels(si.name, tname), LABEL_ROLE: "profile"}
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "nodeSelector": dict(tier.get("nodeSelector") or {}),
        "containers": [
            {
                "name": "profile",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script],
                "env": [{"name": "HOME", "value": "/tmp"}, {"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"}],
                "resources": dict(tier.get("resources") or {}),
                "securityContext": _restricted(),
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(si.name, tname), "namespace": si.namespace, "labels": labels},
        "spec": {"backoffLimit": 2, "template": {"metadata": {"labels": labels}, "spec": pod}},
    }


def parse_log(text: str, model: str, tier: str) -> dict | None:
    """The profile document printed after MARKER, if it is one for `model` and `tier`."""
    if MARKER not in text:
        return None
    try:
        doc = json.loads(text.split(MARKER, 1)[1])
    except ValueError:
        return None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != "splitdnn.profile/1"
        or doc.get("model") != model
        or doc.get("tier") != tier
        or not isinstance(doc.get("blocks"), list)
    ):
        return None
    for b in doc["blocks"]:
        b.pop("samples_s", None)  # ConfigMaps are small; the medians are what the planner uses
    return doc


def read_profiles(core, namespace: str, si) -> dict:
    """{tier: profile} from the ConfigMap, for this model; {} when there is none."""
    from kubernetes.client.exceptions import ApiException

    try:
        cm = core.read_namespaced_config_map(configmap_name(si.name), namespace)
    except ApiException:
        return {}
    out = {}
    for tier in si.tier_names:
        try:
            doc = json.loads((cm.data or {}).get(f"{tier}.json", ""))
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("model") == si.model_source and isinstance(doc.get("blocks"), list):
            out[tier] = doc
    return out


def failed(job) -> bool:
    st = job.status
    return any(c.type == "Failed" and c.status == "True" for c in ((st.conditions if st else None) or []))


def running(job, now: dt.datetime, wait: float = WAIT_SECONDS) -> bool:
    """The Job may still bring a profile: neither succeeded nor failed, and created less than `wait` s ago."""
    if (job.status and job.status.succeeded) or failed(job):
        return False
    created = job.metadata.creation_timestamp
    return created is None or (now - created).total_seconds() < wait


PROFILED = "profiled"
RUNNING = "running"  # the state of a tier whose Job may still bring a profile starts with this


@dataclass
class Profiling:
    """One pass of sync: the profiles there are, each tier's profiling state (for status.profiling) and what this
    pass did (one Event each)."""

    profiles: dict = field(default_factory=dict)  # tier -> profile document
    state: dict = field(default_factory=dict)  # tier -> PROFILED | "running (Job …)" | why there is none
    notes: list = field(default_factory=list)

    @property
    def waiting(self) -> list:
        """Tiers whose Job may still bring a profile."""
        return [t for t, s in self.state.items() if s.startswith(RUNNING)]

    @property
    def on_estimates(self) -> dict:
        """{tier: why}: tiers that have no profile and will get none from their Job."""
        return {t: s for t, s in self.state.items() if s != PROFILED and not s.startswith(RUNNING)}


def sync(api_client, si, owner: Any, image: str, logger, wait: float = WAIT_SECONDS) -> Profiling:
    """Profiles that exist; create the Jobs for tiers without one; collect finished Jobs into the ConfigMap.
    Never raises for API trouble (the planner falls back to estimates)."""
    import kopf
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core, batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    ns = si.namespace
    out = Profiling(profiles=read_profiles(core, ns, si))
    now = dt.datetime.now(dt.UTC)
    for index, tier in enumerate(si.tier_names):
        if tier in out.profiles:
            out.state[tier] = PROFILED
            continue
        name = job_name(si.name, tier)
        try:
            try:
                job = batch.read_namespaced_job(name, ns)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                obj: Any = render_job(si, index, image)  # the typed API takes the plain dict as it is
                kopf.adopt(obj, owner=owner)
                try:
                    batch.create_namespaced_job(ns, obj)
                    out.notes.append(f"created Job {name}")
                except ApiException as exc:
                    if exc.status != 409:  # 409: a reconcile running beside this one has just created it
                        raise
                out.state[tier] = f"{RUNNING} (Job {name})"
                continue
            if running(job, now, wait):
                out.state[tier] = f"{RUNNING} (Job {name})"
                continue
            if not (job.status and job.status.succeeded):
                out.state[tier] = (
                    f"Job {name} failed: FLOPs estimates; delete the Job to profile again"
                    if failed(job)
                    else f"Job {name} still running after {wait:g} s: FLOPs estimates until it ends"
                )
                continue
            pods = core.list_namespaced_pod(ns, label_selector=f"job-name={name}").items
            doc = None
            for pod in pods:
                pod_name = pod.metadata.name if pod.metadata else None
                if not pod_name:
                    continue
                try:
                    doc = parse_log(
                        core.read_namespaced_pod_log(pod_name, ns, container="profile"), si.model_source, tier
                    )
                except ApiException:
                    doc = None
                if doc:
                    break
            if doc is None:
                out.state[tier] = f"Job {name} succeeded but printed no profile: FLOPs estimates"
                continue
            cm: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": configmap_name(si.name),
                    "namespace": ns,
                    "labels": {**common_labels(si.name), LABEL_ROLE: "profiles"},
                },
                "data": {f"{tier}.json": json.dumps(doc)},
            }
            kopf.adopt(cm, owner=owner)
            core.patch_namespaced_config_map(
                cm["metadata"]["name"],
                ns,
                cm,
                field_manager=f"{MANAGER}-{tier}",
                force=True,
                _content_type="application/apply-patch+yaml",
            )
            out.profiles[tier] = doc
            out.state[tier] = PROFILED
            out.notes.append(f"stored the {tier} profile from Job {name}")
        except ApiException as exc:
            logger.warning("profiling Job %s: %s %s", name, exc.status, exc.reason)
            out.state[tier] = f"Job {name}: API error {exc.status} {exc.reason}: FLOPs estimates"
    return out
