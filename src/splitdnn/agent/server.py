"""The agent: one process per tier, serving its slice with TF Serving's gRPC API (and REST, `rest`).

Frame flow (a chain; responses travel back along it):

    client/source ─Predict─▶ tier 0 ─PredictChunked─▶ tier 1 ─PredictChunked─▶ … ─▶ last tier
                 ◀─result── tier 0 ◀──── result ───── tier 1 ◀──── result ─── … ◀─┘

`serve()` wires the parts, each with one job:
- `runtime`: the slice (load from slices.json, validate request tensors, compute);
- `tier`: the request path (validate → stage → next tier), readiness, draining, client outcome counts;
- `downstream`: the channel to the next tier (forwarding in chunks, pings, reconnects, whether it answers);
- `source`: the first tier's frame source and its summary;
- `api`/`rest` and the gRPC shell here: TF Serving's `PredictionService` and `ModelService`, the internal
  `/splitdnn.Link` methods, gRPC health checking (`grpc.health.v1.Health`: SERVING while this tier is ready,
  the pods' readiness probe) and the REST API.

Link emulation (in-process) is applied by the sender to what it sends on its outgoing link: tier k's parameters to
its requests to tier k+1, and the last tier's parameters to the result it returns. Relaying a result back
(tier k+1 → tier k for k+1 < last) adds nothing, so one frame crosses each configured link once — the paper's
device → edge → cloud → device ring (Cho 2021, Type 1: 5 + 252.5 + 252.5 ms). With `tc` in pods the egress qdisc
delays every packet a pod sends, relays included; see README "Links".
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc

from splitdnn.agent import api
from splitdnn.agent.downstream import (
    CHUNKED_METHOD,
    GRPC_OPTIONS,
    ONE_METHOD,
    PING_METHOD,
    SERVER_SECONDS,
    Downstream,
    server_options,
)
from splitdnn.agent.link import LinkEmulator, LinkParams
from splitdnn.agent.metrics import AgentMetrics
from splitdnn.agent.runtime import SIGNATURE, BadRequest
from splitdnn.agent.tier import Tier
from splitdnn.agent.wire import TooLarge, tensors_of

log = logging.getLogger("splitdnn.agent")

__all__ = [
    "CHUNKED_METHOD",
    "GRPC_OPTIONS",
    "ONE_METHOD",
    "PING_METHOD",
    "SIGNATURE",
    "AgentConfig",
    "BadRequest",
    "serve",
]

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024


@dataclass
class AgentConfig:
    slices: str
    slice: str
    port: int
    next: str | None = None
    metrics_port: int | None = None
    rest_port: int | None = None  # TF Serving's REST API (8501 in pods); None: no REST
    si: str = "local"
    tier: str = ""
    overhead_ratio: float = 0.0
    max_message_bytes: int = 4 * 1024 * 1024
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # largest request this tier accepts (gRPC, chunks, REST)
    runtime: str = "tensorflow"  # the slice runtime (agent.runtime.RUNTIMES)
    threads: int | None = None  # its compute threads (None: the runtime's default)
    devices: int = 1  # > 1: a cooperative group of that many workers computes the slice (CoopAI)
    coop: str = "mls"  # how the group splits it: mls, sls, off (agent.runtime.COOP_METHODS)
    coop_devices: list[tuple[str, int]] | None = None  # running `splitdnn coop-device`s (None: local processes)
    link: LinkParams = field(default_factory=LinkParams)  # what to emulate in-process (after the netem report)
    tc_applied: tuple = ()  # what the init container's tc applied (from the report)
    host: str = "0.0.0.0"
    queue_size: int = 16
    timeout: float = 30.0
    ping_interval: float = 1.0
    reconnect_seconds: float = 10.0  # failed pings for this long replace the channel to the next tier
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


def env_settings(environ: Mapping[str, str] = os.environ) -> dict:
    """AgentConfig fields set from the environment, read once at start-up: SPLITDNN_RECONNECT_SECONDS."""
    settings: dict[str, Any] = {}
    if environ.get("SPLITDNN_RECONNECT_SECONDS"):
        value = environ["SPLITDNN_RECONNECT_SECONDS"]
        try:
            settings["reconnect_seconds"] = float(value)
        except ValueError:
            raise ValueError(f"SPLITDNN_RECONNECT_SECONDS={value!r}: expected seconds, e.g. 10") from None
    return settings


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


# --- gRPC shell ---------------------------------------------------------------------------------------------------


def _abort(context, error: api.ApiError) -> NoReturn:
    context.abort(error.code, error.message)
    raise AssertionError("unreachable: abort raises")


def _predict(tier: Tier, request, context, client: bool, next_address: str | None) -> bytes:
    """Run a PredictRequest through the tier, or abort the RPC with a status that names the problem. `client`:
    a client's Predict (its rows are counted as frames), not a previous tier's request."""
    try:
        spec = request.model_spec
        api.check_model(
            tier.model,
            spec.name,
            spec.version.value if spec.HasField("version") else None,
            spec.version_label,
            unknown=grpc.StatusCode.INVALID_ARGUMENT,
        )
        api.check_signature(spec.signature_name)
        tensors = tensors_of(request.inputs, tier.max_request_bytes)
        run = tier.predict if client else tier.process
        return run(tensors, context.time_remaining())
    except Exception as exc:  # noqa: BLE001 - every failure becomes a status
        error = api.error_of(exc, tier.name, next_address)
        if error.code == grpc.StatusCode.INTERNAL:
            log.exception("internal error")
        _abort(context, error)


MODEL_SERVICE = "tensorflow.serving.ModelService"


def unary_service(service: str, methods: dict, name: str) -> grpc.GenericRpcHandler:
    """TF Serving's gRPC service `service` from {method: (request class or None, behaviour)}, without
    `tensorflow-serving-api` (its generated stubs pin TensorFlow; the classes are `splitdnn.agent.messages`'). Each
    handler parses its own request: grpcio answers bytes it cannot deserialize with INTERNAL "Exception
    deserializing request!"; a request that is not a protobuf message of the method's type is the caller's error,
    INVALID_ARGUMENT. A method not listed is UNIMPLEMENTED, as a generated servicer's default is."""

    def handler(request_class, behavior):
        def call(data: bytes, context):
            request = data
            if request_class is not None:
                try:
                    request = request_class.FromString(data)
                except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name}: not a {request_class.__name__}: {exc}")
            return behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(call, response_serializer=lambda m: m.SerializeToString())

    return grpc.method_handlers_generic_handler(service, {m: handler(*how) for m, how in methods.items()})


