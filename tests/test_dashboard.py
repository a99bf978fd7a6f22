"""The chart's Grafana dashboard and PodMonitor: `helm template` renders them when their values are on and omits
them when off; and every panel's query returns data from a real Prometheus (Debian's `prometheus` binary)
scraping real agents (a loopback chain of `splitdnn agent` processes with frames flowing) and the operator's
metrics, served in-process by prometheus-client after one re-split driven through the operator's pure functions
(feedback_pass.run decides, reconcile.refresh sees the new split serving) and recorded by its shell
(controller/metrics.py)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from agent_harness import slices_dir, start_chain, start_prometheus  # noqa: F401

from harness import controlplane as cp

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "splitdnn"
DASHBOARD = CHART / "files" / "dashboard.json"
HELM = cp.BIN / "helm"
PODMONITOR_API = "monitoring.coreos.com/v1/PodMonitor"
TITLES = {
    "Frame drop rate",
    "Frames by outcome",
    "Stage time per tier",
    "Link RTT",
    "Link bandwidth",
    "Current split",
    "Re-splits",
    "Switch-over time",
    "Decision latency",
}


def render(*sets: str, api_versions: tuple[str, ...] = ()) -> list[dict]:
    if not os.access(HELM, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"{HELM} missing: run scripts/build-k8s.sh")
        pytest.skip(f"{HELM} missing: run scripts/build-k8s.sh")
    args = [str(HELM), "template", "splitdnn", str(CHART), "-n", "splitdnn-system"]
    for s in sets:
        args += ["--set", s]
    for a in api_versions:
        args += ["--api-versions", a]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def kinds(docs: list[dict]) -> list[tuple[str, str]]:
    return [(d["kind"], d["metadata"]["name"]) for d in docs]


def queries() -> dict[str, list[str]]:
    """panel title → its PromQL expressions."""
    dash = json.loads(DASHBOARD.read_text())
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in dash["panels"]}


# --- the chart ---------------------------------------------------------------------------------------------------


def test_the_dashboard_configmap_only_when_enabled():
    assert ("ConfigMap", "splitdnn-dashboard") not in kinds(render())
    docs = render("grafanaDashboard.enabled=true")
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "splitdnn-dashboard"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "splitdnn-system"
    assert json.loads(cm["data"]["splitdnn.json"]) == json.loads(DASHBOARD.read_text())
    assert set(queries()) == TITLES
    other = render("grafanaDashboard.enabled=true", "grafanaDashboard.namespace=monitoring")
    assert [d["metadata"]["namespace"] for d in other if d["metadata"]["name"] == "splitdnn-dashboard"] == [
        "monitoring"
    ]


def test_the_podmonitors_only_when_enabled_and_served():
    on = "metrics.podMonitor.enabled=true"
    assert not [k for k in kinds(render(api_versions=(PODMONITOR_API,))) if k[0] == "PodMonitor"]
    assert not [k for k in kinds(render(on)) if k[0] == "PodMonitor"]  # the cluster has no PodMonitor CRD
    docs = render(on, api_versions=(PODMONITOR_API,))
    monitors = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PodMonitor"}
    assert set(monitors) == {"splitdnn", "splitdnn-agents"}
    operator = monitors["splitdnn"]["spec"]
    # the operator's Deployment (the chart also runs the artifact store)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "splitdnn"]
    assert operator["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert operator["podMetricsEndpoints"][0]["port"] == "metrics"
    ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert "metrics" in [p["name"] for p in ports]
    agents = monitors["splitdnn-agents"]["spec"]
    assert agents["namespaceSelector"] == {"any": True}
    assert agents["selector"]["matchLabels"]["app.kubernetes.io/managed-by"] == "splitdnn-operator"
    only_operator = render(on, "metrics.podMonitor.agents=false", api_versions=(PODMONITOR_API,))
    assert [k for k in kinds(only_operator) if k[0] == "PodMonitor"] == [("PodMonitor", "splitdnn")]


def test_the_agents_podmonitor_selects_what_the_operator_renders():
    from splitdnn.controller.reconcile import offline
    from splitdnn.spec import load_file

    docs = render("metrics.podMonitor.enabled=true", api_versions=(PODMONITOR_API,))
    (agents,) = [d for d in docs if d["metadata"]["name"] == "splitdnn-agents"]
    selector = agents["spec"]["selector"]["matchLabels"]
    for dep in (o for o in offline(load_file(ROOT / "examples" / "cnn14.yaml")[0]) if o["kind"] == "Deployment"):
        pod = dep["spec"]["template"]
        assert selector.items() <= pod["metadata"]["labels"].items()
        assert "metrics" in [p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])]


# --- every panel has data in a real Prometheus ---------------------------------------------------------------------


class Measured:
    """What a Prometheus scraping a throttled device → edge link answers to the feedback loop's queries (half the
    frames lost, 100 kB/s): the input that makes feedback_pass.run re-split (as in tests/controller)."""

    def scalar(self, expr: str) -> float | None:
        return 0.5 if "outcome" in expr else 4.0

    def by_label(self, expr: str, label: str) -> dict[str, float]:
        if "stage_compute" in expr:
            return {"device": 0.02, "edge": 0.02, "cloud": 0.005}
        if "rtt" in expr:
            return {"device": 0.02, "edge": 0.002}
        if "bandwidth" in expr:
            return {"device": 100000.0}
        return {}


def one_resplit() -> float:
    """A re-split decided by feedback_pass.run and seen serving by reconcile.refresh, recorded by the operator's
    shell functions in prometheus-client's default registry. Returns the switch-over seconds."""
    from splitdnn.controller import feedback_pass
    from splitdnn.controller import metrics as metrics_mod
    from splitdnn.controller import reconcile as core
    from splitdnn.controller.status import stamp

    now = time.time()
    r = yaml.safe_load((ROOT / "examples" / "cnn14.yaml").read_text())
    r["metadata"].update(name="dash", namespace="ns", generation=1)
    r["spec"]["splitPoints"] = ["conv2d_1", "flatten"]
    r["spec"]["workload"]["fps"] = 4
    r["spec"]["adaptation"] = {
        "enabled": True,
        "prometheusUrl": "http://prometheus:9090",
        "interval": "2s",
        "maxFrameDropRate": 0.1,
        "cooldown": "30s",
        "margin": 0.2,
    }
    d0 = core.desired(r)
    first = core.prepare(d0, "create", {})
    running = core.settle(d0, first, ready(first.apply)).status
    assert running is not None and running["phase"] == "Running"
    running["conditions"] = [{**c, "lastTransitionTime": stamp(now - 600)} for c in running["conditions"]]
    r["status"] = running
    started = time.monotonic()
    p = feedback_pass.run(r, now - 10, Measured())
    metrics_mod.decided(r["metadata"], time.monotonic() - started, p.resplit_reason)
    assert p.resplit, p.result
    body = core.with_status(r, {**running, **p.status})
    d = core.desired(body)
    rolled = core.prepare(d, "resplit", {})
    settled = core.settle(d, rolled, {})  # applied; no pod of the new split ready yet
    metrics_mod.reconciled(r["metadata"], "resplit", settled.result, settled.phase)
    obj = {**core.with_status(body, {**body["status"], **(settled.status or {})}), "apiVersion": r["apiVersion"]}
    out = core.refresh(obj, ready(rolled.apply), now=now)
    assert out is not None and out.switchover_seconds is not None
    metrics_mod.switched_over(r["metadata"], out.switchover_seconds)
    metrics_mod.reconciled(r["metadata"], "child", "ok", out.phase)
    return out.switchover_seconds


