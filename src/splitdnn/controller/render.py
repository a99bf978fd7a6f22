"""Pure rendering: a SplitInference (defaults applied) + its plan → the Kubernetes objects of each tier.

No I/O and no Kubernetes client here, so every rule of the pod contract is unit-tested:

- per tier i (spec order; slice i = the i-th slice): Deployment and Service `<si>-<tier>`, and one ConfigMap
  `<si>-plan` with the plan JSON;
- per tier after the first, a Service `<si>-<tier>-<split id>` that selects only the pods of one split (the
  split id hashes model, input shape and split points): a tier calls its next tier through it, so a frame never
  meets a tier of another split while the Deployments roll one by one after a re-split (see `split_id`);
- readiness = the agent's gRPC health status (SERVING while the chain behind it works), so a rollout keeps a
  tier's old pod until the new chain behind the new pod works; on SIGTERM an agent drains (keeps serving until
  idle) before it exits;
- init container `slicer`: `splitdnn slice MODEL --at L1,L2 --out /models` into the `models` emptyDir;
- init container `netem`: `splitdnn netem apply --dev eth0 ... --report /run/splitdnn/netem.json`, the only
  container with an added capability (NET_ADMIN);
- container `agent`: non-root, read-only root filesystem, probes, the tier's resources;
- a cooperative tier (`devices` > 1, `planner.coop` not off): its agent is the group's coordinator, and a
  StatefulSet `<si>-<tier>-devices` of `devices` pods (`splitdnn coop-device`, no slice of their own) behind a
  headless Service of that name, one pod per node (required pod anti-affinity on the tier's nodes); coordinator
  and devices share the key of the Secret `<si>-coop` (the operator creates it once, see `coop_key_secret`).

Owner references are not set here: the operator adopts the objects (kopf.adopt) just before applying them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from splitdnn import __version__
from splitdnn.agent.command import LINK_KEYS, agent_argv
from splitdnn.coop_run import COOP_PORT, KEY_ENV
from splitdnn.spec import Netem, SplitInference
from splitdnn.storage import KSERVE_ANNOTATIONS, SECRET_KEYS
from splitdnn.units import parse_duration

GRPC_PORT = 8500
REST_PORT = 8501  # TF Serving's REST API
METRICS_PORT = 9100
MODELS_DIR = "/models"
RUN_DIR = "/run/splitdnn"
NETEM_REPORT = f"{RUN_DIR}/netem.json"
PLAN_DIR = "/etc/splitdnn"
AGENT_UID = 10001
REPLICAS = 1  # one agent per tier
MANAGER = "splitdnn-operator"
LABEL_SI = "splitdnn.io/splitinference"
LABEL_TIER = "splitdnn.io/tier"
LABEL_SPLIT = "splitdnn.io/split"
LABEL_COOP_GROUP = "splitdnn.io/coop-group"  # a cooperative tier's device pods (not its agent: no LABEL_TIER)
COOP_KEY = "key"  # the data key of the Secret <si>-coop
SLICER = "fetch-slice"  # the init container that fetches the tier's slice from the artifact store (no TensorFlow)
SLICER_REPORT = "/dev/termination-log"  # its `--report`: the pod's status carries it to the operator
BUILDER = "build"  # the model Job's container (`splitdnn artifacts build`: TensorFlow, once per model and split)
LABEL_COMPONENT = "app.kubernetes.io/component"
MODEL_JOB_COMPONENT = "model-job"
FETCH_WAIT_SECONDS = 900  # a tier pod waits this long for the model Job still slicing its split
DRAIN_TIMEOUT_SECONDS = 90  # an old pod keeps serving its previous tier this long at most (see render_deployment)
ANNOTATION_PLAN_HASH = "splitdnn.io/plan-hash"


def agent_image(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("SPLITDNN_AGENT_IMAGE") or f"splitdnn/agent:{__version__}"


def artifacts_url(env: Mapping[str, str] | None = None) -> str:
    """The artifact store's URL (SPLITDNN_ARTIFACTS_URL; the chart sets its own Service)."""
    env = os.environ if env is None else env
    return (env.get("SPLITDNN_ARTIFACTS_URL") or "http://splitdnn-artifacts:8080").rstrip("/")


