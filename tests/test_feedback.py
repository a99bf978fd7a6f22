"""The loop step (`splitdnn.feedback`) on a small model summary with a stand-in Prometheus client; the real
Prometheus and agents are in tests/test_closed_loop.py, the operator's timer in tests/controlplane/."""

import pytest

from splitdnn import feedback
from splitdnn.adapt import Policy
from splitdnn.controller.reconcile import effective_spec
from splitdnn.controller.status import running_status, set_condition
from splitdnn.graph import GraphSummary
from splitdnn.planner import deploy
from splitdnn.prom import PrometheusError
from splitdnn.spec import from_resource

# conv (big output) → conv (bigger) → pool (small) → dense (tiny)
SUMMARY = GraphSummary(
    model="toy",
    layers=("c1", "c2", "pool", "d1", "d2"),
    params=(1, 1, 0, 1, 1),
    flops=(1_000_000, 20_000_000, 10_000, 100_000, 1_000),
    boundary_bytes={"c1": 80_000, "c2": 150_000, "pool": 8_000, "d1": 500},
    boundary_tensors={"c1": ["c1"], "c2": ["c2"], "pool": ["pool"], "d1": ["d1"]},
    input_bytes=3_000,
    classes=("Conv2D", "Conv2D", "MaxPooling2D", "Dense", "Dense"),
    output_bytes=40,
)
POLICY = Policy(max_drop_rate=0.1, margin=0.2, cooldown_seconds=60, interval_seconds=4)


def si(points=("c2", "d1"), **adaptation):
    return from_resource(
        {
            "apiVersion": "splitdnn.io/v1alpha1",
            "kind": "SplitInference",
            "metadata": {"name": "toy"},
            "spec": {
                "model": {"builtin": "cnn14"},
                "splitPoints": list(points),
                "tiers": [{"name": "device", "overheadRatio": 1}, {"name": "edge"}, {"name": "cloud"}],
                "workload": {"fps": 4},
                "planner": {"objective": "throughput"},
                "adaptation": {"enabled": True, "prometheusUrl": "http://x", **adaptation},
            },
        }
    )


class FakeProm:
    def __init__(self, drop=0.5, bandwidth=100_000.0, fail=None):
        self.drop, self.bandwidth, self.fail, self.queries = drop, bandwidth, fail, []

    def scalar(self, q):
        self.queries.append(q)
        if self.fail:
            raise PrometheusError(self.fail)
        return self.drop if "outcome" in q else 4.0

    def by_label(self, q, label):
        self.queries.append(q)
        if "stage_compute" in q:
            return {"device": 0.04, "edge": 0.01, "cloud": 0.001}
        if "rtt" in q:
            return {"device": 0.02}
        if "bandwidth" in q:
            return {"device": self.bandwidth} if self.bandwidth else {}
        return {}  # no transfers, no slice info


def test_blocks_and_base_problem_from_the_summary():
    s = si()
    p = deploy.problem_for(s, SUMMARY)
    assert [b.name for b in p.blocks] == ["c1", "c2", "pool", "d1", "d2"]
    assert p.blocks[1].out_bytes == 150_000 and p.blocks[-1].out_bytes == 40
    # FLOPs / speed × (1 + overheadRatio)
    assert p.blocks[1].time["device"] == pytest.approx(2 * 20e6 / deploy.DEFAULT_TIER_FLOPS)
    assert p.blocks[1].time["edge"] == pytest.approx(20e6 / deploy.DEFAULT_TIER_FLOPS)
    assert p.links[("device", "edge")].bandwidth == deploy.DEFAULT_LINK_BANDWIDTH
    assert set(p.constraints.use) == {"device", "edge", "cloud"}
    assert deploy.split_of(p, ["c2", "d1"]) == (2, 4, 5)
    with pytest.raises(ValueError, match="not a block boundary"):
        deploy.split_of(p, ["nope", "d1"])


def test_a_slow_measured_link_moves_the_cut_to_a_small_tensor():
    s = si()
    p = deploy.problem_for(s, SUMMARY)
    prom = FakeProm(drop=0.5, bandwidth=100_000.0)
    st = feedback.step(s, ["c2", "d1"], p, prom, now=1000, policy=POLICY)
    assert st.error is None and st.resplit, st.decision
    assert st.best_points[0] == "pool"  # 8 kB instead of 150 kB on the slow link
    assert st.best_plan.bottleneck < st.current_plan.bottleneck * 0.8
    # the current split under the measured figures: 150 kB at 100 kB/s
    assert st.current_plan.bottleneck == pytest.approx(1.5, rel=0.01)
    assert all('si="toy"' in q for q in prom.queries)
    entry = feedback.resplit_entry(st, "throughput", "2026-01-01T00:00:00Z")
    assert entry["from"] == ["c2", "d1"] and entry["to"] == st.best_points and "> SLO" in entry["reason"]
    assert entry["figures"]["measured"]["dropRate"] == 0.5


def test_within_the_slo_or_in_cooldown_the_split_stays():
    s = si()
    p = deploy.problem_for(s, SUMMARY)
    assert not feedback.step(s, ["c2", "d1"], p, FakeProm(drop=0.05), now=1000, policy=POLICY).resplit
    st = feedback.step(s, ["c2", "d1"], p, FakeProm(drop=0.5), now=1000, last_change=980, policy=POLICY)
    assert not st.resplit and "cooldown" in st.decision.reason and st.new_points == ["c2", "d1"]


def test_prometheus_trouble_is_a_step_error_not_an_exception():
    s = si()
    p = deploy.problem_for(s, SUMMARY)
    st = feedback.step(
        s, ["c2", "d1"], p, FakeProm(fail="Prometheus at http://x is unreachable: refused"), now=1000, policy=POLICY
    )
    assert st.error and "unreachable" in st.error and not st.resplit and st.new_points == ["c2", "d1"]


def test_window_follows_the_interval():
    assert feedback.window_for(POLICY) == "8s"
    assert feedback.window_for(Policy(interval_seconds=0.5)) == "2s"


def test_effective_spec_uses_the_loops_split_until_the_user_changes_it():
    spec = si().spec
    status = {"adapted": {"splitPoints": ["pool", "d1"], "specSplitPoints": ["c2", "d1"]}}
    assert effective_spec(spec, status)["splitPoints"] == ["pool", "d1"]
    assert spec["splitPoints"] == ["c2", "d1"]  # not modified in place
    edited = dict(spec, splitPoints=["c1", "d1"])
    assert effective_spec(edited, status)["splitPoints"] == ["c1", "d1"]
    off = dict(spec, adaptation={"enabled": False})
    assert effective_spec(off, status)["splitPoints"] == ["c2", "d1"]


def test_reconcile_status_keeps_the_loops_condition():
    conditions, changed = set_condition([], "MetricsAvailable", "False", "PrometheusUnavailable", "down")
    assert changed
    conditions, changed = set_condition(conditions, "MetricsAvailable", "False", "PrometheusUnavailable", "down")
    assert not changed
    s = si()
    plan = {"splitPoints": ["c2", "d1"]}
    st = running_status(s, plan, {}, {"conditions": conditions}, 1)
    assert [c["type"] for c in st["conditions"]] == ["Valid", "Ready", "MetricsAvailable"]


def test_namespace_matcher_when_asked():
    s = si()
    p = deploy.problem_for(s, SUMMARY)
    prom = FakeProm(drop=0.0)
    feedback.step(s, ["c2", "d1"], p, prom, now=1000, policy=POLICY, namespace="prod")
    assert all('si="toy",namespace="prod"' in q for q in prom.queries)
