"""Processes and namespaces for the data-plane tests: agents are real `splitdnn agent` processes (the same argv
`splitdnn run` uses), always stopped in teardown; namespaces are always deleted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from splitdnn.agent.local import AgentProcess, start_agents, stop_all, wait_ready
from splitdnn.agent.server import GRPC_OPTIONS

TIERS = ("device", "edge", "cloud")


def start_chain(slices: str, tmp: Path, tier_specs: list[dict], chain=None, extra: dict | None = None,
                si: str = "test") -> list[AgentProcess]:
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
    return subprocess.run(prefix + [sys.executable, "-m", "splitdnn", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ))


def tc_show(dev: str, ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", dev], capture_output=True,
                          text=True, timeout=20).stdout


@pytest.fixture(scope="session")
def slices_dir(tmp_path_factory, cnn14_model, cnn14_graph):
    """CNN14 cut after conv2d and flatten (the examples' split), exported once per session."""
    from splitdnn.slicer import export_slices, resolve_cuts

    out = tmp_path_factory.mktemp("cnn14-slices")
    export_slices(cnn14_model, cnn14_graph, resolve_cuts(cnn14_graph, ["conv2d", "flatten"]), out)
    return str(out)
