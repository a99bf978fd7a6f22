"""The link to the next tier: its gRPC channel, forwarding requests in chunks, pings, reconnects and whether the
next tier answers (readiness).

A request travels on `/splitdnn.Link/PredictChunked` (a bidirectional stream of raw bytes): the serialized request
in chunks of at most `max_message_bytes`, then the receiver answers one empty message (the acknowledgement the
sender times the transfer with) followed by the serialized `PredictResponse` in chunks. `/splitdnn.Link/Ping`
(empty in) measures the round trip every `ping_interval` seconds; the answer is empty while the chain behind the
next tier works, else why it does not, so readiness follows the whole chain (a tier is ready while the next tier
answers and its own next tier does, and so on), whether or not a Service stops routing to a pod that is not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc

from splitdnn.agent.link import LinkEmulator, LinkMeter
from splitdnn.agent.metrics import AgentMetrics
from splitdnn.agent.wire import split_chunks

log = logging.getLogger("splitdnn.agent")

CHUNKED_METHOD = "/splitdnn.Link/PredictChunked"
# A request that fits in one message goes unary: a client-streaming call costs grpcio a thread hand-off per call
# (10 kB: ~0.3 ms of a ~0.5 ms hop). The server reports its own time in the trailing metadata, so the link's
# transfer time is the call's minus the server's (the chunked stream's acknowledgement says it directly).
ONE_METHOD = "/splitdnn.Link/PredictOne"
SERVER_SECONDS = "splitdnn-server-seconds"
PING_METHOD = "/splitdnn.Link/Ping"
GRPC_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.enable_http_proxy", 0),
]  # tiers talk directly, whatever http_proxy says


def server_options(max_request_bytes: int) -> list[tuple[str, int]]:
    """A tier's server options: GRPC_OPTIONS, but a message over the request limit is refused by gRPC."""
    return [(k, max_request_bytes if k == "grpc.max_receive_message_length" else v) for k, v in GRPC_OPTIONS]


