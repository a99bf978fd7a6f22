"""Cho 2021's CNN14 experiment (issue #6): 8 split-point pairs × 3 network configurations, plus the planner's split.

Pure core (configs as data, the SplitInference per run, the planner problem, the writers) and one runner that
starts the same `splitdnn agent` processes as `splitdnn run` (network namespaces when available, else loopback).
The CLI shell is `splitdnn experiment cho2021` (see docs/experiment.md).

Link mapping (the paper delays each *container's* traffic, in and out, with tc; we delay each tier's *outgoing*
messages once, in-process when the kernel has no sch_netem). A message from container A to container B pays
A's out-delay plus B's in-delay. Results travel back along the gRPC chain (cloud → edge → device), so in the paper
the result pays cloud out + edge in + edge out + device in. Our agents charge the last tier's delay on the result
it returns and nothing when a middle tier relays it, so the last tier's link carries the whole return path:

    device → edge    = dev + edge                    (2.5 + 2.5 = 5 ms)
    edge   → cloud   = edge + cloud                  (2.5 + 250 = 252.5 ms; Type 3: 1002.5 ms)
    cloud  → device  = cloud + edge + edge + dev     (250 + 2.5 + 2.5 + 2.5 = 257.5 ms; Type 3: 1007.5 ms)

Ring per frame: 515 ms (Types 1, 2), 2015 ms (Type 3), exactly the paper's sum of per-packet delays.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

MODEL = "cnn14"
TIERS = ("device", "edge", "cloud")
# the paper's 1-based layer numbers (Table 1) -> our CNN14 layer names
LAYERS = {
    1: "conv2d",
    3: "max_pooling2d",
    8: "batch_normalization_1",
    9: "conv2d_4",
    10: "max_pooling2d_2",
    11: "flatten",
}
# the paper's table order: device side after layer 1 or 3, cloud side after layer 8, 9, 10 or 11
PAIRS = tuple((d, e) for d in (1, 3) for e in (8, 9, 10, 11))
# what one gRPC stream message (chunk) costs, sender and receiver together, when not measured (measure_chunk_seconds
# is what the experiment uses); the planner sees chunking as a bandwidth maxMessageBytes / chunk cost
CHUNK_SECONDS = 1e-3
DEFAULT_BANDWIDTH = 1e9  # bytes/s of a loopback gRPC stream when not measured (measure_stream is)
WARMUP_FRAMES = 3  # sent one at a time before each run's counted frames (see docs/experiment.md)


@dataclass(frozen=True)
class Config:
    number: int
    overhead: tuple  # overheadRatio per tier (the paper's ×10/×5/×1)
    latency_ms: tuple  # the paper's per-container latency (in and out), per tier
    max_bytes: int  # the paper's "max throughput": max serialized bytes per message

    def link_delays_ms(self) -> tuple:
        """Each tier's outgoing-link delay (ms) that reproduces the paper's per-container delays; see module doc."""
        lat = self.latency_ms
        n = len(lat)
        out = [lat[k] + lat[k + 1] for k in range(n - 1)]
        out.append(lat[-1] + 2 * sum(lat[1:-1]) + lat[0])  # the result: back through every middle container
        return tuple(out)

    def ring_seconds(self) -> float:
        return sum(self.link_delays_ms()) / 1e3


CONFIGS = {
    1: Config(1, (10, 5, 1), (2.5, 2.5, 250.0), 500_000),
    2: Config(2, (10, 5, 1), (2.5, 2.5, 250.0), 50_000),
    3: Config(3, (10, 5, 1), (2.5, 2.5, 1000.0), 500_000),
}

# Cho 2021, Tables 3-5: split label -> (time for 50 frames in s, frame drop rate)
PAPER = {
    1: {
        "Conv2D - BatchNormalization": (49.7454, 0.18),
        "Conv2D - Conv2D": (49.7391, 0.14),
        "Conv2D - MaxPooling2D": (49.7301, 0.34),
        "Conv2D - Flatten": (49.8100, 0.18),
        "MaxPooling2D - BatchNormalization": (49.8244, 0.16),
        "MaxPooling2D - Conv2D": (49.8072, 0.18),
        "MaxPooling2D - MaxPooling2D": (50.2666, 0.22),
        "MaxPooling2D - Flatten": (49.5615, 0.20),
    },
    2: {
        "Conv2D - BatchNormalization": (50.7831, 0.68),
        "Conv2D - Conv2D": (49.5615, 0.78),
        "Conv2D - MaxPooling2D": (50.2550, 0.62),
        "Conv2D - Flatten": (50.2487, 0.64),
        "MaxPooling2D - BatchNormalization": (49.3895, 0.68),
        "MaxPooling2D - Conv2D": (49.3894, 0.66),
        "MaxPooling2D - MaxPooling2D": (48.3246, 0.56),
        "MaxPooling2D - Flatten": (47.8205, 0.60),
    },
    3: {
        "Conv2D - BatchNormalization": (49.8217, 0.28),
        "Conv2D - Conv2D": (49.7521, 0.22),
        "Conv2D - MaxPooling2D": (49.7888, 0.08),
        "Conv2D - Flatten": (49.7549, 0.08),
        "MaxPooling2D - BatchNormalization": (49.8062, 0.14),
        "MaxPooling2D - Conv2D": (49.7817, 0.08),
        "MaxPooling2D - MaxPooling2D": (49.7446, 0.12),
        "MaxPooling2D - Flatten": (49.7721, 0.10),
    },
}

DEADLINE_SLACK = 0.1  # seconds a frame may take beyond the ring's propagation delay (2 frame periods at 20 fps)


@dataclass(frozen=True)
class Workload:
    frames: int = 50
    fps: float = 20.0
    seed: int = 0
    deadline_slack: float = DEADLINE_SLACK
    warmup: int = WARMUP_FRAMES

    def deadline(self, config: Config) -> float:
        """Ring propagation + slack: a frame is late once it has waited `slack` beyond the network's own delay."""
        return round(config.ring_seconds() + self.deadline_slack, 4)

    def max_inflight(self, config: Config) -> int:
        """Enough in flight that admission never refuses a frame that could still meet its deadline: drops then
        come from the pipeline itself (late frames, full queues), which is what the split decides."""
        return max(8, math.ceil(self.fps * self.deadline(config)) + 1)


