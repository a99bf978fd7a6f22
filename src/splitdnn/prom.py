"""A small client for the Prometheus HTTP API (`/api/v1/query`): instant queries only, which is all the
feedback loop needs. Standard library only, so the operator image stays small."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass


class PrometheusError(RuntimeError):
    """Prometheus unreachable, or it refused the query; the message says which and why."""


@dataclass(frozen=True)
class Sample:
    labels: dict
    value: float


class Prometheus:
    def __init__(self, url: str, timeout: float = 5.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, expr: str) -> list[Sample]:
        """Instant vector or scalar result of `expr`; samples that are not finite are dropped: NaN (0/0 rates)
        and ±Inf (x/0: e.g. bytes per message of a tier that counts bytes but times no transfer). An Inf would
        reach status, which JSON cannot carry (it stalled the operator's status patch for good)."""
        target = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(target, timeout=self.timeout) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400/422: a bad query; the body says why
            try:
                detail = json.loads(exc.read()).get("error", "")
            except Exception:
                detail = ""
            raise PrometheusError(f"Prometheus at {self.url} refused query {expr!r}: HTTP {exc.code} {detail}") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PrometheusError(f"Prometheus at {self.url} is unreachable: {reason}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus at {self.url}: {body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        if data["resultType"] == "scalar":
            value = float(data["result"][1])
            return [Sample({}, value)] if math.isfinite(value) else []
        samples = []
        for item in data["result"]:
            value = float(item["value"][1])
            if math.isfinite(value):
                samples.append(Sample(item["metric"], value))
        return samples

    def scalar(self, expr: str) -> float | None:
        """The single value of `expr`, or None when there is no data yet."""
        samples = self.query(expr)
        return samples[0].value if samples else None

    def by_label(self, expr: str, label: str) -> dict[str, float]:
        return {s.labels.get(label, ""): s.value for s in self.query(expr)}
