"""The plan the operator deploys: which layers each tier runs, what crosses each link, predicted figures.

`model_summary()` loads the model once per (source, input shape) and keeps only what planning needs (layer
names, per-layer params/FLOPs, cut sizes); everything else here is pure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from splitdnn.controller.render import split_id, split_service_name
from splitdnn.spec import SplitInference, cross_field_problems

NAME_MAX = 63  # Service names are DNS-1035 labels


@dataclass(frozen=True)
class ModelSummary:
    model: str
    layers: tuple[str, ...]
    params: tuple[int, ...] = ()
    flops: tuple[int, ...] = ()
    cut_bytes: dict = field(default_factory=dict)  # layer name → bytes crossing a cut after it (one frame)
    cut_tensors: dict = field(default_factory=dict)
    input_bytes: int = 0
    classes: tuple[str, ...] = ()  # layer classes (InputLayer blocks are not planned: shipping the input is a hop)
    output_bytes: int = 0  # the model outputs, one frame


class ModelUnavailable(Exception):
    """The operator cannot load the model itself (a .keras file that only the agent image has)."""


@lru_cache(maxsize=16)
def model_summary(source: str, input_shape: tuple | None = None) -> ModelSummary:
    """Raises splitdnn.models.ModelSourceError for an unknown model, ModelUnavailable for a file not here."""
    from splitdnn.graph import build_graph
    from splitdnn.models import load_model

    if source.endswith(".keras") and not Path(source).is_file():
        raise ModelUnavailable(f"model file {source!r} is not in the operator's file system; the slicer checks it")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    graph = build_graph(load_model(source, input_shape))
    return ModelSummary(
        model=source,
        layers=tuple(l.name for l in graph.layers),
        params=tuple(l.params for l in graph.layers),
        flops=tuple(l.flops for l in graph.layers),
        cut_bytes={c.after: c.bytes for c in graph.cuts},
        cut_tensors={c.after: list(c.tensors) for c in graph.cuts},
        input_bytes=graph.input_bytes,
        classes=tuple(l.cls for l in graph.layers),
        output_bytes=sum(graph.tensors[n].bytes for n in graph.outputs),
    )


def problems(si: SplitInference, summary: ModelSummary | None) -> list[str]:
    """Everything that makes the resource undeployable, each naming the problem."""
    found = cross_field_problems(si, list(summary.layers) if summary else None)
    for t in si.tiers:
        name = f"{si.name}-{t['name']}-<split id>"  # the longest name made: a split's Service (render.split_id)
        length = len(si.name) + len(t["name"]) + 10
        if length > NAME_MAX:
            found.append(
                f"object name {name!r} ({length} characters with the 8-character split id) is longer "
                f"than {NAME_MAX}: shorten the resource or tier name"
            )
    if si.spec.get("planner", {}).get("mode") == "auto" and not si.spec.get("splitPoints") and summary is None:
        found.append(
            "planner.mode auto needs a model the operator can load (a .keras file in the operator's "
            "file system, or a builtin/kerasApplication model): set splitPoints"
        )
    return found


def profiles_configmap(si_name: str) -> str:
    """The ConfigMap holding per-tier profiles (key `<tier>.json`, a `splitdnn profile` document)."""
    return f"{si_name}-profiles"


def choose(si: SplitInference, summary: ModelSummary, profiles: dict | None = None) -> tuple[list, dict]:
    """planner.mode auto: the best split for the spec's objective, from per-tier profiles where they exist and
    FLOPs estimates elsewhere, and the links' netem. Returns (split points, predicted figures); raises
    splitdnn.planner.Infeasible when the constraints allow no split."""
    from splitdnn import feedback
    from splitdnn.planner import plan

    problem = feedback.base_problem(si, summary, profiles)
    objective = si.spec.get("planner", {}).get("objective", "throughput")
    fps = float(si.workload.get("fps") or 0) or None
    best = plan(problem, objective=objective, top=1, fps=fps)[0]
    return feedback.points_of(problem, best), predicted(si, summary, feedback.points_of(problem, best), profiles)


def predicted(si: SplitInference, summary: ModelSummary, points: list, profiles: dict | None = None) -> dict:
    """Predicted latency, bottleneck (figure and where), bytes and drop rate of `points` before measurements."""
    from splitdnn import feedback
    from splitdnn.planner import evaluate_plan

    problem = feedback.base_problem(si, summary, profiles)
    fps = float(si.workload.get("fps") or 0) or None
    p = evaluate_plan(problem, feedback.cuts_of(problem, points), fps)
    objective = si.spec.get("planner", {}).get("objective", "throughput")
    out = feedback.plan_status(p, objective, "profiles" if profiles else "FLOPs estimates")
    # where the bottleneck is: the slowest stage, or the slowest link transfer
    stages = {f"tier {t}": c for t, c in p.compute.items()}
    names = [t["name"] for t in si.tiers]
    for a, b in zip(names, names[1:]):
        link = problem.links.get((a, b))
        if link and p.upload.get(a):
            stages[f"link {a}→{b}"] = p.upload[a] / link.bandwidth
    out["bottleneckAt"] = max(stages, key=stages.get) if stages else None
    # the slowest tier by these figures (it replaces build_plan's FLOPs-only guess, which profiles can overturn)
    if p.compute and max(p.compute.values()) > 0:
        out["bottleneckTier"] = max(p.compute, key=p.compute.get)
    return out


def build_plan(si: SplitInference, summary: ModelSummary | None) -> dict:
    """The plan for valid split points (check `problems()` first)."""
    points = list(si.spec.get("splitPoints") or [])
    split = split_id(si, points)
    tiers = si.tiers
    planner = si.spec.get("planner", {})
    plan = {
        "splitInference": si.name,
        "namespace": si.namespace,
        "model": si.model_source,
        "mode": planner.get("mode", "fixed"),
        "objective": planner.get("objective", "throughput"),
        "splitPoints": points,
        "splitId": split,
        "tiers": [],
        "links": [],
        "predicted": {"source": "model graph" if summary else "unavailable"},
    }
    bounds = []
    if summary:
        idx = [summary.layers.index(p) for p in points]
        starts = [0] + [i + 1 for i in idx]
        ends = idx + [len(summary.layers) - 1]
        bounds = list(zip(starts, ends))
    for i, t in enumerate(tiers):
        entry = {
            "name": t["name"],
            "slice": f"slice{i}",
            "service": f"{si.name}-{t['name']}",
            "overheadRatio": t.get("overheadRatio", 0),
            "maxMessageBytes": t.get("maxMessageBytes"),
            "netem": dict(t.get("netem") or {}),
        }
        if i + 1 < len(tiers):  # (no nulls: status is merge-patched, where null means delete)
            entry["next"] = split_service_name(si.name, tiers[i + 1]["name"], split)
        if bounds:
            a, b = bounds[i]
            entry.update(
                {
                    "firstLayer": summary.layers[a] if a <= b else None,
                    "lastLayer": summary.layers[b] if a <= b else None,
                    "layers": max(0, b - a + 1),
                    "params": sum(summary.params[a : b + 1]),
                    "flops": sum(summary.flops[a : b + 1]),
                }
            )
        plan["tiers"].append(entry)
    for i, p in enumerate(points):
        link = {"from": tiers[i]["name"], "to": tiers[i + 1]["name"], "after": p}
        if summary:
            link["bytes"] = summary.cut_bytes.get(p)
            link["tensors"] = summary.cut_tensors.get(p, [])
        plan["links"].append(link)
    if summary:
        sizes = [l.get("bytes") or 0 for l in plan["links"]]
        flops = [t["flops"] for t in plan["tiers"]]
        plan["predicted"].update(
            {
                "inputBytes": summary.input_bytes,
                "bytesPerFrame": sum(sizes),
                "maxLinkBytes": max(sizes) if sizes else 0,
                "flopsPerTier": {t["name"]: t["flops"] for t in plan["tiers"]},
            }
        )
        if flops:  # the FLOPs-heaviest tier until predicted() has per-tier times
            plan["predicted"]["bottleneckTier"] = plan["tiers"][flops.index(max(flops))]["name"]
    return plan