def build_server(tier: Tier | None, max_workers: int = 32, next_address: str | None = None, health=None):
    """The gRPC server of a tier: PredictionService, ModelService, the /splitdnn.Link methods and, given a
    `grpc_health.v1.health.HealthServicer`, grpc.health.v1.Health."""
    from grpc_health.v1 import health_pb2_grpc

    from splitdnn.agent import messages

    def predict(request, context):
        assert tier is not None
        body = _predict(tier, request, context, True, next_address)
        response = messages.PredictResponse.FromString(b"".join(tier.reply_chunks(body)))
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

    def model_metadata(request, context):
        assert tier is not None
        try:
            api.check_model(tier.model, request.model_spec.name, unknown=grpc.StatusCode.INVALID_ARGUMENT)
        except api.ApiError as error:
            _abort(context, error)
        if list(request.metadata_field) != ["signature_def"]:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"metadata_field must be ['signature_def'], got {list(request.metadata_field)}",
            )
        return api.model_metadata(tier.model, tier.entry.inputs, tier.entry.model_outputs)

    def unimplemented(method: str):
        def call(request, context):
            _abort(context, api.unimplemented(tier.model if tier else "", method))

        return None, call  # the request is not parsed: no such method here, whatever it says

    def model_status(request, context):
        assert tier is not None
        spec = request.model_spec
        try:
            api.check_model(
                tier.model, spec.name, spec.version.value if spec.HasField("version") else None, spec.version_label
            )
        except api.ApiError as error:
            _abort(context, error)
        return api.model_status(tier.ready(), tier.stopping.is_set(), tier.not_ready_reason())

    def forwarded(data: bytes, context) -> bytes:
        """A previous tier's serialized PredictRequest, computed here (and behind): the reply to stream back."""
        assert tier is not None
        try:
            request = messages.PredictRequest.FromString(data)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{tier.name}: not a PredictRequest: {exc}")
        return _predict(tier, request, context, False, next_address)

    def chunked(request_iterator, context):
        assert tier is not None
        data = read_stream(request_iterator, context, tier.max_request_bytes, tier.timeout, tier.name)
        yield b""  # acknowledgement: the sender's transfer time ends here
        yield from tier.reply_chunks(forwarded(data, context))

    def one(data: bytes, context):
        """A request in one message (`downstream.ONE_METHOD`); the reply whole, and this tier's time (parse,
        compute, the tiers behind it) in the trailing metadata for the sender's transfer time."""
        assert tier is not None
        start = time.monotonic()
        reply = b"".join(tier.reply_chunks(forwarded(data, context)))
        context.set_trailing_metadata(((SERVER_SECONDS, f"{time.monotonic() - start:.6f}"),))
        return reply

    def ping(request, context):
        """Empty while the chain behind this tier is ready, else why not: the previous tier's readiness follows it.
        (Not this tier's own stopping: a draining tier still serves what the previous tier sends.)"""
        return b"" if tier is None else tier.chain_problem().encode()

    # no SO_REUSEPORT (gRPC's default): a second agent on a taken port must fail, not share its connections;
    # gRPC itself refuses (RESOURCE_EXHAUSTED) a message over the request limit before handing it to us
    limit = tier.max_request_bytes if tier is not None else DEFAULT_MAX_REQUEST_BYTES
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=server_options(limit) + [("grpc.so_reuseport", 0)],
    )
    name = tier.name if tier is not None else "agent"
    prediction = {
        "Predict": (messages.PredictRequest, predict),
        "GetModelMetadata": (messages.GetModelMetadataRequest, model_metadata),
        **{m: unimplemented(m) for m in ("Classify", "Regress", "MultiInference")},
    }
    server.add_generic_rpc_handlers(
        (
            unary_service(PREDICTION_SERVICE, prediction, name),
            unary_service(MODEL_SERVICE, {"GetModelStatus": (messages.GetModelStatusRequest, model_status)}, name),
        )
    )
    if health is not None:
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
    link = grpc.method_handlers_generic_handler(
        "splitdnn.Link",
        {
            "PredictChunked": grpc.stream_stream_rpc_method_handler(chunked),
            "PredictOne": grpc.unary_unary_rpc_method_handler(one),
            "Ping": grpc.unary_unary_rpc_method_handler(ping),
        },
    )
    server.add_generic_rpc_handlers((link,))
    return server


