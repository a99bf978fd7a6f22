"""The TensorFlow-free image (`scripts/build-images.sh [--arch arm64] agent-lite`): no tensorflow package, and CNN14's
`.tflite` slices computed inside it (arm64: under qemu-user, scripts/qemu-user.sh) equal the TensorFlow SavedModels'
outputs here; the arm64 agent answers Predict like the amd64 one.

Skipped when docker or the image is not there (building it is CI's image step, `scripts/e2e.sh prepare`, not this
test's)."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from splitdnn.slicer import export_slices, resolve_cuts

# arm64 runs under qemu-user 10 (Debian trixie's, scripts/qemu-user.sh): under bookworm's qemu-user-static 7.2 a LiteRT
# Interpreter segfaulted or hung
AMD64, ARM64 = "splitdnn/agent-lite:dev", "splitdnn/agent-lite:dev-arm64"
IMAGES = [(AMD64, "x86_64"), (ARM64, "aarch64")]
ROOT = Path(__file__).resolve().parent.parent

IN_CONTAINER = """
import json, sys, time
import numpy as np
from splitdnn.agent.litert_runtime import load
values = {"input": np.load("/work/frame.npy")}
for entry in json.load(open("/work/slices/slices.json"))["slices"]:
    values = load("/work/slices", entry["name"]).compute(values)
