"""The tier planner's vectorized top-N path (planner/fast_topn.py) and the heap DP it falls back to: both against
the brute force, and against each other on instances too large for the brute force."""

from __future__ import annotations

import random
from unittest import mock

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_planner_props import problems

import splitdnn.planner.fast_topn as fast_topn
from splitdnn.planner import Problem
from splitdnn.planner.brute import brute_force
from splitdnn.planner.dp import throughput, topn_dp

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
objectives = st.sampled_from(["latency", "throughput", "bytes"])


def heap_only():
    """topn_dp with its fast path switched off: the heap DP answers."""
    return mock.patch.object(fast_topn, "topn_threshold", lambda *args, **kwargs: None)


def solve(cp, objective, top):
    return throughput(cp, top) if objective == "throughput" else topn_dp(cp, objective, top)


@SETTINGS
@given(problems(with_shares=False), objectives, st.integers(1, 6))
def test_heap_fallback_equals_brute_force(problem, objective, top):
    cp = problem.compile()
    with heap_only():
        assert solve(cp, objective, top) == brute_force(cp, objective, top)


@SETTINGS
@given(problems(with_shares=False), st.sampled_from(["latency", "bytes"]), st.integers(1, 6), st.integers(0, 3))
def test_threshold_listing_gives_up_or_is_exact(problem, objective, top, limit):
    cp = problem.compile()
    assume(fast_topn.supports(cp))  # call and message costs go to the heap DP (test_heap_fallback_…)
    got = fast_topn.topn_threshold(cp, objective, top, limit=limit)
    assert got is None or got == brute_force(cp, objective, top)


def random_problem(n: int, T: int, seed: int) -> Problem:
    rng = random.Random(seed)
    tiers = [f"t{k}" for k in range(T)]
    blocks = [
        {
            "name": f"b{k}",
            "out_bytes": rng.randrange(100, 200_000),
            "time": {t: rng.uniform(0, 3e-3) / (1.5**i) for i, t in enumerate(tiers)},
        }
        for k in range(n)
    ]
    links = [
        {"from": tiers[a], "to": tiers[b], "latency": 0.002 * (b - a), "bandwidth": 1e6 * (a + 1)}
        for a in range(T)
        for b in range(a + 1, T)
        if rng.random() < 0.8 or b == a + 1
    ]
    cons = {"max_time": {tiers[0]: 0.05}, "max_upload_bytes": {tiers[0]: 150_000}} if seed % 2 else {}
    return Problem.from_json(
        {"tiers": tiers, "input_bytes": 150_000, "blocks": blocks, "links": links, "constraints": cons}
    )


def test_fast_equals_heap_on_large_instances():
    for seed, (n, T) in enumerate([(300, 3), (300, 4), (150, 5), (400, 2)]):
        cp = random_problem(n, T, seed).compile()
        for objective in ("latency", "bytes", "throughput"):
            fast = solve(cp, objective, 10)
            with heap_only():
                assert fast == solve(cp, objective, 10), (seed, objective)
            assert len(fast) == 10
