"""Online calibration (`splitdnn.planner.calibrate`): the fit recovers a known fixed cost and compute scale from
synthetic stage times, copes with one split and with noise, and the loop step carries it across re-splits."""

from __future__ import annotations

import random

import pytest

from splitdnn import feedback
from splitdnn.planner import Problem, evaluate_plan
from splitdnn.planner.calibrate import Calibration, fit_line

TIERS = ["device", "edge", "cloud"]
TIMES = [0.004, 0.010, 0.002, 0.006, 0.001]  # base (profiled) block times, the same on every tier here


def problem() -> Problem:
    return Problem.from_json(
        {
            "tiers": TIERS,
            "input_bytes": 1000,
            "blocks": [
                {"name": f"b{k}", "out_bytes": 1000 * (5 - k), "time": {t: x for t in TIERS}}
                for k, x in enumerate(TIMES)
            ],
            "links": [
                {"from": "device", "to": "edge", "latency": 0.001, "bandwidth": 1e6},
                {"from": "edge", "to": "cloud", "latency": 0.001, "bandwidth": 1e6},
            ],
        }
    )


# the "true" served stage: fixed call cost + scale × profiled compute
TRUE = {"device": (0.012, 2.5), "edge": (0.003, 1.2), "cloud": (0.0005, 0.8)}
SPLITS = [(1, 3, 5), (2, 4, 5), (1, 2, 5), (3, 4, 5)]


def served(split, noise: float = 0.0, rng: random.Random | None = None) -> dict[str, float]:
    out, prev = {}, 0
    for t, end in zip(TIERS, split):
        c, s = TRUE[t]
        y = c + s * sum(TIMES[prev:end])
        out[t] = y * (1 + (rng.uniform(-noise, noise) if rng else 0.0))
        prev = end
    return out


def test_line_fit_recovers_intercept_and_slope():
    f = fit_line([(x, 0.01 + 3 * x) for x in (0.001, 0.004, 0.01)], prior_slope=1.0)
    assert (f.intercept, f.slope, f.points, f.method) == (pytest.approx(0.01), pytest.approx(3.0), 3, "least squares")
    one = fit_line([(0.004, 0.02)], prior_slope=1.0)  # one split: compute kept, the rest is the fixed cost
    assert (one.intercept, one.slope, one.method) == (pytest.approx(0.016), 1.0, "intercept only")
    below = fit_line([(0.004, 0.002)], prior_slope=1.0)  # measured below the profile: scale down, no fixed cost
    assert (below.intercept, below.slope, below.method) == (0.0, pytest.approx(0.5), "slope only")
    # a link whose bandwidth gauge is live keeps the gauge's slope when the window's mean transfer lags behind it
    gauge = fit_line([(100_000.0, 0.5)], prior_slope=1 / 77_000, trust_prior=True)
    assert (gauge.intercept, gauge.slope, gauge.method) == (0.0, 1 / 77_000, "intercept only")
    assert fit_line([(0.001, 0.0), (0.01, 0.05)], 1.0).intercept == 0.0  # never a negative fixed cost
    assert fit_line([], 1.0).method == "none"


def test_known_fixed_cost_and_scale_are_recovered_over_several_splits():
    p, cal = problem(), Calibration()
    for k, split in enumerate(SPLITS):
        cal.observe(p, split, served(split), now=float(k))
    fit = cal.fit(p)["tiers"]
    for t, (c, s) in TRUE.items():
        assert fit[t].intercept == pytest.approx(c, abs=1e-9) and fit[t].slope == pytest.approx(s), t
    # the calibrated problem predicts a split never observed, exactly
    unseen = (2, 3, 5)
    got = evaluate_plan(cal.apply(p, unseen), unseen)
    assert got.compute == pytest.approx(served(unseen))


def test_a_chunked_output_is_fitted_apart_from_the_compute():
    # the device sends in chunks of <= 3000 bytes: ending after b0 (5000 bytes) or b1 (4000) takes 2 messages, after
    # b2 or b3 one; each extra message costs its stage SEND more (the stream runs beside the next frame's compute)
    p = problem()
    p.links[("device", "edge")].max_message_bytes = 3000
    send = 0.007

    def measured(split):
        out = served(split)
        out["device"] += send if split[0] <= 2 else 0.0
        return out

    cal = Calibration()
    device_splits = [(1, 3, 5), (2, 4, 5), (3, 4, 5), (4, 5, 5)]
    for k, split in enumerate(device_splits):
        cal.observe(p, split, measured(split), now=float(k))
    fit = cal.fit(p)
    assert fit["tiers"]["device"].slope == pytest.approx(2.5) and fit["tiers"]["device"].intercept == pytest.approx(
        0.012
    )
    assert fit["send"]["device"] == pytest.approx(send)
    assert cal.to_status(p)["tiers"]["device"]["sendSeconds"] == pytest.approx(send)
    for split in device_splits:
        assert evaluate_plan(cal.apply(p, split), split).compute["device"] == pytest.approx(measured(split)["device"])
    # without the chunking known, one line cannot explain it: the smallest slices measure slower than larger ones
    plain, base = Calibration(), problem()
    for k, split in enumerate(device_splits):
        plain.observe(base, split, measured(split), now=float(k))
    errors = [
        abs(evaluate_plan(plain.apply(base, s), s).compute["device"] / measured(s)["device"] - 1) for s in device_splits
    ]
    assert max(errors) > 0.05, errors  # 6.5 % off where the fit with the send term is exact


