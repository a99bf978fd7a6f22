"""The first tier's frame source: frames at `fps` (seeded synthetic tensors or images from a directory), at most
`max_inflight` in the pipeline, each with a deadline, and an outcome for every frame offered:

- completed: the result came back within the deadline;
- dropped:   admission refused because `max_inflight` frames were already in the pipeline;
- late:      the result came back after the deadline;
- failed:    the pipeline raised (an error, or no result within `timeout`).

offered = completed + dropped + late + failed holds at every instant: a frame is counted when its outcome is
known, and frames still in the pipeline are `inflight`. `run` returns the counts, and `seconds` from the first
frame to the last outcome, after the last frame has an outcome.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from splitdnn.agent.runtime import TensorSpec

log = logging.getLogger("splitdnn.agent")

OUTCOMES = ("completed", "dropped", "late", "failed")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff")


class Outcomes:
    def __init__(self):
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.inflight = 0

    def admit(self, limit: int) -> bool:
        """Let one more frame into the pipeline unless `limit` frames are already in it."""
        with self._lock:
            if self.inflight >= limit:
                return False
            self.inflight += 1
            return True

    def record(self, outcome: str, leaving: bool = False) -> None:
        """Count an outcome; `leaving` frames also leave the pipeline (in the same step, so nothing is lost)."""
        with self._lock:
            self.counts[outcome] += 1
            self.inflight -= leaving

    def snapshot(self) -> dict:
        with self._lock:
            counts = dict(self.counts)
            inflight = self.inflight
        offered = sum(counts.values())
        lost = counts["dropped"] + counts["late"] + counts["failed"]
        return {"offered": offered, **counts, "drop_rate": lost / offered if offered else 0.0, "inflight": inflight}


def synthetic_frames(inputs: Sequence[TensorSpec], seed: int = 0) -> Callable[[int], dict]:
    """Frame i -> {input name: array of shape (1, *shape[1:])}, uniform in [0, 1), reproducible per (seed, i)."""

    def make(i: int) -> dict:
        rng = np.random.default_rng([seed, i])
        return {t["name"]: _random(rng, t) for t in inputs}

    return make


def zero_frame(inputs: Sequence[TensorSpec]) -> dict:
    """{input name: zeros of shape (1, *shape[1:])}: a frame for warming up a slice."""
    return {t["name"]: np.zeros(_frame_shape(t), t["dtype"]) for t in inputs}


def _frame_shape(tensor: TensorSpec) -> tuple:
    """Batch of one; unknown dimensions 1."""
    return (1, *[d or 1 for d in tensor["shape"][1:]])


def _random(rng, tensor: TensorSpec) -> np.ndarray:
    shape = _frame_shape(tensor)
    dtype = np.dtype(tensor["dtype"])
    if dtype.kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    return rng.integers(0, 256, size=shape).astype(dtype)


def image_frames(directory: str | Path, inputs: Sequence[TensorSpec]) -> Callable[[int], dict]:
    """Frame i -> the i-th image of `directory` (sorted, cycling), resized to the input's H×W, scaled to [0, 1]."""
    from PIL import Image

    if len(inputs) != 1 or len(inputs[0]["shape"]) != 4:
        raise ValueError("an image source needs a model with one image input of shape (batch, H, W, C)")
    files = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {directory}")
    tensor = inputs[0]
    _, h, w, c = tensor["shape"]
    if h is None or w is None or c is None:
        raise ValueError(f"an image source needs a fixed input height, width and channels, not {tensor['shape']}")
    height, width, channels = h, w, c
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels)
    if mode is None:
        raise ValueError(f"cannot make {channels}-channel frames from images")
    cache: dict[int, np.ndarray] = {}

    def make(i: int) -> dict:
        k = i % len(files)
        if k not in cache:
            with Image.open(files[k]) as opened:
                img = opened.convert(mode).resize((width, height))
                array = np.asarray(img, dtype=np.float32).reshape(1, height, width, channels) / 255.0
            if len(cache) < 1024:
                cache[k] = array
            else:
                return {tensor["name"]: array.astype(tensor["dtype"])}
        return {tensor["name"]: cache[k].astype(tensor["dtype"])}

    return make


