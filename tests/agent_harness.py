"""Processes and namespaces for the data-plane tests: agents are real `splitdnn agent` processes (the same argv
`splitdnn run` uses), always stopped in teardown; namespaces are always deleted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from splitdnn.agent.local import AgentProcess, start_agents, stop_all, wait_ready
from splitdnn.agent.server import GRPC_OPTIONS

TIERS = ("device", "edge", "cloud")


def start_chain(
    slices: str, tmp: Path, tier_specs: list[dict], chain=None, extra: dict | None = None, si: str = "test"
) -> list[AgentProcess]:
    """Start one agent per tier (as `splitdnn run` does), on loopback or in `chain`'s namespaces; wait until all
    are ready. The caller stops them (`stop_all`)."""
    specs = [{"name": TIERS[k], **spec} for k, spec in enumerate(tier_specs)]
    agents = start_agents(slices, tmp, specs, si, chain, extra=extra)
    try:
        wait_ready(agents, timeout=240)
    except BaseException:
        stop_all(agents)
        raise
    return agents


def stub(addr: str):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(addr, options=GRPC_OPTIONS)
    return prediction_service_pb2_grpc.PredictionServiceStub(channel), channel


def predict(stub_, tensors: dict, model: str = "cnn14", timeout: float = 60.0) -> dict:
    from splitdnn.agent.wire import predict_request, tensors_of

    return tensors_of(stub_.Predict(predict_request(model, tensors), timeout=timeout).outputs)


def frame(batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 28, 28, 1), dtype=np.float32)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def splitdnn(*args, ns: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m splitdnn ARGS`, optionally inside a network namespace."""
    prefix = ["ip", "netns", "exec", ns] if ns else []
    return subprocess.run(
        prefix + [sys.executable, "-m", "splitdnn", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


def tc_show(dev: str, ns: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", dev], capture_output=True, text=True, timeout=20
    ).stdout


@pytest.fixture(scope="session")
def slices_dir(tmp_path_factory, cnn14_model, cnn14_graph):
    """CNN14 cut after conv2d and flatten (the examples' split), exported once per session."""
    from splitdnn.slicer import export_slices, resolve_cuts

    out = tmp_path_factory.mktemp("cnn14-slices")
    export_slices(cnn14_model, cnn14_graph, resolve_cuts(cnn14_graph, ["conv2d", "flatten"]), out)
    return str(out)


class Prometheus:
    """A real Prometheus server (the Debian package's binary) scraping the given /metrics URLs every second."""

    def __init__(self, tmp: Path, metrics_urls: list[str]):
        import shutil
        import urllib.parse

        from splitdnn.agent.local import free_port

        self.binary = shutil.which("prometheus")
        self.port = free_port()
        targets = [urllib.parse.urlparse(u).netloc for u in metrics_urls]
        config = tmp / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
            "scrape_configs:\n  - job_name: splitdnn\n"
            f"    static_configs: [{{targets: {json.dumps(targets)}}}]\n"
        )
        self.log = tmp / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                self._get("/-/ready")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"prometheus did not start:\n{self.log.read_text()[-2000:]}") from None
                time.sleep(0.3)

    def _get(self, path: str) -> bytes:
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
            return resp.read()

    def query(self, promql: str) -> dict:
        """Instant query -> {tuple of label values (sorted by label name, without __name__): value}."""
        import urllib.parse

        body = json.loads(self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        assert body["status"] == "success", body
        out = {}
        for item in body["data"]["result"]:
            labels = tuple(v for k, v in sorted(item["metric"].items()) if k not in ("__name__", "instance", "job"))
            out[labels] = float(item["value"][1])
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_prometheus(tmp: Path, metrics_urls: list[str]):
    """A Prometheus scraping `metrics_urls`, or None when the binary is not installed."""
    import shutil

    if shutil.which("prometheus") is None:
        return None
    return Prometheus(tmp, metrics_urls)
