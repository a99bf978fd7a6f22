"""The agent's slice runtimes side by side: `tensorflow` (the SavedModel) and `litert` (the checked .tflite).

Real CNN14 slices (cut after conv2d and flatten), real LiteRT interpreter, real `splitdnn agent` processes on
loopback answering TF Serving Predict over gRPC: a chain of LiteRT tiers returns what the full Keras model returns,
a mixed chain too, both runtimes refuse a bad request with the same words, and a slice without a `.tflite` is
refused at start-up with the slicer's reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from agent_harness import frame, predict, slices_dir, splitdnn, start_chain, stub  # noqa: F401

from splitdnn.agent import runtime
from splitdnn.agent.local import stop_all
from splitdnn.agent.metrics import scrape

pytestmark = pytest.mark.slow

TOL = 1e-4  # the slicer's bound for a float32 .tflite slice against its SavedModel


def chain(slices: str, which: str, feed: dict) -> dict:
    out = feed
    for name in ("slice0", "slice1", "slice2"):
        rt = runtime.load(slices, name, which)
        out = rt.compute(rt.validate(out))
    return out


def test_both_runtimes_compute_the_full_model(slices_dir, cnn14_model):
    x = frame(4, seed=3)
    want = np.asarray(cnn14_model(x, training=False))
    for which in runtime.RUNTIMES:
        got = chain(slices_dir, which, {"input": x})
        diff = float(np.abs(got["dense_1"] - want).max())
        print(f"{which}: max abs diff to the full model {diff:.2e}")
        assert got["dense_1"].shape == (4, 10) and diff <= TOL, which
    lite = runtime.load(slices_dir, "slice1", "litert", threads=2)
    assert (lite.name, lite.threads) == ("litert", 2)
    assert runtime.load(slices_dir, "slice1").name == "tensorflow"


def test_both_runtimes_refuse_a_bad_request_with_the_same_words(slices_dir):
    bad = {"input": np.zeros((1, 27, 28, 1), np.float64)}
    messages = set()
    for which in runtime.RUNTIMES:
        with pytest.raises(runtime.BadRequest) as err:
            runtime.load(slices_dir, "slice0", which).validate(bad)
        messages.add(str(err.value))
    (message,) = messages
    assert "dtype float64, expected float32" in message and "shape [1, 27, 28, 1]" in message


def test_unknown_runtime_and_bad_threads_are_refused(slices_dir):
    with pytest.raises(ValueError, match="unknown runtime 'onnx'"):
        runtime.load(slices_dir, "slice0", "onnx")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        runtime.load(slices_dir, "slice0", "litert", threads=0)
    for args, words in (
        (["--runtime", "onnx"], "--runtime 'onnx': expected one of tensorflow, litert, auto"),
        (["--threads", "0"], "--threads ≥ 1"),
    ):
        proc = splitdnn("agent", "--slices", slices_dir, "--slice", "slice0", "--port", "0", *args)
        assert proc.returncode == 2 and words in proc.stderr, (args, proc.stderr[-2000:])


def test_a_slice_without_tflite_is_refused_with_the_slicers_reason(slices_dir, tmp_path):
    copy = tmp_path / "slices"
    shutil.copytree(slices_dir, copy)
    manifest = json.loads((copy / "slices.json").read_text())
    entry = manifest["slices"][1]
    del entry["tflite"]
    entry["tflite_error"] = "the converter needs Flex ops: FlexFoo"
    (copy / "slices.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="slice 'slice1' has no float32 .tflite: the converter needs Flex ops"):
        runtime.load(copy, "slice1", "litert")
    proc = splitdnn("agent", "--slices", copy, "--slice", "slice1", "--port", "0", "--runtime", "litert")
    assert proc.returncode != 0 and "FlexFoo" in proc.stderr, proc.stderr[-2000:]


def runtime_info(url: str) -> dict:
    """{runtime: threads} of the agent's splitdnn_runtime_info samples that are 1."""
    samples = scrape(url).items()
    return {dict(lab)["runtime"]: dict(lab)["threads"] for (n, lab), v in samples if n == "splitdnn_runtime_info" and v}


@pytest.mark.parametrize(
    "runtimes", [("litert", "litert", "litert"), ("litert", "tensorflow", "litert")], ids=["all-litert", "mixed"]
)
def test_a_chain_of_agents_serves_predict_on_litert(slices_dir, cnn14_model, tmp_path, runtimes):
    specs = [{"runtime": r, **({"threads": 1} if r == "litert" else {})} for r in runtimes]
    agents = start_chain(slices_dir, tmp_path, specs, si="lite")
    try:
        client, channel = stub(agents[0].grpc_addr)
        for batch in (1, 8):
            x = frame(batch, seed=batch)
            out = predict(client, {"input": x})
            diff = float(np.abs(out["dense_1"] - np.asarray(cnn14_model(x, training=False))).max())
            assert out["dense_1"].shape == (batch, 10) and diff <= TOL, (batch, diff)
        with pytest.raises(grpc.RpcError) as err:
            predict(client, {"input": np.zeros((1, 28, 28, 1), np.int32)})
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "dtype int32, expected float32" in err.value.details()
        channel.close()
        for agent, which in zip(agents, runtimes):
            assert runtime_info(agent.metrics_url) == {which: "1" if which == "litert" else "default"}, agent.tier
    finally:
        stop_all(agents)


BLOCKER = """
import importlib.abc, sys

class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_serving", "keras", "tf_keras"):
            raise ImportError(f"{name}: this process runs without TensorFlow (test_agent_runtime)")

sys.meta_path.insert(0, NoTensorFlow())
"""


def test_litert_agents_run_without_tensorflow(slices_dir, cnn14_model, tmp_path, monkeypatch):
    """The agents import neither TensorFlow nor tensorflow-serving-api (the agent-lite image has neither): a
    real TF Serving client (tensorflow-serving-api's stub, in this process) gets the model's answer, its
    metadata and its status from them."""
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc

    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    monkeypatch.setenv("PYTHONPATH", str(blocker))
    check = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True)
    assert check.returncode == 1 and "runs without TensorFlow" in check.stderr, check.stderr[-2000:]
    agents = start_chain(slices_dir, tmp_path, [{"runtime": "litert"}] * 3, si="notf")
    try:
        for agent in agents:
            maps = open(f"/proc/{agent.proc.pid}/maps").read()
            assert "site-packages/tensorflow/" not in maps, agent.tier
            assert "site-packages/ai_edge_litert/" in maps, agent.tier
        client, channel = stub(agents[0].grpc_addr)
        x = frame(2, seed=5)
        out = predict(client, {"input": x})
        assert np.abs(out["dense_1"] - np.asarray(cnn14_model(x, training=False))).max() <= TOL
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = "cnn14"
        meta = client.GetModelMetadata(request, timeout=30)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        meta.metadata["signature_def"].Unpack(sig_map)
        assert list(sig_map.signature_def["serving_default"].inputs) == ["input"]
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "cnn14"
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        deadline = time.monotonic() + 60  # AVAILABLE once the pings say the chain behind the first tier is ready
        while (status := models.GetModelStatus(status_request, timeout=30)).model_version_status[0].state != available:
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        with pytest.raises(grpc.RpcError) as err:
            client.Classify(get_model_metadata_pb2.GetModelMetadataRequest(), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        channel.close()
    finally:
        stop_all(agents)
    logs = "".join(a.log.read_text() for a in agents)
    assert "Traceback" not in logs, logs[-3000:]