def model_job_node_selector(env: Mapping[str, str] | None = None) -> dict:
    """Where model Jobs run (SPLITDNN_MODEL_JOB_NODE_SELECTOR, JSON; the chart's `modelJob.nodeSelector`): a node
    with the memory and CPU for TensorFlow, not a Raspberry Pi of the device tier."""
    env = os.environ if env is None else env
    raw = (env.get("SPLITDNN_MODEL_JOB_NODE_SELECTOR") or "").strip()
    return dict(json.loads(raw)) if raw else {}


def max_model_bytes(env: Mapping[str, str] | None = None) -> str | None:
    """The chart's `agent.maxModelBytes` (SPLITDNN_MAX_MODEL_BYTES, e.g. 2Gi): the slicer's --max-model-bytes for a
    storageUri model; None = the slicer's default (1Gi). A value the slicer would refuse fails here, at start-up."""
    from splitdnn.storage import parse_bytes

    env = os.environ if env is None else env
    raw = (env.get("SPLITDNN_MAX_MODEL_BYTES") or "").strip()
    if not raw:
        return None
    try:
        parse_bytes(raw)
    except ValueError as exc:
        raise ValueError(f"SPLITDNN_MAX_MODEL_BYTES: {exc}") from None
    return raw


def object_name(si_name: str, tier: str) -> str:
    return f"{si_name}-{tier}"


def split_service_name(si_name: str, tier: str, split: str) -> str:
    """The Service of one tier's pods of one split (`split_id`): what the previous tier of that split calls."""
    return f"{si_name}-{tier}-{split}"


def split_id(si: SplitInference, split_points: list[str]) -> str:
    """Which slices the pods run: pods of one split id compose, pods of two do not. Changing anything else (links,
    workload, resources) rolls the pods within the same split, and old and new pods can then serve each other."""
    identity = {
        "model": si.model_source,
        "inputShape": si.input_shape,
        "splitPoints": list(split_points),
        "tiers": len(si.tiers),
    }
    if si.typed.model.sha256:  # a new pin is new content (only when set: existing split ids stay as they were)
        identity["sha256"] = si.typed.model.sha256.lower()
    return stable_hash(identity)[:8]


def plan_configmap_name(si_name: str) -> str:
    return f"{si_name}-plan"


def selector_labels(si_name: str, tier: str) -> dict:
    return {LABEL_SI: si_name, LABEL_TIER: tier}


def common_labels(si_name: str, tier: str | None = None) -> dict:
    labels = {
        "app.kubernetes.io/name": "splitdnn-agent",
        "app.kubernetes.io/instance": si_name,
        "app.kubernetes.io/managed-by": MANAGER,
        "app.kubernetes.io/part-of": "splitdnn",
        LABEL_SI: si_name,
    }
    if tier is not None:
        labels["app.kubernetes.io/component"] = tier
        labels[LABEL_TIER] = tier
    return labels


def stable_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def model_scope(si: SplitInference) -> str | None:
    """Whose model the spec names, where its URI alone does not say: a `pvc://` claim is its namespace's (two
    namespaces' `pvc://models/m.keras` are two files), and a model read with a Secret's credentials is for those
    who hold that Secret (a wrong key must fail, not reuse a graph another Secret fetched). Content stays shared:
    slices are keyed by the file's digest."""
    m = si.typed.model
    if (m.storage_uri or "").startswith("pvc://"):
        return f"{si.namespace}/pvc"
    if m.secret_name:
        return f"{si.namespace}/secret/{m.secret_name}"
    return None


def model_key(si: SplitInference) -> str:
    """The artifact store's key of the model the spec names (`splitdnn.artifacts.model_key`)."""
    from splitdnn.artifacts import model_key as key

    return key(si.model_source, si.input_shape, si.typed.model.sha256, model_scope(si))


def build_command(
    si: SplitInference, split_points: list[str] | None, store: str, max_model_bytes: str | None = None
) -> list[str]:
    """The model Job's `splitdnn artifacts build`: the graph, and with `split_points` that split's slices."""
    cmd = ["splitdnn", "artifacts", "build", si.model_source, "--store", store, "--report", SLICER_REPORT]
    if split_points is not None:
        cmd += ["--at", ",".join(split_points)]
    if max_model_bytes and si.typed.model.storage_uri:
        cmd += ["--max-model-bytes", max_model_bytes]
    if si.input_shape:
        cmd += ["--input-shape", ",".join(str(d) for d in si.input_shape)]
    if si.typed.model.sha256:
        cmd += ["--sha256", si.typed.model.sha256]
    if scope := model_scope(si):
        cmd += ["--scope", scope]
    if si.typed.cooperative:  # a cooperative tier's workers load its slice as .keras
        cmd += ["--keras"]
    return cmd


