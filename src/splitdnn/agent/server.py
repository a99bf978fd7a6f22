"""The agent: one process per tier, serving its slice with `tensorflow.serving.PredictionService`.

Frame flow (a chain; responses travel back along it):

    client/source ─Predict─▶ tier 0 ─PredictChunked─▶ tier 1 ─PredictChunked─▶ … ─▶ last tier
                 ◀─result── tier 0 ◀──── result ───── tier 1 ◀──── result ─── … ◀─┘

Each tier validates the request, computes its slice on its single stage worker (one frame at a time, bounded
queue, overhead emulation), then sends its whole output dict to the next tier and relays the next tier's response
— the model's outputs — back to its caller. Every tier's Predict therefore takes that tier's inputs and returns the
model's outputs; tier 0's Predict is the whole model for a TF Serving client.

Between tiers a `PredictRequest` travels on `/splitdnn.Link/PredictChunked` (bidirectional stream of raw bytes):
the serialized request in chunks of at most `maxMessageBytes`, then the receiver answers one empty message (the
acknowledgement the sender times transfers with) followed by the serialized `PredictResponse` in chunks.
`/splitdnn.Link/Ping` (empty in, empty out) measures the round trip. gRPC message limits are lifted, so nothing
hits the 4 MB default.

Link emulation (in-process) is applied by the sender to what it sends on its outgoing link: tier k's parameters to
its requests to tier k+1, and the last tier's parameters to the result it returns. Relaying a result back
(tier k+1 → tier k for k+1 < last) adds nothing, so one frame crosses each configured link once — the paper's
device → edge → cloud → device ring (Cho 2021, Type 1: 5 + 252.5 + 252.5 ms). With `tc` in pods the egress qdisc
delays every packet a pod sends, relays included; see README "Links".
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from splitdnn.agent.link import LinkEmulator, LinkMeter, LinkParams
from splitdnn.agent.metrics import AgentMetrics
from splitdnn.agent.stage import QueueFull, Stage
from splitdnn.agent.wire import WireError, predict_request, predict_response, split_chunks, tensors_of

log = logging.getLogger("splitdnn.agent")

SERVICE = "tensorflow.serving.PredictionService"
CHUNKED_METHOD = "/splitdnn.Link/PredictChunked"
PING_METHOD = "/splitdnn.Link/Ping"
# failed pings for this long replace the channel to the next tier (see Agent._ping_result)
RECONNECT_SECONDS = float(os.environ.get("SPLITDNN_RECONNECT_SECONDS", "10"))
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.enable_http_proxy", 0),
]  # tiers talk directly, whatever http_proxy says
SIGNATURE = "serving_default"


class BadRequest(ValueError):
    """A request with wrong model, signature, tensor names, shapes or dtypes (gRPC INVALID_ARGUMENT)."""


@dataclass
class AgentConfig:
    slices: str
    slice: str
    port: int
    next: str | None = None
    metrics_port: int | None = None
    si: str = "local"
    tier: str = ""
    overhead_ratio: float = 0.0
    max_message_bytes: int = 4 * 1024 * 1024
    link: LinkParams = field(default_factory=LinkParams)  # what to emulate in-process (after the netem report)
    tc_applied: tuple = ()  # what the init container's tc applied (from the report)
    host: str = "0.0.0.0"
    queue_size: int = 16
    timeout: float = 30.0
    ping_interval: float = 1.0
    seed: int = 0
    # frame source (first tier)
    source: str | None = None
    fps: float = 5.0
    frames: int = 0
    deadline: float = 1.0
    max_inflight: int = 8
    warmup: int = 0  # frames sent one at a time before the counted ones (not counted)
    # on SIGTERM keep serving until no request has been in progress for `drain_quiet` s (at most `drain_timeout`)
    drain_quiet: float = 1.0
    drain_timeout: float = 30.0
    summary: str | None = None


def emulation_plan(requested: dict, report: dict | None) -> tuple[LinkParams, tuple, set]:
    """What to emulate in-process given the link flags and the netem init container's report.

    `requested` maps delay/jitter/loss/rate to their flag text (None = not given). Without a report everything
    given is emulated; with one, exactly what the report does not list as applied by tc.
    Returns (params to emulate, names tc applied, active paths ⊆ {tc, inprocess, none}).
    """
    from splitdnn.units import parse_duration, parse_percent, parse_rate

    applied = tuple(sorted((report or {}).get("applied", {})))
    todo = {k: v for k, v in requested.items() if v not in (None, "") and k not in applied}
    params = LinkParams(
        delay=parse_duration(todo["delay"]) if "delay" in todo else 0.0,
        jitter=parse_duration(todo["jitter"]) if "jitter" in todo else 0.0,
        loss=parse_percent(todo["loss"]) if "loss" in todo else 0.0,
        rate=parse_rate(todo["rate"]) if "rate" in todo else None,
    )
    return params, applied, emulation_paths(applied, params)


def emulation_paths(tc_applied, link: LinkParams) -> set:
    """Which paths shape the outgoing link: {"tc"}, {"inprocess"}, both, or {"none"}."""
    paths = ({"tc"} if tc_applied else set()) | ({"inprocess"} if link.active else set())
    return paths or {"none"}


def _same_shape(expected: list, actual: tuple) -> bool:
    return len(expected) == len(actual) and all(e is None or e == a for e, a in zip(expected, actual))


class Agent:
    def __init__(self, config: AgentConfig):
        import tensorflow as tf

        from splitdnn.slicer import load_manifest

        self.config = config
        manifest = load_manifest(config.slices)
        names = [s["name"] for s in manifest["slices"]]
        if config.slice not in names:
            raise ValueError(
                f"slice {config.slice!r} is not in {Path(config.slices) / 'slices.json'} (slices: {', '.join(names)})"
            )
        self.index = names.index(config.slice)
        self.entry = manifest["slices"][self.index]
        self.model = manifest["model"]
        self.inputs = self.entry["inputs"]
        self.model_outputs = manifest["slices"][-1]["outputs"]
        self.last = config.next is None
        self.tier = config.tier or config.slice
        cuts = manifest.get("cuts", [])
        self.cut = cuts[self.index] if self.index < len(cuts) else ""

        self.metrics = AgentMetrics(config.si, self.tier)
        self.metrics.set_slice(config.slice, self.cut, self.model)
        self.emulation_paths = emulation_paths(config.tc_applied, config.link)
        self.metrics.set_emulation(self.emulation_paths)

        self._signature = tf.saved_model.load(str(Path(config.slices) / self.entry["path"])).signatures[SIGNATURE]
        self._tf = tf
        self._warm_up()
        self.stage = Stage(
            self._compute,
            config.overhead_ratio,
            config.queue_size,
            on_done=self.metrics.stage_compute.observe,
            name=f"stage-{self.tier}",
        )
        self.metrics.queue_depth.set_function(lambda: self.stage.depth)
        self._active = 0
        self._active_lock = threading.Lock()
        self._last_active = time.monotonic()
        self._next_ok = self.last  # the next tier answered the last ping (readiness)
        self.metrics.inflight.set_function(lambda: self._active)

        self.emulator = LinkEmulator(config.link, seed=config.seed)
        self.meter = LinkMeter()
        self._channel = None
        self._failing_since = None  # when pings to the next tier started failing (None: the last one answered)
        self._connected_at = 0.0
        if config.next:
            self._connect()
        self._stop = threading.Event()
        self.source = None

    # --- compute ------------------------------------------------------------------------------------------------

    def _warm_up(self) -> None:
        from splitdnn.agent.source import zero_frame

        self._compute(zero_frame(self.inputs))

    def _compute(self, feed: dict) -> dict:
        tf = self._tf
        out = self._signature(**{n: tf.constant(v) for n, v in feed.items()})
        return {n: v.numpy() for n, v in out.items()}

    def validate(self, tensors: dict) -> dict:
        """Check names, dtypes and shapes against the slice's inputs; the message names every problem."""
        expected = {t["name"]: t for t in self.inputs}
        problems = []
        missing = [n for n in expected if n not in tensors]
        unexpected = sorted(n for n in tensors if n not in expected)
        if missing:
            problems.append(f"missing input {', '.join(map(repr, missing))}")
        if unexpected:
            problems.append(f"unexpected input {', '.join(map(repr, unexpected))}")
        batch = set()
        for name, spec in expected.items():
            if name not in tensors:
                continue
            value = tensors[name]
            if value.dtype != np.dtype(spec["dtype"]):
                problems.append(f"input {name!r} has dtype {value.dtype.name}, expected {spec['dtype']}")
            if not _same_shape(spec["shape"], value.shape):
                shape = ["None" if d is None else d for d in spec["shape"]]
                problems.append(
                    f"input {name!r} has shape {list(value.shape)}, expected [{', '.join(map(str, shape))}]"
                )
            elif value.ndim:
                batch.add(value.shape[0])
        if len(batch) > 1:
            problems.append(f"inputs disagree on the batch size: {sorted(batch)}")
        if problems:
            names = ", ".join(f"{n} {s['dtype']}{s['shape']}" for n, s in expected.items())
            raise BadRequest(f"{'; '.join(problems)} (model {self.model!r} tier {self.tier!r} takes: {names})")
        return {n: tensors[n] for n in expected}

    def check_spec(self, model_spec) -> None:
        if model_spec.name != self.model:
            raise BadRequest(f"model {model_spec.name!r} is not served here: this agent serves {self.model!r}")
        if model_spec.signature_name not in ("", SIGNATURE):
            raise BadRequest(f"signature {model_spec.signature_name!r} does not exist: the only one is {SIGNATURE!r}")

    def process(self, tensors: dict, timeout: float | None = None) -> bytes:
        """Inputs of this slice -> serialized PredictResponse with the model's outputs (via the next tiers)."""
        timeout = timeout or self.config.timeout
        start = time.monotonic()
        feed = self.validate(tensors)
        with self._active_lock:
            self._active += 1
            self._last_active = time.monotonic()
        try:
            outputs = self.stage(feed, timeout)
            if self.last:
                return predict_response(self.model, outputs).SerializeToString()
            return self.forward(outputs, max(0.1, timeout - (time.monotonic() - start)))
        finally:
            with self._active_lock:
                self._active -= 1
                self._last_active = time.monotonic()

    def ready(self) -> bool:
        """Ready for frames: the last tier always, the others while the next tier answers pings. A pod is only
        Ready once its whole downstream chain is, so a rollout keeps the old pods until the new chain works."""
        return self._next_ok and not self._stop.is_set()

    def drain(self, quiet: float, timeout: float) -> bool:
        """After SIGTERM: keep serving until no request has been in progress for `quiet` seconds (the previous
        tier still sends while its own replacement starts: in a rollout every tier's old pod is told to stop
        once its new pod is Ready, the first tier's last), at most `timeout`. True if it went quiet."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._active_lock:
                idle = 0.0 if self._active else time.monotonic() - self._last_active
            if idle >= quiet:
                return True
            time.sleep(min(0.1, quiet))
        return False

    # --- links --------------------------------------------------------------------------------------------------

    def forward(self, outputs: dict, timeout: float) -> bytes:
        data = predict_request(self.model, outputs).SerializeToString()
        start = time.monotonic()
        responses = self._push(
            self.emulator.send(split_chunks(data, self.config.max_message_bytes)), timeout=timeout, wait_for_ready=True
        )
        next(responses)  # the acknowledgement: the whole request has arrived
        took = time.monotonic() - start
        self.metrics.link_transfer.observe(took)
        self.metrics.link_bytes.inc(len(data))
        self.metrics.set_link(bandwidth=self.meter.observe_transfer(len(data), took))
        return b"".join(responses)

    def reply_chunks(self, body: bytes):
        """Chunks of a response to the previous tier; the last tier's emulated link applies to its result."""
        chunks = split_chunks(body, self.config.max_message_bytes)
        if not self.last:
            return chunks
        self.metrics.link_bytes.inc(len(body))
        return self.emulator.send(chunks)

    def ping_once(self, timeout: float = 5.0, record: bool = True) -> float:
        start = time.monotonic()
        self.emulator.delay_small_message()
        self._ping(b"", timeout=timeout, wait_for_ready=True)
        rtt = time.monotonic() - start
        if record:
            self.metrics.set_link(rtt=self.meter.observe_rtt(rtt))
        return rtt

    def _connect(self) -> None:
        """Open a new channel to the next tier. The one it replaces (if any) is closed a minute later: closing it
        now would cancel frames still in flight on it (pings can fail while frames get through, e.g. behind a
        long queue)."""
        old = self._channel
        # tiers start in any order and restart independently: reconnect quickly, and wait for the next tier
        # (within the frame's deadline) rather than fail a frame because the channel was backing off
        # (a channel of its own subchannel pool: channels to one address otherwise share the connection, and the
        # new channel would reuse the one it replaces)
        self._channel = grpc.insecure_channel(
            self.config.next,
            options=GRPC_OPTIONS
            + [
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        self._push = self._channel.stream_stream(CHUNKED_METHOD)
        self._ping = self._channel.unary_unary(PING_METHOD)
        self._connected_at = time.monotonic()
        if old is not None:
            closer = threading.Timer(60.0, old.close)
            closer.daemon = True
            closer.start()

    def _ping_result(self, exc: grpc.RpcError | None) -> None:
        """Bookkeeping after a ping. gRPC only reconnects a connection that breaks; one that stays up but answers
        every call with an error stays in use for ever. That happens in kind: a pod that dials a Service's
        ClusterIP before kube-proxy has its rules goes out through the node's default route, and whatever
        answers there (an egress proxy: HTTP/2 404) keeps the connection, which conntrack keeps pinned. So after
        RECONNECT_SECONDS of failed pings, the channel is replaced: a new connection meets the rules now in place."""
        now = time.monotonic()
        if exc is None:
            self._failing_since = None
            return
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since >= RECONNECT_SECONDS and now - self._connected_at >= RECONNECT_SECONDS:
            log.warning(
                "the next tier %s has not answered for %.0f s (%s): opening a new connection",
                self.config.next,
                now - self._failing_since,
                exc.details(),
            )
            self.metrics.reconnects.inc()
            self._connect()

    def wait_next(self, timeout: float | None = None) -> bool:
        """Block until the next tier answers a ping (tiers start in any order); False if stopped or timed out."""
        if self.last:
            return True
        start = time.monotonic()
        warned = start
        while not self._stop.is_set():
            try:
                self.ping_once(timeout=2.0, record=False)  # includes connecting: not a round trip sample
                self.ping_once(timeout=2.0)
                self._ping_result(None)
                self._next_ok = True
                return True
            except grpc.RpcError as exc:
                self._ping_result(exc)
                now = time.monotonic()
                if timeout is not None and now - start > timeout:
                    return False
                if now - warned > 10:
                    log.warning("waiting for the next tier %s: %s", self.config.next, exc.details())
                    warned = now
                self._stop.wait(0.2)
        return False

    def _pinger(self) -> None:
        self.wait_next()  # first sample as soon as the next tier is up
        while not self._stop.wait(self.config.ping_interval):
            try:
                self.ping_once()
                self._ping_result(None)
                self._next_ok = True
            except grpc.RpcError as exc:
                self._next_ok = False
                log.warning("ping to %s failed: %s", self.config.next, exc.details())
                self._ping_result(exc)

    # --- frame source -------------------------------------------------------------------------------------------

    def run_source(self) -> None:
        from splitdnn.agent.source import FrameSource, image_frames, synthetic_frames

        c = self.config
        make = synthetic_frames(self.inputs, c.seed) if c.source == "synthetic" else image_frames(c.source, self.inputs)

        def pipeline(frame, timeout):
            self.process(frame, timeout)

        def on_outcome(outcome, latency):
            self.metrics.frames[outcome].inc()
            if latency is not None:
                self.metrics.frame_latency.observe(latency)

        self.source = FrameSource(
            make,
            pipeline,
            c.fps,
            c.frames,
            c.deadline,
            c.max_inflight,
            timeout=max(c.timeout, c.deadline),
            on_outcome=on_outcome,
        )
        if not self.wait_next():
            return
        self.warm_up_pipeline(make)
        log.info(
            "source: %s at %g fps, %s frames, deadline %gs, max in flight %d",
            c.source,
            c.fps,
            c.frames or "endless",
            c.deadline,
            c.max_inflight,
        )
        summary = self.source.run()
        lat = sorted(self.source.latencies)
        summary["latency_mean"] = float(np.mean(lat)) if lat else None
        summary["latency_p50"] = lat[len(lat) // 2] if lat else None
        if self.source.last_error:
            summary["last_error"] = self.source.last_error
        log.info("source done: %s", json.dumps(summary))
        if c.summary:
            Path(c.summary).write_text(json.dumps(summary) + "\n")

    def warm_up_pipeline(self, make) -> None:
        """Send `warmup` frames one at a time through every tier and discard them: a run's first frames otherwise
        pay one-time costs (a stream's first use between two tiers, TensorFlow's first call at a batch shape)
        that the deadline counts against them. They are the first frames of the source (seeded), sent once more
        when the counted run starts."""
        c = self.config
        for i in range(c.warmup):
            if self._stop.is_set():
                return
            start = time.monotonic()
            try:
                self.process(make(i), max(c.timeout, c.deadline))
            except Exception as exc:  # noqa: BLE001 - a warm-up frame's outcome decides nothing
                log.warning("warm-up frame %d/%d failed: %s", i + 1, c.warmup, exc)
            else:
                log.info("warm-up frame %d/%d took %.3f s", i + 1, c.warmup, time.monotonic() - start)

    def close(self) -> None:
        self._stop.set()
        if self.source:
            self.source.stop()
        self.stage.close()
        if self._channel:
            self._channel.close()


# --- gRPC shell ---------------------------------------------------------------------------------------------------

_STATUS = {
    BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
    WireError: grpc.StatusCode.INVALID_ARGUMENT,
    QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    TimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
    futures.TimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _serve_request(agent: Agent, request, context) -> bytes:
    """Run a PredictRequest through the agent, or abort the RPC with a status that names the problem."""
    try:
        agent.check_spec(request.model_spec)
        tensors = tensors_of(request.inputs)
        return agent.process(tensors, context.time_remaining())
    except grpc.RpcError as exc:  # from the next tier: pass its status up, say where it came from
        context.abort(exc.code(), f"{agent.config.next}: {exc.details()}")
    except Exception as exc:  # noqa: BLE001
        code = next((c for t, c in _STATUS.items() if isinstance(exc, t)), grpc.StatusCode.INTERNAL)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("internal error")
        context.abort(code, f"{agent.tier}: {exc}" if str(exc) else f"{agent.tier}: {type(exc).__name__}")


def build_server(agent: Agent, max_workers: int = 32) -> grpc.Server:
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            body = _serve_request(agent, request, context)
            body = b"".join(agent.reply_chunks(body))
            response = predict_pb2.PredictResponse.FromString(body)
            if request.output_filter:
                unknown = [n for n in request.output_filter if n not in response.outputs]
                if unknown:
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"output_filter names unknown output {', '.join(map(repr, unknown))}",
                    )
                for name in [n for n in response.outputs if n not in request.output_filter]:
                    del response.outputs[name]
            return response

        def GetModelMetadata(self, request, context):
            if request.model_spec.name != agent.model:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"model {request.model_spec.name!r} is not served here: this agent serves {agent.model!r}",
                )
            if list(request.metadata_field) != ["signature_def"]:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"metadata_field must be ['signature_def'], got {list(request.metadata_field)}",
                )
            from splitdnn.agent.wire import dtype_enum

            sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
            for target, tensors in ((sig.inputs, agent.inputs), (sig.outputs, agent.model_outputs)):
                for t in tensors:
                    info = target[t["name"]]
                    info.name = t["name"]
                    info.dtype = dtype_enum(t["dtype"])
                    for d in t["shape"]:
                        info.tensor_shape.dim.add(size=-1 if d is None else d)
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            sig_map.signature_def[SIGNATURE].CopyFrom(sig)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = agent.model
            response.model_spec.signature_name = SIGNATURE
            response.metadata["signature_def"].Pack(sig_map)
            return response

    def chunked(request_iterator, context):
        data = b"".join(request_iterator)
        yield b""  # acknowledgement: the sender's transfer time ends here
        try:
            request = predict_pb2.PredictRequest.FromString(data)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{agent.tier}: not a PredictRequest: {exc}")
        yield from agent.reply_chunks(_serve_request(agent, request, context))

    def ping(request, context):
        return b""

    # no SO_REUSEPORT (gRPC's default): a second agent on a taken port must fail, not share its connections
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=GRPC_OPTIONS + [("grpc.so_reuseport", 0)],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(), server)
    link = grpc.method_handlers_generic_handler(
        "splitdnn.Link",
        {
            "PredictChunked": grpc.stream_stream_rpc_method_handler(chunked),
            "Ping": grpc.unary_unary_rpc_method_handler(ping),
        },
    )
    server.add_generic_rpc_handlers((link,))
    return server


