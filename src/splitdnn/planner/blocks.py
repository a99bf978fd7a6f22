"""From a model's graph summary to planner blocks, and from blocks plus per-tier times to a Problem.

This is the one planning path's first half, shared by `splitdnn plan`/`splitdnn profile` (the CLI), the operator
(`planner.mode: auto`), the feedback loop and the experiment:

    summary = build_graph(model).summary()       # or GraphSummary.from_json(doc): no TensorFlow needed
    blocks = blocks_of(summary)                  # the plannable units, each named after its last layer
    problem = assemble(tiers, blocks, times, summary.input_bytes, links, constraints)

A *block* is the run of layers between two consecutive boundaries the planner may choose, named after its last
layer, so a block name is a split point. By default only single-tensor boundaries are choosable (what the
deployed slices support); ``multi_tensor=True`` uses every boundary. Leading InputLayers are no block: shipping
the raw input is the planner's input hop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from splitdnn.graph import GraphSummary

from .problem import Problem


class BlockInfo(TypedDict):
    name: str  # the block's last layer: a split point
    layers: list[int]  # [first, last] layer indices
    out_bytes: int  # bytes crossing the boundary after the block (the model outputs for the last block)
    flops: int


def blocks_of(summary: GraphSummary, multi_tensor: bool = False) -> list[BlockInfo]:
    """The blocks of a model, in model order (see the module docstring)."""
    layers = list(summary.layers)
    classes = list(summary.classes) or [""] * len(layers)
    flops = list(summary.flops) or [0] * len(layers)
    first = 0
    while first < len(layers) - 1 and classes[first] == "InputLayer":
        first += 1
    ends = [
        i
        for i, name in enumerate(layers[:-1])
        if i >= first
        and name in summary.boundary_bytes
        and (multi_tensor or len(summary.boundary_tensors.get(name, [name])) == 1)
    ]
    blocks: list[BlockInfo] = []
    start = 0
    for last in [*ends, len(layers) - 1]:
        if last < start:
            continue
        out = summary.boundary_bytes[layers[last]] if last < len(layers) - 1 else summary.output_bytes
        blocks.append(
            {
                "name": layers[last],
                "layers": [start, last],
                "out_bytes": int(out),
                "flops": int(sum(flops[start : last + 1])),
            }
        )
        start = last + 1
    return blocks


def assemble(
    tiers: Sequence[str],
    blocks: Sequence[Mapping[str, Any]],
    times: Mapping[str, Sequence[float]],
    input_bytes: int,
    links: Sequence[Mapping[str, Any]],
    constraints: Mapping[str, Any] | None = None,
    model: str | None = None,
    where: str = "problem",
    call_seconds: Mapping[str, float] | None = None,
) -> Problem:
    """A Problem from blocks (`blocks_of` or a profile's), compute seconds per tier and block (`times[tier][k]`),
    links ({from, to, latency, bandwidth}, numbers or "5ms"/"4mbit") and constraints in either spelling (the
    planner's snake_case or the CRD's camelCase): validated once, by `Problem.from_json`. `call_seconds`: each
    tier's fixed per-call cost (a profile's `call_seconds`), charged once per used tier."""
    data: dict[str, Any] = {
        "tiers": list(tiers),
        "input_bytes": int(input_bytes),
        "blocks": [
            {
                "name": b["name"],
                **({"layers": list(b["layers"])} if b.get("layers") is not None else {}),
                "out_bytes": int(b["out_bytes"]),
                "time": {t: float(times[t][k]) for t in tiers},
            }
            for k, b in enumerate(blocks)
        ],
        "links": [dict(link) for link in links],
        "constraints": dict(constraints or {}),
    }
    if call_seconds:
        data["call_seconds"] = {t: float(v) for t, v in call_seconds.items()}
    if model is not None:
        data["model"] = model
    return Problem.from_json(data, where)