class Downstream:
    """The channel to the next tier at `address`, and what is known about it.

    `answering` is True while the next tier answers pings and says it is ready (a tier is Ready only then: a pod is
    Ready once the whole chain behind it works, so a rollout keeps the old pods until the new chain does);
    `problem` says why not. `on_change(answering)` is called whenever that flips.
    """

    def __init__(
        self,
        address: str,
        emulator: LinkEmulator,
        metrics: AgentMetrics,
        max_message_bytes: int,
        reconnect_seconds: float = 10.0,
        ping_interval: float = 1.0,
        on_change: Callable[[bool], None] | None = None,
    ):
        self.address = address
        self.emulator = emulator
        self.metrics = metrics
        self.meter = LinkMeter()
        self.max_message_bytes = max_message_bytes
        self.reconnect_seconds = reconnect_seconds
        self.ping_interval = ping_interval
        self.on_change = on_change
        self.answering = False
        self.unary = True  # one-message requests go unary (ONE_METHOD) until the next tier says it has none
        self.problem = f"the next tier {address} has not answered yet"
        self._stop = threading.Event()
        self._channel: grpc.Channel | None = None
        self._failing_since: float | None = None  # when pings started failing (None: the last one answered)
        self._connected_at = 0.0
        self._pinger: threading.Thread | None = None
        self._warned_at = time.monotonic()
        self._connect()

    # --- frames -----------------------------------------------------------------------------------------------

    def forward(self, request: bytes, timeout: float) -> bytes:
        """Send a serialized PredictRequest to the next tier; its serialized PredictResponse."""
        start = time.monotonic()
        chunks = split_chunks(request, self.max_message_bytes)
        if len(chunks) == 1 and self.unary:
            (data,) = self.emulator.send(chunks)  # when the link would deliver it
            try:
                reply, call = self._one.with_call(
                    data, timeout=max(0.001, timeout - (time.monotonic() - start)), wait_for_ready=True
                )
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self.unary = False  # a next tier of an earlier version (a rolling update): streams only
                return self.forward(request, max(0.1, timeout - (time.monotonic() - start)))
            server = dict(call.trailing_metadata() or ()).get(SERVER_SECONDS)
            self._observe(len(request), time.monotonic() - start - float(server or 0.0))
            return reply
        responses = self._push(self.emulator.send(chunks), timeout=timeout, wait_for_ready=True)
        next(responses)  # the acknowledgement: the whole request has arrived
        self._observe(len(request), time.monotonic() - start)
        return b"".join(responses)

    def _observe(self, nbytes: int, took: float) -> None:
        took = max(0.0, took)
        self.metrics.link_transfer.observe(took)
        self.metrics.link_bytes.inc(nbytes)
        self.metrics.set_link(bandwidth=self.meter.observe_transfer(nbytes, took))

    # --- pings, reconnects, readiness -------------------------------------------------------------------------

    def ping_once(self, timeout: float = 5.0, record: bool = True) -> str:
        """One ping; the next tier's answer: "" when it is ready, else why not. Raises grpc.RpcError."""
        start = time.monotonic()
        self.emulator.delay_small_message()
        answer = self._ping(b"", timeout=timeout, wait_for_ready=True)
        rtt = time.monotonic() - start
        if record:
            self.metrics.set_link(rtt=self.meter.observe_rtt(rtt))
        return bytes(answer).decode(errors="replace")

    def wait(self, timeout: float | None = None, ready: bool = True) -> bool:
        """Block until the next tier answers a ping and (if `ready`) says it is ready: tiers start in any order.
        False if closed or timed out."""
        start = time.monotonic()
        while not self._stop.is_set():
            try:
                self.ping_once(timeout=2.0, record=False)  # includes connecting: not a round trip sample
                if self._ping_result(None, self.ping_once(timeout=2.0)) or not ready:
                    return True
                if timeout is not None and time.monotonic() - start > timeout:
                    return False
                self._stop.wait(0.2)
            except grpc.RpcError as exc:
                self._ping_result(exc)
                now = time.monotonic()
                if timeout is not None and now - start > timeout:
                    return False
                if now - self._warned_at > 10:
                    log.warning("waiting for the next tier %s: %s", self.address, exc.details())
                    self._warned_at = now
                self._stop.wait(0.2)
        return False

    def start(self) -> None:
        """Ping the next tier in the background: first until it answers, then every `ping_interval` seconds."""
        self._pinger = threading.Thread(target=self._ping_loop, daemon=True, name="pinger")
        self._pinger.start()

    def close(self) -> None:
        self._stop.set()
        if self._channel is not None:
            self._channel.close()

    def _ping_loop(self) -> None:
        self.wait(ready=False)  # first sample as soon as the next tier is up
        while not self._stop.wait(self.ping_interval):
            try:
                self._ping_result(None, self.ping_once())
            except grpc.RpcError as exc:
                log.warning("ping to %s failed: %s", self.address, exc.details())
                self._ping_result(exc)

    def _set_answering(self, answering: bool, problem: str = "") -> None:
        self.problem = problem
        if answering != self.answering:
            self.answering = answering
            if self.on_change:
                self.on_change(answering)

    def _connect(self) -> None:
        """Open a new channel to the next tier. The one it replaces (if any) is closed a minute later: closing it
        now would cancel frames still in flight on it (pings can fail while frames get through, e.g. behind a
        long queue)."""
        old = self._channel
        # tiers start in any order and restart independently: reconnect quickly, and wait for the next tier
        # (within the frame's deadline) rather than fail a frame because the channel was backing off
        # (a channel of its own subchannel pool: channels to one address otherwise share the connection, and the
        # new channel would reuse the one it replaces)
        channel = grpc.insecure_channel(
            self.address,
            options=GRPC_OPTIONS
            + [
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        self._channel = channel
        self._push = channel.stream_stream(CHUNKED_METHOD)
        self._one = channel.unary_unary(ONE_METHOD)
        self._ping = channel.unary_unary(PING_METHOD)
        self._connected_at = time.monotonic()
        if old is not None:
            closer = threading.Timer(60.0, old.close)
            closer.daemon = True
            closer.start()

    def _ping_result(self, exc: grpc.RpcError | None, answer: str = "") -> bool:
        """Bookkeeping after a ping. gRPC only reconnects a connection that breaks; one that stays up but answers
        every call with an error stays in use for ever. That happens in kind: a pod that dials a Service's
        ClusterIP before kube-proxy has its rules goes out through the node's default route, and whatever
        answers there (an egress proxy: HTTP/2 404) keeps the connection, which conntrack keeps pinned. So after
        `reconnect_seconds` of failed pings, the channel is replaced: a new connection meets the rules now in
        place. Returns whether the next tier answered and is ready."""
        now = time.monotonic()
        if exc is None:
            self._failing_since = None
            if answer:
                self._set_answering(False, f"the next tier {self.address} is not ready: {answer}")
            else:
                self._set_answering(True)
            return not answer
        details = exc.details() if hasattr(exc, "details") else str(exc)
        self._set_answering(False, f"the next tier {self.address} does not answer: {details}")
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since >= self.reconnect_seconds and now - self._connected_at >= self.reconnect_seconds:
            log.warning(
                "the next tier %s has not answered for %.0f s (%s): opening a new connection",
                self.address,
                now - self._failing_since,
                details,
            )
            self.metrics.reconnects.inc()
            self._connect()
        return False
