"""Prometheus metrics of one agent (prefix `splitdnn_`, base units, labels `si` and `tier` on every series).

| metric | type | meaning |
| --- | --- | --- |
| `splitdnn_frames_total{outcome}` | counter | frames with that outcome (first tier: source frames and client Predict rows; completed/dropped/late/failed) |
| `splitdnn_frame_latency_seconds` | histogram | end-to-end latency of frames that came back (first tier) |
| `splitdnn_stage_compute_seconds` | histogram | this stage's time per frame, compute + emulated overhead |
| `splitdnn_link_transfer_seconds` | histogram | sending one message to the next tier until it acknowledged the last chunk |
| `splitdnn_link_bytes_total` | counter | bytes sent on the outgoing link (serialized PredictRequest/Response) |
| `splitdnn_link_rtt_seconds` | gauge | measured round trip of a small message to the next tier |
| `splitdnn_link_bandwidth_bytes_per_second` | gauge | measured bandwidth of the outgoing link |
| `splitdnn_inflight_frames` | gauge | frames in the pipeline (source on the first tier; requests being served elsewhere) |
| `splitdnn_queue_depth` | gauge | frames waiting for this stage |
| `splitdnn_slice_info{slice,cut,model}` | gauge = 1 | which slice this tier runs; `cut` = the layer after which it ends |
| `splitdnn_runtime_info{runtime,threads,devices}` | gauge = 1 | the slice runtime: `tensorflow`, `litert` or `coop` (a cooperative group of `devices` workers); `threads` (or `default`) |
| `splitdnn_coop_predicted_seconds{method,blocks}` | gauge | a cooperative tier: the stage time its plan (MLS or SLS, over F and G measured on the group at start-up) predicts; `blocks` as first-last×devices |
| `splitdnn_link_emulation_info{path}` | gauge = 1 | how the outgoing link is shaped: `tc`, `inprocess` or `none` |
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # no *_created series: they double the scrape size and nothing reads them

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
EMULATION_PATHS = ("tc", "inprocess", "none")


class AgentMetrics:
    def __init__(self, si: str, tier: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        base = {"si": si, "tier": tier}
        labels = list(base)
        r = self.registry

        def counter(name, doc, extra=()):
            return Counter(name, doc, labels + list(extra), registry=r)

        def gauge(name, doc, extra=()):
            return Gauge(name, doc, labels + list(extra), registry=r)

        def histogram(name, doc):
            return Histogram(name, doc, labels, buckets=LATENCY_BUCKETS, registry=r).labels(**base)

        self._frames = counter("splitdnn_frames_total", "Frames by outcome (first tier).", ["outcome"])
        self.frames = {o: self._frames.labels(**base, outcome=o) for o in ("completed", "dropped", "late", "failed")}
        self.frame_latency = histogram("splitdnn_frame_latency_seconds", "End-to-end latency of returned frames.")
        self.stage_compute = histogram(
            "splitdnn_stage_compute_seconds", "Stage time per frame: compute plus emulated overhead."
        )
        self.link_transfer = histogram(
            "splitdnn_link_transfer_seconds", "Time to send one message to the next tier until acknowledged."
        )
        self.link_bytes = counter("splitdnn_link_bytes_total", "Bytes sent on the outgoing link.").labels(**base)
        self.reconnects = counter(
            "splitdnn_link_reconnects_total", "New connections opened to the next tier after its pings kept failing."
        ).labels(**base)
        # measured gauges appear once there is a measurement (the last tier, with no next tier, has none)
        self._link_rtt = gauge("splitdnn_link_rtt_seconds", "Measured round trip to the next tier.")
        self._link_bandwidth = gauge(
            "splitdnn_link_bandwidth_bytes_per_second", "Measured bandwidth of the outgoing link."
        )
        self.inflight = gauge("splitdnn_inflight_frames", "Frames in the pipeline.").labels(**base)
        self.queue_depth = gauge("splitdnn_queue_depth", "Frames waiting for this stage.").labels(**base)
        self._slice_info = gauge("splitdnn_slice_info", "The slice this tier runs.", ["slice", "cut", "model"])
        self._runtime = gauge(
            "splitdnn_runtime_info", "The runtime computing this tier's slice.", ["runtime", "threads", "devices"]
        )
        self._emulation = gauge("splitdnn_link_emulation_info", "How the outgoing link is shaped.", ["path"])
        self._coop_predicted = gauge(
            "splitdnn_coop_predicted_seconds", "A cooperative tier's predicted stage time.", ["method", "blocks"]
        )
        self.base = base

    def set_link(self, rtt: float | None = None, bandwidth: float | None = None) -> None:
        if rtt is not None:
            self._link_rtt.labels(**self.base).set(rtt)
        if bandwidth is not None:
            self._link_bandwidth.labels(**self.base).set(bandwidth)

    def set_slice(self, slice_name: str, cut: str, model: str) -> None:
        self._slice_info.labels(**self.base, slice=slice_name, cut=cut, model=model).set(1)

    def set_runtime(self, runtime: str, threads: int | None, devices: int = 1) -> None:
        labels = {"runtime": runtime, "threads": str(threads or "default"), "devices": str(devices)}
        self._runtime.labels(**self.base, **labels).set(1)

    def set_coop_plan(self, method: str, blocks: list, seconds: float) -> None:
        text = " ".join(f"{first}-{last}x{devices}" for first, last, devices, *_ in blocks)
        self._coop_predicted.labels(**self.base, method=method, blocks=text).set(seconds)

    def set_emulation(self, paths: set[str]) -> None:
        for path in EMULATION_PATHS:
            self._emulation.labels(**self.base, path=path).set(1 if path in paths else 0)

    def serve(self, port: int, addr: str = "0.0.0.0", ready=None):
        """/metrics, and /ready (200 when `ready()` is true, else 503) for the pod's readiness probe."""
        import threading
        from socketserver import ThreadingMixIn
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        from prometheus_client import make_wsgi_app

        metrics = make_wsgi_app(self.registry)

        def app(environ, start_response):
            if environ.get("PATH_INFO") == "/ready":
                ok = ready is None or ready()
                start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"ready\n" if ok else b"not ready: the next tier does not answer\n"]
            return metrics(environ, start_response)

        class Server(ThreadingMixIn, WSGIServer):
            daemon_threads = True

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args):  # probes and scrapes every few seconds: not worth a log line each
                pass

        server = make_server(addr, port, app, Server, handler_class=Quiet)
        thread = threading.Thread(target=server.serve_forever, daemon=True, name="metrics")
        thread.start()
        return server, thread


def scrape(url: str, timeout: float = 2.0) -> dict:
    """GET a /metrics page -> {(name, frozenset(labels.items())): value} (histograms as _sum/_count/_bucket)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # agents are local: never via a proxy
    with opener.open(url, timeout=timeout) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    """Sum of the samples named `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)
