"""Data-plane benchmark: prints figures, asserts nothing.

    PYTHONPATH=src python benchmarks/bench_agent.py [--quick]

1. per-hop overhead on loopback for 10 kB, 1 MB and 10 MB tensors: numpy -> TensorProto -> serialized
   PredictRequest -> the agent's `Downstream.forward` (unary when it fits one message, else a chunked gRPC stream
   with an acknowledgement) -> parsed -> numpy at the receiver (the agents' own code path without compute), chunks
   of 4 MB and of 500 kB (Cho 2021's max message size), next to a bare grpcio unary echo of the same bytes (bytes
   back) and a bare send (empty reply) in the same run, and the ratios (goal: hop ≤ 1.2 × echo);
2. sustained throughput of a 3-tier CNN14 pipeline (no link delays) driven far above capacity, against
   1 / bottleneck stage time measured in the same run: the example's overhead 10/5/1 on TensorFlow, then
   overheadRatio 0 on TensorFlow and on LiteRT side by side;
3. end-to-end latency of examples/cnn14.yaml (Cho 2021 Type 1) measured, against the physical model
   Σ stage time + Σ (link latency + bytes / bandwidth) from the same run's measurements.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def _sink_server(port_queue):
    """The receiving end of a hop without compute: the agent's link methods parse the request into numpy and
    reply empty; beside them a bare grpcio echo (bytes in, the same bytes back) and a bare send (empty reply)."""
    from concurrent import futures

    import grpc

    from splitdnn.agent import messages
    from splitdnn.agent.server import GRPC_OPTIONS, SERVER_SECONDS
    from splitdnn.agent.wire import tensors_of

    def chunked(request_iterator, context):
        data = b"".join(request_iterator)
        yield b""  # the acknowledgement
        tensors_of(messages.PredictRequest.FromString(data).inputs)
        yield b""

    def one(data, context):
        start = time.monotonic()
        tensors_of(messages.PredictRequest.FromString(data).inputs)
        context.set_trailing_metadata(((SERVER_SECONDS, f"{time.monotonic() - start:.6f}"),))
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(4), options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("splitdnn.Link", {
        "PredictChunked": grpc.stream_stream_rpc_method_handler(chunked),
        "PredictOne": grpc.unary_unary_rpc_method_handler(one)}),))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Bare", {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda data, context: data),
        "Send": grpc.unary_unary_rpc_method_handler(lambda data, context: b"")}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_queue.put(port)
    server.wait_for_termination()


def per_hop(repeats: int) -> None:
    """The agent's own hop (`Downstream.forward`: unary when the request fits one message, else a chunked stream)
    beside a bare grpcio unary echo and send of the same serialized bytes, interleaved in one run."""
    import grpc
    import numpy as np

    from splitdnn.agent.downstream import Downstream
    from splitdnn.agent.link import LinkEmulator, LinkParams
    from splitdnn.agent.metrics import AgentMetrics
    from splitdnn.agent.server import GRPC_OPTIONS
    from splitdnn.agent.wire import predict_request

    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_sink_server, args=(queue,), daemon=True)
    proc.start()
    port = queue.get(timeout=120)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
    echo, send = channel.unary_unary("/bench.Bare/Echo"), channel.unary_unary("/bench.Bare/Send")
    print("\n1. per-hop overhead on loopback (serialize + the agent's hop + deserialize), median of", repeats)
    print(f"{'tensor':>8} {'chunk':>8} {'path':>6} {'serialize':>10} {'hop ms':>8} {'echo ms':>8} {'send ms':>8} "
          f"{'hop/echo':>9} {'hop/send':>9}")
    for size in (10_000, 1_000_000, 10_000_000):
        array = np.random.default_rng(0).random(size // 4, dtype=np.float32)
        for chunk in (4 * 1024 * 1024, 500_000):
            link = Downstream(f"127.0.0.1:{port}", LinkEmulator(LinkParams()), AgentMetrics("bench", "bench"), chunk)
            ser, hop, echoed, sent = [], [], [], []
            for _ in range(repeats + 1):  # interleaved, so all see the same machine load
                t0 = time.perf_counter()
                data = predict_request("bench", {"x": array}).SerializeToString()
                t1 = time.perf_counter()
                link.forward(data, timeout=60)
                t2 = time.perf_counter()
                echo(data, timeout=60, wait_for_ready=True)
                t3 = time.perf_counter()
                send(data, timeout=60, wait_for_ready=True)
                t4 = time.perf_counter()
                ser.append(t1 - t0)
                hop.append(t2 - t0)
                echoed.append(t3 - t2)
                sent.append(t4 - t3)
            ser, hop, e, b = (statistics.median(v[1:]) for v in (ser, hop, echoed, sent))
            path = "unary" if len(data) <= chunk else "stream"
            print(f"{size / 1e6:>7.2f}M {chunk / 1e6:>7.2f}M {path:>6} {ser * 1e3:>10.2f} {hop * 1e3:>8.2f} "
                  f"{e * 1e3:>8.2f} {b * 1e3:>8.2f} {hop / e:>8.2f}× {hop / b:>8.2f}×")
            link.close()
    channel.close()
    proc.terminate()


def _cnn14(overrides: dict):
    from splitdnn.spec import load_file

    si = load_file(ROOT / "examples" / "cnn14.yaml")[0]
    si.spec = copy.deepcopy(si.spec)
    for tier in si.spec["tiers"]:
        tier.update(overrides.get("tier", {}))
    si.spec["workload"].update(overrides.get("workload", {}))
    return si


def throughput(frames: int) -> None:
    from splitdnn.agent.local import run_local

    print("\n2. sustained throughput, CNN14 conv2d|flatten, no link delay, offered far above capacity")
    print("   (2 shared cores run all three tiers, their gRPC threads and the source)")
    for label, tier, fps in (
        ("tensorflow, overhead 10/5/1, offered  200 fps", {"runtime": "tensorflow"}, 200),
        ("tensorflow, overheadRatio 0, offered 2000 fps", {"runtime": "tensorflow", "overheadRatio": 0}, 2000),
        ("litert,     overheadRatio 0, offered 2000 fps", {"runtime": "litert", "overheadRatio": 0}, 2000),
    ):
        n = frames * fps // 200  # about the same seconds of source at each rate
        si = _cnn14({"tier": {"netem": {}, **tier}, "workload": {"fps": fps, "frames": n, "maxInFlight": 16,
                                                                 "deadline": "10s"}})
        r = run_local(si, quiet=True)
        returned = r["completed"] + r["late"]
        stages = {t["name"]: t["stage_seconds_mean"] for t in r["tiers"]}
        bottleneck = max(stages.values())
        fps = returned / r["source_seconds"]
        print(f"   {label}: {fps:6.1f} fps ({returned} of {r['offered']} returned in {r['source_seconds']:.1f} s); "
              f"1/bottleneck {1 / bottleneck:.1f} fps; drop rate {r['drop_rate'] * 100:.1f}%; stage ms "
              + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in stages.items()))


def latency(frames: int) -> None:
    from splitdnn.agent.local import run_local
    from splitdnn.units import parse_duration

    si = _cnn14({"workload": {"frames": frames}})
    r = run_local(si, quiet=True)
    compute = sum(t["stage_seconds_mean"] for t in r["tiers"])
    links = 0.0
    parts = []
    for spec, t in zip(si.tiers, r["tiers"]):
        delay = parse_duration(spec.get("netem", {}).get("delay", "0s"))
        per_frame = t["link_bytes"] / max(t["frames"], 1)
        bw = t["link_bandwidth_bytes_per_second"]
        links += delay + (per_frame / bw if bw else 0.0)
        parts.append(f"{spec['name']}: {delay * 1e3:g} ms + {per_frame:,.0f} B / "
                     + (f"{bw / 1e6:.1f} MB/s" if bw else "∞ (not measurable: latency-dominated)"))
    model = compute + links
    print(f"\n3. end-to-end latency, examples/cnn14.yaml (Cho 2021 Type 1), {frames} frames at 5 fps")
    print(f"   measured mean {r['latency_mean_seconds'] * 1e3:.1f} ms; physical model {model * 1e3:.1f} ms "
          f"= Σ stage {compute * 1e3:.1f} ms + Σ links {links * 1e3:.1f} ms; "
          f"completed {r['completed']}/{r['offered']}")
    for p in parts:
        print(f"     {p}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and frames")
    args = parser.parse_args()
    per_hop(5 if args.quick else 15)
    throughput(400 if args.quick else 1200)
    latency(15 if args.quick else 50)


if __name__ == "__main__":
    main()
