"""Helpers shared by the kind e2e tests and their fixtures (a plain module: tests/ is not a package)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMINGS: list[tuple[str, float]] = []


@contextmanager
def timed(what: str):
    t0 = time.monotonic()
    try:
        yield
    finally:
        TIMINGS.append((what, time.monotonic() - t0))


def sh(*cmd, timeout=600, check=True, capture=True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, timeout=timeout, text=True, capture_output=capture, **kw)
    if check and proc.returncode != 0:
        out = ((proc.stdout or "") + (proc.stderr or ""))[-4000:]
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{out}")
    return proc


def kubectl_json(cluster, *args) -> dict:
    return json.loads(cluster.kubectl(*args, "-o", "json"))


def load_image(cluster, image: str, nodes: list[str] | None = None):
    """`kind load docker-image`, optionally onto some nodes only (the big agent image goes to the workers)."""
    cmd = [cluster.kind_path, "load", "docker-image", "--name", cluster.name, image]
    if nodes:
        cmd += ["--nodes", ",".join(nodes)]
    sh(*cmd, timeout=1200)


def wait_for(what: str, fn, timeout: float, interval: float = 3.0):
    """Poll fn() until it returns a truthy value; fail with the last value/exception after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - report the last error on timeout
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


# --- splitdnn in the cluster: images, the chart, and reading its pods ---------------------------------------------

TIER_LABEL = "splitdnn.io/tier"
OPERATOR_NAMESPACE = "splitdnn-system"
_LOADED: set[tuple[str, str]] = set()  # (cluster, image) loaded in this session: `kind load` once


def node_tiers(cluster) -> dict[str, str]:
    nodes = kubectl_json(cluster, "get", "nodes")["items"]
    return {n["metadata"]["name"]: n["metadata"]["labels"].get(TIER_LABEL, "") for n in nodes}


def load_image_once(cluster, image: str, nodes: list[str] | None = None) -> None:
    if (cluster.name, image) not in _LOADED:
        with timed(f"kind load {image}"):
            load_image(cluster, image, nodes)
        _LOADED.add((cluster.name, image))


PROMETHEUS_SERVICE = "splitdnn-prometheus"  # the chart's prometheus.enabled (release `splitdnn`)


def install_splitdnn(cluster, prometheus: bool = False, link_probe: bool = False) -> None:
    """The project images (built once per session unless SPLITDNN_E2E_PREBUILT_IMAGES=1), loaded where they run,
    and `helm upgrade --install` of helm/splitdnn with the operator pinned to the cloud node; `prometheus`: with
    the chart's own Prometheus server (on the cloud node too), Ready before this returns; `link_probe`: with the
    node link probe DaemonSet on the tier nodes."""
    images = ["agent", "operator", "prometheus"]
    if os.environ.get("SPLITDNN_E2E_PREBUILT_IMAGES") != "1" and ("images", "built") not in _LOADED:
        with timed("images (scripts/build-images.sh)"):
            sh("bash", "scripts/build-images.sh", *images, timeout=3600)
        _LOADED.add(("images", "built"))
    tier_nodes = {t: n for n, t in node_tiers(cluster).items() if t}
    load_image_once(cluster, "splitdnn/agent:dev", list(tier_nodes.values()))
    # the operator (and Prometheus) run in the cloud tier (pinned below), so their images only go there
    load_image_once(cluster, "splitdnn/operator:dev", [tier_nodes["cloud"]])
    extra = []
    if prometheus:
        load_image_once(cluster, "splitdnn/prometheus:dev", [tier_nodes["cloud"]])
        extra = ["--set", "prometheus.enabled=true", "--set", "prometheus.image.tag=dev"]
    if link_probe:
        extra += ["--set", "linkProbe.enabled=true"]
    with timed("helm install splitdnn"):
        sh(
            cluster.tools.helm,
            "upgrade",
            "--install",
            "splitdnn",
            ROOT / "helm" / "splitdnn",
            f"--kubeconfig={cluster.kubeconfig_path}",
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "--set",
            "image.repository=splitdnn/operator",
            "--set",
            "image.tag=dev",
            "--set",
            "agent.image.repository=splitdnn/agent",
            "--set",
            "agent.image.tag=dev",
            "--set-string",
            r"nodeSelector.splitdnn\.io/tier=cloud",
            "--set-string",  # TensorFlow's model Jobs on the cloud node too (a real device tier is a Pi)
            r"modelJob.nodeSelector.splitdnn\.io/tier=cloud",
            *extra,
            "--wait",
            "--timeout",
            "10m",
            timeout=700,
        )