np.save("/work/out/dense_1.npy", values["dense_1"])
assert not [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_serving", "keras")]
"""


def have_image(tag: str) -> bool:
    if not shutil.which("docker"):
        return False
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode != 0:
        return False
    if tag.endswith("-arm64"):  # a reboot forgets binfmt_misc registrations; the image stays
        subprocess.run(["bash", str(ROOT / "scripts" / "qemu-user.sh"), "arm64"], check=True, timeout=300)
    return True


@pytest.mark.slow
@pytest.mark.parametrize("tag,machine", IMAGES, ids=["amd64", "arm64"])
def test_image_runs_cnn14_slices_like_tensorflow(cnn14_model, cnn14_graph, tmp_path, tag, machine):
    import tensorflow as tf

    if not have_image(tag):
        pytest.skip(f"{tag} not built (scripts/build-images.sh agent-lite)")
    export_slices(cnn14_model, cnn14_graph, resolve_cuts(cnn14_graph, ["conv2d", "flatten"]), tmp_path / "slices")
    frame = np.random.default_rng(5).random((1, 28, 28, 1), dtype=np.float32)
    np.save(tmp_path / "frame.npy", frame)
    (tmp_path / "out").mkdir()
    (tmp_path / "out").chmod(0o777)  # the image runs as uid 10001
    tmp_path.chmod(0o755)
    (tmp_path / "run.py").write_text(IN_CONTAINER)
    docker = ["docker", "run", "--rm", "--read-only", "-v", f"{tmp_path}:/work", "--entrypoint"]
    shell = "uname -m; pip show tensorflow tensorflow-cpu tensorflow-serving-api 2>&1 | grep -c '^Name' || true"
    report = subprocess.run([*docker, "sh", tag, "-c", shell], capture_output=True, text=True, timeout=300)
    assert report.stdout.split() == [machine, "0"], report.stdout + report.stderr
    subprocess.run([*docker, "python3", tag, "/work/run.py"], check=True, timeout=600)
    got = np.load(tmp_path / "out" / "dense_1.npy")

    values = {"input": frame}
    for k in range(3):
        signature = tf.saved_model.load(str(tmp_path / "slices" / f"slice{k}" / "1")).signatures["serving_default"]
        values = {n: v.numpy() for n, v in signature(**values).items()}
    assert got.shape == values["dense_1"].shape
    assert np.abs(got - values["dense_1"]).max() <= 1e-5


def serve_and_predict(tag: str, slices: Path, slice_name: str, feed: dict) -> tuple[dict, float]:
    """`splitdnn agent --runtime litert` for one slice inside image `tag` (host network, read-only root, uid
    10001), answering tensorflow-serving-api's Predict of `feed`: (outputs, seconds from `docker run` to /metrics)."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from splitdnn.agent.metrics import scrape
    from splitdnn.agent.wire import predict_request, tensors_of

    grpc_port, metrics_port = free_ports(2)
    name = f"splitdnn-lite-{grpc_port}"
    argv = f"--runtime litert --slices /work --slice {slice_name} --si lite --host 127.0.0.1"
    argv += f" --port {grpc_port} --metrics-port {metrics_port}"
    t0 = time.monotonic()
    docker = subprocess.Popen(
        ["docker", "run", "--rm", "--name", name, "--read-only", "--tmpfs", "/tmp", "--network", "host"]
        + ["-v", f"{slices}:/work:ro", tag, "agent", *argv.split()],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 600  # Python and LiteRT under emulation start in tens of seconds
        while True:
            assert docker.poll() is None, docker.stdout.read()[-3000:]
            assert time.monotonic() < deadline, f"{tag}: the agent was not serving /metrics after 600 s"
            try:
                scrape(f"http://127.0.0.1:{metrics_port}/metrics")
                break
            except OSError:
                time.sleep(0.5)
        ready = time.monotonic() - t0
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            client = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for _ in range(120):
                try:
                    reply = client.Predict(predict_request("cnn14", feed), timeout=120)
                    break
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    time.sleep(0.5)
        pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", name], capture_output=True, text=True)
        status = Path(f"/proc/{pid.stdout.strip()}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024
        print(f"{tag}: agent RSS with {slice_name} after a Predict: {rss:.0f} MiB")
        return tensors_of(reply.outputs), ready
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        docker.wait(timeout=60)


@pytest.mark.slow
def test_arm64_agent_answers_predict_like_the_amd64_agent(cnn14_model, cnn14_graph, tmp_path):
    """The same CNN14 slice (everything after the first convolution) served by the arm64 image under emulation and
    by the amd64 image: the same Predict, outputs equal within 1e-5."""
    for tag in (AMD64, ARM64):
        if not have_image(tag):
            pytest.skip(f"{tag} not built (scripts/build-images.sh [--arch arm64] agent-lite)")
    export_slices(cnn14_model, cnn14_graph, resolve_cuts(cnn14_graph, ["conv2d"]), tmp_path / "slices")
    (tmp_path / "slices").chmod(0o755)
    tmp_path.chmod(0o755)
    import json

    (spec,) = json.loads((tmp_path / "slices" / "slices.json").read_text())["slices"][1]["inputs"]
    feed = {spec["name"]: np.random.default_rng(11).random((2, *spec["shape"][1:]), dtype=np.float32)}
    amd, amd_ready = serve_and_predict(AMD64, tmp_path / "slices", "slice1", feed)
    arm, arm_ready = serve_and_predict(ARM64, tmp_path / "slices", "slice1", feed)
    diff = float(np.abs(arm["dense_1"] - amd["dense_1"]).max())
    print(f"CNN14 slice1 Predict: arm64 (qemu-user) vs amd64 max abs diff {diff:.2e}")
    print(f"start -> serving: amd64 {amd_ready:.1f} s, arm64 under emulation {arm_ready:.1f} s")
    assert arm["dense_1"].shape == amd["dense_1"].shape == (2, 10)
    assert diff <= 1e-5


@pytest.mark.slow
def test_the_tf_free_agent_calls_tensorflow_agents_bit_identically(cnn14_model, cnn14_graph, tmp_path):
    """tensorflow-serving-api's client → the device tier in the agent-lite image (LiteRT, no TensorFlow in the
    image) → edge and cloud agents on TensorFlow here, over the tier link: the answer is bit-identical to LiteRT's
    device slice followed by the TensorFlow slices computed here, and within 1e-5 of the all-TensorFlow chain."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from splitdnn.agent.litert_runtime import load as load_litert
    from splitdnn.agent.local import start_agents, stop_all, wait_ready
    from splitdnn.agent.metrics import scrape
    from splitdnn.agent.wire import predict_request, tensors_of

    if not have_image(AMD64):
        pytest.skip(f"{AMD64} not built (scripts/build-images.sh agent-lite)")
    slices = tmp_path / "slices"
    export_slices(cnn14_model, cnn14_graph, resolve_cuts(cnn14_graph, ["conv2d", "flatten"]), slices)
    for path in (tmp_path, slices, *slices.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)  # the image runs as uid 10001
    x = np.random.default_rng(3).random((4, 28, 28, 1), dtype=np.float32)
    import tensorflow as tf

    # what the chain must answer, bit for bit: the TensorFlow slices behind the device applied to what LiteRT
    # computes for the device slice (the same wheel and CPU as in the image): the wire changes no bit
    values = load_litert(slices, "slice0").compute({"input": x})
    for k in (1, 2):
        signature = tf.saved_model.load(str(slices / f"slice{k}" / "1")).signatures["serving_default"]
        values = {n: v.numpy() for n, v in signature(**values).items()}
    expected = values["dense_1"]

    def ask(address: str) -> np.ndarray:
        with grpc.insecure_channel(address) as channel:
            client = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for _ in range(120):  # UNAVAILABLE until the chain behind the tier is wired
                try:
                    return tensors_of(client.Predict(predict_request("cnn14", {"input": x}), timeout=60).outputs)[
                        "dense_1"
                    ]
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    time.sleep(0.5)
        raise AssertionError(f"{address} never answered")

    agents = start_agents(
        str(slices), tmp_path, [{"name": t, "runtime": "tensorflow"} for t in ("device", "edge", "cloud")], "interop"
    )
    name = f"splitdnn-interop-{os.getpid()}"
    try:
        wait_ready(agents, timeout=240)
        all_tf = ask(agents[0].grpc_addr)
        grpc_port, metrics_port = free_ports(2)
        argv = f"agent --runtime litert --slices /work --slice slice0 --si interop --host 127.0.0.1 --port {grpc_port}"
        argv += f" --metrics-port {metrics_port} --next {agents[1].grpc_addr}"
        subprocess.run(
            ["docker", "run", "-d", "--rm", "--name", name, "--read-only", "--tmpfs", "/tmp", "--network", "host"]
            + ["-v", f"{slices}:/work:ro", AMD64, *argv.split()],
            check=True,
            capture_output=True,
            timeout=120,
        )
        lite_first = ask(f"127.0.0.1:{grpc_port}")
        samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert {dict(lab)["runtime"] for (n, lab), v in samples.items() if n == "splitdnn_runtime_info" and v} == {
            "litert"
        }
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        stop_all(agents)
    diff = float(np.abs(lite_first - all_tf).max())
    print(f"TF-free device -> TensorFlow edge, cloud: bit-identical to LiteRT then TF here; vs all TF {diff:.2e}")
    assert np.array_equal(lite_first, expected)
    assert diff <= 1e-5


def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_the_image_serves_a_litert_chain_to_a_tf_serving_client(cnn14_model, cnn14_graph, tmp_path):
    """`splitdnn agent --runtime litert` inside the image (no TensorFlow, uid 10001, read-only root): three tiers
    chained on the host's loopback answer tensorflow-serving-api's Predict like the Keras model; start → Ready of
    the chain is printed."""
    import time

    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from splitdnn.agent.metrics import scrape
    from splitdnn.agent.wire import predict_request, tensors_of

    tag = "splitdnn/agent-lite:dev"
    if not have_image(tag):
        pytest.skip(f"{tag} not built (scripts/build-images.sh agent-lite)")
    export_slices(cnn14_model, cnn14_graph, resolve_cuts(cnn14_graph, ["conv2d", "flatten"]), tmp_path / "slices")
    tmp_path.chmod(0o755)
    grpc_ports, metrics_ports = free_ports(3), free_ports(3)
    agents = []
    for k in (2, 1, 0):  # last tier first: each tier's next is up before it
        nxt = ["--next", f"127.0.0.1:{grpc_ports[k + 1]}"] if k < 2 else []
        agents.append(
            f"splitdnn agent --runtime litert --threads 1 --slices /work/slices --slice slice{k} --si lite "
            f"--port {grpc_ports[k]} --metrics-port {metrics_ports[k]} --host 127.0.0.1 {' '.join(nxt)} &"
        )
    script = " ".join(agents) + " wait"
    name = f"splitdnn-lite-{grpc_ports[0]}"
    t0 = time.monotonic()
    docker = subprocess.Popen(
        ["docker", "run", "--rm", "--name", name, "--read-only", "--tmpfs", "/tmp", "--network", "host"]
        + ["-v", f"{tmp_path}:/work:ro", "--entrypoint", "sh", tag, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        ready = set()
        while len(ready) < 3:
            assert docker.poll() is None, docker.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the three agents were not ready after 180 s"
            for port in metrics_ports:
                try:
                    scrape(f"http://127.0.0.1:{port}/metrics")
                    ready.add(port)
                except OSError:
                    pass
            time.sleep(0.2)
        print(f"agent-lite: start → the three tiers serving /metrics in {time.monotonic() - t0:.1f} s")
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_ports[0]}")
        client = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        x = np.random.default_rng(7).random((3, 28, 28, 1), dtype=np.float32)
        for _ in range(60):  # /metrics serves before the chain behind the first tier is wired
            try:
                out = tensors_of(client.Predict(predict_request("cnn14", {"input": x}), timeout=30).outputs)
                break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                time.sleep(0.5)
        channel.close()
        assert np.abs(out["dense_1"] - np.asarray(cnn14_model(x, training=False))).max() <= 1e-4
        runtimes = {
            dict(lab)["runtime"]
            for port in metrics_ports
            for (n, lab), v in scrape(f"http://127.0.0.1:{port}/metrics").items()
            if n == "splitdnn_runtime_info" and v
        }
        assert runtimes == {"litert"}
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        docker.wait(timeout=60)
