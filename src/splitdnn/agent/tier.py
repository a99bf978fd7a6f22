"""One tier's request path: validate → this tier's stage → the next tier (or the result, at the last tier).

Every tier's Predict takes that tier's inputs and returns the model's outputs; the first tier's Predict is the
whole model for a TF Serving client. `Tier` also knows whether it is ready (the chain behind it answers), how many
requests are in progress (draining), and counts the outcomes of client requests (`predict`), one per row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import numpy as np

from splitdnn.agent.downstream import Downstream
from splitdnn.agent.link import LinkEmulator
from splitdnn.agent.metrics import AgentMetrics
from splitdnn.agent.runtime import SliceRuntime, batch_size
from splitdnn.agent.stage import QueueFull, Stage
from splitdnn.agent.wire import predict_request, predict_response, split_chunks


class Tier:
    def __init__(
        self,
        runtime: SliceRuntime,
        name: str,
        metrics: AgentMetrics,
        emulator: LinkEmulator,
        downstream: Downstream | None = None,
        overhead_ratio: float = 0.0,
        queue_size: int = 16,
        max_message_bytes: int = 4 * 1024 * 1024,
        max_request_bytes: int = 64 * 1024 * 1024,
        timeout: float = 30.0,
    ):
        self.runtime = runtime
        self.entry = runtime.entry
        self.model = runtime.entry.model
        self.name = name
        self.metrics = metrics
        self.emulator = emulator  # this tier's outgoing link; the last tier applies it to its results
        self.downstream = downstream
        self.max_message_bytes = max_message_bytes
        self.max_request_bytes = max_request_bytes  # the largest request this tier decodes (`wire.TooLarge`)
        self.timeout = timeout
        self.stage = Stage(
            runtime.compute, overhead_ratio, queue_size, on_done=metrics.stage_compute.observe, name=f"stage-{name}"
        )
        metrics.queue_depth.set_function(lambda: self.stage.depth)
        self._active = 0
        self._active_lock = threading.Lock()
        self._last_active = time.monotonic()
        metrics.inflight.set_function(lambda: self._active)
        self.stopping = threading.Event()
        self.on_ready: Callable[[bool], None] | None = None  # told whenever `ready()` may have changed
        if downstream is not None:
            downstream.on_change = lambda answering: self._ready_changed()

    @property
    def last(self) -> bool:
        return self.downstream is None

    # --- requests ---------------------------------------------------------------------------------------------

    def process(self, tensors: Mapping[str, np.ndarray], timeout: float | None = None) -> bytes:
        """Inputs of this slice -> serialized PredictResponse with the model's outputs (via the next tiers)."""
        return self._run(self.runtime.validate(tensors), timeout)

    def predict(self, tensors: Mapping[str, np.ndarray], timeout: float | None = None) -> bytes:
        """A client's Predict (gRPC or REST): `process`, and one outcome per row of the batch in
        `splitdnn_frames_total` (completed, dropped when this tier's queue is full, failed otherwise) and
        `splitdnn_frame_latency_seconds` for the rows that came back. A request that fails validation counts
        nothing: it never was a frame."""
        feed = self.runtime.validate(tensors)
        rows = batch_size(feed)
        start = time.monotonic()
        outcome = "failed"
        try:
            body = self._run(feed, timeout)
            outcome = "completed"
            return body
        except QueueFull:
            outcome = "dropped"
            raise
        finally:
            self.metrics.frames[outcome].inc(rows)
            if outcome == "completed":
                latency = time.monotonic() - start
                for _ in range(rows):
                    self.metrics.frame_latency.observe(latency)

    def _run(self, feed: dict, timeout: float | None) -> bytes:
        timeout = timeout or self.timeout
        start = time.monotonic()
        with self._active_lock:
            self._active += 1
            self._last_active = time.monotonic()
        try:
            outputs = self.stage(feed, timeout)
            if self.downstream is None:
                return predict_response(self.model, outputs).SerializeToString()
            request = predict_request(self.model, outputs).SerializeToString()
            return self.downstream.forward(request, max(0.1, timeout - (time.monotonic() - start)))
        finally:
            with self._active_lock:
                self._active -= 1
                self._last_active = time.monotonic()

    def reply_chunks(self, body: bytes):
        """Chunks of a response to the caller; the last tier's emulated link applies to its result."""
        chunks = split_chunks(body, self.max_message_bytes)
        if not self.last:
            return chunks
        self.metrics.link_bytes.inc(len(body))
        return self.emulator.send(chunks)

    # --- readiness and stopping -------------------------------------------------------------------------------

    def ready(self) -> bool:
        """Ready for frames: the last tier always, the others while the next tier answers pings; not once
        stopping."""
        answering = self.downstream is None or self.downstream.answering
        return answering and not self.stopping.is_set()

    def chain_problem(self) -> str:
        """Why the chain behind this tier does not work ("" while it does)."""
        if self.downstream is not None and not self.downstream.answering:
            return self.downstream.problem
        return ""

    def not_ready_reason(self) -> str:
        if self.stopping.is_set():
            return f"tier {self.name} is stopping"
        return self.chain_problem()

    def _ready_changed(self) -> None:
        if self.on_ready:
            self.on_ready(self.ready())

    def stop_admitting(self) -> None:
        """SIGTERM: no longer Ready (requests still in flight are served: see `drain`)."""
        self.stopping.set()
        self._ready_changed()

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

    def close(self) -> None:
        self.stopping.set()
        self.stage.close()
        if self.downstream is not None:
            self.downstream.close()