def fetch_command(si: SplitInference, plan: dict, index: int, store: str) -> list[str]:
    """A tier pod's init container: its own slice from the artifact store, digest checked, no TensorFlow."""
    cmd = ["splitdnn", "artifacts", "fetch", "--store", store, "--model-key", plan["modelKey"]]
    cmd += ["--at", ",".join(plan["splitPoints"]), "--slice", str(index), "--out", MODELS_DIR]
    cmd += ["--wait", str(FETCH_WAIT_SECONDS), "--report", SLICER_REPORT]
    return cmd + (["--keras"] if si.typed.cooperative else [])


def model_job_name(key: str, split_points: list[str] | None, keras: bool) -> str:
    """One Job per model and split, whichever SplitInference asks (a second one finds it, or its artifacts)."""
    return f"splitdnn-model-{stable_hash([key, split_points, keras])[:12]}"


def render_model_job(
    si: SplitInference,
    split_points: list[str] | None,
    image: str,
    store: str,
    max_model_bytes: str | None = None,
    node_selector: dict | None = None,
) -> dict:
    """The model Job: fetch the model, store its file, digest and graph, slice `split_points` (None: the graph
    only, for the planner), each only if the store lacks it. No retries (a bad URL fails the same way twice):
    the operator reads the failure and starts a new Job after a pause (`model_job.RETRY_SECONDS`)."""
    key = model_key(si)
    env = [{"name": "HOME", "value": "/tmp"}, {"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"}]
    source_env, source_mounts, source_volumes = model_source_wiring(si)
    # (not the SplitInference's label: one Job serves every SplitInference of the model, and its pods are no tier's)
    labels = {
        "app.kubernetes.io/name": "splitdnn-model-job",
        "app.kubernetes.io/managed-by": MANAGER,
        "app.kubernetes.io/part-of": "splitdnn",
        LABEL_COMPONENT: MODEL_JOB_COMPONENT,
        "splitdnn.io/model-key": key,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": model_job_name(key, split_points, si.typed.cooperative),
            "namespace": si.namespace,
            "labels": labels,
        },
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 3600,
            "activeDeadlineSeconds": 3600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": dict(node_selector or {}),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {"fsGroup": AGENT_UID, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": BUILDER,
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": build_command(si, split_points, store, max_model_bytes),
                            # killed before it wrote its report (OOM): the log's tail is the message
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "env": env + source_env,
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *source_mounts],
                            "securityContext": _restricted(),
                            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}, *source_volumes],
                },
            },
        },
    }


PVC_ROOT = "/pvc"  # a pvc:// model's claim is mounted at PVC_ROOT/CLAIM in the slicer init container
# what an s3:// fetch reads from the environment (splitdnn.storage): the credentials, and KServe's S3 settings,
# taken from the Secret `model.secretName` names (as data keys: the operator never reads a Secret itself)
S3_REQUIRED_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_KEYS = (
    *(k for k in SECRET_KEYS if k not in S3_REQUIRED_KEYS),
    *KSERVE_ANNOTATIONS.values(),
    "AWS_ENDPOINT_URL",
)


