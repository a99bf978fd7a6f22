"""The feedback loop's pure core: what to ask Prometheus, and whether the measurements justify a re-split.

Every `interval` the operator's feedback timer (through `splitdnn.feedback.step`, which the closed-loop test's
local actuator runs too) reads the SplitInference's measured figures, re-plans with them, and calls `decide`.
A re-split happens only when all of these hold:
1. the measured frame drop rate exceeds `maxFrameDropRate` (the SLO);
2. the last change is at least `cooldown` ago (no flapping while the new split warms up);
3. the new plan differs from the current one and is predicted better, under the same measured figures, by at
   least `margin` (a fraction of the current plan's objective value).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from splitdnn.units import parse_duration

OBJECTIVE_FIGURE = {"throughput": "bottleneck", "latency": "latency", "bytes": "bytes"}


def promql(si: str, namespace: str | None = None, window: str = "1m") -> dict[str, str]:
    """The queries the loop runs, by what they measure. Documented in docs/closed-loop.md."""
    sel = f'si="{si}"' + (f',namespace="{namespace}"' if namespace else "")
    frames = f"sum(increase(splitdnn_frames_total{{{sel}}}[{window}]))"
    bad = f'sum(increase(splitdnn_frames_total{{{sel},outcome!="completed"}}[{window}]))'
    return {
        # share of frames offered in the window that were dropped, late or failed
        "drop_rate": f"({bad}) / ({frames})",
        "offered_per_second": f"sum(rate(splitdnn_frames_total{{{sel}}}[{window}]))",
        # mean seconds one frame spends in each tier's stage (compute + emulated overhead), by tier
        "compute_seconds": (
            f"sum by (tier) (rate(splitdnn_stage_compute_seconds_sum{{{sel}}}[{window}]))"
            f" / sum by (tier) (rate(splitdnn_stage_compute_seconds_count{{{sel}}}[{window}]))"
        ),
        # the sender's measurements of its outgoing link, by sending tier
        "link_rtt_seconds": f"max by (tier) (splitdnn_link_rtt_seconds{{{sel}}})",
        "link_bandwidth_bytes_per_second": f"min by (tier) (splitdnn_link_bandwidth_bytes_per_second{{{sel}}})",
        # one message's transfer (send until acknowledged) and its size, by sending tier: the calibration's link fit
        "link_transfer_seconds": (
            f"sum by (tier) (rate(splitdnn_link_transfer_seconds_sum{{{sel}}}[{window}]))"
            f" / sum by (tier) (rate(splitdnn_link_transfer_seconds_count{{{sel}}}[{window}]))"
        ),
        "link_bytes_per_message": (
            f"sum by (tier) (rate(splitdnn_link_bytes_total{{{sel}}}[{window}]))"
            f" / sum by (tier) (rate(splitdnn_link_transfer_seconds_count{{{sel}}}[{window}]))"
        ),
        # the split points the running tiers serve (more than the deployed ones: a rollout is in the window)
        "slice_cuts": f"count by (cut) (splitdnn_slice_info{{{sel}}})",
    }


@dataclass
class Measurements:
    drop_rate: float | None = None
    offered_per_second: float | None = None
    compute_seconds: dict[str, float] = field(default_factory=dict)
    link_rtt_seconds: dict[str, float] = field(default_factory=dict)
    link_bandwidth_bytes_per_second: dict[str, float] = field(default_factory=dict)
    link_transfer_seconds: dict[str, float] = field(default_factory=dict)
    link_bytes_per_message: dict[str, float] = field(default_factory=dict)
    slice_cuts: list[str] = field(default_factory=list)  # cuts of the slices served in the window ("" = last)

    def to_status(self) -> dict:
        """For `status.measured`: plain JSON, rounded for humans."""

        def r(v):
            return None if v is None else round(v, 6)

        return {
            "dropRate": r(self.drop_rate),
            "offeredPerSecond": r(self.offered_per_second),
            "computeSeconds": {k: r(v) for k, v in self.compute_seconds.items()},
            "linkRttSeconds": {k: r(v) for k, v in self.link_rtt_seconds.items()},
            "linkBandwidthBytesPerSecond": {k: r(v) for k, v in self.link_bandwidth_bytes_per_second.items()},
            "linkTransferSeconds": {k: r(v) for k, v in self.link_transfer_seconds.items()},
            "linkBytesPerMessage": {k: r(v) for k, v in self.link_bytes_per_message.items()},
        }


def read_measurements(prometheus, si: str, namespace: str | None = None, window: str = "1m") -> Measurements:
    """Run the queries against a `splitdnn.prom.Prometheus`; raises PrometheusError when it is unreachable."""
    q = promql(si, namespace, window)
    return Measurements(
        drop_rate=prometheus.scalar(q["drop_rate"]),
        offered_per_second=prometheus.scalar(q["offered_per_second"]),
        compute_seconds=prometheus.by_label(q["compute_seconds"], "tier"),
        link_rtt_seconds=prometheus.by_label(q["link_rtt_seconds"], "tier"),
        link_bandwidth_bytes_per_second=prometheus.by_label(q["link_bandwidth_bytes_per_second"], "tier"),
        link_transfer_seconds=prometheus.by_label(q["link_transfer_seconds"], "tier"),
        link_bytes_per_message=prometheus.by_label(q["link_bytes_per_message"], "tier"),
        slice_cuts=sorted(prometheus.by_label(q["slice_cuts"], "cut")),
    )


@dataclass(frozen=True)
class Policy:
    max_drop_rate: float = 0.05
    margin: float = 0.1
    cooldown_seconds: float = 120.0
    interval_seconds: float = 30.0

    @classmethod
    def from_spec(cls, adaptation: dict) -> Policy:
        return cls(
            max_drop_rate=float(adaptation.get("maxFrameDropRate", 0.05)),
            margin=float(adaptation.get("margin", 0.1)),
            cooldown_seconds=parse_duration(adaptation.get("cooldown", "2m")),
            interval_seconds=parse_duration(adaptation.get("interval", "30s")),
        )


@dataclass(frozen=True)
class Decision:
    resplit: bool
    reason: str


def decide(
    policy: Policy,
    drop_rate: float | None,
    current_points: list[str],
    current_value: float,
    candidate_points: list[str],
    candidate_value: float,
    objective: str = "throughput",
    now: float = 0.0,
    last_change: float | None = None,
) -> Decision:
    """`*_value` = the plans' objective figure (bottleneck s, latency s or bytes) under the same measured figures."""
    figure = OBJECTIVE_FIGURE[objective]
    if drop_rate is None:
        return Decision(False, "no frames measured yet")
    if drop_rate <= policy.max_drop_rate:
        return Decision(False, f"drop rate {drop_rate:.3f} is within the SLO {policy.max_drop_rate:.3f}")
    if last_change is not None and now - last_change < policy.cooldown_seconds:
        left = policy.cooldown_seconds - (now - last_change)
        return Decision(False, f"drop rate {drop_rate:.3f} over the SLO, but in cooldown for {left:.0f}s more")
    if list(candidate_points) == list(current_points):
        return Decision(False, f"drop rate {drop_rate:.3f} over the SLO, but the current split is still the best plan")
    if candidate_value > current_value * (1.0 - policy.margin):
        return Decision(
            False,
            f"drop rate {drop_rate:.3f} over the SLO, but the best other plan's {figure} {candidate_value:.4g} is not "
            f"{policy.margin:.0%} better than the current {current_value:.4g}",
        )
    return Decision(
        True,
        f"drop rate {drop_rate:.3f} > SLO {policy.max_drop_rate:.3f}; predicted {figure} "
        f"{current_value:.4g} → {candidate_value:.4g} with split {','.join(candidate_points)}",
    )
