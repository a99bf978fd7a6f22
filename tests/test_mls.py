"""MLS (issue #20, item 2): the DP equals a brute-force search over every block partition and mode on small random
models; SLS is the same cost on layer-by-layer blocks; k = 1 is the paper's single-device case; a hand-computed
instance checks the cost terms of eq. 3 and 5 (compute with prefetched halo rows, ti, τo, to)."""

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitdnn import coop
from splitdnn.mls import BITS_PER_VALUE, CostModel, Platform, mls, plan_seconds, single_device, sls, sls_units


@st.composite
def chains(draw, max_layers=7):
    """Small layer tables: convolutions (same/valid, strides), pooling, per-position layers, then maybe a
    Flatten and one to three dense layers with per-unit layers between them."""
    shape = (draw(st.integers(4, 14)), draw(st.integers(3, 5)), draw(st.integers(1, 3)))
    c = coop.Chain(shape)
    for _ in range(draw(st.integers(1, max_layers - 3))):
        h, w, _ = c.shape
        op = draw(st.sampled_from(["conv", "conv", "pool", "eltwise"]))
        if op == "conv":
            k, s = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 2]))
            padding = draw(st.sampled_from(["same", "valid"])) if k <= min(h, w) else "same"
            c.conv(draw(st.integers(1, 6)), k, s, padding)
        elif op == "pool" and min(h, w) >= 2:
            c.pool(2, 2)
        else:
            c.eltwise()
    if draw(st.booleans()):
        c.flatten()
        for i in range(draw(st.integers(1, 3))):
            if i and draw(st.booleans()):
                c.eltwise()
            c.dense(draw(st.integers(2, 12)))
        if draw(st.booleans()):
            c.dense(draw(st.integers(2, 6)), softmax=True)
    return c.layers


platforms = st.builds(Platform, st.floats(1e2, 1e5), st.floats(1e2, 1e6))


def brute_force(geoms, k, platform, allowed=lambda first, last: True):
    """Every partition into consecutive blocks × every mode of every block, each costed from scratch."""
    best = (math.inf, None)
    n = len(geoms)
    for cuts in itertools.product((False, True), repeat=n - 1):
        bounds = [0] + [i + 1 for i, cut in enumerate(cuts) if cut] + [n]
        spans = list(itertools.pairwise(bounds))
        if not all(allowed(a, b - 1) for a, b in spans):
            continue
        choices = [coop.block_modes(geoms, a, b - 1) for a, b in spans]
        for modes in itertools.product(*choices):
            blocks = [(a, b - 1, k, m) for (a, b), m in zip(spans, modes)]
            seconds = plan_seconds(geoms, blocks, platform)
            if seconds < best[0]:
                best = (seconds, blocks)
    return best


@settings(max_examples=60, deadline=None)
@given(geoms=chains(), k=st.integers(2, 4), platform=platforms)
def test_mls_dp_equals_brute_force(geoms, k, platform):
    plan = mls(geoms, k, platform)
    oracle, _ = brute_force(geoms, k, platform)
    assert plan.seconds == pytest.approx(oracle, rel=1e-9)
    assert plan_seconds(geoms, plan.blocks, platform) == pytest.approx(plan.seconds, rel=1e-9)
    assert [b[0] for b in plan.blocks] == [0] + [b[1] + 1 for b in plan.blocks[:-1]]
    assert plan.blocks[-1][1] == len(geoms) - 1 and {b[2] for b in plan.blocks} == {k}


@settings(max_examples=40, deadline=None)
@given(geoms=chains(), k=st.integers(2, 4), platform=platforms)
def test_sls_is_the_best_layer_by_layer_plan_and_never_beats_mls(geoms, k, platform):
    units = set(sls_units(geoms))
    plan = sls(geoms, k, platform)
    oracle, _ = brute_force(geoms, k, platform, allowed=lambda a, b: (a, b) in units)
    assert plan.seconds == pytest.approx(oracle, rel=1e-9)
    assert {(b[0], b[1]) for b in plan.blocks} == units
    assert mls(geoms, k, platform).seconds <= plan.seconds * (1 + 1e-12)


