"""A cooperative group of real worker processes on loopback (issue #20, item 4's local part): CNN14 run as MLS's
blocks on 3 workers gives the model's output."""

import numpy as np
import pytest

from splitdnn import coop
from splitdnn.mls import Platform, mls


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
    expected = np.asarray(cnn14_model(x, training=False))
    assert float(np.max(np.abs(y - expected))) <= 1e-5
    assert float(np.max(np.abs(y_hybrid - expected))) <= 1e-5
    assert [s.block for s in stats] == blocks
    assert all(s.bytes_sent > 0 and s.bytes_received > 0 for s in stats)
