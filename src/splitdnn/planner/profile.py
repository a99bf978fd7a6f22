"""Per-block profiling on this machine, and assembling planner problems from a model plus tier profiles.

Blocks are :func:`splitdnn.planner.blocks.blocks_of` of the model's graph summary: the layers between consecutive
single-tensor boundaries (default), or between consecutive boundaries of any kind (``multi_tensor=True``). Each
block is served the way a tier serves its slice: exported as a SavedModel slice, loaded by the agent's runtime
and called through the agent's Stage thread on random inputs of the right shape (the Stage's own timing, what
``splitdnn_stage_compute_seconds`` records): ``warmup`` untimed calls, then ``repeats`` timed ones; the block's
time is the median minus the median cost of an empty served call (an identity slice), clamped at 0 -- so a tier
running k blocks as one slice is not charged k call overheads; that fixed cost is ``call_seconds``, which the
planner charges once per used tier (``Problem.call_seconds``). The empty call is timed alternately with each block's
calls, not once up front: on a busy machine (three profiling Jobs starting on one host) a cost measured during a
burst would otherwise swallow every block timed after it. Raw medians and samples are kept in the file;
``overhead_s`` is the median over all blocks.

Profile file (``splitdnn profile MODEL --tier NAME --out FILE``)::

    {"format": "splitdnn.profile/1", "model": "cnn14", "tier": "device", "multi_tensor": false,
     "runtime": "tensorflow", "input_bytes": 3136, "warmup": 3, "repeats": 10, "call_seconds": 0.0004,
     "overhead_s": 0.0004, "host": "...",
     "blocks": [{"name": "conv2d", "layers": [0, 1], "time": 0.0021, "median_s": 0.0025, "call_s": 0.0004,
                 "samples_s": [...], "out_bytes": 86528, "flops": 123456}]}
"""

from __future__ import annotations

import json
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from .blocks import BlockInfo, assemble, blocks_of
from .problem import Problem, ProblemError

FORMAT = "splitdnn.profile/1"