def worker_count(config: AgentConfig) -> int:
    """gRPC worker threads for this tier.

    A sync gRPC handler holds its thread for the frame's whole stay here *and downstream* (the next tiers' compute
    and every later link's delay), so a tier handles at most this many frames at once; a frame beyond that waits
    for a thread, silently, and turns late. The source never has more than `max_inflight` frames in the pipeline,
    so each tier needs one thread per such frame, plus `queue_size` for requests that only wait to be refused,
    plus a few for pings and metadata. (Before every tier was given `--max-inflight` a middle tier had a fixed 32,
    which capped it at 32 / round trip: 16 fps behind Cho 2021 Type 3's 2 s ring.)
    """
    return max(32, config.max_inflight + config.queue_size + 8)


def serve(config: AgentConfig, ready_file: str | None = None) -> int:
    """Run an agent until SIGTERM/SIGINT. Returns the exit code."""
    agent = Agent(config)
    server = build_server(agent, max_workers=worker_count(config))
    bound = server.add_insecure_port(f"{config.host}:{config.port}")
    if not bound:
        raise RuntimeError(f"cannot listen on {config.host}:{config.port}")
    server.start()
    if config.metrics_port is not None:
        agent.metrics.serve(config.metrics_port, addr=config.host, ready=agent.ready)
    log.info(
        "tier %s serving %s of model %s on :%d%s; link emulation: %s (in-process: %s; tc: %s)",
        agent.tier,
        config.slice,
        agent.model,
        bound,
        f" -> {config.next}" if config.next else " (last tier)",
        "+".join(sorted(agent.emulation_paths)),
        config.link.describe(),
        ", ".join(config.tc_applied) or "nothing",
    )
    stopping = threading.Event()

    def on_signal(signum, frame):
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = []
    if not agent.last:
        threads.append(threading.Thread(target=agent._pinger, daemon=True, name="pinger"))
    if config.source:
        threads.append(threading.Thread(target=_source_thread, args=(agent,), daemon=True, name="source"))
    for t in threads:
        t.start()
    if ready_file:
        Path(ready_file).write_text(f"{bound}\n")
    print(f"ready {agent.tier} {bound}", flush=True)
    stopping.wait()
    log.info("tier %s stopping", agent.tier)
    if threads and threads[-1].name == "source":
        # drain: admit no more frames, let the ones in the pipeline finish (the next tiers are still up: a
        # re-split or rollout stops the first tier before the others), write the summary, then close
        agent._stop.set()
        if agent.source is not None:
            agent.source.stop()
        threads[-1].join(timeout=max(config.timeout, config.deadline) + 5)
    if not agent.drain(config.drain_quiet, config.drain_timeout):
        log.warning("tier %s: still busy after %gs of draining; stopping anyway", agent.tier, config.drain_timeout)
    agent.close()
    server.stop(grace=1).wait(2)
    return 0


def _source_thread(agent: Agent) -> None:
    try:
        agent.run_source()
    except Exception:  # noqa: BLE001 - keep serving; the log says why the source stopped
        log.exception("frame source stopped")
