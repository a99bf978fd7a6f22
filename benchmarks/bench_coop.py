"""Cooperative tier benchmark (CoopAI, issue #20 item 4, local part): prints figures, asserts nothing.

    PYTHONPATH=src python benchmarks/bench_coop.py [--model vgg96|cnn14] [--max-devices 4] [--frames 5]

1. calibrates the MLS cost model on this machine: F = the model's FLOPs / the compute time of one worker process
   (one TensorFlow thread) running every block of the model alone; G = loopback bandwidth from a 4 MB echo;
2. for N = 1 … max-devices: MLS's and SLS's plans for N devices, run by N real worker processes (spawned, talking
   to the coordinator over loopback TCP), median wall time per frame vs the plan's predicted completion time; the
   output is checked against the unsplit model each time;
3. both protocols of `splitdnn.coop_run.Group`: stateless (every round re-sends inputs, gathers outputs) and
   stateful (the paper's: devices keep their outputs and trade only what another device lacks), with the bytes each
   really moved beside the values the cost model charges; "+rounds" adds to the prediction an empty round's time
   (a tiny message to the N workers and back) per block, which the paper's model does not have.

The workers share this machine's cores with each other (and with whatever else runs), unlike the paper's separate
Raspberry Pis: the gap between predicted and measured for N > 1 is mostly that.
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


def vgg96():
    import keras

    keras.utils.set_random_seed(5)
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((96, 96, 3)),
            L.Conv2D(32, 3, padding="same", activation="relu"),
            L.Conv2D(32, 3, padding="same", activation="relu"),
            L.MaxPooling2D(2),
            L.Conv2D(64, 3, padding="same", activation="relu"),
            L.Conv2D(64, 3, padding="same", activation="relu"),
            L.MaxPooling2D(2),
            L.Conv2D(128, 3, padding="same", activation="relu"),
            L.Conv2D(128, 3, padding="same", activation="relu"),
            L.MaxPooling2D(2),
            L.Flatten(),
            L.Dense(256, activation="relu"),
            L.Dense(10, activation="softmax"),
        ],
        name="vgg96",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vgg96", choices=["vgg96", "cnn14"])
    ap.add_argument("--max-devices", type=int, default=4)
    ap.add_argument("--frames", type=int, default=5, help="timed frames per plan (after one warm-up frame)")
    args = ap.parse_args()

    import numpy as np

    from splitdnn import coop
    from splitdnn.coop_run import Group
    from splitdnn.mls import mls, plan_values, sls
    from splitdnn.models import load_model

    model = vgg96() if args.model == "vgg96" else load_model("cnn14")
    geoms = coop.describe(model)
    flops = sum(g.flops for g in geoms)
    x = np.random.default_rng(0).standard_normal((1, *model.input_shape[1:])).astype("float32")
    expected = np.asarray(model(x, training=False))
    tmp = tempfile.mkdtemp(prefix="bench-coop-")
    path = os.path.join(tmp, f"{model.name}.keras")
    model.save(path)
    print(
        f"model {model.name}: {len(geoms)} layers, {flops / 1e6:.1f} MFLOPs; cpus {os.cpu_count()}, "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    started = time.monotonic()
    with Group(path, args.max_devices) as group:
        print(f"{args.max_devices} workers up in {time.monotonic() - started:.1f} s", flush=True)
        platform, compute = group.measure_platform(model, geoms, x, repeats=args.frames, nbytes=4 << 20)
        f_eff, g_eff = platform.flops, platform.bandwidth_bps
        print(
            f"calibration: F = {f_eff / 1e9:.2f} GFLOP/s per worker (median compute of every block on one worker: "
            f"{compute * 1e3:.1f} ms), G = {g_eff / 1e9:.2f} Gbit/s loopback\n",
            flush=True,
        )
        header = (
            f"{'N':>2} {'plan':<4} {'protocol':<9} {'blocks':>6} {'predicted ms':>13} {'+rounds ms':>10} "
            f"{'measured ms':>12} {'meas/pred':>9} {'Σ max dev compute ms':>21} {'bytes moved':>12} {'bytes modelled':>15} "
            f"{'max |diff|':>10}"
        )
        print(header)
        for n in range(1, args.max_devices + 1):
            for name, algo in (("MLS", mls), ("SLS", sls)):
                if n == 1 and name == "SLS":
                    continue
                plan = algo(geoms, n, platform)
                blocks = list(plan.blocks)
                overhead = len(blocks) * group.round_seconds(n) if n > 1 else 0.0
                for protocol in ("stateless", "stateful") if n > 1 else ("local",):
                    stateful = protocol == "stateful"
                    y, _ = group.run_plan(model, geoms, blocks, x, stateful=stateful)  # warm-up
                    walls, computes, moved = [], [], 0
                    for _ in range(args.frames):
                        t0 = time.perf_counter()
                        y, stats = group.run_plan(model, geoms, blocks, x, stateful=stateful)
                        walls.append(time.perf_counter() - t0)
                        computes.append(sum(max(s.device_compute_seconds or [0.0]) for s in stats))
                        moved = sum(s.bytes_sent + s.bytes_received for s in stats)
                    diff = float(np.max(np.abs(y - expected)))
                    measured = statistics.median(walls)
                    print(
                        f"{n:>2} {name:<4} {protocol:<9} {len(blocks):>6} {plan.seconds * 1e3:>13.1f} "
                        f"{(plan.seconds + overhead) * 1e3:>10.1f} "
                        f"{measured * 1e3:>12.1f} {measured / plan.seconds:>9.2f} "
                        f"{statistics.median(computes) * 1e3:>21.1f} {moved:>12} {plan_values(geoms, blocks) * 4:>15} "
                        f"{diff:>10.1e}",
                        flush=True,
                    )
                print(f"   blocks {[list(b) for b in blocks]}", flush=True)


if __name__ == "__main__":
    main()
