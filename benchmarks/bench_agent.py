"""Data-plane benchmark: prints figures, asserts nothing.

    PYTHONPATH=src python benchmarks/bench_agent.py [--quick]

1. per-hop overhead on loopback for 10 kB, 1 MB and 10 MB tensors: numpy -> TensorProto -> serialized
   PredictRequest -> chunked gRPC stream -> parsed -> numpy at the receiver -> acknowledgement (the agents' own
   code path without compute), chunks of 4 MB and of 500 kB (Cho 2021's max message size), next to a bare grpcio
   unary call of the same bytes in the same run (bytes in, empty reply: the floor any gRPC hop pays) and the
   ratio hop / bare (goal ≤ 1.2);
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
    from concurrent import futures

    import grpc
    from tensorflow_serving.apis import predict_pb2

    from splitdnn.agent.server import GRPC_OPTIONS
    from splitdnn.agent.wire import tensors_of

    def chunked(request_iterator, context):
        request = predict_pb2.PredictRequest.FromString(b"".join(request_iterator))
        tensors_of(request.inputs)
        yield b""

    def bare(request, context):  # raw bytes in (no deserializer), an empty reply
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(4), options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "splitdnn.Link", {"PredictChunked": grpc.stream_stream_rpc_method_handler(chunked)}),))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Bare", {"Send": grpc.unary_unary_rpc_method_handler(bare)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_queue.put(port)
    server.wait_for_termination()


def per_hop(repeats: int) -> None:
    import grpc
    import numpy as np

    from splitdnn.agent.server import CHUNKED_METHOD, GRPC_OPTIONS
    from splitdnn.agent.wire import predict_request, split_chunks

    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_sink_server, args=(queue,), daemon=True)
    proc.start()
    port = queue.get(timeout=120)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
    push = channel.stream_stream(CHUNKED_METHOD)
    send = channel.unary_unary("/bench.Bare/Send")
    print("\n1. per-hop overhead on loopback (serialize + gRPC chunked stream + deserialize + ack), median of", repeats)
    print(f"{'tensor':>8} {'chunk':>8} {'serialize ms':>13} {'hop ms':>9} {'bare ms':>9} {'hop/bare':>9} {'MB/s':>8}")
    for size in (10_000, 1_000_000, 10_000_000):
        array = np.random.default_rng(0).random(size // 4, dtype=np.float32)
        for chunk in (4 * 1024 * 1024, 500_000):
            ser, hop, floor = [], [], []
            for _ in range(repeats + 1):  # interleaved, so both see the same machine load
                t0 = time.perf_counter()
                data = predict_request("bench", {"x": array}).SerializeToString()
                t1 = time.perf_counter()
                next(push(iter(split_chunks(data, chunk)), timeout=60, wait_for_ready=True))
                t2 = time.perf_counter()
                send(data, timeout=60, wait_for_ready=True)
                t3 = time.perf_counter()
                ser.append(t1 - t0)
                hop.append(t2 - t0)
                floor.append(t3 - t2)
            ser, hop, bare = statistics.median(ser[1:]), statistics.median(hop[1:]), statistics.median(floor[1:])
            print(f"{size / 1e6:>7.2f}M {chunk / 1e6:>7.2f}M {ser * 1e3:>13.2f} {hop * 1e3:>9.2f} {bare * 1e3:>9.2f} "
                  f"{hop / bare:>8.2f}× {size / hop / 1e6:>8.1f}")
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
