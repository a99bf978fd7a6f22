"""Profiling (real Keras sub-models timed on this machine) and planning from a model plus profiles."""

from __future__ import annotations

import json

import pytest

from harness.cli import run_cli

pytestmark = pytest.mark.slow


def test_blocks_follow_single_tensor_cuts(cnn14_graph):
    from splitdnn.planner.blocks import blocks_of

    blocks = blocks_of(cnn14_graph.summary())
    single = [c for c in cnn14_graph.boundaries if c.single_tensor]
    assert len(blocks) == len(single) + 1
    assert blocks[0]["layers"][0] == 0 and blocks[-1]["layers"][1] == len(cnn14_graph.layers) - 1
    for a, b in zip(blocks, blocks[1:]):
        assert b["layers"][0] == a["layers"][1] + 1  # contiguous, in order
        cut = next(c for c in cnn14_graph.boundaries if c.index == a["layers"][1])
        assert a["out_bytes"] == cut.bytes
    assert sum(b["flops"] for b in blocks) == sum(l.flops for l in cnn14_graph.layers)


@pytest.fixture(scope="module")
def branchy(tmp_path_factory):
    import keras

    inp = keras.Input((16,), name="x")
    a = keras.layers.Dense(32, name="a")(inp)
    b = keras.layers.Dense(32, name="b")(a)
    s = keras.layers.Add(name="add")([a, b])
    c = keras.layers.Dense(4, name="c")(s)
    path = tmp_path_factory.mktemp("m") / "branchy.keras"
    keras.Model(inp, c).save(path)
    return str(path)


def test_profile_multi_tensor_blocks(branchy):
    from splitdnn.planner.profile import profile_model

    single = profile_model(branchy, "device", warmup=1, repeats=3, progress=False)
    multi = profile_model(branchy, "device", warmup=1, repeats=3, multi_tensor=True, progress=False)
    assert [b["name"] for b in single["blocks"]] == ["a", "add", "c"]  # the cut after b carries a and b
    assert [b["name"] for b in multi["blocks"]] == ["a", "b", "add", "c"]
    assert multi["blocks"][1]["out_bytes"] == 2 * 32 * 4  # both tensors cross
    for doc in (single, multi):
        for b in doc["blocks"]:
            assert len(b["samples_s"]) == 3 and b["median_s"] > 0 and b["time"] >= 0


def test_profile_then_plan_from_profiles(tmp_path):
    dev = tmp_path / "device.json"
    r = run_cli("profile", "cnn14", "--tier", "device", "--out", dev, "--warmup", "1", "--repeats", "3")
    assert "blocks" in r.stdout
    doc = json.loads(dev.read_text())
    assert doc["format"] == "splitdnn.profile/1" and doc["tier"] == "device" and len(doc["blocks"]) >= 5
    out = json.loads(
        run_cli(
            "plan",
            "cnn14",
            "--profile",
            dev,
            "--estimate",
            "edge=x0.2",
            "--estimate",
            "cloud=50gflops",
            "--link",
            "device,edge,5ms,4mbit",
            "--link",
            "edge,cloud,20ms,100mbit",
            "--objective",
            "throughput",
            "--top",
            "2",
            "--json",
        ).stdout
    )
    assert len(out["plans"]) == 2
    assert set(out["plans"][0]["assignment"]) == {"device", "edge", "cloud"}
    names = [b["name"] for b in doc["blocks"]]
    for p in out["plans"]:
        used = [r for r in p["assignment"].values() if r]
        assert used[0][0] in names and used[-1][1] == names[-1]
    r = run_cli("plan", "cnn14", "--profile", dev, "--estimate", "edge=x0.2", check=False)
    assert r.returncode == 2 and "--link" in r.stderr


def test_profile_through_the_runtime_the_tier_serves_with():
    """`--runtime` as the agent's: LiteRT (`litert`, or `auto` where every block converts) times the blocks' .tflite
    through the same Stage; each block says which runtime computed it. CNN14's LiteRT blocks are far cheaper than
    TensorFlow's (measured side by side in benchmarks/bench_litert.py), so a profile of the wrong runtime would be
    far off what the tier measures."""
    from splitdnn.planner.profile import profile_model

    docs = {rt: profile_model("cnn14", "device", warmup=2, repeats=5, progress=False, runtime=rt) for rt in RUNTIMES}
    for rt, doc in docs.items():
        want = "tensorflow" if rt == "tensorflow" else "litert"
        assert doc["runtime"] == rt and {b["runtime"] for b in doc["blocks"]} == {want}, rt
        assert [b["name"] for b in doc["blocks"]] == [b["name"] for b in docs["tensorflow"]["blocks"]]
    r = run_cli("profile", "cnn14", "--tier", "d", "--out", "/dev/null", "--runtime", "onnx", check=False)
    assert r.returncode == 2 and "--runtime 'onnx'" in r.stderr


RUNTIMES = ("tensorflow", "litert", "auto")


def test_the_empty_call_is_timed_beside_each_block():
    """A burst of load while profiling starts (three Jobs loading TensorFlow on one host) must fall on the block
    and the empty call alike. Timed up front, alone in the burst, the empty call cost 10.5 ms here against the
    block's calm 2 ms, and the block came out at 0 s (what the kind profiles showed for whole tiers)."""
    import statistics

    from splitdnn.planner.profile import time_paired

    now = [0.0]
    order = []

    def load() -> float:  # +10 ms per call during the first 30 ms of (fake) machine time, calm afterwards
        return 0.010 if now[0] < 0.030 else 0.0

    def block():
        order.append("block")
        now[0] += 0.002 + load()

    def empty():
        order.append("empty")
        now[0] += 0.0005 + load()

    blocks, empties = time_paired(block, empty, warmup=0, repeats=9, clock=lambda: now[0])
    assert order[:4] == ["block", "empty", "block", "empty"] and len(blocks) == len(empties) == 9
    assert max(blocks) > 0.010 and max(empties) > 0.010  # the burst hit both
    assert statistics.median(blocks) - statistics.median(empties) == pytest.approx(0.0015)
