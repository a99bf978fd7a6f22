"""The multi-exit model (splitdnn.multiexit): the generated image set, the exit rule, and a real (small) training
run whose exits' confidences mean something."""

from __future__ import annotations

import numpy as np
import pytest

from splitdnn import multiexit as mx


def test_shapes_are_deterministic_balanced_and_in_range():
    x, y = mx.shapes(60, seed=3)
    x2, y2 = mx.shapes(60, seed=3)
    assert x.shape == (60, mx.SIZE, mx.SIZE, 3) and x.dtype == np.float32
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert np.bincount(y).tolist() == [10] * len(mx.CLASSES)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert not np.array_equal(x, mx.shapes(60, seed=4)[0])


def test_exit_rule_and_expected_latency():
    # three frames, two classes; exit0 is sure of frame 0 (right), exit1 of frame 1 (wrong), nobody of frame 2
    probs = [
        np.array([[0.95, 0.05], [0.6, 0.4], [0.5, 0.5]]),
        np.array([[0.9, 0.1], [0.92, 0.08], [0.55, 0.45]]),
        np.array([[0.8, 0.2], [0.3, 0.7], [0.2, 0.8]]),
    ]
    labels = np.array([0, 1, 1])
    seconds = {"block0": 1.0, "head0": 0.1, "block1": 2.0, "head1": 0.1, "block2": 4.0}
    costs = mx.exit_costs(seconds)
    assert costs == pytest.approx([1.1, 3.2, 7.2])
    rows = {r["threshold"]: r for r in mx.exit_table(probs, labels, [0.0, 0.9, 1.01], seconds)}
    assert rows[0.0]["exit_share"] == [1.0, 0.0, 0.0] and rows[0.0]["accuracy"] == pytest.approx(1 / 3)
    assert rows[0.9]["exit_share"] == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert rows[0.9]["accuracy"] == pytest.approx(2 / 3)  # frame 1 answered wrongly at exit1
    assert rows[0.9]["p_block"] == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert rows[0.9]["latency_s"] == pytest.approx(sum(costs) / 3)
    assert rows[1.01]["exit_share"] == [0.0, 0.0, 1.0] and rows[1.01]["accuracy"] == 1.0
    assert rows[1.01]["latency_s"] == pytest.approx(costs[2])


@pytest.mark.slow
def test_trained_exits_are_confident_where_they_are_right():
    x, y = mx.shapes(3000, seed=11)
    xt, yt = mx.shapes(600, seed=12)
    model = mx.build(seed=11)
    assert model.model.output_names == list(mx.EXITS)
    mx.train(model, x, y, epochs=5)
    probs = mx.probabilities(model, xt)
    final_acc = float((probs[2].argmax(1) == yt).mean())
    best = max(float((p.argmax(1) == yt).mean()) for p in probs)
    assert final_acc > 0.45 and best > 0.6, (final_acc, best)  # six classes: chance is 0.17
    # the parts compose to the whole model
    f0 = model.parts["block0"](xt[:8])
    f1 = model.parts["block1"](f0)
    assert np.allclose(np.asarray(model.parts["block2"](f1)), probs[2][:8], atol=1e-5)
    assert np.allclose(np.asarray(model.parts["head0"](f0)), probs[0][:8], atol=1e-5)
    seconds = mx.time_parts(model, repeats=10)
    assert all(v > 0 for v in seconds.values())
    rows = mx.exit_table(probs, yt, [0.0, 0.5, 0.8, 0.95, 1.01], seconds)
    shares = [r["exit_share"][0] for r in rows]
    assert shares == sorted(shares, reverse=True) and shares[0] == 1.0 and shares[-1] == 0.0
    assert rows[-1]["accuracy"] == pytest.approx(final_acc)
    # exit0's confident answers are better than exit0's answers overall: its confidence carries information
    conf0 = probs[0].max(1) >= 0.8
    if conf0.sum() >= 20:
        assert (probs[0].argmax(1) == yt)[conf0].mean() > (probs[0].argmax(1) == yt).mean()
    assert rows[0]["latency_s"] < rows[-1]["latency_s"]
