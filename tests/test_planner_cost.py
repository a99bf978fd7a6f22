"""The served-stage cost model: stage = call cost + Σ blocks on every used tier; hop = latency + bytes/bandwidth +
messages × per-message cost. Checked against the formula written out by hand, and the JSON round trip."""

from __future__ import annotations

import pytest

from splitdnn.planner import Problem, ProblemError, evaluate_plan, plan

DOC = {
    "tiers": ["device", "edge", "cloud"],
    "input_bytes": 1000,
    "call_seconds": {"device": 0.004, "edge": 0.002, "cloud": 0.001},
    "blocks": [
        {"name": "a", "out_bytes": 5000, "time": {"device": 0.010, "edge": 0.005, "cloud": 0.001}},
        {"name": "b", "out_bytes": 2500, "time": {"device": 0.020, "edge": 0.010, "cloud": 0.002}},
        {"name": "c", "out_bytes": 100, "time": {"device": 0.030, "edge": 0.015, "cloud": 0.003}},
    ],
    "links": [
        {
            "from": "device",
            "to": "edge",
            "latency": 0.005,
            "bandwidth": 1e6,
            "message_seconds": 0.0005,
            "max_message_bytes": 2000,
        },
        {"from": "edge", "to": "cloud", "latency": 0.050, "bandwidth": 1e7, "message_seconds": 0.001},
        {"from": "device", "to": "cloud", "latency": 0.060, "bandwidth": 1e7},
    ],
}


def test_stage_and_link_times_follow_the_formula():
    p = Problem.from_json(DOC)
    got = evaluate_plan(p, [1, 2, 3])
    stages = {"device": 0.004 + 0.010, "edge": 0.002 + 0.010, "cloud": 0.001 + 0.003}
    assert got.compute == pytest.approx(stages)
    hop1 = 5000 / 1e6 + 3 * 0.0005  # 5000 bytes in chunks of <= 2000: 3 messages
    hop2 = 2500 / 1e7 + 1 * 0.001
    assert got.bottleneck == pytest.approx(max(*stages.values(), hop1, hop2))
    assert got.latency == pytest.approx(sum(stages.values()) + 0.005 + hop1 + 0.050 + hop2)


def test_an_unused_tier_pays_no_call_cost_and_the_call_cost_moves_the_optimum():
    p = Problem.from_json(DOC)
    only_cloud = evaluate_plan(p, [0, 0, 3])
    assert only_cloud.compute == pytest.approx({"device": 0.0, "edge": 0.0, "cloud": 0.001 + 0.006})
    # a large edge call cost makes the planner skip the edge
    heavy = dict(DOC, call_seconds={"edge": 1.0})
    best = plan(Problem.from_json(heavy), objective="latency")[0]
    assert best.assignment["edge"] is None


def test_a_chunked_output_costs_its_sender_per_extra_message():
    # send_seconds: the device's 5000-byte output goes in 3 chunks of <= 2000 (its link's max): 2 extra messages
    p = Problem.from_json(dict(DOC, send_seconds={"device": 0.003, "edge": 0.5}))
    got = evaluate_plan(p, [1, 2, 3])
    # the edge's 2500 bytes go in one message (its link has no chunking): no send cost; the cloud sends nothing on
    stages = {"device": 0.004 + 0.010 + 2 * 0.003, "edge": 0.002 + 0.010, "cloud": 0.001 + 0.003}
    assert got.compute == pytest.approx(stages)
    # ending the device's slice after b (2500 bytes: 2 chunks) costs one extra message
    assert evaluate_plan(p, [2, 2, 3]).compute["device"] == pytest.approx(0.004 + 0.030 + 0.003)
    # the planner prices it: with a large send cost the device stops where its output fits one message
    heavy = Problem.from_json(dict(DOC, send_seconds={"device": 1.0}))
    for objective in ("latency", "throughput"):
        best = plan(heavy, objective=objective)[0]
        assert best.assignment["device"] in (None, ("a", "c")), best.assignment


def test_json_round_trip_keeps_the_new_terms():
    doc = dict(DOC, send_seconds={"device": 0.003})
    doc["links"] = [dict(DOC["links"][0], hop_seconds=0.002), *DOC["links"][1:]]
    p = Problem.from_json(doc)
    again = Problem.from_json(p.to_json())
    assert again.call_seconds == p.call_seconds and again.send_seconds == {"device": 0.003}
    assert again.links == p.links and again.links[("device", "edge")].hop_seconds == 0.002


def test_bad_call_seconds_name_the_field():
    with pytest.raises(ProblemError, match="call_seconds: unknown tier"):
        Problem.from_json(dict(DOC, call_seconds={"fog": 0.1}))
    with pytest.raises(ProblemError, match="call_seconds"):
        Problem.from_json(dict(DOC, call_seconds={"edge": -1}))
    with pytest.raises(ProblemError, match="send_seconds: unknown tier"):
        Problem.from_json(dict(DOC, send_seconds={"fog": 0.1}))
