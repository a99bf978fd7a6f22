"""The TensorFlow-free image (`scripts/build-images.sh [--arch arm64] agent-lite`): no tensorflow package, and CNN14's
`.tflite` slices computed inside it (arm64: under qemu-user-static) equal the TensorFlow SavedModels' outputs here.

Skipped when docker or the image is not there (building it is CI's image step, not this test's)."""

import shutil
import subprocess

import numpy as np
import pytest

from splitdnn.slicer import export_slices, resolve_cuts

# arm64: the image builds (aarch64 wheels, uname -m aarch64), but creating a LiteRT Interpreter under this host's
# qemu-user-static (Debian bookworm's 7.2) segfaults and hangs, with or without XNNPACK; not run until resolved
ARM64_UNDER_QEMU = pytest.mark.xfail(reason="LiteRT Interpreter segfaults under qemu-user 7.2", run=False)
IMAGES = [
    ("splitdnn/agent-lite:dev", "x86_64"),
    pytest.param("splitdnn/agent-lite:dev-arm64", "aarch64", marks=ARM64_UNDER_QEMU),
]

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
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


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
