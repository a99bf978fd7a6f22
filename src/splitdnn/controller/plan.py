"""The deployed plan: which layers each tier runs, what crosses each link, and the FLOPs-based figures.

`model_summary()` loads the model once per (source, input shape) and keeps its graph summary
(`splitdnn.graph.GraphSummary`); everything else here is pure. Choosing split points and predicting their
figures is planning: `splitdnn.planner.deploy` (`choose`, `predicted`).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from splitdnn.controller.render import model_key, split_id, split_service_name
from splitdnn.graph import GraphSummary
from splitdnn.spec import SplitInference, cross_field_problems
from splitdnn.storage import is_uri

NAME_MAX = 63  # Service names are DNS-1035 labels
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


class ModelUnavailable(Exception):
    """The operator cannot load the model itself (a .keras file that only the agent image has)."""


@lru_cache(maxsize=16)
def model_summary(source: str, input_shape: tuple | None = None) -> GraphSummary:
    """Raises splitdnn.models.ModelSourceError for an unknown model, ModelUnavailable for a file not here."""
    from splitdnn.graph import build_graph
    from splitdnn.models import load_model

    if is_uri(source) or (source.endswith(".keras") and not Path(source).is_file()):
        # a storageUri is fetched by the model Job (controller.model_job), never by the operator
        raise ModelUnavailable(f"model file {source!r} is not in this file system; the model Job fetches it")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return build_graph(load_model(source, input_shape)).summary()


def name_problems(si: SplitInference) -> list[str]:
    """What the resource's name cannot be: its children are named `<name>-<tier>[-<split id>]` (Services: DNS-1035
    labels of at most 63 characters) and labelled with it (a label value: at most 63). Checked before the operator
    lists or applies any child: a longer name made the children's label selector a 400 (found by the spec fuzzer)."""
    found = []
    if not DNS_1035.fullmatch(si.name):
        # the API admits any DNS subdomain ("a.b", "9a") as a SplitInference's name; its Services would be
        # refused half-way through the children (found by the spec fuzzer)
        found.append(
            f"metadata.name {si.name!r} cannot name this resource's Services: use a DNS-1035 label "
            "(lower-case letters, digits and '-', starting with a letter)"
        )
    for t in si.tiers:
        name = f"{si.name}-{t['name']}-<split id>"  # the longest name made: a split's Service (render.split_id)
        length = len(si.name) + len(t["name"]) + 10
        if length > NAME_MAX:
            found.append(
                f"object name {name!r} ({length} characters with the 8-character split id) is longer "
                f"than {NAME_MAX}: shorten the resource or tier name"
            )
    return found


def problems(si: SplitInference, summary: GraphSummary | None, need_model: bool = True) -> list[str]:
    """Everything that makes the resource undeployable, each naming the problem (`need_model`: also that the
    planner has no graph to plan from)."""
    found = name_problems(si) + cross_field_problems(si, list(summary.layers) if summary else None)
    if need_model and si.planner_chooses and summary is None:
        found.append(
            "planner.mode auto needs the model's graph, which only a model Job reads for a storageUri model "
            "(the operator does; `splitdnn render` cannot): set splitPoints"
        )
    return found


def profiles_configmap(si_name: str) -> str:
    """The ConfigMap holding per-tier profiles (key `<tier>.json`, a `splitdnn profile` document)."""
    return f"{si_name}-profiles"


def build_plan(si: SplitInference, summary: GraphSummary | None) -> dict[str, Any]:
    """The deployed plan for valid split points (check `problems()` first)."""
    points = list(si.spec.get("splitPoints") or [])
    split = split_id(si, points)
    tiers = si.tiers
    planner = si.spec.get("planner", {})
    plan: dict[str, Any] = {
        "splitInference": si.name,
        "namespace": si.namespace,
        "model": si.model_source,
        "modelKey": model_key(si),  # the tiers fetch their slices from the artifact store by it
        "mode": planner.get("mode", "fixed"),
        "objective": planner.get("objective", "throughput"),
        "splitPoints": points,
        "splitId": split,
        "tiers": [],
        "links": [],
        "predicted": {"source": "model graph" if summary else "unavailable"},
    }
    ranges: list[tuple[int, int]] = []  # (first, last) layer index per tier
    if summary:
        idx = [summary.layers.index(p) for p in points]
        ranges = list(zip([0] + [i + 1 for i in idx], idx + [len(summary.layers) - 1]))
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
        if summary and ranges:
            a, b = ranges[i]
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
            link["bytes"] = summary.boundary_bytes.get(p)
            link["tensors"] = summary.boundary_tensors.get(p, [])
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
