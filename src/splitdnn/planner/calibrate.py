"""Online calibration: fit the served-stage cost model to what the agents measure, split after split.

Per tier, the measured stage time of a slice is modelled as ``call + scale × predicted`` where ``predicted`` is
the base problem's Σ block times of the slice (profile or FLOPs estimate, × (1 + overheadRatio)): ``call`` is the
tier's fixed per-call cost (runtime call, tensor conversion, threads — the intercept), ``scale`` corrects the
profile's compute (the slope). Per link (by sending tier), the measured transfer of one message minus the
link's round trip is ``message + bytes / bandwidth``; latency = RTT / 2.

Both are a line through observed points, one point per split (slice range, or tensor size) observed:

* two or more distinct x: least squares (numpy.linalg.lstsq); a negative intercept refits through the origin, a
  negative slope is treated as one x (below) at the points' means: a zero slope would price every unmeasured
  slice, however large, like the measured ones;
* one x (a single split observed so far): the slope stays what the base problem says (scale 1: the profiled
  compute; the link's bandwidth as measured by its gauge or given by the spec) and only the intercept is fitted;
  if that intercept would be negative (the base overestimates), intercept 0 and slope = y / x instead — except
  for a link whose bandwidth gauge is measured: the gauge reacts to a throttle at once, while the window's mean
  transfer still averages in the faster messages from before it, so the gauge's slope is kept (intercept 0).

The observations live in ``status.calibration`` (`Calibration.to_status`/`from_status`), so the fit survives an
operator restart and accumulates over re-splits; `apply` turns a fit into the calibrated Problem every re-plan
uses. Pure: no Prometheus, no Kubernetes (feedback.step and the experiment feed it).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .problem import Problem, extra_messages

MAX_POINTS = 20  # observations kept per tier / link (the most recent distinct splits)
AVERAGE_OVER = 5  # a split measured again: running mean over its last ~5 windows (a network or load change shows)


@dataclass(frozen=True)
class LineFit:
    intercept: float
    slope: float
    points: int  # distinct x observed
    method: str  # "least squares", "least squares through 0", "intercept only", "slope only", "none"


def fit_line(points: Sequence[tuple[float, float]], prior_slope: float, trust_prior: bool = False) -> LineFit:
    """y = intercept + slope · x, both ≥ 0, robust to a single distinct x (see the module docstring).
    `trust_prior`: with one x and y below the prior line, keep the prior slope (intercept 0) instead of scaling
    it to y / x — for a prior that is itself a live measurement (a link's bandwidth gauge)."""
    import numpy as np

    pts = [(float(x), float(y)) for x, y in points]
    if not pts:
        return LineFit(0.0, prior_slope, 0, "none")
    xs = np.array([p[0] for p in pts])
    ys = np.array([p[1] for p in pts])
    distinct = len({round(x, 12) for x in xs})
    if distinct >= 2:
        (slope, intercept), *_ = np.linalg.lstsq(np.vstack([xs, np.ones_like(xs)]).T, ys, rcond=None)
        if intercept < 0:
            return LineFit(0.0, max(0.0, float(xs @ ys / (xs @ xs))), distinct, "least squares through 0")
        if slope >= 0:
            return LineFit(float(intercept), float(slope), distinct, "least squares")
    # one x, or points that fall as the compute grows (noise larger than the compute's differences): a slope of
    # 0 would make every slice as cheap as the ones measured, so the prior slope stays and the mean moves the line
    x, y = float(xs.mean()), float(ys.mean())
    intercept = y - prior_slope * x
    if intercept >= 0 or x <= 0 or trust_prior:
        return LineFit(max(0.0, intercept), prior_slope, distinct, "intercept only")
    return LineFit(0.0, y / x, distinct, "slope only")


@dataclass
class StagePoint:
    tier: str
    first: str  # first and last block of the slice measured
    last: str
    seconds: float  # measured stage time per frame (running mean)
    n: int = 1
    time: float = 0.0


@dataclass
class LinkPoint:
    tier: str  # sending tier
    bytes: float  # bytes per message
    seconds: float  # transfer of one message minus the round trip (running mean)
    n: int = 1
    time: float = 0.0


def _merge(points: list, new: Any, same: Any, average_over: int = AVERAGE_OVER) -> None:
    """Add `new`, or fold it into the point of the same split (running mean over ~`average_over` windows; 1 =
    replace); keep the MAX_POINTS newest."""
    for p in points:
        if same(p, new):
            p.n = min(p.n + 1, average_over)
            p.seconds += (new.seconds - p.seconds) / p.n
            p.time = new.time
            break
    else:
        points.append(new)
    points.sort(key=lambda p: p.time)
    del points[: max(0, len(points) - MAX_POINTS)]


@dataclass
class Calibration:
    stages: list[StagePoint] = field(default_factory=list)
    links: list[LinkPoint] = field(default_factory=list)
    rtt: dict[str, float] = field(default_factory=dict)  # last measured round trip by sending tier
    bandwidth: dict[str, float] = field(default_factory=dict)  # last bandwidth gauge by sending tier

    # ---- observations -----------------------------------------------------------------------------------------
    def observe(
        self,
        problem: Problem,
        split: Sequence[int],
        stage_seconds: Mapping[str, float | None],
        now: float,
        link_rtt: Mapping[str, float | None] | None = None,
        link_bandwidth: Mapping[str, float | None] | None = None,
        link_transfer_seconds: Mapping[str, float | None] | None = None,
        link_bytes_per_message: Mapping[str, float | None] | None = None,
    ) -> None:
        """Record one window's measurements of the deployed `split` (block ends per tier)."""
        prev = 0
        for t, end in zip(problem.tiers, split):
            y = stage_seconds.get(t)
            if end > prev and y is not None and y >= 0:
                first, last = problem.blocks[prev].name, problem.blocks[end - 1].name
                _merge(
                    self.stages,
                    StagePoint(t, first, last, float(y), time=now),
                    lambda a, b: (a.tier, a.first, a.last) == (b.tier, b.first, b.last),
                )
            prev = max(prev, end)
        for t, v in (link_rtt or {}).items():
            if v is not None and v >= 0:
                self.rtt[t] = float(v)
        for t, v in (link_bandwidth or {}).items():
            if v is not None and v > 0:
                self.bandwidth[t] = float(v)
        for t, seconds in (link_transfer_seconds or {}).items():
            nbytes = (link_bytes_per_message or {}).get(t)
            if seconds is None or nbytes is None or nbytes <= 0:
                continue
            y = max(0.0, float(seconds) - self.rtt.get(t, 0.0))  # the transfer includes the ack's way back
            # a link's newest window replaces its older ones: a network changes abruptly (a throttle, a reroute),
            # and the window's rate is already a mean; compute changes far less
            _merge(
                self.links,
                LinkPoint(t, float(nbytes), y, time=now),
                lambda a, b: a.tier == b.tier and abs(a.bytes - b.bytes) <= 0.01 * max(a.bytes, b.bytes),
                average_over=1,
            )

    # ---- the fit ------------------------------------------------------------------------------------------------
    def fit(self, problem: Problem) -> dict[str, Any]:
        """{"tiers": {tier: LineFit (intercept = call s, slope = compute scale)}, "links": {tier: LineFit
        (intercept = per-message s, slope = s per byte)}} under the base `problem`."""
        names = [b.name for b in problem.blocks]
        tiers: dict[str, LineFit] = {}
        send: dict[str, float] = {}
        for t in problem.tiers:
            # (predicted compute, seconds, extra messages): outputs in one message, and chunked ones
            pts: list[tuple[float, float, int]] = []
            streamed: list[tuple[float, float, int]] = []
            for p in self.stages:
                if p.tier == t and p.first in names and p.last in names:
                    i, j = names.index(p.first), names.index(p.last) + 1
                    x = sum(b.time[t] for b in problem.blocks[i:j])
                    extra = extra_messages(problem, t, j)
                    (streamed if extra else pts).append((x, p.seconds, extra))
            if pts:
                tiers[t] = fit_line([(x, y) for x, y, _ in pts], 1.0)
                if streamed:  # what the line leaves unexplained, per extra message (least squares through 0)
                    f = tiers[t]
                    r = [(y - f.intercept - f.slope * x, e) for x, y, e in streamed]
                    send[t] = max(0.0, sum(a * e for a, e in r) / sum(e * e for _, e in r))
            elif streamed:  # every split seen sends in chunks: nothing tells the chunks from the compute apart
                tiers[t] = fit_line([(x, y) for x, y, _ in streamed], 1.0)
        links: dict[str, LineFit] = {}
        for t in problem.tiers:
            sizes = [(p.bytes, p.seconds) for p in self.links if p.tier == t]
            if sizes:
                base = self.bandwidth.get(t) or next((l.bandwidth for (a, _), l in problem.links.items() if a == t), 0)
                links[t] = fit_line(sizes, 1.0 / base if base else 0.0, trust_prior=t in self.bandwidth)
        return {"tiers": tiers, "links": links, "send": send}

    def apply(self, problem: Problem, split: Sequence[int] | None = None) -> Problem:
        """A copy of `problem` under the fit: block times × scale and call_seconds = the fitted fixed cost per tier;
        per link (from a tier that measured it): latency = RTT / 2, bandwidth and per-message cost from the fit
        (one message per hop: the fit's intercept is per transfer). `split` (block ends) names the next used tier
        after each sender; without it, a sender's link to the next tier in order is adjusted."""
        fit = self.fit(problem)
        new = copy.deepcopy(problem)
        for t, f in fit["tiers"].items():
            for b in new.blocks:
                b.time[t] *= f.slope
            new.call_seconds[t] = f.intercept
        for t, v in fit["send"].items():
            new.send_seconds[t] = v
        nxt = _next_used(new, split)
        for t in set(self.rtt) | set(fit["links"]) | set(self.bandwidth):
            link = new.links.get((t, nxt[t])) if t in nxt else None
            if link is None:
                continue
            if t in self.rtt:
                link.latency = self.rtt[t] / 2
            lf = fit["links"].get(t)
            if lf is not None and lf.slope > 0:
                link.bandwidth = 1.0 / lf.slope
                link.message_seconds = 0.0
                link.hop_seconds = lf.intercept  # per transfer, whatever its chunks
            elif t in self.bandwidth:
                link.bandwidth = self.bandwidth[t]
        return new

    # ---- status -------------------------------------------------------------------------------------------------
    def to_status(self, problem: Problem) -> dict[str, Any]:
        """`status.calibration`: the fit (camelCase, rounded) and the observations it came from."""
        fit = self.fit(problem)

        def r(v: float) -> float:
            return round(v, 9)

        return {
            "tiers": {
                t: {
                    "callSeconds": r(f.intercept),
                    "computeScale": round(f.slope, 4),
                    "splits": f.points,
                    "method": f.method,
                    **({"sendSeconds": r(fit["send"][t])} if t in fit["send"] else {}),
                }
                for t, f in fit["tiers"].items()
            },
            "links": {
                t: {
                    **({"latencySeconds": r(self.rtt[t] / 2)} if t in self.rtt else {}),
                    **({"bandwidthBytesPerSecond": round(1.0 / f.slope, 1)} if f.slope > 0 else {}),
                    "messageSeconds": r(f.intercept),
                    "sizes": f.points,
                    "method": f.method,
                }
                for t, f in fit["links"].items()
            },
            "observations": {
                "stages": [
                    {
                        "tier": p.tier,
                        "first": p.first,
                        "last": p.last,
                        "seconds": r(p.seconds),
                        "n": p.n,
                        "time": round(p.time, 3),
                    }
                    for p in self.stages
                ],
                "links": [
                    {
                        "tier": p.tier,
                        "bytes": round(p.bytes, 1),
                        "seconds": r(p.seconds),
                        "n": p.n,
                        "time": round(p.time, 3),
                    }
                    for p in self.links
                ],
                "rttSeconds": {t: r(v) for t, v in self.rtt.items()},
                "bandwidthBytesPerSecond": {t: round(v, 1) for t, v in self.bandwidth.items()},
            },
        }

    @classmethod
    def from_status(cls, doc: Mapping[str, Any] | None) -> Calibration:
        """The observations back from `status.calibration` (anything malformed is dropped, not fatal)."""
        out = cls()
        obs = (doc or {}).get("observations") or {}
        for p in obs.get("stages") or []:
            try:
                out.stages.append(
                    StagePoint(
                        str(p["tier"]),
                        str(p["first"]),
                        str(p["last"]),
                        float(p["seconds"]),
                        int(p.get("n", 1)),
                        float(p.get("time", 0)),
                    )
                )
            except (KeyError, TypeError, ValueError):
                continue
        for p in obs.get("links") or []:
            try:
                out.links.append(
                    LinkPoint(
                        str(p["tier"]),
                        float(p["bytes"]),
                        float(p["seconds"]),
                        int(p.get("n", 1)),
                        float(p.get("time", 0)),
                    )
                )
            except (KeyError, TypeError, ValueError):
                continue
        for key, target in (("rttSeconds", out.rtt), ("bandwidthBytesPerSecond", out.bandwidth)):
            for t, v in (obs.get(key) or {}).items():
                try:
                    target[str(t)] = float(v)
                except (TypeError, ValueError):
                    continue
        return out


def _next_used(problem: Problem, split: Sequence[int] | None) -> dict[str, str]:
    """Sending tier -> the tier its link goes to under `split` (consecutive tiers when no split is given)."""
    tiers = list(problem.tiers)
    if split is None:
        return dict(zip(tiers, tiers[1:]))
    used, prev = [], 0
    for t, end in zip(tiers, split):
        if end > prev:
            used.append(t)
        prev = max(prev, end)
    if used and used[0] != tiers[0]:
        used = [tiers[0], *used]  # the input hop leaves tier 0
    return dict(zip(used, used[1:]))