def test_points_falling_with_the_compute_keep_the_profiled_slope():
    # noise larger than the slices' differences: a least-squares slope < 0 would price every slice the same
    f = fit_line([(0.004, 0.020), (0.008, 0.016)], prior_slope=1.0)
    assert (f.slope, f.method, f.points) == (1.0, "intercept only", 2)
    assert f.intercept == pytest.approx(0.018 - 0.006)


def test_one_split_keeps_the_profiled_compute_and_fits_the_fixed_cost():
    p, cal = problem(), Calibration()
    split = SPLITS[0]
    cal.observe(p, split, served(split), now=0.0)
    fit = cal.fit(p)["tiers"]
    assert fit["device"].method == "intercept only" and fit["device"].slope == 1.0
    assert fit["device"].intercept == pytest.approx(served(split)["device"] - TIMES[0])
    assert evaluate_plan(cal.apply(p, split), split).compute == pytest.approx(served(split))  # exact where observed
    assert fit["cloud"].method == "slope only"  # 0.8 × compute + 0.5 ms is below the profile: scaled down


def test_noisy_measurements_give_a_close_fit_and_repeats_average():
    p, cal, rng = problem(), Calibration(), random.Random(7)
    for k in range(40):  # every split measured 10 times with ±5 % noise
        split = SPLITS[k % len(SPLITS)]
        cal.observe(p, split, served(split, 0.05, rng), now=float(k))
    assert len([s for s in cal.stages if s.tier == "device"]) == 3  # one point per distinct device slice
    fit = cal.fit(p)["tiers"]
    assert fit["device"].slope == pytest.approx(2.5, rel=0.15)
    assert fit["device"].intercept == pytest.approx(0.012, rel=0.25)
    for split in SPLITS:
        pred = evaluate_plan(cal.apply(p, split), split).compute
        assert pred == pytest.approx(served(split), rel=0.05)


def test_link_fit_and_status_round_trip():
    p, cal = problem(), Calibration()
    rtt = 0.004
    for k, nbytes in enumerate((2000.0, 20000.0)):  # transfer = RTT + 0.5 ms per message + bytes / 200 kB/s
        cal.observe(
            p, (1, 3, 5), {}, float(k), {"device": rtt}, {"device": 1e5},
            {"device": rtt + 0.0005 + nbytes / 2e5}, {"device": nbytes},
        )  # fmt: skip
    new = cal.apply(p, (1, 3, 5))
    link = new.links[("device", "edge")]
    assert link.latency == pytest.approx(rtt / 2)
    assert link.bandwidth == pytest.approx(2e5) and link.hop_seconds == pytest.approx(0.0005)
    assert link.message_seconds == 0.0  # the fit's fixed cost is per transfer, whatever its chunks
    # the network changes (a throttle): the newest window of a size replaces the older one at once
    cal.observe(p, (1, 3, 5), {}, 2.0, {"device": rtt}, {"device": 1e4}, {"device": rtt + 20000 / 1e4},
                {"device": 20000.0})  # fmt: skip
    assert [pt.seconds for pt in cal.links if pt.bytes == 20000.0] == [pytest.approx(2.0)]
    cal = Calibration.from_status(Calibration.to_status(cal, p))
    cal.links = [pt for pt in cal.links if pt.bytes != 20000.0]
    cal.observe(
        p, (1, 3, 5), {}, 3.0, {"device": rtt}, {"device": 1e5},
        {"device": rtt + 0.0005 + 20000 / 2e5}, {"device": 20000.0},
    )  # fmt: skip
    status = cal.to_status(p)
    assert status["links"]["device"]["bandwidthBytesPerSecond"] == pytest.approx(2e5)
    again = Calibration.from_status(status)
    assert again.to_status(p) == status
    assert Calibration.from_status({"observations": {"stages": [{"tier": "x"}]}}).stages == []  # malformed: dropped


class Prom:
    """Stand-in Prometheus answering with the served stage times of `split`."""

    def __init__(self, split, cuts):
        self.split, self.cuts = split, cuts

    def scalar(self, q):
        return 0.5 if "outcome" in q else 4.0

    def by_label(self, q, label):
        if "stage_compute" in q:
            return served(self.split)
        if "slice_info" in q:
            return {c: 1.0 for c in self.cuts}
        return {}


def test_the_loop_step_carries_the_calibration_across_splits():
    from tests.test_feedback import POLICY, si

    p = problem()
    s = si(points=("b0", "b2"))
    first = feedback.step(s, ["b0", "b2"], p, Prom((1, 3, 5), ["b0", "b2", ""]), now=10, policy=POLICY)
    assert first.calibration["tiers"]["device"]["method"] == "intercept only"
    # a rollout in the window (two splits' slices serving): no stage observation is recorded
    mixed = feedback.step(s, ["b1", "b3"], p, Prom((2, 4, 5), ["b0", "b1", "b2", "b3", ""]), now=20,
                          policy=POLICY, calibration=first.calibration)  # fmt: skip
    assert len(mixed.calibration["observations"]["stages"]) == 3
    second = feedback.step(s, ["b1", "b3"], p, Prom((2, 4, 5), ["b1", "b3", ""]), now=30, policy=POLICY,
                           calibration=mixed.calibration)  # fmt: skip
    dev = second.calibration["tiers"]["device"]
    assert dev["method"] == "least squares" and dev["splits"] == 2
    assert dev["callSeconds"] == pytest.approx(0.012) and dev["computeScale"] == pytest.approx(2.5)
    assert second.current_plan.compute == pytest.approx(served((2, 4, 5)))
