"""A real Prometheus server (Debian's `prometheus` package) for tests: scrapes the given targets every second.

with PrometheusServer(["127.0.0.1:9100"]) as prom:
    prom.url  # http://127.0.0.1:<port>
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The agents' metric names (src/splitdnn/agent/metrics.py), for tests that publish chosen figures.
_EXPORTER_PREAMBLE = """
import time
from prometheus_client import Counter, Gauge, Histogram, start_http_server
frames = Counter("splitdnn_frames", "frames", ["si", "tier", "outcome"])
stage = Histogram("splitdnn_stage_compute_seconds", "stage", ["si", "tier"])
rtt = Gauge("splitdnn_link_rtt_seconds", "rtt", ["si", "tier"])
bw = Gauge("splitdnn_link_bandwidth_bytes_per_second", "bw", ["si", "tier"])
link_bytes = Counter("splitdnn_link_bytes", "bytes", ["si", "tier"])
transfer = Histogram("splitdnn_link_transfer_seconds", "transfer", ["si", "tier"])
start_http_server({port}, addr="127.0.0.1")
"""


def start_exporter(body: str) -> tuple[subprocess.Popen, str]:
    """A subprocess publishing the agents' metrics with prometheus-client; `body` (Python, dedented) sets them
    using `frames`, `stage`, `rtt`, `bw`, `link_bytes`, `transfer` and must loop for as long as it should serve.
    Returns (process, target)."""
    import sys
    import textwrap

    port = free_port()
    code = _EXPORTER_PREAMBLE.format(port=port) + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code]), f"127.0.0.1:{port}"


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


class PrometheusServer:
    def __init__(
        self,
        targets: list[str],
        scrape_interval: str = "1s",
        job: str = "splitdnn",
        netns: str | None = None,
        listen: str | None = None,
    ):
        self.targets = targets
        self.scrape_interval = scrape_interval
        self.job = job
        self.netns = netns
        self.port = free_port()
        self.listen = listen or f"127.0.0.1:{self.port}"
        self.url = f"http://{self.listen}"
        self.dir = Path(tempfile.mkdtemp(prefix="splitdnn-prom-"))
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        binary = prometheus_binary()
        if binary is None:
            raise RuntimeError("prometheus is not installed: apt-get install prometheus (scripts/install.sh does)")
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{"job_name": self.job, "static_configs": [{"targets": self.targets}]}],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        cmd = [
            binary,
            f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address={self.listen}",
            "--log.level=warn",
        ]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.log = open(self.dir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited {self.proc.returncode}: {(self.dir / 'prometheus.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("prometheus did not become ready in 30 s")

    def wait_for(self, expr: str, predicate, timeout: float = 30.0):
        """Poll an instant query until predicate(value) holds; returns the value (None = no data)."""
        from splitdnn.prom import Prometheus

        client = Prometheus(self.url)
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = client.scalar(expr)
            if value is not None and predicate(value):
                return value
            time.sleep(0.5)
        raise AssertionError(f"{expr} never satisfied the condition in {timeout}s; last value {value}")

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
