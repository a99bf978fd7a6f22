"""A cooperative group: N devices, each a `splitdnn coop-device` (a process here, a pod in a cluster), driven by a
coordinator (the tier's agent) over TCP with `multiprocessing.connection` (pickled numpy parts, authenticated by
the group's shared key: an HMAC challenge both ways before any pickle is read). The coordinator connects to every
device and sends it the slice's `.keras` file; a device computes the parts `splitdnn.coop.compute_part` defines
and holds no slice of its own, so one set of devices serves every split (and, during a roll, the old and the new
coordinator at once: one thread, model and held output per coordinator). The coordinator scatters, gathers and runs
what no device can.

Two protocols. *Stateless*: for every block the coordinator sends each device all the input values its part needs
and gets its whole result back. *Stateful* (the paper's, and what the MLS cost model charges): a device keeps its
output when the block leaves it distributed; for the next block the coordinator fetches from each device only the
values another device needs (τo) and sends each device only the values it lacks (ti); results come back only when
they cannot stay (partial sums, softmax logits, the model's output, a layer the coordinator runs).

A device that stops answering fails the frame in flight (`DeviceLost`); the next frame connects to it again (a
restarted pod answers under the same name) and sends the slice again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import struct
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import Any

log = logging.getLogger(__name__)

COOP_PORT = 8600  # where a device listens (`splitdnn coop-device --listen`)
KEY_ENV = "SPLITDNN_COOP_KEY"  # the group's shared key: coordinator and devices (in a cluster, the operator's Secret)
MIN_KEY_CHARS = 16
HANDSHAKE_SECONDS = 10.0  # a peer that connects and stays silent is dropped after this long


class DeviceLost(RuntimeError):
    """A device did not answer (gone, unreachable, too slow): the frame in flight is lost."""


def group_key(env=None) -> bytes:
    """The shared key from SPLITDNN_COOP_KEY (at least MIN_KEY_CHARS characters)."""
    value = (os.environ if env is None else env).get(KEY_ENV, "")
    if len(value) < MIN_KEY_CHARS:
        raise ValueError(
            f"{KEY_ENV} must hold the group's shared key (at least {MIN_KEY_CHARS} characters; in a cluster the "
            f"operator's Secret provides it), got {len(value)} characters"
        )
    return value.encode()


def parse_address(text: str, default_host: str = "") -> tuple[str, int]:
    """`host:port` (or `:port`, `port`) → (host, port)."""
    host, _, port = text.rpartition(":") if ":" in text else (default_host, "", text)
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535 or (not host and not default_host):
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return (host or default_host).strip("[]"), number


def _set_timeout(fd: int, seconds: float, option: int = socket.SO_RCVTIMEO) -> None:
    """SO_RCVTIMEO (or SO_SNDTIMEO) on a blocking socket's descriptor: a read (write) that waits longer fails
    (EAGAIN) while the socket stays blocking, as `Connection` needs; 0 turns it off."""
    whole = int(seconds)
    sock = socket.socket(fileno=fd)
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", whole, int((seconds - whole) * 1e6)))
    finally:
        sock.detach()


def _authenticate(sock: socket.socket, authkey: bytes, server: bool) -> Connection:
    """Prove the key both ways on a connected socket (the listening side challenges first, as
    `multiprocessing.connection` does); a peer silent for HANDSHAKE_SECONDS fails it. The returned Connection owns
    the descriptor; on failure it is closed."""
    sock.setblocking(True)
    conn = Connection(sock.detach())
    try:
        _set_timeout(conn.fileno(), HANDSHAKE_SECONDS)
        first, second = (deliver_challenge, answer_challenge) if server else (answer_challenge, deliver_challenge)
        first(conn, authkey)
        second(conn, authkey)
        _set_timeout(conn.fileno(), 0)  # a coordinator may wait long between frames; calls poll with a limit
    except BaseException:
        conn.close()
        raise
    return conn


def connect(address: tuple[str, int], authkey: bytes, send_timeout: float = 120.0) -> Connection:
    """Connect to a device and prove the key both ways (as `multiprocessing.connection.Client`, with timeouts).
    Afterwards a send that cannot go on for `send_timeout` (a hung device) fails instead of blocking for ever;
    reads are bounded by the caller (`Connection.poll`)."""
    conn = _authenticate(socket.create_connection(address, timeout=HANDSHAKE_SECONDS), authkey, server=False)
    _set_timeout(conn.fileno(), send_timeout, socket.SO_SNDTIMEO)
    return conn


# --- the device side ---------------------------------------------------------------------------------------------


class _Models:
    """Slices the device has loaded, by content (sha256), shared by the coordinators that sent the same file."""

    def __init__(self):
        self._lock = threading.Lock()
        self._loaded: dict[str, list] = {}  # digest → [(model, layers, geoms), users]

    def acquire(self, data: bytes):
        from splitdnn.coop import chain_layers, describe
        from splitdnn.models import load_model

        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            if digest in self._loaded:
                self._loaded[digest][1] += 1
                return digest, self._loaded[digest][0]
            with tempfile.TemporaryDirectory(prefix="coop-") as tmp:  # Keras loads from a .keras path
                path = os.path.join(tmp, "slice.keras")
                with open(path, "wb") as f:
                    f.write(data)
                model = load_model(path)
            entry = (model, chain_layers(model), describe(model))
            self._loaded[digest] = [entry, 1]
            return digest, entry

    def release(self, digest: str) -> None:
        with self._lock:
            self._loaded[digest][1] -= 1
            if self._loaded[digest][1] == 0:
                del self._loaded[digest]


def _serve_coordinator(conn: Connection, models: _Models) -> None:
    """One coordinator's session: ("load", .keras bytes) first, then parts until None or the connection ends."""
    import numpy as np

    from splitdnn.coop import StripeTask, compute_part, owned, plan_block

    msg = conn.recv()
    if not (isinstance(msg, tuple) and msg[0] == "load"):
        raise RuntimeError(f"expected the slice first, got {type(msg).__name__}")
    try:
        digest, (model, layers, geoms) = models.acquire(msg[1])
    except Exception as exc:  # the coordinator says why its group cannot start
        log.exception("cannot load the slice a coordinator sent")
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    plans: dict = {}
    held: Any = None  # this device's output of the last distributed block, as flat values
    held_range = (0, 0)
    try:
        conn.send(("ready", os.getpid(), socket.gethostname()))
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
    finally:
        models.release(digest)


