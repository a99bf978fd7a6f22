"""One pass of the operator's feedback loop (splitdnn.controller.feedback_pass) without Kopf or a cluster: the real
CNN14 model and planner, the real Prometheus HTTP client (splitdnn.prom) against a small HTTP server that answers
`/api/v1/query` as a Prometheus scraping a throttled device → edge link would (half the frames lost, 100 kB/s on
that link). tests/controlplane/test_operator_feedback.py runs the operator's timer against a real Prometheus."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from splitdnn.controller import feedback_pass
from splitdnn.controller import reconcile as core
from splitdnn.controller.status import Condition, EventReason, stamp
from splitdnn.prom import Prometheus

ROOT = Path(__file__).resolve().parents[2]
START = ["conv2d_1", "flatten"]
NOW = 1_000_000.0
READY_SINCE = stamp(NOW - 3600)  # the tiers have been ready for an hour


def answer(query: str) -> dict:
    """What Prometheus returns for the loop's queries (adapt.promql)."""

    def vector(by_tier: dict) -> dict:
        return {
            "resultType": "vector",
            "result": [{"metric": {"tier": t}, "value": [NOW, str(v)]} for t, v in by_tier.items()],
        }

    if "outcome" in query:  # the drop rate
        return {"resultType": "vector", "result": [{"metric": {}, "value": [NOW, "0.5"]}]}
    if "stage_compute" in query:
        return vector({"device": 0.02, "edge": 0.02, "cloud": 0.005})
    if "rtt" in query:
        return vector({"device": 0.02, "edge": 0.002})
    if "bandwidth" in query:
        return vector({"device": 100000.0})
    return {"resultType": "vector", "result": [{"metric": {}, "value": [NOW, "4"]}]}  # offered frames/s


@pytest.fixture(scope="module")
def prometheus():
    queries = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)["query"][0]
            queries.append(q)
            data = json.dumps({"status": "success", "data": answer(q)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield url, queries
    server.shutdown()


def dead_url() -> str:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def body(url: str, status: dict | None = None, **adaptation) -> dict:
    r = yaml.safe_load((ROOT / "examples" / "cnn14.yaml").read_text())
    r["metadata"].update(name="loop", namespace="ns", generation=1)
    r["spec"]["splitPoints"] = START
    r["spec"]["workload"]["fps"] = 4
    r["spec"]["adaptation"] = {
        "enabled": True,
        "prometheusUrl": url,
        "interval": "2s",
        "maxFrameDropRate": 0.1,
        "cooldown": "30s",
        "margin": 0.2,
        **adaptation,
    }
    r["status"] = {
        "phase": "Running",
        "observedGeneration": 1,
        "splitPoints": START,
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": READY_SINCE}],
        **(status or {}),
    }
    return r


def condition(conditions, ctype):
    return next(c for c in conditions if c["type"] == ctype)


def test_not_before_the_resource_is_deployed_nor_before_the_interval():
    b = body("http://x")
    b["status"]["phase"] = "Deploying"
    assert feedback_pass.run(b, NOW, None).result == "not deployed yet"
    b = body("http://x", status={"observedGeneration": 0})
    assert feedback_pass.due(b, NOW) == "not deployed yet"
    b = body("http://x", status={"measured": {"time": stamp(NOW - 1)}})  # measured 1 s ago; the interval is 2 s
    assert feedback_pass.run(b, NOW, None).result == "not due"
    assert feedback_pass.due(body("http://x"), NOW) is None


def test_prometheus_down_is_a_condition_and_one_event_per_outage():
    url = dead_url()
    p = feedback_pass.run(body(url), NOW, Prometheus(url, timeout=2))
    assert p.result == "prometheus unavailable" and not p.resplit
    metrics = condition(p.status["conditions"], Condition.METRICS_AVAILABLE)
    assert metrics["status"] == "False" and metrics["reason"] == "PrometheusUnavailable"
    assert "unreachable" in metrics["message"]
    (event,) = p.events
    assert event.reason == EventReason.METRICS_UNAVAILABLE and event.warning
    assert event.message.endswith("; keeping split conv2d_1,flatten")
    assert p.status["measured"]["error"] == metrics["message"]
    # the next pass, still down: the condition stays, no second Event
    later = NOW + 10
    again = feedback_pass.run(body(url, status=p.status), later, Prometheus(url, timeout=2))
    assert again.result == "prometheus unavailable" and again.events == []
    # no URL at all: the same, saying so
    no_url = body("")
    del no_url["spec"]["adaptation"]["prometheusUrl"]
    unset = feedback_pass.run(no_url, NOW, None)
    assert unset.status["measured"]["error"] == "adaptation.prometheusUrl is not set"


def test_measured_over_the_slo_resplits_once_then_the_cooldown_holds(prometheus):
    url, queries = prometheus
    p = feedback_pass.run(body(url), NOW, Prometheus(url))
    assert p.result == "resplit" and p.resplit
    assert all('si="loop"' in q and "namespace" not in q for q in queries)
    st = p.status
    assert st["frameDropRate"] == 0.5 and st["measured"]["dropRate"] == 0.5
    assert set(st["measured"]["computeSeconds"]) == {"device", "edge", "cloud"}
    assert condition(st["conditions"], Condition.METRICS_AVAILABLE)["status"] == "True"
    (entry,) = st["resplits"]
    assert entry["from"] == START and entry["to"] != START and entry["to"] == st["adapted"]["splitPoints"]
    assert "> SLO 0.100" in entry["reason"]
    assert entry["figures"]["best"]["bottleneckSeconds"] < entry["figures"]["current"]["bottleneckSeconds"]
    assert st["adapted"]["specSplitPoints"] == START
    (event,) = p.events
    assert event.reason == EventReason.RESPLIT and event.message.startswith("conv2d_1,flatten → ")
    # the shell reconciles with the status the pass wrote: the tiers roll to the loop's split
    rolled = core.prepare(core.desired(core.with_status(body(url), {**body(url)["status"], **st})), "resplit", {})
    assert rolled.plan["splitPoints"] == entry["to"]
    # the next pass (the tiers now on the new split): still over the SLO, but within the cooldown
    after = body(url, status={**st, "splitPoints": entry["to"]})
    kept = feedback_pass.run(after, NOW + 5, Prometheus(url))
    assert not kept.resplit and kept.result.startswith("kept: ") and "cooldown" in kept.status["measured"]["decision"]
    assert "resplits" not in kept.status and kept.events == []


def test_metrics_back_after_an_outage_is_one_event(prometheus):
    url, _ = prometheus
    down = {"measured": {"time": stamp(NOW - 60), "error": "Prometheus at x is unreachable"}}
    p = feedback_pass.run(body(url, status=down, maxFrameDropRate=0.9), NOW, Prometheus(url))
    assert reasons(p.events) == ["MetricsAvailable"] and not p.resplit
    assert p.status["measured"]["error"] is None


def test_the_namespace_label_when_asked(prometheus):
    url, queries = prometheus
    queries.clear()
    feedback_pass.run(body(url, maxFrameDropRate=0.9), NOW, Prometheus(url), promql_namespace=True)
    assert queries and all('si="loop",namespace="ns"' in q for q in queries)


def test_a_model_it_cannot_plan_is_reported_not_raised():
    b = body("http://x")
    b["spec"]["model"] = {"kerasApplication": "NoSuchNet"}
    p = feedback_pass.run(b, NOW, None)
    assert p.result == "cannot plan" and p.status["measured"]["error"].startswith("cannot plan: ")


def reasons(events):
    return [str(e.reason) for e in events]