def model_source_wiring(si: SplitInference) -> tuple[list[dict], list[dict], list[dict]]:
    """(env, volumeMounts, volumes) the slicer init container needs to fetch the model: an s3:// storageUri's
    credentials from `model.secretName` (secretKeyRef: the Secret must be in the SplitInference's namespace), a
    pvc:// storageUri's claim mounted read-only (SPLITDNN_PVC_ROOT says where)."""
    from splitdnn.storage import StorageError, parse

    model = si.typed.model
    if not model.storage_uri:
        return [], [], []
    try:
        loc = parse(model.storage_uri)
    except StorageError:  # the slicer names it; the spec checks already refuse what they can
        return [], [], []
    if loc.scheme == "s3" and model.secret_name:
        ref = model.secret_name
        env = [{"name": k, "valueFrom": {"secretKeyRef": {"name": ref, "key": k}}} for k in S3_REQUIRED_KEYS]
        env += [
            {"name": k, "valueFrom": {"secretKeyRef": {"name": ref, "key": k, "optional": True}}}
            for k in S3_OPTIONAL_KEYS
        ]
        return env, [], []
    if loc.scheme == "pvc":
        claim = loc.authority
        volume = {"name": "model-claim", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        mount = {"name": "model-claim", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True}
        return [{"name": "SPLITDNN_PVC_ROOT", "value": PVC_ROOT}], [mount], [volume]
    return [], [], []


def _netem(tier: dict) -> Netem:
    return Netem.from_dict(tier.get("netem") or {})


def netem_command(tier: dict) -> list[str]:
    """The init container's `splitdnn netem apply`: tc on the pod's eth0, with a report of what it applied."""
    netem = _netem(tier)
    cmd = ["splitdnn", "netem", "apply", "--dev", "eth0"]
    for key in (*LINK_KEYS, "limit"):
        if getattr(netem, key) is not None:
            cmd += [f"--{key}", str(getattr(netem, key))]
    return cmd + ["--report", NETEM_REPORT]


def agent_command(si: SplitInference, index: int, split: str) -> list[str]:
    """The agent container's command: `agent_argv` (the one `splitdnn run` uses too) with the pod's paths and
    ports, the next tier through its split's Service, and draining for rollouts."""
    spec = si.typed
    tiers = spec.tiers
    next_addr = None
    if index + 1 < len(tiers):
        next_addr = f"{split_service_name(si.name, tiers[index + 1].name, split)}:{GRPC_PORT}"
    return agent_argv(
        program=["splitdnn"],
        slices=MODELS_DIR,
        slice_name=f"slice{index}",
        port=GRPC_PORT,
        metrics_port=METRICS_PORT,
        rest_port=REST_PORT,
        tier=tiers[index].name,
        si=si.name,
        next_addr=next_addr,
        tier_spec=tiers[index],
        workload=spec.workload,
        source=index == 0,
        netem_report=NETEM_REPORT,  # the agent emulates in-process only what tc could not apply
        drain=(drain_quiet_seconds(si), DRAIN_TIMEOUT_SECONDS),
        coop=spec.planner.coop,
        extra=["--coop-devices", ",".join(coop_device_addresses(si, index))] if cooperative(si, index) else (),
    )


def cooperative(si: SplitInference, index: int) -> bool:
    """Tier `index` is computed by a group of device pods."""
    return si.typed.tiers[index].devices > 1 and si.typed.planner.coop != "off"


def coop_group_name(si_name: str, tier: str) -> str:
    """The StatefulSet and the headless Service of a cooperative tier's devices."""
    return f"{si_name}-{tier}-devices"


def coop_secret_name(si_name: str) -> str:
    return f"{si_name}-coop"


def coop_device_addresses(si: SplitInference, index: int) -> list[str]:
    """The device pods' stable names (StatefulSet pod DNS through the headless Service), in device order."""
    tier = si.typed.tiers[index]
    group = coop_group_name(si.name, tier.name)
    return [f"{group}-{d}.{group}:{COOP_PORT}" for d in range(tier.devices)]


def coop_key_env(si_name: str) -> dict:
    return {"name": KEY_ENV, "valueFrom": {"secretKeyRef": {"name": coop_secret_name(si_name), "key": COOP_KEY}}}


def coop_key_secret(si: SplitInference) -> dict | None:
    """The Secret holding a cooperative SplitInference's group key, without its data: the operator creates it
    once with a random key (never applied again, so the key stays what the running pods hold); None when no tier
    is cooperative."""
    if not any(cooperative(si, i) for i in range(len(si.tiers))):
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": coop_secret_name(si.name), "namespace": si.namespace, "labels": common_labels(si.name)},
        "type": "Opaque",
    }


def coop_group_labels(si_name: str, tier: str) -> dict:
    return {LABEL_SI: si_name, LABEL_COOP_GROUP: tier}


def render_coop_service(si: SplitInference, index: int) -> dict:
    """The headless Service giving each device pod its stable name; names resolve before the pods are Ready
    (the coordinator waits for them itself)."""
    tname = si.tiers[index]["name"]
    name = coop_group_name(si.name, tname)
    labels = {**common_labels(si.name), LABEL_COMPONENT: name, LABEL_COOP_GROUP: tname}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": si.namespace, "labels": labels},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": coop_group_labels(si.name, tname),
            "ports": [{"name": "coop", "port": COOP_PORT, "targetPort": "coop", "protocol": "TCP"}],
        },
    }


