"""The operator without TensorFlow, side by side with the operator that loaded models itself: prints figures,
asserts nothing.

    PYTHONPATH=src python benchmarks/bench_operator.py

For CNN14 and MobileNetV2 at 96×96 (155 layers), each in a fresh process (one after the other, same machine):
- before:  the old operator path: plan from a graph built in process (`plan.model_summary`: TensorFlow and Keras
           imported, the model built) — what every operator pod did per model before the model Job;
- after:   the operator's path now: plan from the graph document the model Job stored (`GraphSummary.from_json`),
           TensorFlow never imported (checked: not in sys.modules);
each: seconds to the first plan (imports included) and peak RSS (VmHWM).
Also the model Job's own cost on this machine (`artifacts.build` into a local store: graph, then slices) and a
second build of the same model and split (what a second SplitInference, a pod restart or a rollout costs: no
TensorFlow work), and the image sizes when Docker has them (splitdnn/operator:dev now; the agent image is what
the operator image held before: the whole package with TensorFlow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CASES = [
    ("cnn14", None, ["conv2d", "flatten"]),
    ("keras.applications.MobileNetV2", [96, 96, 3], ["block_6_expand_relu", "block_13_expand_relu"]),
]

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
mode, source, shape, doc = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
from splitdnn.controller import plan as plan_mod
from splitdnn.graph import GraphSummary
from splitdnn.spec import from_resource
if mode == "before":
    summary = plan_mod.model_summary(source, tuple(shape) if shape else None)
else:
    summary = GraphSummary.from_json(json.load(open(doc)))
model = {"builtin": source} if source == "cnn14" else {"kerasApplication": source.split(".")[-1], "inputShape": shape}
points = [summary.layers[len(summary.layers) // 3], summary.layers[2 * len(summary.layers) // 3]]
si = from_resource({"apiVersion": "splitdnn.io/v1alpha1", "kind": "SplitInference", "metadata": {"name": "b"},
                    "spec": {"model": model, "splitPoints": points, "tiers": [{"name": t} for t in ("d", "e", "c")]}})
plan = plan_mod.build_plan(si, summary)
seconds = time.perf_counter() - t0
# VmHWM: this process's peak RSS (ru_maxrss would carry the parent's over the fork)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "rss_mib": hwm / 1024, "tensorflow": "tensorflow" in sys.modules,
                  "layers": len(summary.layers), "tiers": len(plan["tiers"])}))
"""


def probe(mode: str, source: str, shape, doc: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode, source, json.dumps(shape), str(doc)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def image_size(name: str) -> str:
    p = subprocess.run(["docker", "image", "inspect", name, "--format", "{{.Size}}"], capture_output=True, text=True)
    return f"{int(p.stdout) / 1e6:,.0f} MB" if p.returncode == 0 and p.stdout.strip() else "not built"


def main() -> None:
    from splitdnn import artifacts

    with tempfile.TemporaryDirectory() as tmp:
        server = artifacts.start_server(Path(tmp) / "store")
        store = artifacts.Store(f"http://127.0.0.1:{server.server_address[1]}")
        print(
            f"{'model':<32} {'layers':>6} {'plan: before':>14} {'after':>8} {'RSS before':>11} {'after':>8}  TF after"
        )
        builds = []
        for source, shape, points in CASES:
            t0 = time.perf_counter()
            report = artifacts.build(store, source, shape, split_points=points)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            again = artifacts.build(store, source, shape, split_points=points)
            second = time.perf_counter() - t0
            builds.append((source, first, report["built"], second, again["built"]))
            ref = store.get_ref("models", report["key"])
            doc = Path(tmp) / "graph.json"
            doc.write_text(json.dumps(ref["graph"]))
            before, after = probe("before", source, shape, doc), probe("after", source, shape, doc)
            print(
                f"{source:<32} {after['layers']:>6} {before['seconds']:>12.2f} s {after['seconds']:>6.2f} s "
                f"{before['rss_mib']:>7.0f} MiB {after['rss_mib']:>4.0f} MiB  {after['tensorflow']}"
                f"   (before/after: {before['seconds'] / after['seconds']:.0f}× time, "
                f"{before['rss_mib'] / after['rss_mib']:.1f}× RSS)"
            )
        server.shutdown()
    print()
    print(f"{'model Job (artifacts.build)':<32} {'first':>8}  built{'':<28} {'second':>8}  built")
    for source, first, built, second, rebuilt in builds:
        print(f"{source:<32} {first:>6.1f} s  {', '.join(built):<33} {second:>6.2f} s  {', '.join(rebuilt) or '-'}")
    print()
    print(
        f"images: splitdnn/operator:dev {image_size('splitdnn/operator:dev')} (no TensorFlow); "
        f"splitdnn/agent:dev {image_size('splitdnn/agent:dev')} (what the operator image was: the package with TF)"
    )


if __name__ == "__main__":
    main()