# ---- layers and labels -------------------------------------------------------------------------------------------

_CLASSES: dict = {}


def layer_classes() -> dict:
    """{layer name: Keras class name} of CNN14 (built once; TensorFlow import)."""
    if not _CLASSES:
        from splitdnn.graph import build_graph
        from splitdnn.models import load_model

        _CLASSES.update({l.name: l.cls for l in build_graph(load_model(MODEL)).layers})
    return _CLASSES


def split_label(device_after: str, edge_after: str, classes: dict | None = None) -> str:
    classes = classes if classes is not None else layer_classes()
    return f"{classes[device_after]} - {classes[edge_after]}"


def fixed_splits() -> list[tuple[str, str]]:
    return [(LAYERS[d], LAYERS[e]) for d, e in PAIRS]


# ---- the SplitInference of one run ---------------------------------------------------------------------------------


RUNTIMES = ("tensorflow", "litert")


def split_inference(
    config: Config, device_after: str, edge_after: str, workload: Workload, runtime: str = "tensorflow"
) -> dict:
    """The SplitInference resource (a dict, valid against the CRD) for one (config, split) run; every tier serves
    with `runtime` (the paper's setup: tensorflow)."""
    from splitdnn.units import format_duration

    delays = config.link_delays_ms()
    tiers = []
    for k, name in enumerate(TIERS):
        tiers.append(
            {
                "name": name,
                "runtime": runtime,  # named: the CRD's default (auto) would run converted slices on LiteRT
                "overheadRatio": config.overhead[k],
                "maxMessageBytes": config.max_bytes,
                "netem": {"delay": f"{delays[k]:g}ms"},
            }
        )
    return {
        "apiVersion": "splitdnn.io/v1alpha1",
        "kind": "SplitInference",
        "metadata": {"name": f"cho2021-type{config.number}"},
        "spec": {
            "model": {"builtin": MODEL},
            "splitPoints": [device_after, edge_after],
            "tiers": tiers,
            "workload": {
                "fps": workload.fps,
                "frames": workload.frames,
                "deadline": format_duration(workload.deadline(config)),
                "maxInFlight": workload.max_inflight(config),
                "source": "synthetic",
                "seed": workload.seed,
                "warmupFrames": workload.warmup,
            },
            "planner": {"mode": "fixed", "objective": "throughput"},
        },
    }


# ---- the planner's split -----------------------------------------------------------------------------------------


def planner_problem(
    config: Config,
    profile: dict,
    chunk_seconds: float = CHUNK_SECONDS,
    call_seconds: float | None = None,
    bandwidth: float = DEFAULT_BANDWIDTH,
):
    """Planner problem for one config, in the served-stage cost model: per tier, block times = the profile
    measured on this machine × (1 + overhead ratio) and a fixed call cost = the profile's `call_seconds` (what one
    served call costs besides its layers; `call_seconds` overrides it) × (1 + ratio); links = the config's one-way
    delays, the measured stream `bandwidth`, and chunking as a per-message cost: `chunk_seconds` per message of at
    most maxMessageBytes. Every tier must run at least one block (a slice cannot be empty)."""
    from splitdnn.planner.profile import problem_from_profiles

    call = float(profile.get("call_seconds", 0.0) or 0.0) if call_seconds is None else call_seconds
    docs = []
    for k, tier in enumerate(TIERS):
        doc = json.loads(json.dumps(profile))
        doc["tier"] = tier
        doc["call_seconds"] = call * (1 + config.overhead[k])
        for b in doc["blocks"]:
            b["time"] = float(b["time"]) * (1 + config.overhead[k])
        docs.append(doc)
    delays = config.link_delays_ms()
    links = [f"{TIERS[k]},{TIERS[k + 1]},{delays[k]:g}ms,{bandwidth:.0f}bps" for k in range(len(TIERS) - 1)]
    problem = problem_from_profiles(MODEL, docs, links=links, constraints={"use": list(TIERS)})
    for link in problem.links.values():
        link.message_seconds = chunk_seconds
        link.max_message_bytes = config.max_bytes
    return problem