def render_coop_statefulset(si: SplitInference, index: int, image: str) -> dict:
    """A cooperative tier's `devices` device pods, one per node of the tier (required anti-affinity: the plan
    counts them as separate devices, so two on one node would be a wrong plan; with fewer nodes than devices the
    rest stay Pending and the tier never becomes Ready, which its status shows)."""
    tier = si.tiers[index]
    typed = si.typed.tiers[index]
    name = coop_group_name(si.name, typed.name)
    group = coop_group_labels(si.name, typed.name)
    labels = {**common_labels(si.name), LABEL_COMPONENT: name, LABEL_COOP_GROUP: typed.name}
    command = ["splitdnn", "coop-device", "--listen", f"0.0.0.0:{COOP_PORT}", "--threads", str(typed.threads or 1)]
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": si.namespace, "labels": labels},
        "spec": {
            "replicas": typed.devices,
            "serviceName": name,
            "podManagementPolicy": "Parallel",  # devices are peers: start them together
            "selector": {"matchLabels": group},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": dict(tier.get("nodeSelector") or {}),
                    "affinity": {
                        "podAntiAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": [
                                {"labelSelector": {"matchLabels": group}, "topologyKey": "kubernetes.io/hostname"}
                            ]
                        }
                    },
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "terminationGracePeriodSeconds": 10,
                    "containers": [
                        {
                            "name": "device",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": command,
                            "env": [
                                {"name": "HOME", "value": "/tmp"},
                                {"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"},
                                coop_key_env(si.name),
                            ],
                            "ports": [{"name": "coop", "containerPort": COOP_PORT, "protocol": "TCP"}],
                            "readinessProbe": {"tcpSocket": {"port": COOP_PORT}, "periodSeconds": 2},
                            "resources": copy.deepcopy(tier.get("resources") or {}),
                            "securityContext": _restricted(),
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def drain_quiet_seconds(si: SplitInference) -> float:
    """How long a stopping tier must see no request before it exits: a few frame periods (a gap between two
    frames is not the end of the previous tier's stream), at least 2 s."""
    return round(max(2.0, 3.0 / float(si.typed.workload.fps)), 3)


def probe_timeout_seconds(tier: dict) -> int:
    """The kubelet's probes cross the pod's egress qdisc too: with tc netem a probe's answer waits the tier's delay
    (+ jitter), and the default 1-s timeout would make a 1-s link (Cho 2021 Type 3) never Ready."""
    netem = _netem(tier)
    delay = parse_duration(netem.delay) if netem.delay else 0.0
    jitter = parse_duration(netem.jitter) if netem.jitter else 0.0
    return max(2, math.ceil(2 * (delay + jitter)) + 1)


def _restricted(uid: int | None = AGENT_UID) -> dict:
    sc = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if uid is not None:
        sc.update({"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid})
    return sc


def render_deployment(si: SplitInference, plan: dict, index: int, image: str, store: str) -> dict:
    tier = si.tiers[index]
    tname = tier["name"]
    name = object_name(si.name, tname)
    split = plan["splitId"]
    env = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"},
        {"name": "SPLITDNN_PLAN", "value": f"{PLAN_DIR}/plan.json"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    models_mount = {"name": "models", "mountPath": MODELS_DIR}
    run_mount = {"name": "run", "mountPath": RUN_DIR}
    tmp_mount = {"name": "tmp", "mountPath": "/tmp"}
    plan_mount = {"name": "plan", "mountPath": PLAN_DIR, "readOnly": True}
    netem_sc = {
        # tc needs CAP_NET_ADMIN in the pod's network namespace; an added capability only takes effect for uid 0.
        "runAsUser": 0,
        "runAsNonRoot": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    resources = copy.deepcopy(tier.get("resources") or {})
    pod_labels = {**common_labels(si.name, tname), LABEL_SPLIT: split}
    pod_annotations = {
        # a new plan (split points, links, workload) rolls the pods even when the command line is unchanged
        ANNOTATION_PLAN_HASH: plan_hash(plan),
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }
    if cooperative(si, index):
        env.append(coop_key_env(si.name))
    container_defaults = {"image": image, "imagePullPolicy": "IfNotPresent", "env": env}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": si.namespace,
            "labels": common_labels(si.name, tname),
            "annotations": {ANNOTATION_PLAN_HASH: plan_hash(plan)},
        },
        "spec": {
            "replicas": REPLICAS,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(si.name, tname)},
            # Changing split points rolls every tier without downtime: a new pod must be Ready before the old goes.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": {
                    "nodeSelector": dict(tier.get("nodeSelector") or {}),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {"fsGroup": AGENT_UID, "seccompProfile": {"type": "RuntimeDefault"}},
                    # the agent drains before it exits (at most DRAIN_TIMEOUT_SECONDS, plus the source's frames)
                    "terminationGracePeriodSeconds": DRAIN_TIMEOUT_SECONDS + 30,
                    "initContainers": [
                        {
                            **container_defaults,
                            "name": SLICER,
                            "command": fetch_command(si, plan, index, store),
                            # killed before it wrote its report: the log's tail is the message
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [models_mount, tmp_mount],
                            "securityContext": _restricted(),
                            "resources": copy.deepcopy(resources),
                        },
                        {
                            **container_defaults,
                            "name": "netem",
                            "command": netem_command(tier),
                            "volumeMounts": [run_mount],
                            "securityContext": netem_sc,
                            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                        },
                    ],
                    "containers": [
                        {
                            **container_defaults,
                            "name": "agent",
                            "command": agent_command(si, index, split),
                            "ports": [
                                {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                                {"name": "http", "containerPort": REST_PORT, "protocol": "TCP"},
                                {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                            ],
                            # Ready = this tier serves and the chain behind it is ready (gRPC health checking:
                            # SERVING then; the metrics port's /ready says the same)
                            "readinessProbe": {
                                "grpc": {"port": GRPC_PORT},
                                "initialDelaySeconds": 2,
                                "periodSeconds": 2,
                                "failureThreshold": 3,
                                "timeoutSeconds": probe_timeout_seconds(tier),
                            },
                            "livenessProbe": {
                                "httpGet": {"path": "/metrics", "port": METRICS_PORT},
                                "initialDelaySeconds": 15,
                                "periodSeconds": 10,
                                "failureThreshold": 6,
                                "timeoutSeconds": probe_timeout_seconds(tier),
                            },
                            "resources": resources,
                            "securityContext": _restricted(),
                            "volumeMounts": [
                                {**models_mount, "readOnly": True},
                                {**run_mount, "readOnly": True},
                                tmp_mount,
                                plan_mount,
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "models", "emptyDir": {}},
                        {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "plan", "configMap": {"name": plan_configmap_name(si.name)}},
                    ],
                },
            },
        },
    }


def render_service(si: SplitInference, index: int) -> dict:
    tname = si.tiers[index]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": object_name(si.name, tname),
            "namespace": si.namespace,
            "labels": common_labels(si.name, tname),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(si.name, tname),
            "ports": [
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "http", "port": REST_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def render_split_service(si: SplitInference, index: int, split: str) -> dict:
    """Tier `index`'s pods of one split, for the previous tier of that split to call (gRPC only)."""
    tname = si.tiers[index]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": split_service_name(si.name, tname, split),
            "namespace": si.namespace,
            "labels": {**common_labels(si.name, tname), LABEL_SPLIT: split},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {**selector_labels(si.name, tname), LABEL_SPLIT: split},
            "ports": [{"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"}],
        },
    }


def plan_hash(plan: dict) -> str:
    return stable_hash(plan)


def render_configmap(si: SplitInference, plan: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": plan_configmap_name(si.name),
            "namespace": si.namespace,
            "labels": common_labels(si.name),
            "annotations": {ANNOTATION_PLAN_HASH: plan_hash(plan)},
        },
        "data": {"plan.json": json.dumps(plan, indent=2, sort_keys=True)},
    }


def render_all(si: SplitInference, plan: dict, image: str | None = None) -> list[dict]:
    """Every child object, in apply order: the plan first (pods mount it), then per tier its Services, a
    cooperative tier's devices and its Deployment."""
    image = image or agent_image()
    store = artifacts_url()
    split = plan["splitId"]
    objs = [render_configmap(si, plan)]
    for i in range(len(si.tiers)):
        objs.append(render_service(si, i))
        if i > 0:
            objs.append(render_split_service(si, i, split))
        if cooperative(si, i):
            objs += [render_coop_service(si, i), render_coop_statefulset(si, i, image)]
        objs.append(render_deployment(si, plan, i, image, store))
    return objs
