"""gRPC stream link terms on this machine: prints figures, asserts nothing.

    PYTHONPATH=src python benchmarks/bench_stream.py

What one more stream message costs (`experiment.measure_stream`'s `message_seconds`) and the loopback bandwidth, for
a few sizes and chunk counts, side by side in one run (the figures tests/test_experiment.py used to assert: "10
messages cost more than 1, well under 10 ms each" is a property of an unloaded machine, not of the code).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


def main() -> None:
    from splitdnn.experiment import CHUNK_SECONDS, DEFAULT_BANDWIDTH, measure_stream

    print(f"defaults when not measured: {CHUNK_SECONDS * 1e3:.3f} ms/message, {DEFAULT_BANDWIDTH / 1e6:.0f} MB/s")
    print(f"{'bytes':>10} {'chunks':>6} {'ms/message':>11} {'MB/s':>9} {'message / default':>18}")
    for total, chunks in ((200_000, 10), (1_000_000, 20), (10_000_000, 20)):
        costs = measure_stream(total_bytes=total, chunks=chunks, repeats=15)
        print(
            f"{total:>10} {chunks:>6} {costs['message_seconds'] * 1e3:>11.3f} {costs['bandwidth'] / 1e6:>9.1f}"
            f" {costs['message_seconds'] / CHUNK_SECONDS:>18.2f}"
        )


if __name__ == "__main__":
    main()
