"""A cooperative tier (CoopAI) in the agent: `tiers[].devices` > 1 and `planner.coop`.

Real CNN14 slices, real worker processes (`splitdnn.coop_run.Group`), a real `splitdnn run` of
examples/coop-cnn14.yaml: the group computes the slice exactly as the unsplit slice does, MLS and SLS plans alike,
and the run accounts for every frame.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from splitdnn.agent import runtime
from splitdnn.agent.command import agent_argv, flag_values
from splitdnn.spec import load_file

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "coop-cnn14.yaml"


@pytest.mark.parametrize("method,devices", [("mls", 3), ("sls", 2)])
def test_a_group_computes_the_slice_like_the_slice(coop_slices, method, devices):
    x = np.random.default_rng(devices).random((2, 28, 28, 1), dtype=np.float32)
    want = runtime.load(coop_slices, "slice0").compute({"input": x})
    group = runtime.load(coop_slices, "slice0", devices=devices, coop=method)
    try:
        got = group.compute(group.validate({"input": x}))
        plan = group.plan
        print(f"{method} on {devices} workers: blocks {plan.block_list}, predicted {plan.seconds * 1e3:.2f} ms")
        assert group.name == "coop" and 1 <= plan.devices <= devices
        assert list(got) == list(want) == ["max_pooling2d_1"]
        assert np.abs(got["max_pooling2d_1"] - want["max_pooling2d_1"]).max() <= 1e-5
        if method == "sls":  # layer by layer: a block starts at every convolution
            assert len(plan.blocks) >= 4
    finally:
        group.close()


def test_a_slice_without_keras_or_on_litert_is_refused(coop_slices, tmp_path):
    manifest = json.loads((Path(coop_slices) / "slices.json").read_text())
    with pytest.raises(ValueError, match="use runtime tensorflow"):
        runtime.load(coop_slices, "slice0", "litert", devices=3)
    with pytest.raises(ValueError, match="coop one of mls, sls, off"):
        runtime.load(coop_slices, "slice0", devices=3, coop="best")
    assert "keras" in manifest["slices"][0]
    off = runtime.load(coop_slices, "slice0", devices=3, coop="off")  # one device computes it all
    assert off.name == "tensorflow"
    import shutil

    copy = tmp_path / "s"
    shutil.copytree(coop_slices, copy)
    del manifest["slices"][0]["keras"]
    (copy / "slices.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="cannot run on a cooperative tier: not written"):
        runtime.load(copy, "slice0", devices=2)
    for args, words in (
        (["--devices", "0"], "1 ≤ --devices ≤ 64"),
        (["--devices", "2", "--coop", "best"], "--coop 'best': expected one of mls, sls, off"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "splitdnn", "agent", "--slices", coop_slices, "--slice", "slice0", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and words in proc.stderr, (args, proc.stderr[-2000:])


def test_the_spec_reaches_the_agent_and_the_model_job():
    from splitdnn.controller import render

    (si,) = load_file(EXAMPLE)
    device, edge = si.typed.tiers[0], si.typed.tiers[1]
    assert device.devices == 3 and edge.devices == 1 and si.typed.planner.coop == "mls"
    argv = agent_argv(slices="/m", slice_name="slice0", port=1, metrics_port=2, tier="device", si="c", tier_spec=device)
    assert flag_values(argv, ["--devices", "--coop"]) == {"--devices": "3", "--coop": "mls"}
    edge_argv = agent_argv(
        slices="/m", slice_name="slice1", port=1, metrics_port=2, tier="edge", si="c", tier_spec=edge
    )
    assert "--devices" not in edge_argv
    # the model Job writes the .keras chains, and the tiers fetch the slices built with them
    assert render.build_command(si, si.typed.split_points, "http://store")[-1] == "--keras"
    plan = {"modelKey": render.model_key(si), "splitPoints": si.typed.split_points}
    assert render.fetch_command(si, plan, 0, "http://store")[-1] == "--keras"
    pod = render.agent_command(si, 0, "abc")
    assert flag_values(pod, ["--devices", "--coop"]) == {"--devices": "3", "--coop": "mls"}


def test_splitdnn_run_the_coop_example():
    proc = subprocess.run(
        [sys.executable, "-m", "splitdnn", "run", str(EXAMPLE), "--json"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    print({k: result[k] for k in ("offered", "completed", "dropped", "late", "failed", "drop_rate")})
    print([(t["name"], t["runtime"], t["devices"], t["stage_seconds_mean"]) for t in result["tiers"]])
    assert result["offered"] == 20 == sum(result[o] for o in ("completed", "dropped", "late", "failed"))
    assert result["completed"] > 0 and result["failed"] == 0, result
    device = result["tiers"][0]
    assert (device["runtime"], device["devices"]) == ("coop", 3), device
    # the other tiers have no runtime in the example: their slices converted, so LiteRT computes them
    assert [t["runtime"] for t in result["tiers"][1:]] == ["litert", "litert"]
