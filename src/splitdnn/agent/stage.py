"""One pipeline stage: computes one frame at a time (like real hardware), with a bounded queue in front.

`overheadRatio` emulates a slower machine: after computing a frame for t seconds the stage waits ratio·t more
before it takes the next frame (Cho 2021: overhead = ratio × process time). The stage's time per frame,
t·(1 + ratio), is what `on_done` reports (the `splitdnn_stage_compute_seconds` histogram).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future


class QueueFull(RuntimeError):
    """The stage's queue is full: the caller should back off (gRPC RESOURCE_EXHAUSTED)."""


class Stage:
    def __init__(
        self,
        compute: Callable,
        overhead_ratio: float = 0.0,
        queue_size: int = 16,
        on_done: Callable[[float], None] | None = None,
        name: str = "stage",
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if overhead_ratio < 0:
            raise ValueError(f"overhead ratio must be >= 0, got {overhead_ratio}")
        if queue_size < 1:
            raise ValueError(f"queue size must be >= 1, got {queue_size}")
        self.compute = compute
        self.overhead_ratio = overhead_ratio
        self.on_done = on_done
        self.clock = clock
        self.sleep = sleep
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    @property
    def depth(self) -> int:
        """Frames waiting (not counting the one being computed)."""
        return self._queue.qsize()

    def submit(self, item) -> Future:
        future: Future = Future()
        try:
            self._queue.put_nowait((item, future))
        except queue.Full:
            raise QueueFull(f"stage queue full ({self._queue.maxsize} frames waiting)") from None
        return future

    def __call__(self, item, timeout: float | None = None):
        return self.submit(item).result(timeout)

    def close(self) -> None:
        self._queue.put((None, None))
        self._worker.join(timeout=5)

    def _run(self) -> None:
        while True:
            item, future = self._queue.get()
            if future is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            start = self.clock()
            try:
                result = self.compute(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)
                continue
            took = self.clock() - start
            if self.overhead_ratio:
                self.sleep(self.overhead_ratio * took)
            if self.on_done:
                self.on_done(took * (1 + self.overhead_ratio))
            future.set_result(result)
