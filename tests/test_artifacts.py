"""The artifact store with real parts: its HTTP server, real TensorFlow builds of CNN14 and of a user's Sequential
.keras file, and the tiers' fetch in a process where TensorFlow cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from harness.fixtures import WITHOUT_TENSORFLOW
from splitdnn import artifacts
from splitdnn.graph import build_graph
from splitdnn.models import cnn14
from splitdnn.slicer import verify_slices

SPLIT = ["conv2d_1", "flatten"]


@pytest.fixture
def store(tmp_path):
    server = artifacts.start_server(tmp_path / "store")
    yield artifacts.Store(f"http://127.0.0.1:{server.server_address[1]}", timeout=10), server
    server.shutdown()


def fetch_without_tf(store_url: str, key: str, at: list[str], index: int, out: Path, report: Path):
    cmd = [sys.executable, "-c", WITHOUT_TENSORFLOW, "artifacts", "fetch", "--store", store_url, "--model-key", key]
    cmd += ["--at", ",".join(at), "--slice", str(index), "--out", str(out), "--report", str(report)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_build_once_fetch_without_tensorflow_and_reslice_only_what_is_new(store, tmp_path):
    s, server = store
    first = artifacts.build(s, "cnn14", split_points=SPLIT)
    assert first["built"] == ["graph", "slice0", "slice1", "slice2"]
    assert [row.get("tflite") for row in first["slices"]] == [f"slice{i}/model.tflite" for i in range(3)]
    again = artifacts.build(s, "cnn14", split_points=SPLIT)
    assert again["built"] == []  # a second SplitInference of the same model and split: no TensorFlow work
    assert again["model"] == first["model"]

    out = tmp_path / "tiers"
    for i in range(3):  # each tier its own slice, in a process that cannot import TensorFlow
        done = fetch_without_tf(s.url, first["key"], SPLIT, i, out, tmp_path / f"r{i}.json")
        assert done.returncode == 0, done.stderr
        report = json.loads((tmp_path / f"r{i}.json").read_text())
        assert report["model"]["sha256"] == first["model"]["sha256"]
        assert report["slice"]["name"] == f"slice{i}"
    model = cnn14()  # the builtin is seeded: the slices must compose to it
    assert verify_slices(model, build_graph(model), out) <= 1e-5

    moved = artifacts.build(s, "cnn14", split_points=["conv2d_1", "max_pooling2d_2"])
    assert moved["built"] == ["slice1", "slice2"]  # the first slice (.. conv2d_1) is the one already built
    assert server.stats()["slices"] == 5


def test_corrupt_blob_is_refused_and_leaves_nothing(store, tmp_path):
    s, server = store
    built = artifacts.build(s, "cnn14", split_points=SPLIT)
    ref = s.get_ref(
        "slices",
        artifacts.split_slices(built["model"]["sha256"], s.get_ref("models", built["key"])["graph"]["layers"], SPLIT)[
            0
        ].key,
    )
    blob = server.root / "blobs" / "sha256" / ref["blob"]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    out = tmp_path / "tier"
    done = fetch_without_tf(s.url, built["key"], SPLIT, 0, out, tmp_path / "r.json")
    assert done.returncode == 2
    assert json.loads((tmp_path / "r.json").read_text())["error"]["reason"] == "DigestMismatch"
    assert not (out / "slice0").exists() and not (out / "slices.json").exists()


def test_store_refuses_a_blob_under_another_name(store, tmp_path):
    s, _ = store
    path = tmp_path / "x.bin"
    path.write_bytes(b"frames")
    digest, size = s.put_blob(path)
    assert size == 6 and s.has_blob(digest)
    wrong = "0" * 64
    req = urllib.request.Request(f"{s.url}/blobs/sha256/{wrong}", data=b"frames", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 400 and not s.has_blob(wrong)
    with pytest.raises(artifacts.ArtifactError) as missing:
        artifacts.fetch(s, "0" * 32, SPLIT, 0, tmp_path / "o")
    assert missing.value.reason == "NotBuilt"


def test_a_users_sequential_keras_file(store, tmp_path):
    """A Sequential model saved and loaded again used to be unsliceable (its layers' inputs were not their
    predecessors' outputs); it is now followed as a functional model of the same layers and weights."""
    import keras

    s, _ = store
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((12,)), keras.layers.Dense(16, activation="relu", name="d1"), keras.layers.Dense(4, name="d2")]
    )
    path = tmp_path / "seq.keras"
    model.save(path)
    built = artifacts.build(s, str(path), split_points=["d1"])
    assert built["built"] == ["graph", "slice0", "slice1"]
    out = tmp_path / "tiers"
    for i in range(2):
        artifacts.fetch(s, built["key"], ["d1"], i, out)
    x = np.random.default_rng(0).random((1, 12)).astype("float32")
    import tensorflow as tf

    doc = json.loads((out / "slices.json").read_text())
    values = {doc["slices"][0]["inputs"][0]["name"]: x}
    for entry in doc["slices"]:
        fn = tf.saved_model.load(str(out / entry["path"])).signatures["serving_default"]
        values = {k: v.numpy() for k, v in fn(**values).items()}
    assert float(np.abs(values["d2"] - model(x).numpy()).max()) <= 1e-5


def test_bad_model_and_bad_split_point_get_their_reason(store, tmp_path):
    s, _ = store
    cli = [sys.executable, "-m", "splitdnn", "artifacts", "build"]
    report = tmp_path / "r.json"
    bad = subprocess.run(
        [*cli, "http://127.0.0.1:9/m.keras", "--store", s.url, "--report", str(report)], capture_output=True, text=True
    )
    assert bad.returncode == 2 and json.loads(report.read_text())["error"]["reason"] == "Unreachable"
    point = subprocess.run(
        [*cli, "cnn14", "--store", s.url, "--at", "nosuchlayer", "--report", str(report)],
        capture_output=True,
        text=True,
    )
    assert point.returncode == 2, point.stderr
    assert json.loads(report.read_text())["error"]["reason"] == "InvalidSplitPoint"
    assert "nosuchlayer" in point.stderr


def test_a_slice_archive_cannot_write_outside_its_directory(tmp_path):
    import io
    import tarfile

    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with tarfile.open(bad) as tar, pytest.raises(artifacts.ArtifactError, match="refused"):
        artifacts._extract(tar, tmp_path / "slice0")
    assert not (tmp_path / "escaped.txt").exists()


def test_the_store_stops_on_sigterm_as_pid_1(tmp_path):
    """In its pod the store is PID 1, which the kernel gives no default action for SIGTERM: without a handler a
    deleted store pod kept serving for its whole grace period, behind the same Service as its successor (in kind a
    new operator read a model graph from the old pod, then from the new one, and rolled every tier). Run as PID 1
    of a PID namespace of its own, it exits 0 on SIGTERM, at once."""
    import signal
    import socket
    import time

    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    cmd = ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", "splitdnn", "artifacts", "serve"]
    cmd += ["--root", str(tmp_path / "store"), "--host", "127.0.0.1", "--port", str(number)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{number}/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise AssertionError(f"the store did not start: {proc.stderr.read() if proc.poll() is not None else ''}")
        (init,) = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()  # PID 1 inside
        assert Path(f"/proc/{init}/status").read_text().count("NSpid:\t" + init + "\t1\n") == 1
        started = time.monotonic()
        os.kill(int(init), signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
        print(f"store (PID 1) stopped {time.monotonic() - started:.2f} s after SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