def prometheus_query(cluster, expr: str, at: float | None = None, since: float | None = None) -> list[dict]:
    """A query to the chart's Prometheus through the API server's service proxy (no port-forward): instant (at
    `at`, default now), or with `since` a range query from then to now in 5 s steps (what a dashboard shows)."""
    import urllib.parse

    if since is None:
        api, params = "query", {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
    else:
        api, params = "query_range", {"query": expr, "start": f"{since:.3f}", "end": f"{time.time():.3f}", "step": "5"}
    path = (
        f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/services/http:{PROMETHEUS_SERVICE}:http/proxy/api/v1/{api}?"
        + urllib.parse.urlencode(params)
    )
    body = json.loads(cluster.kubectl("get", "--raw", path))
    assert body.get("status") == "success", body
    return body["data"]["result"]


def prometheus_value(cluster, expr: str, at: float | None = None) -> float | None:
    """The single value of an instant query (None: no data)."""
    result = prometheus_query(cluster, expr, at)
    return float(result[0]["value"][1]) if result else None


def uninstall_splitdnn(cluster) -> None:
    sh(
        cluster.tools.helm,
        "uninstall",
        "splitdnn",
        f"--kubeconfig={cluster.kubeconfig_path}",
        "--namespace",
        OPERATOR_NAMESPACE,
        check=False,
        timeout=300,
    )


def serving_pods(cluster, si: str, tier: str, namespace: str = "default") -> list[dict]:
    """A SplitInference tier's pods that are Ready and not terminating."""
    items = kubectl_json(
        cluster, "get", "pods", "-n", namespace, "-l", f"splitdnn.io/splitinference={si},{TIER_LABEL}={tier}"
    )["items"]
    return [
        p
        for p in items
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    ]


def tiers_available(
    cluster, name: str, namespace: str = "default", tiers=("device", "edge", "cloud"), timeout: str = "900s"
) -> None:
    """Wait for a SplitInference's tier Deployments to exist (the operator creates them) and be Available."""
    for tier in tiers:
        wait_for(
            f"deployment {namespace}/{name}-{tier}",
            lambda tier=tier: cluster.kubectl("get", "deployment", f"{name}-{tier}", "-n", namespace, "-o", "name"),
            timeout=120,
        )
    cluster.kubectl(
        "wait", "-n", namespace, "--for=condition=Available", f"--timeout={timeout}", *[f"deployment/{name}-{t}" for t in tiers]
    )


def metrics_of(cluster, pod: str, port: int = 9100, namespace: str = "default") -> str:
    return cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/metrics")


def metric_sum(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:{{(.*)}})?\s+(\S+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def source_summary(log: str) -> dict | None:
    """The frame source's closing summary in a first tier's log (its `source done: {...}` line), if it has one."""
    done = [line for line in log.splitlines() if "source done:" in line]
    return json.loads(done[-1].split("source done:", 1)[1]) if done else None


def print_cluster_state(cluster, namespaces: tuple[str, ...] = ("default",)) -> None:
    """On a failure: what the SplitInferences, their children, the Events and the operator said (a timeout's
    message alone says nothing about why)."""

    def show(title, *args):
        try:
            out = cluster.kubectl(*args)
        except Exception as exc:  # noqa: BLE001 - a dump must not hide the failure it explains
            out = f"({exc})"
        print(f"--- {title}\n{out[-6000:]}")

    for ns in namespaces:
        show(
            f"SplitInference status ({ns})",
            "get",
            "si",
            "-n",
            ns,
            "-o",
            "custom-columns=NAME:.metadata.name,GEN:.metadata.generation,OBSERVED:.status.observedGeneration,"
            "PHASE:.status.phase,SPLIT:.status.split,SOURCE:.status.plan.predicted.source,MESSAGE:.status.message",
        )
        show(f"children ({ns})", "get", "deployments,replicasets,pods,jobs,services,configmaps", "-n", ns, "-o", "wide")
        show(f"Events ({ns})", "get", "events", "-n", ns, "--sort-by=.lastTimestamp")
    show("operator log", "logs", "-n", OPERATOR_NAMESPACE, "deployment/splitdnn", "--tail=150")
