"""The plan against the real CNN14 graph: the shipped examples are valid and their figures add up."""

import pytest

from splitdnn.controller import plan as plan_mod
from splitdnn.planner import deploy
from splitdnn.planner.blocks import blocks_of
from splitdnn.spec import load_file

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("example", ["examples/cnn14.yaml", "examples/cnn14-type2.yaml", "examples/cnn14-type3.yaml"])
def test_examples_are_valid_and_planned(example, cnn14_graph):
    (si,) = load_file(example)
    summary = plan_mod.model_summary(si.model_source)
    assert list(summary.layers) == [l.name for l in cnn14_graph.layers]
    assert plan_mod.problems(si, summary) == []
    plan = plan_mod.build_plan(si, summary)
    assert sum(t["layers"] for t in plan["tiers"]) == len(summary.layers)
    assert [l["bytes"] for l in plan["links"]] == [
        next(c.bytes for c in cnn14_graph.boundaries if c.after == p) for p in si.spec["splitPoints"]
    ]


def test_unknown_keras_application_is_a_named_problem():
    from splitdnn.models import ModelSourceError

    with pytest.raises(ModelSourceError, match="NoSuchNet"):
        plan_mod.model_summary("keras.applications.NoSuchNet")


def _auto(rate=None, points=None):
    import yaml

    from splitdnn.spec import from_resource

    doc = yaml.safe_load(open("examples/cnn14.yaml"))
    doc["spec"]["planner"]["mode"] = "auto"
    doc["spec"].pop("splitPoints")
    if points:
        doc["spec"]["splitPoints"] = points
    for t in doc["spec"]["tiers"]:
        t["netem"] = {}
    if rate:
        doc["spec"]["tiers"][0]["netem"] = {"rate": rate}
    return from_resource(doc)


def test_auto_mode_plans_from_flops_and_the_links():
    """planner.mode auto: a slow device→edge link keeps the big early tensors off it; the status figures say
    why (predicted latency, bottleneck and where, drop rate at the workload's fps, source of the figures)."""
    summary = plan_mod.model_summary("cnn14")
    si = _auto(rate="1mbit")  # 125 kB/s
    assert plan_mod.problems(si, summary) == []
    points, predicted = deploy.choose(si, summary)
    cut = dict(zip(summary.layers, range(len(summary.layers))))
    assert summary.boundary_bytes[points[0]] < summary.boundary_bytes["conv2d"], points
    assert cut[points[0]] < cut[points[1]]
    assert predicted["source"] == "FLOPs estimates" and predicted["objective"] == "throughput"
    assert {"latencySeconds", "bottleneckSeconds", "bytesPerFrame", "dropRate", "bottleneckAt"} <= set(predicted)
    # the fixed example's split under the same slow link: its big tensor is the bottleneck, with drops at 5 fps
    fixed = deploy.predicted(si, summary, ["conv2d", "flatten"])
    assert fixed["bottleneckAt"] == "link device→edge" and fixed["dropRate"] > 0.5
    assert predicted["bottleneckSeconds"] < fixed["bottleneckSeconds"]


def test_auto_mode_prefers_profiles_where_they_exist():
    summary = plan_mod.model_summary("cnn14")
    si = _auto()
    blocks = blocks_of(summary)
    # a device profile that makes everything after conv2d very slow there: the planner cuts right after it
    prof = {
        "format": "splitdnn.profile/1",
        "model": "cnn14",
        "tier": "device",
        "blocks": [{"name": b["name"], "time": 1e-4 if k == 0 else 10.0} for k, b in enumerate(blocks)],
    }
    points, predicted = deploy.choose(si, summary, {"device": prof})
    assert points[0] == "conv2d" and predicted["source"] == "profiles"
    # a device 10 s per block past conv2d: any split that keeps one there makes the device the slowest tier, and
    # the status names it in both fields (bottleneckTier no longer stays at the FLOPs-heaviest tier)
    slow = deploy.predicted(si, summary, ["max_pooling2d", "flatten"], {"device": prof})
    assert slow["bottleneckTier"] == "device" and slow["bottleneckAt"] == "tier device", slow