def _cancel(context, code: grpc.StatusCode, details: str) -> None:
    """End an RPC from another thread with a status (the handler's thread is blocked reading its requests).
    grpcio's public `cancel()` can only say CANCELLED; the call object underneath can say more."""
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    try:
        call.cancel(code.value[0], details)  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - another grpcio: at least end it
        context.cancel()


def read_stream(chunks, context, limit: int, seconds: float, name: str) -> bytes:
    """The chunks of a `/splitdnn.Link/PredictChunked` request, joined. Refused with RESOURCE_EXHAUSTED as soon
    as the running total passes `limit` (nothing more is read or kept), or when the stream has not ended after
    `seconds` (the tier's --timeout: a sender that never half-closes must not hold a thread and its chunks)."""
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _cancel(
            context,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{name}: the chunk stream did not end within {seconds:g} s (--timeout)",
        )

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    parts: list[bytes] = []
    total = 0
    try:
        for chunk in chunks:
            total += len(chunk)
            if total > limit:
                error = api.error_of(
                    TooLarge(f"the chunk stream passed {limit} bytes (--max-request-bytes) at chunk {len(parts) + 1}"),
                    name,
                )
                parts.clear()
                _abort(context, error)
            parts.append(chunk)
    except grpc.RpcError:  # the stream was cancelled: by `expire` (its status is sent) or by the sender
        _abort(context, api.ApiError(grpc.StatusCode.CANCELLED, f"{name}: the chunk stream ended early"))
    finally:
        timer.cancel()
    return b"".join(parts)


def worker_count(config: AgentConfig) -> int:
    """gRPC worker threads for this tier.

    A sync gRPC handler holds its thread for the frame's whole stay here *and downstream* (the next tiers' compute
    and every later link's delay), so a tier handles at most this many frames at once; a frame beyond that waits
    for a thread, silently, and turns late. The source never has more than `max_inflight` frames in the pipeline,
    so each tier needs one thread per such frame, plus `queue_size` for requests that only wait to be refused,
    plus a few for pings, health checks and metadata. (Before every tier was given `--max-inflight` a middle tier
    had a fixed 32, which capped it at 32 / round trip: 16 fps behind Cho 2021 Type 3's 2 s ring.)
    """
    return max(32, config.max_inflight + config.queue_size + 8)


# --- wiring -------------------------------------------------------------------------------------------------------


def build_tier(config: AgentConfig) -> Tier:
    """Load the slice, open the link to the next tier (if any) and put the request path together."""
    from splitdnn.agent import runtime

    slice_runtime = runtime.load(
        config.slices,
        config.slice,
        config.runtime,
        config.threads,
        devices=config.devices,
        coop=config.coop,
        coop_devices=config.coop_devices,
    )
    entry = slice_runtime.entry
    name = config.tier or config.slice
    metrics = AgentMetrics(config.si, name)
    metrics.set_slice(config.slice, entry.cut, entry.model)
    devices = 1
    if isinstance(slice_runtime, runtime.CoopRuntime):
        devices = slice_runtime.devices
        plan, platform = slice_runtime.plan, slice_runtime.platform
        log.info(
            "cooperative tier: %d devices (%s), %s plan on %d of them, blocks %s (F %.2f GFLOP/s, G %.2f Gbit/s "
            "measured; predicted %.2f ms)",
            config.devices,
            ", ".join(slice_runtime.device_names),
            config.coop,
            plan.devices,
            plan.block_list,
            platform.flops / 1e9,
            platform.bandwidth_bps / 1e9,
            plan.seconds * 1e3,
        )
        metrics.set_coop_plan(config.coop, list(plan.blocks), plan.seconds)
    metrics.set_runtime(slice_runtime.name, slice_runtime.threads, devices)
    metrics.set_emulation(emulation_paths(config.tc_applied, config.link))
    emulator = LinkEmulator(config.link, seed=config.seed)
    downstream = None
    if config.next:
        downstream = Downstream(
            config.next,
            emulator,
            metrics,
            config.max_message_bytes,
            reconnect_seconds=config.reconnect_seconds,
            ping_interval=config.ping_interval,
        )
    return Tier(
        slice_runtime,
        name,
        metrics,
        emulator,
        downstream,
        overhead_ratio=config.overhead_ratio,
        queue_size=config.queue_size,
        max_message_bytes=config.max_message_bytes,
        max_request_bytes=config.max_request_bytes,
        timeout=config.timeout,
    )