def predict(problem, points: Sequence[str], back_delay: float, fps: float | None = None) -> dict:
    """The cost model's figures for one split (its split points): stage time per tier, bottleneck, and the
    end-to-end latency a frame source measures: the planner's forward path plus the result's way back (the last
    tier's delay `back_delay`, charged once, and the result as one hop of the last link's kind)."""
    from splitdnn.planner import evaluate_plan
    from splitdnn.planner.deploy import split_of

    p = evaluate_plan(problem, split_of(problem, list(points)), fps=fps)
    tiers = list(problem.tiers)
    back = problem.links[(tiers[-2], tiers[-1])]
    result_bytes = problem.blocks[-1].out_bytes
    ret = back_delay + result_bytes / back.bandwidth + back.messages(result_bytes) * back.message_seconds
    return {
        "stage_seconds": {t: round(v, 6) for t, v in p.compute.items()},
        "bottleneck_seconds": round(p.bottleneck, 6),
        "latency_seconds": round(p.latency + ret, 6),
    }


def planner_split(
    config: Config,
    profile: dict,
    fps: float,
    call_seconds: float | None = None,
    chunk_seconds: float = CHUNK_SECONDS,
    bandwidth: float = DEFAULT_BANDWIDTH,
) -> dict:
    """The planner's recommendation (objective throughput at `fps`) and its predicted figures."""
    from splitdnn.planner import evaluate_plan
    from splitdnn.planner.deploy import split_of

    problem = planner_problem(config, profile, chunk_seconds, call_seconds, bandwidth)
    choice = best_split(problem, fps)
    predicted = {}
    for d, e in fixed_splits() + [(choice["device_after"], choice["edge_after"])]:
        p = evaluate_plan(problem, split_of(problem, [d, e]), fps=fps)
        predicted[f"{d},{e}"] = {"bottleneck_s": p.bottleneck, "latency_s": p.latency, "drop_rate": p.drop_rate}
    return {**choice, "predicted": predicted}


def best_split(problem, fps: float) -> dict:
    """The planner's best split of `problem` (objective throughput at `fps`) and its predicted figures."""
    from splitdnn.planner import plan
    from splitdnn.planner.deploy import points_of

    best = plan(problem, objective="throughput", top=1, fps=fps)[0]
    device_after, edge_after = points_of(problem, best)
    return {
        "device_after": device_after,
        "edge_after": edge_after,
        "bottleneck_s": best.bottleneck,
        "latency_s": best.latency,
        "drop_rate": best.drop_rate,
    }


def measure_chunk_seconds(total_bytes: int = 1_000_000, chunks: int = 20, repeats: int = 15) -> float:
    """What one more stream message costs on this machine (`measure_stream`'s `message_seconds`)."""
    return measure_stream(total_bytes, chunks, repeats)["message_seconds"]


