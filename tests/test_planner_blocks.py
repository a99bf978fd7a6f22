"""The one blocks function (`planner.blocks.blocks_of`) and the graph summary it reads: the CLI's path (a graph
built in-process, as `splitdnn plan`/`splitdnn profile` do) and the operator's (`controller.plan.model_summary`,
or a summary document read back without TensorFlow) give the same blocks and the same problem."""

import json

import pytest

from splitdnn.graph import GraphSummary
from splitdnn.planner.blocks import assemble, blocks_of

# input → a → b (the boundary after b carries a and b) → add → c
BRANCHY = GraphSummary(
    model="branchy",
    layers=("x", "a", "b", "add", "c"),
    classes=("InputLayer", "Dense", "Dense", "Add", "Dense"),
    params=(0, 10, 20, 0, 5),
    flops=(0, 100, 200, 30, 40),
    boundary_bytes={"x": 64, "a": 128, "b": 256, "add": 128},
    boundary_tensors={"x": ["x"], "a": ["a"], "b": ["a", "b"], "add": ["add"]},
    input_bytes=64,
    output_bytes=16,
)


def test_blocks_skip_the_input_layer_and_multi_tensor_boundaries():
    blocks = blocks_of(BRANCHY)
    assert [(b["name"], b["layers"], b["out_bytes"], b["flops"]) for b in blocks] == [
        ("a", [0, 1], 128, 100),
        ("add", [2, 3], 128, 230),
        ("c", [4, 4], 16, 40),
    ]
    multi = blocks_of(BRANCHY, multi_tensor=True)
    assert [b["name"] for b in multi] == ["a", "b", "add", "c"] and multi[1]["out_bytes"] == 256


def test_summary_round_trips_through_json():
    doc = json.loads(json.dumps(BRANCHY.to_json()))
    assert GraphSummary.from_json(doc) == BRANCHY
    with pytest.raises(ValueError, match="not a graph summary"):
        GraphSummary.from_json({"layers": []})


def test_assemble_names_the_bad_field():
    from splitdnn.planner import ProblemError

    blocks = blocks_of(BRANCHY)
    times = {"device": [0.001] * len(blocks), "edge": [0.002] * (len(blocks) - 1) + [-1.0]}
    with pytest.raises(ProblemError, match=r"blocks\[2\]\.time\.edge"):
        assemble(["device", "edge"], blocks, times, 64, [{"from": "device", "to": "edge", "bandwidth": "8mbit"}])


@pytest.mark.slow
def test_cli_and_operator_paths_give_the_same_cnn14_blocks_and_problem(cnn14_graph):
    from splitdnn.controller.plan import model_summary
    from splitdnn.planner.deploy import DEFAULT_TIER_FLOPS, problem_for
    from splitdnn.planner.profile import problem_from_profiles
    from splitdnn.spec import load_file

    cli = blocks_of(cnn14_graph.summary())
    operator = blocks_of(model_summary("cnn14"))
    from_document = blocks_of(GraphSummary.from_json(json.loads(json.dumps(model_summary("cnn14").to_json()))))
    assert cli == operator == from_document
    assert len(cli) == 14 and cli[0]["name"] == "conv2d" and cli[-1]["name"] == "dense_1"
    assert sum(b["flops"] for b in cli) == sum(l.flops for l in cnn14_graph.layers)

    # the same problem through both: the CLI from FLOPs estimates, the operator from a spec without profiles
    (si,) = load_file("examples/cnn14.yaml")
    for t in si.tiers:
        t["overheadRatio"], t["netem"] = 0, {}
    names = si.tier_names
    links = [f"{a},{b},0ms,8gbit" for a, b in zip(names, names[1:])]
    via_cli = problem_from_profiles(
        "cnn14", [], [f"{t}={DEFAULT_TIER_FLOPS:g}" for t in names], links, constraints={"use": names}
    )
    via_operator = problem_for(si, model_summary("cnn14"))
    assert via_cli.blocks == via_operator.blocks
    assert via_cli.input_bytes == via_operator.input_bytes == cnn14_graph.input_bytes
    assert via_cli.constraints.use == via_operator.constraints.use
    # the operator also knows each sender's chunking (tiers[].maxMessageBytes)
    assert {l.max_message_bytes for l in via_operator.links.values()} == {500000}
    for link in via_operator.links.values():
        link.max_message_bytes = 0
    assert via_cli.links == via_operator.links


def test_one_plan_serialiser_two_contracts():
    """`splitdnn plan --json` (raw, snake_case, drop_rate only with an fps) and the status form (camelCase,
    rounded) come from one field table."""
    from splitdnn.planner import plan

    blocks = blocks_of(BRANCHY)
    times = {"device": [0.0011111111] * 3, "edge": [0.0002] * 3}
    link = [{"from": "device", "to": "edge", "latency": "1ms", "bandwidth": "8mbit"}]
    problem = assemble(["device", "edge"], blocks, times, 64, link)
    without_fps = plan(problem)[0]
    assert list(without_fps.to_json()) == ["assignment", "latency", "bottleneck", "bytes"]
    p = plan(problem, fps=2000.0)[0]
    doc = p.to_json()
    assert list(doc) == ["assignment", "latency", "bottleneck", "bytes", "drop_rate"]
    assert doc["latency"] == p.latency and doc["assignment"] == {"device": None, "edge": ["a", "c"]}
    status = p.to_status("latency", "profiles")
    assert status == {
        "objective": "latency",
        "latencySeconds": round(p.latency, 6),
        "bottleneckSeconds": round(p.bottleneck, 6),
        "bytesPerFrame": p.bytes,
        "dropRate": round(p.drop_rate, 4),
        "computeSeconds": {t: round(v, 6) for t, v in p.compute.items()},
        "source": "profiles",
    }