def build_source(config: AgentConfig, tier: Tier):
    """The first tier's frame source (`--source`), feeding the tier's request path and its metrics."""
    from splitdnn.agent.source import TierSource, image_frames, synthetic_frames

    assert config.source is not None
    inputs = tier.entry.inputs
    make = (
        synthetic_frames(inputs, config.seed) if config.source == "synthetic" else image_frames(config.source, inputs)
    )

    def on_outcome(outcome: str, latency: float | None) -> None:
        tier.metrics.frames[outcome].inc()
        if latency is not None:
            tier.metrics.frame_latency.observe(latency)

    downstream = tier.downstream
    return TierSource(
        make,
        lambda frame, timeout: tier.process(frame, timeout),
        (lambda seconds: downstream.wait(seconds)) if downstream is not None else (lambda seconds: True),
        fps=config.fps,
        frames=config.frames,
        deadline=config.deadline,
        max_inflight=config.max_inflight,
        timeout=max(config.timeout, config.deadline),
        warmup=config.warmup,
        summary_path=config.summary,
        on_outcome=on_outcome,
        label=config.source,
    )


def serve(config: AgentConfig, ready_file: str | None = None) -> int:
    """Run an agent until SIGTERM/SIGINT. Returns the exit code."""
    from grpc_health.v1 import health, health_pb2

    tier = build_tier(config)
    checker = health.HealthServicer(experimental_non_blocking=True)

    def set_health(ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", PREDICTION_SERVICE):  # "" is what a Kubernetes grpc probe asks about
            checker.set(service, status)

    tier.on_ready = set_health
    set_health(tier.ready())
    server = build_server(tier, max_workers=worker_count(config), next_address=config.next, health=checker)
    bound = server.add_insecure_port(f"{config.host}:{config.port}")
    if not bound:
        raise RuntimeError(f"cannot listen on {config.host}:{config.port}")
    server.start()
    rest_server = None
    if config.rest_port is not None:
        from splitdnn.agent import rest

        try:
            rest_server = rest.serve(tier, config.rest_port, config.host, next_address=config.next)
        except OSError as exc:
            server.stop(None)
            raise RuntimeError(f"cannot listen on {config.host}:{config.rest_port} (REST): {exc}") from None
    if config.metrics_port is not None:
        tier.metrics.serve(config.metrics_port, addr=config.host, ready=tier.ready)
    log.info(
        "tier %s serving %s of model %s on :%d%s%s; link emulation: %s (in-process: %s; tc: %s)",
        tier.name,
        config.slice,
        tier.model,
        bound,
        f" (REST :{config.rest_port})" if rest_server else "",
        f" -> {config.next}" if config.next else " (last tier)",
        "+".join(sorted(emulation_paths(config.tc_applied, config.link))),
        config.link.describe(),
        ", ".join(config.tc_applied) or "nothing",
    )
    stopping = threading.Event()

    def on_signal(signum, frame):
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if tier.downstream is not None:
        tier.downstream.start()
    source = build_source(config, tier) if config.source else None
    if source is not None:
        source.start()
    if ready_file:
        Path(ready_file).write_text(f"{bound}\n")
    print(f"ready {tier.name} {bound}", flush=True)
    stopping.wait()
    log.info("tier %s stopping", tier.name)
    tier.stop_admitting()
    if source is not None:
        # drain: admit no more frames, let the ones in the pipeline finish (the next tiers are still up: a
        # re-split or rollout stops the first tier before the others), write the summary, then close
        source.stop()
        source.join(timeout=max(config.timeout, config.deadline) + 5)
    if not tier.drain(config.drain_quiet, config.drain_timeout):
        log.warning("tier %s: still busy after %gs of draining; stopping anyway", tier.name, config.drain_timeout)
    tier.close()
    if rest_server is not None:
        rest_server.shutdown()
    server.stop(grace=1).wait(2)
    return 0