@settings(max_examples=40, deadline=None)
@given(geoms=chains(), platform=platforms, data=st.data())
def test_one_device_moves_only_the_input_and_the_output(geoms, platform, data):
    one = mls(geoms, 1, platform)
    flops = sum(g.flops for g in geoms)
    values = math.prod(geoms[0].in_shape) + math.prod(geoms[-1].out_shape)
    assert one.seconds == pytest.approx(flops / platform.flops + values * BITS_PER_VALUE / platform.bandwidth_bps)
    assert one.block_list == [[0, len(geoms) - 1, 1]] and one == single_device(geoms, platform)
    # the general block accounting agrees: on one device, a partition that keeps outputs on it moves nothing between
    # blocks; it may skip rows no later layer reads (strided or valid windows), which the paper's formula computes
    # and sends
    blocks, first = [], 0
    while first < len(geoms):
        keeps = {
            j: [m for m in coop.block_modes(geoms, first, j) if m in ("stripes", "split", "model")]
            for j in range(first, len(geoms))
        }  # modes whose output stays on the device
        last = data.draw(st.sampled_from([j for j, modes in keeps.items() if modes]))
        mode = keeps[last][0]
        blocks.append((first, last, 1, mode))
        first = last + 1
    seconds = plan_seconds(geoms, blocks, platform)
    assert seconds <= one.seconds * (1 + 1e-9)
    if all(
        g.kind != "conv" and g.kind != "pool" or (g.stride == (1, 1) and g.pad[0] + g.pad[1] + 1 == g.kernel[0])
        for g in geoms
    ):  # every input row is read
        assert seconds == pytest.approx(one.seconds, rel=1e-9)


def test_block_costs_by_hand():
    """Two valid 3×1 convolutions on 6 rows, one filter, 2 devices, F = 1 FLOP/s, G = 64 bit/s (32 bit/s each).

    One block: device 0 computes output row 0 ← layer-1 rows 0..2 ← input rows 0..4 (halo: 2 rows), device 1 output
    row 1 ← rows 1..3 ← input 1..5. Each: 3·6 + 1·6 = 24 FLOPs, receives 5 values, uploads 1: 24 + 6·32/32 = 30 s.
    Layer by layer: block 1 gives each device 2 rows from 4 input rows: 12 + 4 = 16 s; block 2: device 0 needs
    layer-1 rows 0..2 and holds 0..1 → receives 1, uploads row 1 that device 1 needs (τo), uploads its output row:
    6 + 3 = 9 s, device 1 alike. SLS = 25 s < 30 s, and MLS finds it."""
    g = coop.Chain((6, 1, 1)).conv(1, (3, 1), padding="valid").conv(1, (3, 1), padding="valid").layers
    p = Platform(flops=1.0, bandwidth_bps=64.0)
    costs = CostModel(g, 2)
    assert costs.parts(0, 1, "stripes", False).devices == ((24.0, 6), (24.0, 6))
    assert costs.parts(0, 1, "stripes", False).seconds(p) == 30.0
    assert costs.parts(0, 0, "stripes", False).seconds(p) == 16.0
    assert costs.parts(1, 1, "stripes", True).devices == ((6.0, 3), (6.0, 3))
    assert sls(g, 2, p).seconds == 25.0
    assert mls(g, 2, p).seconds == 25.0
    # on a slow network the second round costs more than the halo: one block wins (6 s of transfer vs 4 + 3)
    slow = Platform(flops=1e9, bandwidth_bps=64.0)
    assert mls(g, 2, slow).block_list == [[0, 1, 2]]


def test_dense_modes_by_hand():
    """Flatten then Dense 8→4 on 2 devices, input already distributed as 4 + 4 values.
    model: each receives the 4 values it lacks, sends its 4 to the other (τo), computes 2·8·2 FLOPs, keeps 2 units;
    data: each keeps its 4 inputs, computes 2·4·4 FLOPs and uploads 4 partial sums."""
    g = coop.Chain((2, 1, 4)).conv(4, 1).flatten().dense(4).layers
    costs = CostModel(g, 2)
    # not the last layer of the model here, so the model mode's output stays on the devices
    g2 = g + [coop.Geom("fc_out", "dense", (4,), (2,))]
    costs2 = CostModel(g2, 2)
    assert costs2.parts(1, 2, "model", True).devices == ((32.0, 8), (32.0, 8))
    assert costs2.parts(1, 2, "data", True).devices == ((32.0, 4), (32.0, 4))
    assert costs.parts(1, 2, "model", True).devices == ((32.0, 10), (32.0, 10))  # + its 2 output units at the end
    assert not costs.parts(1, 2, "data", True).distributed_output


def test_paper_models_mls_never_worse_than_sls():
    from splitdnn.coop_experiment import MODELS

    geoms = MODELS["AlexNet"]()
    for k in (2, 5):
        p = Platform(13.6e9, 100e6)
        assert mls(geoms, k, p).seconds <= sls(geoms, k, p).seconds