class FrameSource:
    """Offer `frames` frames (0 = until stopped) at `fps` to `pipeline(frame, timeout)`."""

    def __init__(
        self,
        make_frame: Callable[[int], dict],
        pipeline: Callable[[dict, float], object],
        fps: float,
        frames: int,
        deadline: float,
        max_inflight: int,
        timeout: float = 30.0,
        on_outcome: Callable[[str, float | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.make_frame = make_frame
        self.pipeline = pipeline
        self.fps = fps
        self.frames = frames
        self.deadline = deadline
        self.max_inflight = max_inflight
        self.timeout = timeout
        self.on_outcome = on_outcome
        self.clock = clock
        self.outcomes = Outcomes()
        self.latencies: list[float] = []  # of frames that came back (completed or late); bounded below
        self.last_error: str | None = None
        self.stopped = threading.Event()
        self.finished = threading.Event()

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> dict:
        pool = ThreadPoolExecutor(max_workers=self.max_inflight, thread_name_prefix="frame")
        start = self.clock()
        i = 0
        try:
            while not self.stopped.is_set() and (self.frames == 0 or i < self.frames):
                wait = start + i / self.fps - self.clock()
                if wait > 0 and self.stopped.wait(wait):
                    break
                if self.outcomes.admit(self.max_inflight):
                    frame = self.make_frame(i)
                    pool.submit(self._one, frame, self.clock())
                else:
                    self._finish("dropped", None)
                i += 1
        finally:
            pool.shutdown(wait=True)
            self.finished.set()
        # emitted = frames the source produced; every one has an outcome once the pipeline is drained
        return {**self.outcomes.snapshot(), "emitted": i, "seconds": self.clock() - start}

    def _one(self, frame: dict, emitted: float) -> None:
        outcome, latency = "failed", None
        try:
            self.pipeline(frame, self.timeout)
            latency = self.clock() - emitted
            outcome = "completed" if latency <= self.deadline else "late"
        except Exception as exc:  # noqa: BLE001 - any error is the frame's outcome
            outcome = "failed"
            self.last_error = f"{type(exc).__name__}: {exc}"
        finally:
            self._finish(outcome, latency, leaving=True)

    def _finish(self, outcome: str, latency: float | None, leaving: bool = False) -> None:
        self.outcomes.record(outcome, leaving)
        if latency is not None and len(self.latencies) < 100_000:
            self.latencies.append(latency)
        if self.on_outcome:
            self.on_outcome(outcome, latency)


def summarize(result: dict, latencies: Sequence[float], last_error: str | None) -> dict:
    """The source's summary (`--summary`): the outcome counts, mean and median latency, the last error if any."""
    lat = sorted(latencies)
    summary = dict(result)
    summary["latency_mean"] = float(np.mean(lat)) if lat else None
    summary["latency_p50"] = lat[len(lat) // 2] if lat else None
    if last_error:
        summary["last_error"] = last_error
    return summary


class TierSource:
    """The first tier's frame source as the agent runs it, in a thread of its own: wait until the chain behind
    answers, send the warm-up frames, offer the counted frames, write the summary.

    `pipeline(frame, timeout)` is the tier's request path; `wait_chain(seconds)` blocks until the next tier answers
    (False: not within `seconds`). `stop()` admits no more frames; `join()` waits for the frames in the pipeline."""

    def __init__(
        self,
        make_frame: Callable[[int], dict],
        pipeline: Callable[[dict, float], object],
        wait_chain: Callable[[float], bool],
        *,
        fps: float,
        frames: int,
        deadline: float,
        max_inflight: int,
        timeout: float,
        warmup: int = 0,
        summary_path: str | None = None,
        on_outcome: Callable[[str, float | None], None] | None = None,
        label: str = "synthetic",
    ):
        self.pipeline = pipeline
        self.make_frame = make_frame
        self.wait_chain = wait_chain
        self.warmup = warmup
        self.timeout = timeout
        self.summary_path = summary_path
        self.label = label
        self.source = FrameSource(
            make_frame, pipeline, fps, frames, deadline, max_inflight, timeout=timeout, on_outcome=on_outcome
        )
        self.summary: dict | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_logged, daemon=True, name="source")
        self._thread.start()

    def stop(self) -> None:
        self.source.stop()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run_logged(self) -> None:
        try:
            self.run()
        except Exception:  # noqa: BLE001 - keep serving; the log says why the source stopped
            log.exception("frame source stopped")

    def run(self) -> dict | None:
        while not self.wait_chain(1.0):
            if self.source.stopped.is_set():
                return None
        if self.source.stopped.is_set():
            return None
        self.warm_up()
        s = self.source
        log.info(
            "source: %s at %g fps, %s frames, deadline %gs, max in flight %d",
            self.label,
            s.fps,
            s.frames or "endless",
            s.deadline,
            s.max_inflight,
        )
        self.summary = summarize(s.run(), s.latencies, s.last_error)
        log.info("source done: %s", json.dumps(self.summary))
        if self.summary_path:
            Path(self.summary_path).write_text(json.dumps(self.summary) + "\n")
        return self.summary

    def warm_up(self) -> None:
        """Send `warmup` frames one at a time through every tier and discard them: a run's first frames otherwise
        pay one-time costs (a stream's first use between two tiers, TensorFlow's first call at a batch shape)
        that the deadline counts against them. They are the first frames of the source (seeded), sent once more
        when the counted run starts."""
        for i in range(self.warmup):
            if self.source.stopped.is_set():
                return
            start = time.monotonic()
            try:
                self.pipeline(self.make_frame(i), self.timeout)
            except Exception as exc:  # noqa: BLE001 - a warm-up frame's outcome decides nothing
                log.warning("warm-up frame %d/%d failed: %s", i + 1, self.warmup, exc)
            else:
                log.info("warm-up frame %d/%d took %.3f s", i + 1, self.warmup, time.monotonic() - start)
