"""A cooperative group on this machine: N worker processes, one per device, driven by a coordinator over loopback TCP
(`multiprocessing.connection`: pickled numpy parts). Each worker loads the same `.keras` model and computes the parts
`splitdnn.coop.compute_part` defines; the coordinator scatters, gathers and runs what no device can.

The protocol is stateless: for every block the coordinator sends each device all the input values its part needs
and gets its whole result back (the MLS cost model assumes devices keep their outputs and exchange only the values
another device lacks, so the group moves more bytes than the model charges; `run_plan` reports both sides).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Client, Listener
from typing import Any


def _worker(address, authkey: bytes, model_path: str, threads: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from splitdnn.coop import compute_part, describe, plan_block
    from splitdnn.models import load_model

    model = load_model(model_path)
    layers, geoms, plans = list(model.layers), describe(model), {}
    with Client(address, authkey=authkey) as conn:
        conn.send(os.getpid())
        while True:
            msg = conn.recv()
            if msg is None:
                return
            if msg[0] == "echo":
                conn.send(msg[1])
                continue
            started = time.perf_counter()
            if msg[0] == "local":
                y = np.asarray(model(msg[1], training=False))
            else:
                _, block, device, part = msg
                if block not in plans:
                    plans[block] = plan_block(geoms, *block)
                y = compute_part(layers, geoms, plans[block], device, part)
            conn.send((y, time.perf_counter() - started))


@dataclass
class BlockStats:
    block: tuple
    seconds: float  # wall time of the round at the coordinator
    device_compute_seconds: list[float]
    bytes_sent: int
    bytes_received: int


@dataclass
class Group:
    """`Group(model_path, n)` starts n workers (spawned processes) and waits until they have loaded the model."""

    model_path: str
    size: int
    threads: int = 1  # TensorFlow threads per worker: one core, like a small device
    start_timeout: float = 300.0
    conns: list[Any] = field(default_factory=list)
    procs: list[Any] = field(default_factory=list)

    def __post_init__(self):
        import multiprocessing as mp

        authkey = secrets.token_bytes(16)
        listener = Listener(("127.0.0.1", 0), authkey=authkey)
        ctx = mp.get_context("spawn")
        self.procs = [
            ctx.Process(target=_worker, args=(listener.address, authkey, self.model_path, self.threads), daemon=True)
            for _ in range(self.size)
        ]
        for p in self.procs:
            p.start()
        accepted: list[Any] = []

        def accept():
            for _ in range(self.size):
                conn = listener.accept()
                conn.recv()  # the pid: the worker has loaded its model
                accepted.append(conn)

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        t.join(self.start_timeout)
        listener.close()
        if len(accepted) < self.size:
            self.close()
            raise RuntimeError(f"only {len(accepted)} of {self.size} workers started within {self.start_timeout:g} s")
        self.conns = accepted
        self._pool = ThreadPoolExecutor(self.size)

    def _ask(self, device: int, msg):
        self.conns[device].send(msg)
        return self.conns[device].recv()

    def echo_seconds(self, nbytes: int, repeats: int = 5) -> float:
        """Median round trip of `nbytes` to worker 0 and back (the loopback link the group uses)."""
        import numpy as np

        payload = np.zeros(nbytes // 4, "float32")
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            self._ask(0, ("echo", payload))
            times.append(time.perf_counter() - started)
        return sorted(times)[len(times) // 2]

    def run_plan(self, model, geoms, blocks, x):
        """Run blocks [(first, last, devices, mode)] (mode 'local': the whole model on worker 0); returns the output
        and per-block stats."""
        import numpy as np

        from splitdnn.coop import gather, plan_block, scatter

        layers, stats = list(model.layers), []
        for block in blocks:
            started = time.perf_counter()
            if block[3] == "local":
                y, compute = self._ask(0, ("local", x))
                stats.append(BlockStats(block, time.perf_counter() - started, [compute], x.nbytes, y.nbytes))
                x = y
                continue
            plan = plan_block(geoms, *block)
            parts = scatter(plan, x)
            futures = {
                d: self._pool.submit(self._ask, d, ("part", tuple(block), d, p))
                for d, p in enumerate(parts)
                if p is not None
            }
            answers = {d: f.result() for d, f in futures.items()}
            results = [answers[d][0] if d in answers else None for d in range(len(parts))]
            y = gather(layers, geoms, plan, results, x)
            stats.append(
                BlockStats(
                    tuple(block),
                    time.perf_counter() - started,
                    [a[1] for a in answers.values()],
                    sum(int(np.asarray(p).nbytes) for p in parts if p is not None),
                    sum(int(r.nbytes) for r in results if r is not None),
                )
            )
            x = y
        return x, stats

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
                conn.close()
            except OSError:
                pass
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
        if hasattr(self, "_pool"):
            self._pool.shutdown(wait=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