def ready(objs: list[dict]) -> dict:
    out = {}
    for o in objs:
        if o["kind"] == "Deployment":
            status = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1}
            out[o["metadata"]["name"]] = {
                **o,
                "metadata": {**o["metadata"], "generation": 1},
                "status": {**status, "readyReplicas": 1, "availableReplicas": 1},
            }
    return out


def instant(expr: str) -> str:
    """A panel's query as Grafana sends it with every SplitInference selected."""
    return expr.replace("$si", ".+").replace("$__rate_interval", "20s").replace("$__range", "10m")


@pytest.mark.slow
def test_every_panel_query_returns_data_from_a_real_prometheus(slices_dir, tmp_path):  # noqa: F811
    from prometheus_client import start_http_server

    from splitdnn.agent.local import free_port, stop_all

    if shutil.which("prometheus") is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus missing (Debian package `prometheus`)")
        pytest.skip("no prometheus binary (Debian package `prometheus`) on this machine")
    switchover = one_resplit()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")  # the operator's metrics, as --metrics-port serves
    # frames flow through three real agents for the whole test (8 fps: far below the chain's capacity)
    source = ["--source", "synthetic", "--fps", "8", "--frames", "100000", "--deadline", "2s", "--max-inflight", "4"]
    specs = [{"name": "device"}, {"name": "edge"}, {"name": "cloud"}]
    agents = start_chain(slices_dir, tmp_path, specs, extra={0: source}, si="dash")
    prometheus = None
    try:
        prometheus = start_prometheus(tmp_path, [a.metrics_url for a in agents] + [f"http://127.0.0.1:{port}"])
        assert prometheus is not None
        panels = queries()
        missing: dict[str, dict] = {}
        deadline = time.monotonic() + 90
        while True:
            missing = {}
            for title, exprs in panels.items():
                for expr in exprs:
                    result = prometheus.query(instant(expr))
                    if not result or not all(math.isfinite(v) for v in result.values()):
                        missing[f"{title}: {expr}"] = result
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert not missing, json.dumps(missing, indent=1, default=str)
        # the figures are the ones the pure functions produced, not just any series
        # (labels sorted by name: cut, model, si, slice, tier; Prometheus drops the last slice's empty cut)
        split = prometheus.query(instant(panels["Current split"][0]))
        assert set(split) == {
            ("conv2d", "cnn14", "dash", "slice0", "device"),
            ("flatten", "cnn14", "dash", "slice1", "edge"),
            ("cnn14", "dash", "slice2", "cloud"),
        }, split
        mean = prometheus.query(instant(panels["Switch-over time"][0]))
        assert mean == {("dash", "ns"): pytest.approx(switchover)}
        resplits = prometheus.query("splitdnn_operator_resplits_total")
        assert resplits == {("dash", "ns", "DropRateOverSLO"): 1.0}
    finally:
        if prometheus:
            prometheus.stop()
        stop_all(agents)
        server.shutdown()
        thread.join(5)
