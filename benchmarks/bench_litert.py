"""Per-slice compute, TensorFlow vs LiteRT, side by side in one run: prints figures, asserts nothing.

    PYTHONPATH=src python benchmarks/bench_litert.py [--quick] [--threads N]

For each model and split (CNN14 at conv2d,flatten; MobileNetV2 96×96 at block_6_expand_relu,block_13_expand_relu)
the slices are written by `splitdnn slice`'s code, then every slice is timed on one frame (batch 1), interleaved so
both runtimes see the same machine load:
- tf:      the SavedModel's `serving_default` signature as the TensorFlow agent calls it (tf.constant in, .numpy out);
- litert:  `LiteRTSlice.compute` (the LiteRT runtime the agent would use: dict in, dict out, XNNPACK);
- invoke:  the bare interpreter set_tensor / invoke / get_tensor on the same model (the runtime's own overhead is
           litert − invoke);
- stage:   the LiteRT runtime called through the agent's Stage worker thread, as a tier computes a frame: the time
           the Stage itself observes (what `splitdnn_stage_compute_seconds` records) and the caller's round trip
           through the thread. "stage overhead" = stage − invoke (the framework's cost per call; goal ≤ 0.1 ms).
Medians of per-call times in ms, and the speed-up tf / litert.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

CASES = [
    ("cnn14", None, ["conv2d", "flatten"]),
    ("keras.applications.MobileNetV2", (96, 96, 3), ["block_6_expand_relu", "block_13_expand_relu"]),
]


def timed(fn, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def callers(tf, signature, runtime, feed):
    """The three ways of computing one slice on `feed`: TF signature, LiteRT runtime, bare interpreter."""
    it = runtime._interpreter
    ins = [(index, feed[name]) for name, index, _ in runtime._in]
    outs = [index for _, index in runtime._out]

    def tf_call():
        return {n: v.numpy() for n, v in signature(**{n: tf.constant(v) for n, v in feed.items()}).items()}

    def litert_call():
        return runtime.compute(feed)

    def invoke():
        for index, value in ins:
            it.set_tensor(index, value)
        it.invoke()
        return [it.get_tensor(i) for i in outs]

    return tf_call, litert_call, invoke


def staged(runtime, feed):
    """The runtime behind the agent's Stage thread: a call function (the caller's round trip) and the list the
    Stage's own per-frame timing lands in."""
    from splitdnn.agent.stage import Stage

    took: list[float] = []
    stage = Stage(runtime.compute, on_done=took.append, queue_size=1, name="bench")
    return (lambda: stage(feed)), took


def bench_case(model_spec, shape, points, calls: int, rounds: int, threads: int) -> None:
    import numpy as np
    import tensorflow as tf

    from splitdnn.agent.litert_runtime import load
    from splitdnn.agent.source import zero_frame
    from splitdnn.graph import build_graph
    from splitdnn.models import load_model
    from splitdnn.slicer import export_slices, resolve_cuts

    model = load_model(model_spec, shape)
    graph = build_graph(model)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = export_slices(model, graph, resolve_cuts(graph, points), tmp)
        print(f"\n{model_spec} split at {','.join(points)}  (threads={threads}, {rounds}×{calls} calls per slice)")
        print(
            f"{'slice':8} {'tf ms':>9} {'litert ms':>10} {'invoke ms':>10} {'stage ms':>9} {'via stage':>10} "
            f"{'stage-invoke':>13} {'tf/litert':>10}  {'max|tf-litert|':>14}"
        )
        rng = np.random.default_rng(0)
        for entry in manifest["slices"]:
            feed = {k: rng.random(v.shape, dtype=np.float32) for k, v in zero_frame(entry["inputs"]).items()}
            signature = tf.saved_model.load(str(Path(tmp) / entry["path"])).signatures["serving_default"]
            runtime = load(tmp, entry["name"], threads=threads)

            tf_call, litert_call, invoke = callers(tf, signature, runtime, feed)
            via_stage, stage_took = staged(runtime, feed)
            diff = max(float(np.abs(tf_call()[n] - litert_call()[n]).max()) for n in litert_call())
            times: dict[str, list[float]] = {"tf": [], "litert": [], "invoke": [], "via stage": []}
            fns = (("tf", tf_call), ("litert", litert_call), ("invoke", invoke), ("via stage", via_stage))
            for _, fn in fns:
                timed(fn, max(3, calls // 10))  # warm up
            stage_took.clear()
            for _ in range(rounds):
                for key, fn in fns:
                    times[key] += timed(fn, calls)
            times["stage"] = list(stage_took)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            print(
                f"{entry['name']:8} {med['tf']:9.3f} {med['litert']:10.3f} {med['invoke']:10.3f} "
                f"{med['stage']:9.3f} {med['via stage']:10.3f} {med['stage'] - med['invoke']:13.3f} "
                f"{med['tf'] / med['litert']:9.1f}×  {diff:14.2e}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls")
    parser.add_argument("--threads", type=int, default=1, help="LiteRT (XNNPACK) threads")
    args = parser.parse_args()
    calls, rounds = (20, 3) if args.quick else (100, 5)
    for model_spec, shape, points in CASES:
        bench_case(model_spec, shape, points, calls, rounds, args.threads)


if __name__ == "__main__":
    main()