def _random_inputs(graph, names, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    xs = []
    for n in names:
        t = graph.tensors[n]
        shape = tuple(1 if d is None else d for d in t.shape)
        dtype = t.dtype if t.dtype != "string" else "float32"
        if "int" in dtype:
            xs.append(rng.integers(0, 2, size=shape).astype(dtype))
        else:
            xs.append(rng.standard_normal(shape).astype(dtype))
    return xs


def time_paired(
    fn: Callable[[], object],
    ref: Callable[[], object],
    warmup: int,
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[float], list[float]]:
    """Like time_calls for two functions, alternating them call by call, so both see the same machine load.
    Returns (fn's durations, ref's durations)."""
    for _ in range(warmup):
        fn()
        ref()
    a: list[float] = []
    b: list[float] = []
    for _ in range(repeats):
        for f, out in ((fn, a), (ref, b)):
            t0 = clock()
            f()
            out.append(clock() - t0)
    return a, b


def time_calls(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """`warmup` untimed calls, then the durations (s) of `repeats` timed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def _served(
    slices_dir: str, name: str, feed_of: Callable[[list], dict], runtime_name: str = "tensorflow"
) -> tuple[Callable[[], object], list[float], str]:
    """Slice `name` loaded by the agent's runtime (`runtime_name`: as the agent's --runtime) and called through the
    agent's Stage (its worker thread): a call function, the list the Stage's own timing (what
    `splitdnn_stage_compute_seconds` observes) lands in, and the runtime that computes it."""
    from splitdnn.agent import runtime
    from splitdnn.agent.stage import Stage

    rt = runtime.load(slices_dir, name, runtime_name)
    took: list[float] = []
    stage = Stage(rt.compute, on_done=took.append, queue_size=1, name=f"profile-{name}")
    feed = rt.validate(feed_of(rt.entry.inputs))
    return partial(stage, feed), took, rt.name


def profile_model(
    spec: str,
    tier: str,
    warmup: int = 3,
    repeats: int = 10,
    multi_tensor: bool = False,
    progress: bool = True,
    input_shape: Sequence[int] | None = None,
    runtime: str = "tensorflow",
) -> dict:
    """Measure per-block compute time and the fixed per-call cost of model `spec` on this machine, through the
    serving path: every block is exported as a slice (`slicer.export_slices`), loaded by the agent's runtime
    (`agent.runtime.load` with `runtime`: tensorflow, litert or auto, as the agent's --runtime) and called through
    the agent's Stage thread, exactly as a tier serves it; the fixed call cost is the same for an identity slice (a
    32-byte tensor). A block's time is its median minus the median call cost; the call cost is reported as
    `call_seconds`; each block says which runtime computed it. Returns the profile document."""
    import tempfile

    import keras

    from splitdnn.graph import build_graph
    from splitdnn.models import load_model
    from splitdnn.slicer import export_slices

    if warmup < 0 or repeats < 1:
        raise ValueError("need warmup >= 0 and repeats >= 1")
    model = load_model(spec, input_shape)
    graph = build_graph(model)
    blocks: list[dict[str, Any]] = [dict(b) for b in blocks_of(graph.summary(), multi_tensor)]
    inp = keras.Input((8,), name="x")
    ident = keras.Model(inp, keras.layers.Identity(name="y")(inp), name="identity")
    calls: list[float] = []

    def random_feed(g: Any, specs: list) -> dict:
        names = [t["name"] for t in specs]
        return dict(zip(names, _random_inputs(g, names)))

    with tempfile.TemporaryDirectory(prefix="splitdnn-profile-") as tmp:
        tflite = runtime != "tensorflow"  # (converting every block costs time only LiteRT needs)
        export_slices(ident, (ig := build_graph(ident)), [], f"{tmp}/empty", tflite=tflite)
        empty, empty_took, _ = _served(f"{tmp}/empty", "slice0", partial(random_feed, ig), runtime)
        export_slices(model, graph, [b["layers"][1] for b in blocks[:-1]], f"{tmp}/blocks", tflite=tflite)

        def run_all(advance: Callable[[], None]) -> None:
            for k, b in enumerate(blocks):
                call, took, b["runtime"] = _served(f"{tmp}/blocks", f"slice{k}", partial(random_feed, graph), runtime)
                del empty_took[:]
                time_paired(call, empty, warmup, repeats)
                samples, refs = took[-repeats:], empty_took[-repeats:]
                med, ref = statistics.median(samples), statistics.median(refs)
                calls.extend(refs)
                b.update({"time": max(0.0, med - ref), "median_s": med, "call_s": ref, "samples_s": samples})
                advance()

        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(
                TextColumn("[bold]profiling {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=False,
            ) as prog:
                task = prog.add_task(f"{spec} on {tier}", total=len(blocks))
                run_all(lambda: prog.advance(task))
        else:
            run_all(lambda: None)
    call_seconds = statistics.median(calls) if calls else 0.0
    return {
        "format": FORMAT,
        "model": spec,
        "tier": tier,
        "multi_tensor": multi_tensor,
        "runtime": runtime,  # the agent's --runtime, called through its Stage thread (each block: which computed it)
        "input_bytes": int(graph.input_bytes),
        "warmup": warmup,
        "repeats": repeats,
        "call_seconds": call_seconds,  # the fixed cost of one served call (an identity slice)
        "overhead_s": call_seconds,  # the same figure under its earlier name
        "host": platform.node(),
        "machine": platform.machine(),
        "blocks": blocks,
    }


def load_profile(path: str) -> dict:
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise ProblemError(f"cannot read profile {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ProblemError(f"{path}: not valid JSON: {exc}") from None
    return _check_profile(doc, path)


def _check_profile(doc, where: str) -> dict:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("blocks"), list):
        raise ProblemError(
            f"{where}: not a splitdnn profile (expected format {FORMAT!r}; make one with "
            f"`splitdnn profile MODEL --tier NAME --out FILE`)"
        )
    return doc


_SPEED = re.compile(r"^([0-9.eE+-]+)\s*(flops|kflops|mflops|gflops|tflops)?$", re.I)
_SPEED_UNITS = {None: 1.0, "flops": 1.0, "kflops": 1e3, "mflops": 1e6, "gflops": 1e9, "tflops": 1e12}


def parse_estimate(text: str) -> tuple[str, str, float]:
    """'edge=20gflops' -> ('edge', 'flops', 2e10); 'cloud=x0.1' -> ('cloud', 'ratio', 0.1)."""
    if "=" not in text:
        raise ProblemError(f"bad --estimate {text!r}: expected TIER=SPEED (20gflops, 2e10) or TIER=xFACTOR")
    tier, val = text.split("=", 1)
    tier, val = tier.strip(), val.strip()
    if val.lower().startswith("x"):
        try:
            f = float(val[1:])
        except ValueError:
            raise ProblemError(f"bad --estimate {text!r}: factor after 'x' must be a number") from None
        if f < 0:
            raise ProblemError(f"bad --estimate {text!r}: factor must be >= 0")
        return tier, "ratio", f
    m = _SPEED.match(val)
    if not m:
        raise ProblemError(f"bad --estimate {text!r}: SPEED is FLOP/s like 2e10 or 20gflops")
    speed = float(m.group(1)) * _SPEED_UNITS[m.group(2).lower() if m.group(2) else None]
    if speed <= 0:
        raise ProblemError(f"bad --estimate {text!r}: speed must be > 0")
    return tier, "flops", speed


def parse_link(text: str) -> dict:
    from splitdnn.units import parse_duration, parse_rate

    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise ProblemError(f"bad --link {text!r}: expected FROM,TO,LATENCY,RATE like device,edge,5ms,4mbit")
    try:
        return {
            "from": parts[0],
            "to": parts[1],
            "latency": parse_duration(parts[2]),
            "bandwidth": parse_rate(parts[3]),
        }
    except ValueError as exc:
        raise ProblemError(f"bad --link {text!r}: {exc}") from None


def problem_from_profiles(
    model: str,
    profiles: Sequence,
    estimates: Sequence[str] = (),
    links: Sequence[str] = (),
    multi_tensor: bool = False,
    constraints: dict | None = None,
) -> Problem:
    """Tiers = the profiles' tiers in the order given, then the estimated tiers. Blocks come from the first
    profile (or from the model graph when only estimates are given). profiles: file paths or profile documents
    (dicts, e.g. from a ConfigMap); links: "FROM,TO,LATENCY,RATE" strings."""
    docs = [
        (p, load_profile(p))
        if isinstance(p, (str, bytes)) or hasattr(p, "__fspath__")
        else (f"profile[{k}]", _check_profile(p, f"profile[{k}]"))
        for k, p in enumerate(profiles)
    ]
    ests = [parse_estimate(e) for e in estimates]
    if not docs and not ests:
        raise ProblemError("model mode needs at least one --profile FILE or --estimate TIER=SPEED")
    tiers: list[str] = []
    times: dict[str, list[float]] = {}
    calls: dict[str, float] = {}  # profiled fixed call cost per tier (profiles made before it had none: 0)
    blocks: Sequence[dict[str, Any]] | list[BlockInfo]
    if docs:
        ref_path, ref = docs[0]
        blocks = ref["blocks"]
        input_bytes = int(ref.get("input_bytes", 0))
        for path, d in docs:
            if d.get("model") != model:
                raise ProblemError(f"{path} profiles model {d.get('model')!r}, not {model!r}")
            if [b["name"] for b in d["blocks"]] != [b["name"] for b in blocks]:
                raise ProblemError(
                    f"{path} and {ref_path} have different blocks (profiled with different "
                    f"--multi-tensor settings or model versions)"
                )
            if d["tier"] in times:
                raise ProblemError(f"two profiles for tier {d['tier']!r}")
            tiers.append(d["tier"])
            times[d["tier"]] = [float(b["time"]) for b in d["blocks"]]
            calls[d["tier"]] = float(d.get("call_seconds", 0.0) or 0.0)
        if bool(ref.get("multi_tensor")) != bool(multi_tensor):
            raise ProblemError(
                f"profiles were made with multi_tensor={ref.get('multi_tensor')}; pass the same --multi-tensor setting"
            )
    else:
        from splitdnn.graph import build_graph
        from splitdnn.models import load_model

        summary = build_graph(load_model(model)).summary()
        blocks = blocks_of(summary, multi_tensor)
        input_bytes = summary.input_bytes
    for tier, kind, val in ests:
        if tier in times:
            raise ProblemError(f"tier {tier!r} is both profiled and estimated")
        if kind == "ratio":
            if not docs:
                raise ProblemError(f"--estimate {tier}=x{val:g} scales a profiled tier, but no --profile given")
            times[tier] = [x * val for x in times[tiers[0]]]
            calls[tier] = calls.get(tiers[0], 0.0) * val
        else:
            times[tier] = [float(b.get("flops", 0)) / val for b in blocks]
        tiers.append(tier)
    if len(tiers) > 1 and not links:
        raise ProblemError(
            "model mode needs --link FROM,TO,LATENCY,RATE for every hop you allow "
            "(e.g. --link device,edge,5ms,4mbit --link edge,cloud,20ms,100mbit)"
        )
    return assemble(
        tiers,
        blocks,
        times,
        input_bytes,
        [parse_link(l) for l in links],
        constraints,
        model,
        f"model {model}",
        {t: c for t, c in calls.items() if c},
    )
