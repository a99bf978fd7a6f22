"""`splitdnn experiment splits`: how well the served-stage cost model predicts a second model (issue #16).

A keras.applications model (random weights) at a reduced input, split over three local tiers (device, edge,
cloud on this machine, no link delay) at every pair of single-tensor split points, or a seeded sample of them.
Per pair the same agents as `splitdnn run` serve it (`experiment.run_once`) and the cost model's prediction —
the model profiled through the serving path (`planner.profile.profile_model`), the loopback stream's measured
per-message cost and bandwidth (`experiment.measure_stream`) — is set beside the measurement. Writes
`results.json` (runs with `predicted`/`measured`, top-level `prediction_error`, the contract of
`splitdnn experiment cho2021`) and `results.md`.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from splitdnn import experiment as exp

TIERS = exp.TIERS


def split_pairs(points: Sequence[str], sample: int | None, seed: int = 0) -> list[tuple[str, str]]:
    """Every (device_after, edge_after) with device_after before edge_after, or a seeded sample of `sample`."""
    pairs = list(itertools.combinations(points, 2))
    if sample is not None and sample < len(pairs):
        picked = set(random.Random(seed).sample(range(len(pairs)), sample))
        pairs = [p for k, p in enumerate(pairs) if k in picked]
    return pairs


def resource(
    app: str, input_shape: Sequence[int], points: Sequence[str], workload: exp.Workload, runtime: str = "tensorflow"
) -> dict:
    """The SplitInference of one run: three local tiers on `runtime`, no emulated overhead or delay."""
    return {
        "apiVersion": "splitdnn.io/v1alpha1",
        "kind": "SplitInference",
        "metadata": {"name": f"splits-{app.lower()}"},
        "spec": {
            "model": {"kerasApplication": app, "inputShape": list(input_shape)},
            "splitPoints": list(points),
            "tiers": [{"name": t, "runtime": runtime} for t in TIERS],  # what its profile measures
            "workload": {
                "fps": workload.fps,
                "frames": workload.frames,
                "deadline": f"{max(1.0, 20 / workload.fps):g}s",
                "maxInFlight": 8,
                "source": "synthetic",
                "seed": workload.seed,
                "warmupFrames": workload.warmup,
            },
            "planner": {"mode": "fixed", "objective": "throughput"},
        },
    }


def run_splits(
    app: str,
    input_shape: Sequence[int],
    workload: exp.Workload,
    out: Path,
    sample: int | None = 6,
    repeats: int = 1,
    netns: bool = False,
    runtime: str = "tensorflow",
    say: Callable[[str], None] = lambda m: None,
) -> dict:
    from splitdnn.graph import build_graph
    from splitdnn.models import load_model
    from splitdnn.planner.blocks import blocks_of
    from splitdnn.planner.profile import problem_from_profiles, profile_model
    from splitdnn.slicer import export_slices, resolve_cuts

    out.mkdir(parents=True, exist_ok=True)
    spec = f"keras.applications.{app}"
    model = load_model(spec, input_shape)
    graph = build_graph(model)
    points = [b["name"] for b in blocks_of(graph.summary())][:-1]
    pairs = split_pairs(points, sample, workload.seed)
    say(f"{app} at {tuple(input_shape)}: {len(points)} single-tensor split points, {len(pairs)} pairs to run")
    say("profiling through the serving path…")
    profile = profile_model(
        spec, "local", warmup=5, repeats=30, progress=False, input_shape=input_shape, runtime=runtime
    )
    stream = exp.measure_stream()
    say(
        f"call cost {profile['call_seconds'] * 1e3:.3f} ms, {sum(b['time'] for b in profile['blocks']) * 1e3:.1f} ms"
        f" of blocks; one more message {stream['message_seconds'] * 1e3:.3f} ms, stream {stream['bandwidth'] / 1e6:.0f}"
        " MB/s"
    )
    docs = [dict(profile, tier=t) for t in TIERS]
    links = [f"{a},{b},0ms,{stream['bandwidth']:.0f}bps" for a, b in zip(TIERS, TIERS[1:])]
    problem = problem_from_profiles(spec, docs, links=links, constraints={"use": list(TIERS)})
    for link in problem.links.values():
        link.message_seconds = stream["message_seconds"]
        link.max_message_bytes = 4194304  # the agents' default maxMessageBytes
    started = time.monotonic()
    runs = []
    for n, (d, e) in enumerate(pairs, 1):
        tag = f"[run {n}/{len(pairs)} {d} / {e}]"
        slices = out / "slices" / f"{d}__{e}"
        if not (slices / "slices.json").exists():
            export_slices(model, graph, resolve_cuts(graph, [d, e]), str(slices))
        samples = []
        for r in range(repeats):
            load = os.getloadavg()[0]
            w = exp.Workload(**{**workload.__dict__, "seed": workload.seed + r})
            si = resource(app, input_shape, [d, e], w, runtime)
            s = exp.run_once(si, slices, netns, partial(exp._tagged, say, tag))
            s["loadavg_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
            samples.append(s)
        run = {
            "split": f"{d} / {e}",
            "device_after": d,
            "edge_after": e,
            "frames": workload.frames,
            "fps": workload.fps,
            **exp.summarize(samples),
            "predicted": exp.predict(problem, [d, e], 0.0),
        }
        runs.append(run)
        say(
            f"{tag} stages predicted {_ms(run['predicted']['stage_seconds'])} measured "
            f"{_ms(run['measured']['stage_seconds'])} ms, drop {run['drop_rate']:.2f}"
        )
    exp.cross_calibrate(problem, runs, 0.0)  # leave-one-out: the online calibration's prediction of each pair
    result = {
        "experiment": "splits",
        "model": spec,
        "input_shape": list(input_shape),
        "runtime": runtime,
        "link_emulation": "netns" if netns else "loopback",
        "workload": {"frames": workload.frames, "fps": workload.fps, "seed": workload.seed, "repeats": repeats},
        "split_points": points,
        "profile": {
            "call_seconds": profile["call_seconds"],
            "blocks_seconds": sum(b["time"] for b in profile["blocks"]),
        },
        "stream": stream,
        "wall_seconds": round(time.monotonic() - started, 1),
        "runs": runs,
        "prediction_error": exp.prediction_error(runs),
        "calibrated_error": exp.prediction_error(runs, "calibrated"),
    }
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(markdown(result) + "\n" + exp.error_summary(result) + "\n")
    return result


def _ms(stages: dict) -> str:
    return " / ".join(f"{1e3 * stages[t]:.2f}" if stages.get(t) is not None else "—" for t in TIERS)


def markdown(result: dict) -> str:
    lines = [
        f"# {result['model']} at {tuple(result['input_shape'])}, three local tiers on "
        f"{result.get('runtime', 'tensorflow')}",
        "",
        "| Split (device / edge) | predicted stage ms (device / edge / cloud) | measured | predicted latency ms |"
        " measured | drop |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["runs"]:
        lat = r["measured"]["latency_seconds"]
        lines.append(
            f"| {r['split']} | {_ms(r['predicted']['stage_seconds'])} | {_ms(r['measured']['stage_seconds'])} | "
            f"{1e3 * r['predicted']['latency_seconds']:.2f} | {'—' if lat is None else f'{1e3 * lat:.2f}'} | "
            f"{r['drop_rate']:.2f} |"
        )
    return "\n".join(lines) + "\n"
