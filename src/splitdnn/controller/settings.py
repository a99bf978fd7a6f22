"""The operator's settings: read once from the environment when `splitdnn operator` starts, then passed along
(nothing reads an environment variable at import time)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

TRUE = ("1", "true", "yes")


@dataclass(frozen=True)
class Settings:
    # drift repair and readiness refresh: the resync timer's interval
    resync_seconds: float = 10.0
    # how often the feedback timer wakes up; each SplitInference is measured every `adaptation.interval` of its own
    adapt_tick_seconds: float = 2.0
    # match the agents' series on the `namespace` label too (Kubernetes service discovery adds it; a Prometheus
    # that does not relabel so has no such label: leave it off then)
    promql_namespace: bool = False
    # how long a running profiling Job holds back the other tiers' profiles
    profile_wait_seconds: float = 600.0
    # the operator's pod (Events' reportingInstance)
    pod_name: str = "splitdnn-operator"
    # fault injection for tests: hold the reconcile at this named point (see reconcile.PAUSE_POINTS) for good,
    # announcing it in the log, so a test can kill the operator exactly there. Empty: never.
    pause_at: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        d = cls()
        pause_at = env.get("SPLITDNN_FAULT_PAUSE_AT", "")
        from splitdnn.controller.reconcile import PAUSE_POINTS

        if pause_at and pause_at not in PAUSE_POINTS:
            raise ValueError(f"SPLITDNN_FAULT_PAUSE_AT={pause_at!r}: not one of {', '.join(PAUSE_POINTS)}")
        return cls(
            resync_seconds=_positive(env, "SPLITDNN_RESYNC_SECONDS", d.resync_seconds),
            adapt_tick_seconds=_positive(env, "SPLITDNN_ADAPT_TICK_SECONDS", d.adapt_tick_seconds),
            promql_namespace=env.get("SPLITDNN_PROMQL_NAMESPACE", "").lower() in TRUE,
            profile_wait_seconds=_positive(env, "SPLITDNN_PROFILE_WAIT_SECONDS", d.profile_wait_seconds),
            pod_name=env.get("POD_NAME") or d.pod_name,
            pause_at=pause_at,
        )


def _positive(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{key}={raw!r} is not a number") from None
    if not value > 0:
        raise ValueError(f"{key}={raw!r} must be > 0")
    return value
