"""A cooperative group on this machine: N worker processes, one per device, driven by a coordinator over loopback TCP
(`multiprocessing.connection`: pickled numpy parts). Each worker loads the same `.keras` model and computes the parts
`splitdnn.coop.compute_part` defines; the coordinator scatters, gathers and runs what no device can.

Two protocols. *Stateless*: for every block the coordinator sends each device all the input values its part needs
and gets its whole result back. *Stateful* (the paper's, and what the MLS cost model charges): a device keeps its
output when the block leaves it distributed; for the next block the coordinator fetches from each device only the
values another device needs (τo) and sends each device only the values it lacks (ti); results come back only when
they cannot stay (partial sums, softmax logits, the model's output, a layer the coordinator runs).
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
    from splitdnn.coop import StripeTask, chain_layers, compute_part, describe, owned, plan_block
    from splitdnn.models import load_model

    model = load_model(model_path)
    layers, geoms, plans = chain_layers(model), describe(model), {}
    held: Any = None  # this device's output of the last distributed block, as flat values
    held_range = (0, 0)
    with Client(address, authkey=authkey) as conn:
        conn.send(os.getpid())
        while True:
            msg = conn.recv()
            if msg is None:
                return
            if msg[0] == "echo":
                conn.send(msg[1])
                continue
            if msg[0] == "fetch":  # flat ranges of what it holds, for other devices or the coordinator
                conn.send([held[:, lo - held_range[0] : hi - held_range[0]] for lo, hi in msg[1]])
                continue
            started = time.perf_counter()
            if msg[0] == "local":
                y = np.asarray(model(msg[1], training=False))
                conn.send((y, time.perf_counter() - started))
                continue
            if msg[0] == "part":  # stateless
                _, block, device, part = msg
                keep, reply = False, True
            else:  # "run": the values it lacks, around the ones it holds
                _, block, device, before, after, need, have, keep, reply = msg
                lo, hi = max(need[0], have[0]), min(need[1], have[1])  # `have`: what the coordinator says it holds
                if hi > lo and (held is None or held_range != tuple(have)):
                    raise RuntimeError(f"device {device} does not hold {have}")
                own = held[:, lo - have[0] : hi - have[0]] if hi > lo else before[:, :0]
                part = np.concatenate([before, own, after], axis=1)
            if block not in plans:
                plans[block] = plan_block(geoms, *block)
            plan = plans[block]
            if isinstance(plan.tasks[device], StripeTask):
                part = part.reshape(part.shape[0], -1, *geoms[plan.first].in_shape[1:])
            y = compute_part(layers, geoms, plan, device, part)
            if keep:
                held, held_range = y.reshape(y.shape[0], -1), owned(geoms, plan.last, plan.devices)[device]
            conn.send((y if reply else None, time.perf_counter() - started))


def _pieces_of(have: tuple[int, int], needs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of `have` that any of `needs` covers, as disjoint sorted ranges."""
    cuts = sorted((max(lo, have[0]), min(hi, have[1])) for lo, hi in needs if min(hi, have[1]) > max(lo, have[0]))
    merged: list[tuple[int, int]] = []
    for lo, hi in cuts:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


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
        deadline = time.monotonic() + self.start_timeout
        while t.is_alive() and time.monotonic() < deadline:
            t.join(0.5)
            dead = [p.exitcode for p in self.procs if p.exitcode not in (None, 0)]
            if dead:
                break
        listener.close()
        if len(accepted) < self.size:
            self.close()
            dead = [p.exitcode for p in self.procs if p.exitcode not in (None, 0)]
            why = (
                f"a worker exited with code {dead[0]} (its traceback is on stderr)"
                if dead
                else (f"timed out after {self.start_timeout:g} s")
            )
            raise RuntimeError(f"only {len(accepted)} of {self.size} workers started: {why}")
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

    def round_seconds(self, devices: int, repeats: int = 9) -> float:
        """Median time of an empty round: a tiny message to `devices` workers at once and every answer back."""
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            for future in [self._pool.submit(self._ask, d, ("echo", b"")) for d in range(devices)]:
                future.result()
            times.append(time.perf_counter() - started)
        return sorted(times)[len(times) // 2]

    def measure_platform(self, model, geoms, x, repeats: int = 3, nbytes: int = 1 << 20):
        """(F, G) of this group as an `mls.Platform`, and the median compute time F comes from: F from the devices'
        own code path (every layer-by-layer block on one worker, after one warm-up run; a Keras model call costs
        more), G from a round trip of `nbytes` to worker 0."""
        import statistics

        from splitdnn.coop import block_modes
        from splitdnn.mls import Platform, sls_units

        one = [(a, b, 1, block_modes(geoms, a, b)[0]) for a, b in sls_units(geoms)]
        self.run_plan(model, geoms, one, x, stateful=True)
        computes = []
        for _ in range(repeats):
            stats = self.run_plan(model, geoms, one, x, stateful=True)[1]
            computes.append(sum(sum(s.device_compute_seconds) for s in stats))
        compute = statistics.median(computes)
        flops = sum(g.flops for g in geoms)
        platform = Platform(max(flops, 1.0) / max(compute, 1e-6), 2 * nbytes * 8 / self.echo_seconds(nbytes))
        return platform, compute

    def run_plan(self, model, geoms, blocks, x, stateful: bool = False):
        """Run blocks [(first, last, devices, mode)] (mode 'local': the whole model on worker 0); returns the output
        and per-block stats."""
        if stateful:
            return self._run_stateful(model, geoms, blocks, x)
        import numpy as np

        from splitdnn.coop import chain_layers, gather, plan_block, scatter

        layers, stats = chain_layers(model), []
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

    def _fetch(self, wanted: dict[int, list[tuple[int, int]]], flat) -> int:
        """Fetch flat ranges from the devices that hold them into `flat` (the coordinator's copy); returns bytes."""
        futures = {d: self._pool.submit(self._ask, d, ("fetch", ranges)) for d, ranges in wanted.items() if ranges}
        moved = 0
        for d, future in futures.items():
            for (lo, hi), values in zip(wanted[d], future.result()):
                flat[:, lo:hi] = values
                moved += int(values.nbytes)
        return moved

    def _run_stateful(self, model, geoms, blocks, x):
        import numpy as np

        from splitdnn.coop import chain_layers, gather, needed_ranges, owned, plan_block

        if any(b[3] == "local" for b in blocks):
            return self.run_plan(model, geoms, blocks, x)
        layers, stats = chain_layers(model), []
        batch = x.shape[0]
        flat = x.reshape(batch, -1).copy()  # the coordinator's copy of the current block input (where known)
        held = None  # per device: the flat range of the previous output it holds, when the output stayed on them
        for index, block in enumerate(blocks):
            started = time.perf_counter()
            last = index == len(blocks) - 1
            plan = plan_block(geoms, *block)
            k = plan.devices
            needs = needed_ranges(geoms, plan)
            sent = received = 0
            if held is not None:  # τo: each device uploads what another device (or the coordinator) needs of it
                if plan.mode == "coordinator":
                    wanted = {d: [held[d]] if held[d][1] > held[d][0] else [] for d in range(k)}
                else:
                    wanted = {d: _pieces_of(held[d], [needs[e] for e in range(k) if e != d]) for d in range(k)}
                received += self._fetch(wanted, flat)
            if plan.mode == "coordinator":
                y = gather(layers, geoms, plan, [None] * k, flat.reshape(batch, *geoms[plan.first].in_shape))
                stats.append(BlockStats(tuple(block), time.perf_counter() - started, [], sent, received))
                flat, held = y.reshape(batch, -1), None
                continue
            keep = plan.distributed_output
            futures = {}
            for d, need in enumerate(needs):
                if plan.tasks[d] is None:
                    continue
                have = held[d] if held is not None else (0, 0)
                lo, hi = max(need[0], have[0]), min(need[1], have[1])
                before = flat[:, need[0] : lo] if hi > lo else flat[:, need[0] : need[1]]
                after = flat[:, hi : need[1]] if hi > lo else flat[:, :0]
                sent += int(before.nbytes + after.nbytes)
                msg = ("run", tuple(block), d, before, after, need, have, keep, not keep or last)
                futures[d] = self._pool.submit(self._ask, d, msg)
            answers = {d: f.result() for d, f in futures.items()}
            results = [answers[d][0] if d in answers else None for d in range(k)]
            received += sum(int(r.nbytes) for r in results if r is not None)
            stats.append(
                BlockStats(
                    tuple(block), time.perf_counter() - started, [a[1] for a in answers.values()], sent, received
                )
            )
            if keep and not last:
                held = owned(geoms, plan.last, k)
                flat = np.full((batch, int(np.prod(geoms[plan.last].out_shape))), np.nan, "float32")
            else:
                y = gather(layers, geoms, plan, results, None)
                flat, held = y.reshape(batch, -1), None
        return flat.reshape(batch, *geoms[-1].out_shape), stats

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
