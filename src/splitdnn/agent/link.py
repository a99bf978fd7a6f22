"""A tier's outgoing link: in-process emulation (delay, jitter, loss, token-bucket rate) and measurement.

Emulation happens at the sender, on what it sends. A message is a list of chunks. The link serializes chunks
one after another at `rate` bytes/s (a FIFO shared by all frames on this link: one wire), and each chunk arrives
one propagation delay (`delay` ± uniform `jitter`, drawn once per message so chunks stay in order) after it left.
A lost chunk is sent again after a retransmission timeout (max(200 ms, 2·delay), like TCP's minimum RTO) and
costs its bytes again. Frames overlap on the link: while one message is in flight the next one serializes.

Measurement is what re-planning reads and is done on real transfers, whichever path (tc or in-process) shapes
the link: `rtt` from small pings, `bandwidth` from the time a message took to reach the receiver (acknowledged
once the last chunk is in) minus one round trip.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

MIN_RTO = 0.2
MIN_BANDWIDTH_SAMPLE = 64 * 1024  # smaller messages say nothing about bandwidth (one TCP window, RTT noise)


@dataclass(frozen=True)
class LinkParams:
    delay: float = 0.0  # seconds
    jitter: float = 0.0  # seconds
    loss: float = 0.0  # fraction 0..1
    rate: float | None = None  # bytes per second; None = unlimited

    @property
    def active(self) -> bool:
        return bool(self.delay or self.jitter or self.loss or self.rate)

    def describe(self) -> str:
        from splitdnn.units import format_duration, format_rate

        parts = []
        if self.delay or self.jitter:
            parts.append(
                f"delay {format_duration(self.delay)}" + (f" ±{format_duration(self.jitter)}" if self.jitter else "")
            )
        if self.loss:
            parts.append(f"loss {self.loss * 100:g}%")
        if self.rate:
            parts.append(f"rate {format_rate(self.rate)}")
        return ", ".join(parts) or "nothing"


class TokenBucket:
    """A wire of `rate` bytes/s shared by concurrent senders: `reserve(n)` returns when those n bytes have left."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.clock = clock
        self._busy_until = 0.0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int, not_before: float | None = None) -> float:
        """Book the wire for `nbytes`, from `not_before` (default now) or when it is free, whichever is later.
        Returns the time (on `clock`) at which they have been sent."""
        with self._lock:
            start = max(self.clock() if not_before is None else not_before, self._busy_until)
            self._busy_until = start + nbytes / self.rate
            return self._busy_until


class LinkEmulator:
    """Applies LinkParams to outgoing messages by sleeping in the sending thread (no sleep when inactive)."""

    def __init__(
        self,
        params: LinkParams,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.params = params
        self.clock = clock
        self.sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.bucket = TokenBucket(params.rate, clock) if params.rate else None

    def _draw(self) -> tuple[float, float]:
        with self._rng_lock:
            return self._rng.uniform(-1.0, 1.0), self._rng.random()

    def propagation(self) -> float:
        spread, _ = self._draw()
        return max(0.0, self.params.delay + spread * self.params.jitter)

    def lost(self) -> bool:
        return bool(self.params.loss) and self._draw()[1] < self.params.loss

    @property
    def rto(self) -> float:
        return max(MIN_RTO, 2 * self.params.delay)

    def send(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Yield each chunk when it would arrive at the receiver."""
        if not self.params.active:
            yield from chunks
            return
        delay = self.propagation()
        sent = None  # chunks of one message leave back to back: the next serializes while this one propagates
        for chunk in chunks:
            sent = self._transmit(len(chunk), sent)
            while self.lost():  # the receiver never sees this copy; the sender times out and sends it again
                sent = self._transmit(len(chunk), sent + self.rto)
            self._sleep_until(sent + delay)
            yield chunk

    def _transmit(self, nbytes: int, not_before: float | None) -> float:
        if self.bucket:
            return self.bucket.reserve(nbytes, not_before)
        return self.clock() if not_before is None else max(not_before, 0.0)

    def delay_small_message(self) -> None:
        """A small control message (a ping): propagation and loss only, it does not queue behind data."""
        if not self.params.active:
            return
        wait = self.propagation()
        while self.lost():
            wait += self.rto
        if wait > 0:
            self.sleep(wait)

    def _sleep_until(self, when: float) -> None:
        remaining = when - self.clock()
        if remaining > 0:
            self.sleep(remaining)


@dataclass
class LinkMeter:
    """Measurements of one link from real transfers.

    `rtt` is smoothed (exponentially weighted, weight `alpha` on the newest ping: pings are frequent and noisy);
    `bandwidth` is the latest trustworthy sample, so it follows a link that changes at once (Prometheus smooths
    over scrapes when a reader wants that).
    """

    alpha: float = 0.3
    rtt: float | None = None
    bandwidth: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe_rtt(self, seconds: float) -> float:
        with self._lock:
            self.rtt = seconds if self.rtt is None else (1 - self.alpha) * self.rtt + self.alpha * seconds
            return self.rtt

    def observe_transfer(self, nbytes: int, seconds: float) -> float | None:
        """A message of `nbytes` reached the receiver `seconds` after the send started (ack included).

        The payload time is `seconds - rtt`; it is only trusted for messages of at least 64 KiB whose payload
        time is at least a tenth of the transfer and 1 ms (otherwise latency dominates and the estimate is noise):
        a link that only ever carries small messages has no bandwidth estimate (None), rather than a wrong one.
        """
        with self._lock:
            payload = seconds - (self.rtt or 0.0)
            if nbytes >= MIN_BANDWIDTH_SAMPLE and payload >= 0.1 * seconds and payload >= 1e-3:
                self.bandwidth = nbytes / payload
            return self.bandwidth
