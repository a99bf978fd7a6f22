"""The feedback loop's decision rule, and its PromQL run against a real Prometheus server."""

import pytest

from splitdnn.adapt import Decision, Policy, decide, promql, read_measurements
from splitdnn.prom import Prometheus, PrometheusError

POLICY = Policy(max_drop_rate=0.05, margin=0.1, cooldown_seconds=60, interval_seconds=5)
A, B = ["conv2d", "flatten"], ["max_pooling2d", "max_pooling2d_2"]


def test_keeps_the_split_while_within_the_slo():
    d = decide(POLICY, 0.04, A, 1.0, B, 0.1)
    assert d == Decision(False, "drop rate 0.040 is within the SLO 0.050")


def test_no_data_no_decision():
    assert not decide(POLICY, None, A, 1.0, B, 0.1).resplit


def test_resplits_when_over_slo_and_better_by_the_margin():
    d = decide(POLICY, 0.4, A, 1.0, B, 0.5, now=1000, last_change=900)
    assert d.resplit and "0.400 > SLO 0.050" in d.reason and "max_pooling2d,max_pooling2d_2" in d.reason


def test_cooldown_blocks_flapping():
    d = decide(POLICY, 0.4, A, 1.0, B, 0.5, now=1000, last_change=970)
    assert not d.resplit and "cooldown for 30s more" in d.reason


def test_margin_blocks_marginal_gains():
    assert not decide(POLICY, 0.4, A, 1.0, B, 0.95).resplit
    assert decide(POLICY, 0.4, A, 1.0, B, 0.89).resplit


def test_same_plan_is_not_a_resplit():
    assert not decide(POLICY, 0.9, A, 1.0, A, 0.5).resplit


def test_policy_from_spec_units():
    p = Policy.from_spec({"maxFrameDropRate": 0.1, "cooldown": "90s", "interval": "500ms", "margin": 0.2})
    assert (p.max_drop_rate, p.cooldown_seconds, p.interval_seconds, p.margin) == (0.1, 90.0, 0.5, 0.2)


def test_unreachable_prometheus_is_a_clear_error():
    from harness.prometheus import free_port

    with pytest.raises(PrometheusError, match="unreachable"):
        Prometheus(f"http://127.0.0.1:{free_port()}", timeout=1).query("up")


@pytest.mark.slow
def test_queries_against_a_real_prometheus():
    """A real exporter (prometheus-client) scraped by a real Prometheus: the loop's PromQL reads what was counted."""
    from harness.prometheus import PrometheusServer, prometheus_binary, start_exporter

    if prometheus_binary() is None:
        pytest.skip("prometheus binary not installed (scripts/install.sh installs Debian's package)")
    exporter, target = start_exporter("""
        transfer.labels("demo", "cloud")  # a series with count 0, as a last tier's agent exports it
        rtt.labels("demo", "edge").set(0.5)
        bw.labels("demo", "edge").set(125000.0)
        for _ in range(600):
            for outcome, n in (("completed", 6), ("dropped", 3), ("late", 1)):
                frames.labels("demo", "device", outcome).inc(n)
            stage.labels("demo", "device").observe(0.2)
            stage.labels("demo", "cloud").observe(0.01)
            link_bytes.labels("demo", "edge").inc(1000)
            transfer.labels("demo", "edge").observe(0.002)
            # like a last tier's agent: bytes counted, no transfer timed (bytes per message = x/0 = +Inf)
            link_bytes.labels("demo", "cloud").inc(500)
            time.sleep(0.1)
    """)
    try:
        with PrometheusServer([target]) as server:
            q = promql("demo", window="10s")
            server.wait_for(q["drop_rate"], lambda v: True, timeout=40)
            m = read_measurements(Prometheus(server.url), "demo", window="10s")
            assert m.drop_rate == pytest.approx(0.4, abs=0.02)
            assert m.compute_seconds["device"] == pytest.approx(0.2, rel=0.01)
            assert m.compute_seconds["cloud"] == pytest.approx(0.01, rel=0.01)
            assert m.link_rtt_seconds == {"edge": 0.5}
            assert m.link_bandwidth_bytes_per_second == {"edge": 125000.0}
            assert m.offered_per_second > 0
            # +Inf (and NaN) never come out of the client: status is JSON, which has neither
            assert m.link_bytes_per_message == {"edge": pytest.approx(1000.0)}
            assert Prometheus(server.url).query("vector(1) / 0") == []
            with pytest.raises(PrometheusError, match="refused query"):
                Prometheus(server.url).query("sum(")
    finally:
        exporter.kill()