def _session(sock: socket.socket, peer, authkey: bytes, models: _Models) -> None:
    """Authenticate a connection, then serve its coordinator until it leaves."""
    try:
        conn = _authenticate(sock, authkey, server=True)
    except AuthenticationError:
        log.warning("refused %s:%s: it does not hold the group's key", *peer[:2])
        return
    except (OSError, EOFError):  # a port probe, or a peer that stayed silent
        return
    log.info("coordinator %s:%s connected", *peer[:2])
    try:
        _serve_coordinator(conn, models)
    except (OSError, EOFError) as exc:
        log.info("coordinator %s:%s left: %s", *peer[:2], exc or type(exc).__name__)
    finally:
        conn.close()


def serve(address: tuple[str, int], authkey: bytes, threads: int = 1, ready=None, once: bool = False) -> None:
    """A device: listen on `address` and serve every coordinator that holds `authkey`, each in its own thread.
    `ready(address)` is called with the bound address; `once`: return when the first coordinator leaves."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    models = _Models()
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.create_server(address, family=family, backlog=16) as server:
        if ready is not None:
            ready(server.getsockname()[:2])
        while True:
            sock, peer = server.accept()
            t = threading.Thread(target=_session, args=(sock, peer, authkey, models), daemon=True)
            t.start()
            if once:
                t.join()
                return


def _local_device(pipe, authkey: bytes, threads: int) -> None:
    """A device as a child process of the coordinator, on loopback: reports its port, serves its parent once."""
    serve(("127.0.0.1", 0), authkey, threads, ready=pipe.send, once=True)


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
    """`Group(model_path, n)` starts n devices as child processes on loopback; `Group(model_path, n,
    addresses=[(host, port), ...], authkey=KEY)` uses n running `splitdnn coop-device`s (waiting for them to come
    up, as pods do). Either way it connects to every device, sends it the slice and returns once all have loaded it
    (`start_timeout` in all)."""

    model_path: str
    size: int
    threads: int = 1  # TensorFlow threads per local device: one core, like a small device
    start_timeout: float = 300.0
    addresses: list[tuple[str, int]] | None = None  # running devices; None: start local ones
    authkey: bytes | None = None  # the running devices' key
    call_timeout: float = 120.0  # one device's answer to one message
    conns: list[Any] = field(default_factory=list)
    procs: list[Any] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # "host pid N" per device, as it reported itself

    def __post_init__(self):
        with open(self.model_path, "rb") as f:
            self._slice = f.read()
        deadline = time.monotonic() + self.start_timeout
        self.conns = [None] * self.size
        self.names = [""] * self.size
        self._pool = ThreadPoolExecutor(self.size)
        try:
            if self.addresses is None:
                self.authkey = secrets.token_bytes(16)
                self.addresses = self._start_local(deadline)
            elif len(self.addresses) != self.size:
                raise ValueError(
                    f"a group of {self.size} devices needs {self.size} addresses, got {len(self.addresses)}"
                )
            elif not self.authkey:
                raise ValueError("a group of running devices needs their key")
            self._connect_all(deadline)
        except BaseException:
            self.close()
            raise

    def _start_local(self, deadline: float) -> list[tuple[str, int]]:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        pipes = []
        for _ in range(self.size):
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_local_device, args=(child, self.authkey, self.threads), daemon=True)
            proc.start()
            pipes.append(parent)
            self.procs.append(proc)
        addresses = []
        for proc, pipe in zip(self.procs, pipes):
            while not pipe.poll(0.5):
                if proc.exitcode is not None:
                    raise RuntimeError(
                        f"a device process exited with code {proc.exitcode} (its traceback is on stderr)"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"a device process did not start in {self.start_timeout:g} s")
            addresses.append(tuple(pipe.recv()))
        return addresses

    def _connect_all(self, deadline: float) -> None:
        """Connect to every device, retrying those not up yet (no DNS name, refused) until `deadline`."""
        assert self.addresses is not None
        why: dict[int, str] = {}
        said = time.monotonic()
        while True:
            for d in range(self.size):
                if self.conns[d] is None:
                    try:
                        self._open(d, deadline)
                        why.pop(d, None)
                    except (OSError, EOFError) as exc:
                        why[d] = f"{exc or type(exc).__name__}"
            if not why:
                return
            waiting = "; ".join(f"device {d} at {self._where(d)}: {w}" for d, w in sorted(why.items()))
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.size - len(why)} of {self.size} devices started in "
                                   f"{self.start_timeout:g} s: {waiting}")  # fmt: skip
            if time.monotonic() - said > 10:
                log.info("waiting for %d of %d devices: %s", len(why), self.size, waiting)
                said = time.monotonic()
            time.sleep(0.5)

    def _where(self, d: int) -> str:
        assert self.addresses is not None
        host, port = self.addresses[d]
        return f"{host}:{port}"

    def _open(self, d: int, deadline: float):
        """Connect to device d and send it the slice; returns the connection once it has loaded it."""
        assert self.addresses is not None and self.authkey is not None
        try:
            conn = connect(self.addresses[d], self.authkey, send_timeout=self.call_timeout)
        except AuthenticationError as exc:  # not worth retrying: the keys differ
            raise RuntimeError(f"device {d} at {self._where(d)} refused the key ({KEY_ENV} differs): {exc}") from exc
        try:
            conn.send(("load", self._slice))
            if not conn.poll(max(1.0, deadline - time.monotonic())):
                raise TimeoutError("did not load the slice in time")
            reply = conn.recv()
        except BaseException:
            conn.close()
            raise
        if reply[0] == "error":
            conn.close()
            raise RuntimeError(f"device {d} at {self._where(d)} cannot load the slice: {reply[1]}")
        _, pid, host = reply
        self.conns[d], self.names[d] = conn, f"{host} pid {pid}"
        return conn

    def _ask(self, device: int, msg):
        """Send one message to a device and wait for its answer. A device that left is connected again first."""
        conn = self.conns[device]
        try:
            if conn is None:
                conn = self._open(device, time.monotonic() + self.call_timeout)
            conn.send(msg)
            if not conn.poll(self.call_timeout):
                raise TimeoutError(f"no answer in {self.call_timeout:g} s")
            return conn.recv()
        except (OSError, EOFError, AuthenticationError) as exc:
            if self.conns[device] is not None:
                self.conns[device].close()
            self.conns[device] = None
            raise DeviceLost(f"device {device} at {self._where(device)}: {exc or type(exc).__name__}") from exc

    def _answers(self, futures: dict) -> dict:
        """Every future's result; when one failed, only after all have ended (a connection is never used by two
        threads at once)."""
        errors = [f.exception() for f in futures.values()]
        for error in errors:
            if error is not None:
                raise error
        return {d: f.result() for d, f in futures.items()}

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
            self._answers({d: self._pool.submit(self._ask, d, ("echo", b"")) for d in range(devices)})
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
            answers = self._answers(futures)
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
        for d, got in self._answers(futures).items():
            for (lo, hi), values in zip(wanted[d], got):
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
            answers = self._answers(futures)
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
        said_goodbye = any(conn is not None for conn in self.conns)  # local devices then end by themselves
        for conn in self.conns:
            if conn is None:
                continue
            try:
                conn.send(None)
            except OSError:
                pass
            conn.close()
        self.conns = [None] * self.size
        for p in self.procs:
            p.join(10 if said_goodbye else 0)
            if p.is_alive():
                p.terminate()
        if hasattr(self, "_pool"):
            self._pool.shutdown(wait=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