def measure_stream(total_bytes: int = 1_000_000, chunks: int = 20, repeats: int = 15) -> dict:
    """The link terms of the cost model on this machine: the same `total_bytes` sent to a loopback gRPC server
    as one message and as `chunks` messages (a bidirectional stream that joins them and acknowledges, like the
    agents' PredictChunked). `message_seconds` = the median difference / (chunks - 1); `bandwidth` (bytes/s) =
    total_bytes / (the one-message median - message_seconds)."""
    from concurrent import futures

    import grpc

    from splitdnn.agent.server import GRPC_OPTIONS
    from splitdnn.agent.wire import split_chunks

    def join(request_iterator, context):
        yield str(len(b"".join(request_iterator))).encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("splitdnn.Bench", {"Join": grpc.stream_stream_rpc_method_handler(join)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    data = os.urandom(total_bytes)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) as channel:
            call = channel.stream_stream("/splitdnn.Bench/Join")

            def send(pieces) -> float:
                t0 = time.perf_counter()
                assert b"".join(call(iter(pieces), timeout=30)) == str(total_bytes).encode()
                return time.perf_counter() - t0

            one, many = [data], split_chunks(data, -(-total_bytes // chunks))
            for _ in range(3):
                send(one), send(many)
            ones, diffs = [], []
            for _ in range(repeats):
                a, b = send(one), send(many)
                ones.append(a)
                diffs.append(b - a)
    finally:
        server.stop(None)
    return stream_costs(ones, diffs, total_bytes, chunks)


def stream_costs(ones: list[float], diffs: list[float], total_bytes: int, chunks: int) -> dict:
    """`measure_stream`'s arithmetic on its timings: `ones` (one message) and `diffs` (`chunks` messages minus one,
    same bytes). A loaded machine can make the median difference negative: the per-message cost is then 0."""
    message = max(0.0, statistics.median(diffs) / (chunks - 1))
    return {"message_seconds": message, "bandwidth": total_bytes / max(statistics.median(ones) - message, 1e-9)}


# ---- running -----------------------------------------------------------------------------------------------------


def export_pair(directory: Path, device_after: str, edge_after: str) -> Path:
    """Slice CNN14 at the pair once (SavedModels), reused by every config and repeat."""
    from splitdnn.graph import build_graph
    from splitdnn.models import load_model
    from splitdnn.slicer import export_slices, resolve_cuts

    out = directory / f"{device_after}__{edge_after}"
    if not (out / "slices.json").exists():
        model = load_model(MODEL)
        graph = build_graph(model)
        export_slices(model, graph, resolve_cuts(graph, [device_after, edge_after]), str(out))
    return out


def run_once(resource: dict, slices: Path, netns: bool, say: Callable[[str], None] = lambda m: None) -> dict:
    """One run of a SplitInference on pre-exported slices with `splitdnn run`'s agents (`agent.local.run_local`);
    the source's summary. Ctrl-C stops the whole experiment, not just this run."""
    from splitdnn.agent.local import run_local
    from splitdnn.spec import from_resource

    chain = _new_chain(len(resource["spec"]["tiers"])) if netns else None
    try:
        result = run_local(from_resource(resource), slices=str(slices), chain=chain, say=say)
    finally:
        if chain is not None:
            chain.destroy()
    if result["interrupted"]:
        raise KeyboardInterrupt
    out = {k: result[k] for k in ("offered", "completed", "dropped", "late", "failed", "drop_rate")}
    out["time_s"] = round(result["source_seconds"], 4)
    out["latency_mean_seconds"] = result.get("latency_mean_seconds")
    out["stage_seconds_mean"] = {t["name"]: t["stage_seconds_mean"] for t in result["tiers"]}
    out["runtimes"] = {t["name"]: t["runtime"] for t in result["tiers"]}  # what each agent said it computes with
    if result.get("last_error"):
        out["last_error"] = result["last_error"]
    return out


_CHAINS = itertools.count()


def _new_chain(tiers: int):
    """A fresh namespace chain with names and addresses of its own: the kernel removes a deleted namespace's veths
    asynchronously, so reusing the previous run's names can fail with "File exists"."""
    from splitdnn.agent.netns import Chain

    for attempt in range(5):
        n = next(_CHAINS)
        try:
            return Chain(
                tiers, octet=10 + (os.getpid() + 7 * n) % 200, tag=f"{os.getpid() % 1000:03d}{n % 100:02d}"
            ).create()
        except RuntimeError:
            if attempt == 4:
                raise
            time.sleep(1.0)


def summarize(samples: Sequence[dict]) -> dict:
    """Median over repeats (time_s, drop_rate) with min/max, the measured stage time per tier and end-to-end
    latency (medians of the repeats' means), and the repeats themselves."""
    times = [s["time_s"] for s in samples]
    drops = [s["drop_rate"] for s in samples]
    stages: dict[str, list[float]] = {}
    for s in samples:
        for t, v in (s.get("stage_seconds_mean") or {}).items():
            if v is not None:
                stages.setdefault(t, []).append(v)
    latencies = [s["latency_mean_seconds"] for s in samples if s.get("latency_mean_seconds") is not None]
    return {
        "measured": {
            "stage_seconds": {t: round(statistics.median(v), 6) for t, v in stages.items()},
            "latency_seconds": round(statistics.median(latencies), 6) if latencies else None,
        },
        "time_s": round(statistics.median(times), 4),
        "drop_rate": round(statistics.median(drops), 4),
        "time_s_min": round(min(times), 4),
        "time_s_max": round(max(times), 4),
        "drop_rate_min": round(min(drops), 4),
        "drop_rate_max": round(max(drops), 4),
        "repeats": list(samples),
    }


def run_experiment(
    configs: Sequence[int],
    workload: Workload,
    out: Path,
    repeats: int = 1,
    pairs: Sequence[int] | None = None,
    planner: bool = True,
    netns: bool | None = None,
    say: Callable[[str], None] = lambda m: None,
    replan: bool = True,
    runtime: str = "tensorflow",
) -> dict:
    """Run every (config, split pair) `repeats` times, plus the planner's split per config; write the outputs.
    `replan`: as the operator's feedback loop does once it has measurements, the planner's split is chosen again
    from the cost model calibrated (`planner.calibrate`) on the fixed pairs' measured stage times of the first
    repeat, trying a new choice once and re-planning with its measurement (`loop_replan`), before the planner's
    own first run (`planner[config].replanned`); without it, from the profiles only. `runtime`: what every tier
    serves with and the profile measures (`tensorflow`, the paper's setup, or `litert`)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r}: expected {' or '.join(RUNTIMES)}")
    out.mkdir(parents=True, exist_ok=True)
    if netns is None:
        from splitdnn.agent.netns import available

        netns, why = available()
        say(
            "network namespaces: one per tier, joined by veth pairs"
            if netns
            else f"network namespaces unavailable ({why}): running on loopback"
        )
    elif not netns:
        say("running on loopback (network namespaces not requested)")
    chosen = [fixed_splits()[i - 1] for i in pairs] if pairs else fixed_splits()
    classes = layer_classes()
    slices_dir = out / "slices"
    profile, chunk_seconds, bandwidth = None, CHUNK_SECONDS, DEFAULT_BANDWIDTH
    if planner:
        from splitdnn.planner.profile import profile_model

        say(f"profiling CNN14 blocks through the serving path ({runtime}) on this machine for the planner…")
        profile = profile_model(MODEL, tier="local", warmup=5, repeats=50, progress=False, runtime=runtime)
        say(f"served-slice call cost {profile['call_seconds'] * 1e3:.3f} ms (besides the layers)")
        stream = measure_stream()
        chunk_seconds, bandwidth = stream["message_seconds"], stream["bandwidth"]
        say(f"one more gRPC stream message costs {chunk_seconds * 1e3:.3f} ms; stream {bandwidth / 1e6:.0f} MB/s")
    runs: list[dict] = []
    plans: dict[int, dict] = {}
    problems = (
        {c: planner_problem(CONFIGS[c], profile, chunk_seconds, None, bandwidth) for c in configs} if profile else {}
    )
    todo: list[tuple[int, str | None, str | None, bool]] = []
    for c in configs:
        config = CONFIGS[c]
        todo += [(c, d, e, False) for d, e in chosen]
        if profile is not None:
            rec = planner_split(config, profile, workload.fps, None, chunk_seconds, bandwidth)
            rec["call_seconds"] = profile["call_seconds"]
            rec["chunk_seconds"] = chunk_seconds
            rec["bandwidth"] = bandwidth
            plans[c] = rec
            say(
                f"config {c}: planner recommends {rec['device_after']} / {rec['edge_after']} "
                f"({split_label(rec['device_after'], rec['edge_after'], classes)}), predicted bottleneck "
                f"{rec['bottleneck_s'] * 1e3:.1f} ms, drop {rec['drop_rate']:.2f} at {workload.fps:g} fps"
            )
            todo.append((c, None, None, True))  # after the config's fixed pairs: it may re-plan from them
    started = time.monotonic()
    samples: dict[tuple[int, str | None, str | None, bool], list[dict]] = {item: [] for item in todo}
    # repeat r of every run before repeat r + 1 of any: a trend in the machine's load spreads over all pairs
    # instead of falling on the pairs that happened to run during it
    for r in range(repeats):
        w = replace(workload, seed=workload.seed + r)
        for n, item in enumerate(todo, 1):
            c, d, e, is_plan = item
            if is_plan:
                if replan and "replanned" not in plans[c]:
                    fixed = {(fd, fe): v for (fc, fd, fe, p), v in samples.items() if fc == c and not p}
                    plans[c]["replanned"] = loop_replan(
                        problems[c],
                        fixed,
                        workload.fps,
                        _explorer(CONFIGS[c], w, slices_dir, netns, say, classes, runtime),
                        say,
                    )
                    again = plans[c]["replanned"]
                    say(
                        f"config {c}: re-planned from {again['observed_runs']} measured runs "
                        f"({len(again['explored'])} explored): {again['device_after']} / {again['edge_after']} "
                        f"({split_label(again['device_after'], again['edge_after'], classes)}), calibrated "
                        f"bottleneck {again['bottleneck_s'] * 1e3:.1f} ms, drop {again['drop_rate']:.2f}"
                    )
                chosen_plan = plans[c].get("replanned") or plans[c]
                d, e = chosen_plan["device_after"], chosen_plan["edge_after"]
            assert d is not None and e is not None
            label = split_label(d, e, classes)
            tag = f"[run {n}/{len(todo)} config {c} {label}{' (planner)' if is_plan else ''} repeat {r + 1}/{repeats}]"
            say(f"{tag} starting agents")
            load = os.getloadavg()[0]
            s = run_once(
                split_inference(CONFIGS[c], d, e, w, runtime),
                export_pair(slices_dir, d, e),
                netns,
                partial(_tagged, say, tag),
            )
            s["loadavg_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]  # before, after
            samples[item].append(s)
            say(
                f"{tag} time {s['time_s']:.2f} s, drop {s['drop_rate']:.2f}, load {s['loadavg_1min'][1]:.1f} "
                f"({s['completed']} completed, {s['dropped']} dropped, {s['late']} late, {s['failed']} failed)"
            )
    for item in todo:
        c, d, e, is_plan = item
        if is_plan:
            chosen_plan = plans[c].get("replanned") or plans[c]
            d, e = chosen_plan["device_after"], chosen_plan["edge_after"]
        assert d is not None and e is not None
        runs.append(
            {
                "config": c,
                "split": split_label(d, e, classes),
                "device_after": d,
                "edge_after": e,
                "frames": workload.frames,
                "fps": workload.fps,
                **summarize(samples[item]),
                "planner": is_plan,
                **(
                    {"predicted": predict(problems[c], [d, e], CONFIGS[c].link_delays_ms()[-1] / 1e3)}
                    if problems
                    else {}
                ),
            }
        )
    result = {
        "experiment": "cho2021",
        "model": MODEL,
        "runtime": runtime,
        "link_emulation": "netns" if netns else "loopback",
        "workload": {
            "frames": workload.frames,
            "fps": workload.fps,
            "seed": workload.seed,
            "repeats": repeats,
            "warmup_frames": workload.warmup,
            "deadline_s": {c: workload.deadline(CONFIGS[c]) for c in configs},
            "max_inflight": {c: workload.max_inflight(CONFIGS[c]) for c in configs},
        },
        "configs": {
            c: {
                "overhead": CONFIGS[c].overhead,
                "latency_ms": CONFIGS[c].latency_ms,
                "max_bytes": CONFIGS[c].max_bytes,
                "link_delays_ms": CONFIGS[c].link_delays_ms(),
            }
            for c in configs
        },
        "planner": plans,
        "wall_seconds": round(time.monotonic() - started, 1),
        "runs": runs,
        "prediction_error": prediction_error(runs),
    }
    if problems:
        for c in configs:
            cross_calibrate(problems[c], [r for r in runs if r["config"] == c], CONFIGS[c].link_delays_ms()[-1] / 1e3)
        result["calibrated_error"] = prediction_error(runs, "calibrated")
    write_outputs(result, out)
    return result


def replan_from_runs(problem, measured: Mapping[tuple[str | None, str | None], Sequence[dict]], fps: float) -> dict:
    """The planner's split (objective throughput at `fps`) from `problem` calibrated on measured runs
    ({(device_after, edge_after): run summaries with "stage_seconds_mean"}) — the fit the feedback loop makes."""
    from splitdnn.planner.calibrate import Calibration
    from splitdnn.planner.deploy import split_of

    cal = Calibration()
    observed = 0
    for (d, e), summaries in measured.items():
        for s in summaries:
            if d is not None and e is not None and s.get("stage_seconds_mean"):
                cal.observe(problem, split_of(problem, [d, e]), s["stage_seconds_mean"], float(observed))
                observed += 1
    return {**best_split(cal.apply(problem), fps), "observed_runs": observed}


MAX_EXPLORE = 3  # splits the loop emulation may try before it settles


def loop_replan(
    problem,
    measured: Mapping[tuple[str | None, str | None], Sequence[dict]],
    fps: float,
    run: Callable[[str, str], tuple[str, dict]],
    say: Callable[[str], None] = lambda m: None,
) -> dict:
    """The feedback loop's re-planning, window by window: re-plan from the calibration of every split measured so
    far (`replan_from_runs`); a split not measured yet is run once (`run(device_after, edge_after)` → (what it
    ran, its summary), as the
    loop deploys it and measures a window) and the plan is made again with that measurement, until the choice is
    a split already measured or MAX_EXPLORE splits were tried. A first re-plan extrapolates the calibrated lines
    beyond the slices observed; the measurement of the split it chose corrects them, as in the operator."""
    seen = {k: list(v) for k, v in measured.items()}
    explored: list[dict] = []
    while True:
        choice = replan_from_runs(problem, seen, fps)
        key = (choice["device_after"], choice["edge_after"])
        if key in seen or len(explored) == MAX_EXPLORE:
            return {**choice, "explored": explored}
        what, s = run(key[0], key[1])
        say(f"{what}: drop {s['drop_rate']:.2f}, stage ms {_ms(s.get('stage_seconds_mean'))}")
        seen[key] = [s]
        explored.append(
            {
                "device_after": key[0],
                "edge_after": key[1],
                "predicted_bottleneck_s": choice["bottleneck_s"],
                "drop_rate": s["drop_rate"],
                "stage_seconds_mean": s.get("stage_seconds_mean"),
            }
        )


def _explorer(
    config: Config,
    w: Workload,
    slices_dir: Path,
    netns: bool,
    say: Callable[[str], None],
    classes,
    runtime: str = "tensorflow",
):
    """`loop_replan`'s `run`: one run of a split of `config`, tagged as the loop's exploration."""

    def run(device_after: str, edge_after: str) -> tuple[str, dict]:
        tag = f"[config {config.number} {split_label(device_after, edge_after, classes)} (loop: exploring)]"
        resource = split_inference(config, device_after, edge_after, w, runtime)
        slices = export_pair(slices_dir, device_after, edge_after)
        return tag, run_once(resource, slices, netns, partial(_tagged, say, tag))

    return run


def _ms(stages: Mapping[str, float | None] | None) -> str:
    return " / ".join("—" if v is None else f"{v * 1e3:.1f}" for v in (stages or {}).values())


def cross_calibrate(problem, runs: Sequence[dict], back_delay: float) -> None:
    """What the online calibration (`planner.calibrate`, the closed loop's code) makes of the measurements:
    each run gets `"calibrated"` — the prediction after fitting the stage times measured in every *other* run
    of the same problem (leave one out, so a run's own measurement never predicts it)."""
    from splitdnn.planner.calibrate import Calibration
    from splitdnn.planner.deploy import split_of

    for r in runs:
        cal = Calibration()
        for k, o in enumerate(runs):
            if o is not r and o.get("measured"):
                split = split_of(problem, [o["device_after"], o["edge_after"]])
                cal.observe(problem, split, o["measured"]["stage_seconds"], float(k))
        split = split_of(problem, [r["device_after"], r["edge_after"]])
        r["calibrated"] = predict(cal.apply(problem, split), [r["device_after"], r["edge_after"]], back_delay)


def prediction_error(runs: Sequence[dict], key: str = "predicted") -> dict | None:
    """Absolute percentage error (fractions) of the predicted stage times (every tier of every run) and end-to-end
    latencies: median and p90. None when no run has both a prediction and a measurement. `key`: "predicted" (the
    cost model from profiles) or "calibrated" (`cross_calibrate`)."""
    import numpy as np

    stage, latency = [], []
    for r in runs:
        pred, meas = r.get(key), r.get("measured")
        if not pred or not meas:
            continue
        for t, m in (meas.get("stage_seconds") or {}).items():
            if m and t in pred["stage_seconds"]:
                stage.append(abs(pred["stage_seconds"][t] - m) / m)
        if meas.get("latency_seconds"):
            latency.append(abs(pred["latency_seconds"] - meas["latency_seconds"]) / meas["latency_seconds"])
    if not stage and not latency:
        return None

    def q(xs: list[float], p: float) -> float | None:
        return round(float(np.percentile(xs, p)), 4) if xs else None

    return {
        "stage_median": q(stage, 50),
        "stage_p90": q(stage, 90),
        "latency_median": q(latency, 50),
        "latency_p90": q(latency, 90),
    }


def error_summary(result: dict) -> str:
    """The prediction error summary (what `splitdnn experiment` prints): the profiles' cost model, and after the
    online calibration when it was computed."""
    e = result.get("prediction_error")
    if not e:
        return "prediction error: no predictions (run with the planner)"

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{100 * x:.1f} %"

    def line(what: str, e: dict) -> str:
        return (
            f"{what}: stage time median {pct(e['stage_median'])}, p90 {pct(e['stage_p90'])}; "
            f"end-to-end latency median {pct(e['latency_median'])}, p90 {pct(e['latency_p90'])}"
        )

    out = line(f"prediction error (absolute, over {len(result['runs'])} runs)", e)
    if result.get("calibrated_error"):
        out += "\n" + line("after calibration (fit to the other runs' measurements)", result["calibrated_error"])
    return out


# ---- outputs -----------------------------------------------------------------------------------------------------


def write_outputs(result: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "results.json", out / "results.md"]
    files[0].write_text(json.dumps(result, indent=1) + "\n")
    files[1].write_text(markdown(result) + "\n" + error_summary(result) + "\n")
    for c in sorted({r["config"] for r in result["runs"]}):
        files.append(plot_config(result, c, out / f"config{c}.png"))
    return files


def _spread(run: dict, key: str, fmt: str) -> str:
    lo, hi = run.get(f"{key}_min"), run.get(f"{key}_max")
    text = format(run[key], fmt)
    if lo is not None and hi is not None and len(run.get("repeats", [])) > 1:
        text += f" [{format(lo, fmt)}–{format(hi, fmt)}]"
    return text


def _stages(run: dict) -> str:
    """Median over repeats of each tier's mean stage time (compute + overhead), ms."""
    cells = []
    for tier in TIERS:
        xs = [
            rep["stage_seconds_mean"][tier]
            for rep in run.get("repeats", [])
            if (rep.get("stage_seconds_mean") or {}).get(tier) is not None
        ]
        cells.append(f"{statistics.median(xs) * 1e3:.1f}" if xs else "—")
    return " / ".join(cells)


def _load(run: dict) -> str:
    """The host's 1-minute load average after each repeat (2 cores here): what the drops mostly follow."""
    xs = [rep["loadavg_1min"][1] for rep in run.get("repeats", []) if rep.get("loadavg_1min")]
    return ", ".join(f"{x:.0f}" for x in xs) or "—"


def best_fixed(runs: Sequence[dict]) -> dict | None:
    """The best fixed pair: lowest median drop rate, then lowest median time."""
    fixed = [r for r in runs if not r["planner"]]
    return min(fixed, key=lambda r: (r["drop_rate"], r["time_s"])) if fixed else None


def markdown(result: dict) -> str:
    w = result["workload"]
    lines = [
        f"# Cho 2021 CNN14 experiment — {w['frames']} frames at {w['fps']:g} fps, "
        f"{w['repeats']} repeat(s), links: {result['link_emulation']}, runtime: {result.get('runtime', 'tensorflow')}",
        "",
    ]
    if w["repeats"] > 1:
        lines += ["Ours: median [min–max] over the repeats.", ""]
    for c in sorted({r["config"] for r in result["runs"]}):
        runs = [r for r in result["runs"] if r["config"] == c]
        cfg = result["configs"][c] if c in result["configs"] else result["configs"][str(c)]
        lines += [
            f"## Configuration {c}",
            "",
            f"overhead ×{'/×'.join(f'{x:g}' for x in cfg['overhead'])}, latency "
            f"{'/'.join(f'{x:g}' for x in cfg['latency_ms'])} ms (links "
            f"{' / '.join(f'{x:g}' for x in cfg['link_delays_ms'])} ms), max message {cfg['max_bytes']:,} B",
            "",
            "| Split point | Time (s) | Frame drop | Paper time (s) | Paper frame drop "
            "| stage ms device / edge / cloud | load |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        paper = PAPER.get(int(c), {})
        for r in runs:
            name = r["split"] + (f" (planner: {r['device_after']} / {r['edge_after']})" if r["planner"] else "")
            pt, pd = paper.get(r["split"], (None, None)) if not r["planner"] else (None, None)
            lines.append(
                f"| {name} | {_spread(r, 'time_s', '.4f')} | {_spread(r, 'drop_rate', '.2f')} | "
                f"{'—' if pt is None else f'{pt:.4f}'} | {'—' if pd is None else f'{pd:.2f}'} | "
                f"{_stages(r)} | {_load(r)} |"
            )
        best = best_fixed(runs)
        plan = next((r for r in runs if r["planner"]), None)
        if best and plan:
            ok = plan["drop_rate"] <= best["drop_rate"]
            lines += [
                "",
                f"Planner: {plan['split']} ({plan['device_after']} / {plan['edge_after']}), drop "
                f"{plan['drop_rate']:.2f} vs best fixed pair {best['split']} {best['drop_rate']:.2f}: "
                f"{'not worse' if ok else 'WORSE'}.",
            ]
        lines.append("")
    return "\n".join(lines)


def plot_config(result: dict, c: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result["runs"] if r["config"] == c]
    labels = [r["split"].replace(" - ", "-\n") + ("\n(planner)" if r["planner"] else "") for r in runs]
    x = list(range(len(runs)))
    paper = PAPER.get(int(c), {})
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.2 * len(runs)), 7), sharex=True)
    for ax, key, title in ((axes[0], "time_s", "time for the frames (s)"), (axes[1], "drop_rate", "frame drop rate")):
        vals = [r[key] for r in runs]
        lo = [max(0.0, r[key] - r.get(f"{key}_min", r[key])) for r in runs]  # the median is rounded
        hi = [max(0.0, r.get(f"{key}_max", r[key]) - r[key]) for r in runs]
        colors = ["tab:orange" if r["planner"] else "tab:blue" for r in runs]
        ax.bar(x, vals, color=colors, yerr=[lo, hi], capsize=3, label="ours (median, min–max)")
        px = [i for i, r in enumerate(runs) if not r["planner"] and r["split"] in paper]
        if key == "time_s" and px and max(vals) < 0.2 * min(paper[runs[i]["split"]][0] for i in px):
            ax.set_title("Cho 2021's times (≈ 50 s at ≈ 1 fps) are off this scale: see results.md", fontsize=8)
            px = []
        if px:
            ax.scatter(
                px,
                [paper[runs[i]["split"]][0 if key == "time_s" else 1] for i in px],
                color="black",
                marker="x",
                zorder=3,
                label="Cho 2021",
            )
        ax.set_ylabel(title)
        ax.legend(loc="best", fontsize=8)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels(labels, fontsize=7)
    w = result["workload"]
    fig.suptitle(f"Configuration {c}: {w['frames']} frames at {w['fps']:g} fps ({result['link_emulation']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _tagged(say: Callable[[str], None], tag: str, message: str) -> None:
    say(f"{tag} {message}")


def say_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
