"""A cooperative group of real worker processes on loopback (issue #20, item 4's local part): CNN14 run as MLS's
blocks on 3 workers gives the model's output, statelessly and with the paper's protocol (devices keep their
outputs), which moves exactly the bytes the MLS cost model charges."""

import numpy as np
import pytest

from splitdnn import coop
from splitdnn.mls import Platform, mls, plan_values


@pytest.mark.slow
def test_three_worker_processes_compute_cnn14_as_mls_blocks(tmp_path, cnn14_model):
    path = tmp_path / "cnn14.keras"
    cnn14_model.save(path)
    geoms = coop.describe(cnn14_model)
    plan = mls(geoms, 3, Platform(flops=1e9, bandwidth_bps=1e8))
    blocks = list(plan.blocks)
    assert len(blocks) > 1
    x = np.random.default_rng(0).standard_normal((1, 28, 28, 1)).astype("float32")
    from splitdnn.coop_run import Group

    with Group(str(path), 3) as group:
        y, stats = group.run_plan(cnn14_model, geoms, blocks, x)
        y_hybrid, _ = group.run_plan(
            cnn14_model, geoms, [(0, 9, 3, "stripes"), (10, 10, 3, "split"), (11, 13, 3, "hybrid")], x
        )
        # the paper's protocol: devices keep their outputs and trade only what another device lacks
        y_kept, kept = group.run_plan(cnn14_model, geoms, blocks, x, stateful=True)
        mixed = [
            (0, 3, 3, "stripes"),
            (4, 4, 3, "stripes"),
            (5, 10, 3, "stripes"),
            (11, 11, 3, "split"),
            (12, 12, 3, "model"),
            (13, 13, 3, "data"),
        ]
        y_mixed, mixed_stats = group.run_plan(cnn14_model, geoms, mixed, x, stateful=True)
    expected = np.asarray(cnn14_model(x, training=False))
    assert float(np.max(np.abs(y - expected))) <= 1e-5
    assert float(np.max(np.abs(y_hybrid - expected))) <= 1e-5
    assert [s.block for s in stats] == blocks
    assert all(s.bytes_sent > 0 and s.bytes_received > 0 for s in stats)
    for out, plan_blocks, run in ((y_kept, blocks, kept), (y_mixed, mixed, mixed_stats)):
        assert float(np.max(np.abs(out - expected))) <= 1e-5
        # exactly the bytes the MLS cost model charges (float32, one frame)
        assert sum(s.bytes_sent + s.bytes_received for s in run) == 4 * plan_values(geoms, plan_blocks)
