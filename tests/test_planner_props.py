"""Property tests: the exact strategies agree with the brute-force oracle on random instances and constraints."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitdnn.planner import Infeasible, Problem, plan
from splitdnn.planner.brute import brute_force
from splitdnn.planner.dp import count_plans, label_search, share_search, throughput, topn_dp
from splitdnn.planner.problem import all_ends, evaluate, feasible, sort_key

TIER_NAMES = ["t0", "t1", "t2", "t3"]
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw, with_shares: bool = True, with_sends: bool = False):
    T = draw(st.integers(1, 4))
    n = draw(st.integers(1, 8))
    tiers = TIER_NAMES[:T]
    # small integer values make exact ties common, which exercises the tie-breaking rules
    blocks = []
    for k in range(n):
        blocks.append(
            {
                "name": f"b{k}",
                "out_bytes": draw(st.integers(0, 8)) * 1000,
                "time": {t: draw(st.integers(0, 6)) * 0.001 for t in tiers},
            }
        )
    links = []
    for a in range(T):
        for b in range(a + 1, T):
            if draw(st.booleans()) or b == a + 1 and draw(st.booleans()):
                links.append(
                    {
                        "from": tiers[a],
                        "to": tiers[b],
                        "latency": draw(st.integers(0, 3)) * 0.001,
                        "bandwidth": draw(st.sampled_from([1e5, 1e6, 2.5e5])),
                        # the served-stage cost model: a per-message cost, chunks of at most N bytes
                        "message_seconds": draw(st.sampled_from([0.0, 0.0, 0.001, 0.002])),
                        "max_message_bytes": draw(st.sampled_from([0, 0, 1000, 3000])),
                        "hop_seconds": draw(st.sampled_from([0.0, 0.0, 0.001])),
                    }
                )
    cons: dict = {}
    if draw(st.booleans()):
        names = [b["name"] for b in blocks]
        if draw(st.booleans()):
            cons["pin"] = {draw(st.sampled_from(names)): draw(st.sampled_from(tiers))}
        if draw(st.booleans()):
            cons["forbid"] = {
                draw(st.sampled_from(names)): draw(st.lists(st.sampled_from(tiers), max_size=2, unique=True))
            }
        if draw(st.booleans()):
            cons["use"] = draw(st.lists(st.sampled_from(tiers), max_size=2, unique=True))
        if draw(st.booleans()):
            cons["skip"] = draw(st.lists(st.sampled_from(tiers), max_size=1, unique=True))
        if draw(st.booleans()):
            cons["max_upload_bytes"] = {draw(st.sampled_from(tiers)): draw(st.integers(0, 8)) * 1000}
        if draw(st.booleans()):
            cons["max_time"] = {draw(st.sampled_from(tiers)): draw(st.integers(0, 12)) * 0.001}
        if with_shares and draw(st.booleans()):
            cons["max_time_share"] = {
                t: draw(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75]))
                for t in draw(st.lists(st.sampled_from(tiers), min_size=1, max_size=2, unique=True))
            }
            cons["max_time_share_of"] = draw(st.sampled_from(["latency", "compute"]))
    calls = {t: draw(st.integers(0, 3)) * 0.001 for t in tiers if draw(st.booleans())}
    # stage time per extra message of a tier's chunked output (only the dp entry point and the label search price
    # it; the DP's inner functions assume range costs from prefix sums)
    sends = {t: draw(st.integers(1, 3)) * 0.001 for t in tiers if draw(st.booleans())} if with_sends else {}
    return Problem.from_json(
        {
            "tiers": tiers,
            "call_seconds": calls,  # the fixed per-call cost of a used tier
            "send_seconds": sends,
            "input_bytes": draw(st.integers(0, 8)) * 1000,
            "blocks": blocks,
            "links": links,
            "constraints": cons,
        }
    )


objectives = st.sampled_from(["latency", "throughput", "bytes"])
tops = st.integers(1, 6)


@SETTINGS
@given(problems(with_sends=True), objectives, tops)
def test_dp_equals_brute_force(problem, objective, top):
    cp = problem.compile()
    expected = brute_force(cp, objective, top)
    got = plan_cuts(problem, objective, top, "dp")
    assert got == expected
    # and the reported objective values agree plan by plan
    for a, b in zip(got, expected):
        assert sort_key(objective, evaluate(cp, a), a) == sort_key(objective, evaluate(cp, b), b)


@SETTINGS
@given(problems(with_sends=True), objectives, tops)
def test_label_search_equals_brute_force(problem, objective, top):
    cp = problem.compile()
    assert label_search(cp, objective, top) == brute_force(cp, objective, top)


@SETTINGS
@given(problems(), objectives, tops)
def test_pruned_label_search_and_share_fallback_equal_brute_force(problem, objective, top):
    cp = problem.compile()
    expected = brute_force(cp, objective, top)
    # the K-best filter forced to give up at once, so the label search answers
    assert share_search(cp, objective, top, k0=1, kmax=1) == expected
    if len(expected) == top:  # with a bound that `top` feasible plans reach
        m = evaluate(cp, expected[-1])
        bound = {"latency": m.latency, "bytes": m.bytes, "throughput": m.bottleneck}[objective]
        assert label_search(cp, objective, top, bound) == expected


@SETTINGS
@given(problems(with_shares=False), objectives, tops)
def test_fast_paths_equal_brute_force(problem, objective, top):
    """Without share constraints the DP takes its polynomial paths (windowed top-N, thresholds)."""
    cp = problem.compile()
    fast = throughput(cp, top) if objective == "throughput" else topn_dp(cp, objective, top)
    assert fast == brute_force(cp, objective, top)


@SETTINGS
@given(problems(with_shares=False), st.integers(0, 14))
def test_counting_dp_counts_capped_plans(problem, cap_ms):
    cp = problem.compile()
    cap = cap_ms * 10**9  # ticks
    expected = 0
    for c in all_ends(cp.n, cp.T):
        m = evaluate(cp, c)
        if m is not None and feasible(cp, c, m) and m.bottleneck <= cap:
            expected += 1
    assert count_plans(cp, cap) == expected


@settings(max_examples=60, deadline=None)
@given(problems(), objectives)
def test_infeasible_is_an_error_not_an_empty_success(problem, objective):
    cp = problem.compile()
    if brute_force(cp, objective, 1):
        assert plan(problem, objective, 1)
    else:
        with pytest.raises(Infeasible, match="no plan"):
            plan(problem, objective, 1)


def plan_cuts(problem, objective, top, strategy):
    try:
        return [p.ends for p in plan(problem, objective, top, strategy=strategy)]
    except Infeasible:
        return []
