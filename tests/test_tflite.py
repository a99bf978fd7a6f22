"""`.tflite` slices: the chain of LiteRT slices equals the full model (≤ 1e-4), each LiteRT slice equals its TF
SavedModel (≤ 1e-4), a slice that does not convert keeps only its SavedModel with a reason, quantized variants
report figures against float."""

import json
import subprocess
import sys

import numpy as np
import pytest
from test_slicer import frames, reference

from splitdnn.graph import build_graph
from splitdnn.slicer import export_slices, resolve_cuts

TOL = 1e-4


def check_litert_chain(model, graph, out_dir):
    """Chain LiteRT slices by name from slices.json; every slice also against its SavedModel on the same feed."""
    import tensorflow as tf

    from splitdnn.agent.litert_runtime import load

    manifest = json.loads((out_dir / "slices.json").read_text())
    feed = frames(graph, seed=7)
    expected = reference(model, graph, feed)
    values, per_slice = dict(feed), {}
    for entry in manifest["slices"]:
        assert entry["tflite"] == f"{entry['name']}/model.tflite"
        assert (out_dir / entry["tflite"]).is_file()
        runtime = load(out_dir, entry["name"])
        assert runtime.inputs == entry["inputs"] and runtime.outputs == entry["outputs"]
        step = {t["name"]: values[t["name"]] for t in entry["inputs"]}
        got = runtime.compute(step)
        assert list(got) == [t["name"] for t in entry["outputs"]]  # the listed order
        signature = tf.saved_model.load(str(out_dir / entry["path"])).signatures["serving_default"]
        saved = {k: v.numpy() for k, v in signature(**step).items()}
        per_slice[entry["name"]] = max(float(np.abs(got[n] - saved[n]).max()) for n in got)
        assert per_slice[entry["name"]] <= TOL, entry["name"]
        for n in got:  # relative too: an untrained deep model's activations can be far below TOL
            scale = float(np.abs(saved[n]).max())
            assert scale == 0 or np.abs(got[n] - saved[n]).max() <= 1e-4 * scale, (entry["name"], n)
        values = got
    for name, value in expected.items():
        assert values[name].shape == value.shape
        assert np.abs(values[name] - value).max() <= TOL, name
    return manifest, per_slice


@pytest.mark.parametrize(
    "points", [["conv2d", "flatten"], ["max_pooling2d", "conv2d_4", "dense"], ["batch_normalization_2"]]
)
def test_cnn14_tflite_chain_equals_model(cnn14_model, cnn14_graph, tmp_path, points):
    cuts = resolve_cuts(cnn14_graph, points)
    export_slices(cnn14_model, cnn14_graph, cuts, tmp_path)
    manifest, per_slice = check_litert_chain(cnn14_model, cnn14_graph, tmp_path)
    assert len(per_slice) == len(points) + 1
    assert all(0 <= s["tflite_max_abs_diff"] <= TOL for s in manifest["slices"])


@pytest.mark.slow
def test_mobilenetv2_96_tflite_chain_equals_model(tmp_path):
    from splitdnn.models import load_model

    model = load_model("keras.applications.MobileNetV2", input_shape=(96, 96, 3))
    graph = build_graph(model)
    export_slices(model, graph, resolve_cuts(graph, ["block_6_expand_relu", "block_13_expand_relu"]), tmp_path)
    check_litert_chain(model, graph, tmp_path)


def test_branching_model_names_not_order(tmp_path):
    """Two inputs, two outputs, a pass-through tensor and an input-only slice: the converter orders tensors its own
    way; the runtime maps them by signature name."""
    from test_graph import branching_model

    model = branching_model()
    graph = build_graph(model)
    manifest = export_slices(model, graph, resolve_cuts(graph, ["image", "stem", "merge", "concat"]), tmp_path)
    assert manifest["slices"][0]["outputs"] == manifest["slices"][0]["inputs"]  # nothing but pass-through
    check_litert_chain(model, graph, tmp_path)


def flex_model():
    import keras

    class Erfinv(keras.layers.Layer):  # tf.Erfinv has no TFLite builtin kernel
        def call(self, x):
            return keras.ops.erfinv(x)

    x = keras.Input((4,), name="x")
    h = keras.layers.Dense(4, activation="tanh", name="d1")(x)
    e = Erfinv(name="erfinv")(h)
    return keras.Model(x, keras.layers.Dense(2, name="d2")(e), name="flexy")


def test_slice_that_does_not_convert_is_recorded_not_fatal(tmp_path):
    from splitdnn.agent.litert_runtime import NoTFLite, converts, load
    from splitdnn.tflite import verify_tflite

    model = flex_model()
    graph = build_graph(model)
    manifest = export_slices(model, graph, resolve_cuts(graph, ["d1", "erfinv"]), tmp_path)
    d1, erf, d2 = manifest["slices"]
    assert "tflite" in d1 and "tflite" in d2
    assert "tflite" not in erf and "Erfinv" in erf["tflite_error"]
    assert not (tmp_path / "slice1" / "model.tflite").exists()
    assert json.loads((tmp_path / "slices.json").read_text())["slices"][1] == erf
    assert not converts(tmp_path)
    with pytest.raises(NoTFLite, match="slice1.*Erfinv"):
        load(tmp_path, "slice1")
    diff, fallback = verify_tflite(model, graph, tmp_path)
    assert fallback == ["slice1"] and diff <= TOL


def test_auto_runtime_is_litert_where_a_slice_converted(tmp_path):
    """A tier without `tiers[].runtime` (the agent's --runtime auto) runs litert where its slice has a .tflite and
    tensorflow with the slicer's reason where not; the slicer's report (a pod's termination message) gives the
    operator the same answer for status.tiers[]."""
    from splitdnn.agent.runtime import choose, load
    from splitdnn.controller.status import tier_runtime
    from splitdnn.slicer import conversion_report
    from splitdnn.spec import Tier

    model = flex_model()
    graph = build_graph(model)
    manifest = export_slices(model, graph, resolve_cuts(graph, ["d1", "erfinv"]), tmp_path)
    assert [load(tmp_path, f"slice{k}", "auto").name for k in range(3)] == ["litert", "tensorflow", "litert"]
    report = conversion_report(manifest)
    assert len(json.dumps(report)) < 4096  # a termination message's limit
    got = [tier_runtime(Tier(name=f"t{k}"), k, report, None) for k in range(3)]
    assert got[0] == got[2] == {"runtime": "litert"}
    assert got[1]["runtime"] == "tensorflow" and "slice1" in got[1]["runtimeNote"] and "Erfinv" in got[1]["runtimeNote"]
    assert [choose(None, e)[0] for e in manifest["slices"]] == ["litert", "tensorflow", "litert"]
    # the spec's choice stands (a slice that did not convert then fails in the agent, with the reason)
    assert tier_runtime(Tier(name="t", runtime="tensorflow"), 0, report, None) == {"runtime": "tensorflow"}
    assert tier_runtime(Tier(name="t", devices=3), 0, report, None) == {"runtime": "tensorflow"}
    # no report yet: the previous status entry (same split) stands; an unreadable one is said
    assert tier_runtime(Tier(name="t"), 1, None, got[1]) == got[1]
    assert tier_runtime(Tier(name="t"), 1, None, None) == {}
    assert "unreadable" in tier_runtime(Tier(name="t"), 0, {"unreadable": "oops"}, None)["runtimeNote"]


@pytest.mark.parametrize("mode", ["fp16", "int8"])
def test_quantize_reports_figures(cnn14_model, cnn14_graph, tmp_path, mode):
    from splitdnn.agent.litert_runtime import load

    cuts = resolve_cuts(cnn14_graph, ["conv2d", "flatten"])
    manifest = export_slices(cnn14_model, cnn14_graph, cuts, tmp_path, quantize=mode, frames=16)
    report = manifest["quantization"]
    assert report["mode"] == mode and report["frames"] == 16
    assert 0 < report["max_abs_diff"] < 0.1  # quantized is not float, but close to it
    assert 0.5 <= report["top1_agreement"] <= 1.0
    for entry in manifest["slices"]:
        quantized = tmp_path / entry[f"tflite_{mode}"]
        assert quantized.stat().st_size < (tmp_path / entry["tflite"]).stat().st_size or entry["name"] == "slice0"
    frame = frames(cnn14_graph, n=1, seed=7)
    expected = reference(cnn14_model, cnn14_graph, frame)["dense_1"]
    values = frame
    for entry in manifest["slices"]:
        values = load(tmp_path, entry["name"], variant=mode).compute(values)
    assert np.argmax(values["dense_1"]) == np.argmax(expected)
    assert np.abs(values["dense_1"] - expected).max() < 0.1


def test_int8_calibrates_on_an_image_directory(cnn14_model, cnn14_graph, tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(images / f"{i}.png")
    cuts = resolve_cuts(cnn14_graph, ["flatten"])
    manifest = export_slices(
        cnn14_model, cnn14_graph, cuts, tmp_path / "out", quantize="int8", calibration=str(images), frames=4
    )
    assert manifest["quantization"]["calibration"] == str(images)
    assert manifest["quantization"]["frames"] == 4 and manifest["quantization"]["max_abs_diff"] > 0


def test_litert_runtime_imports_no_tensorflow(cnn14_model, cnn14_graph, tmp_path):
    """A TF-free process loads a slice and computes it; its outputs equal the SavedModel's."""
    import tensorflow as tf

    export_slices(cnn14_model, cnn14_graph, resolve_cuts(cnn14_graph, ["flatten"]), tmp_path)
    frame = frames(cnn14_graph, n=1, seed=7)
    np.save(tmp_path / "frame.npy", frame["input"])
    code = (
        "import sys, numpy as np\n"
        "from splitdnn.agent.litert_runtime import load\n"
        f"s = load({str(tmp_path)!r}, 'slice0', threads=2)\n"
        f"out = s.compute({{'input': np.load({str(tmp_path / 'frame.npy')!r})}})\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, out['flatten'])\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tensorflow_serving')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    signature = tf.saved_model.load(str(tmp_path / "slice0" / "1")).signatures["serving_default"]
    saved = signature(input=tf.constant(frame["input"]))["flatten"].numpy()
    assert np.abs(np.load(tmp_path / "out.npy") - saved).max() <= TOL


def test_cli_slice_reports_tflite_and_quantization(tmp_path):
    out = tmp_path / "slices"
    result = subprocess.run(
        [sys.executable, "-m", "splitdnn", "slice", "cnn14", "--at", "conv2d", "--out", str(out)]
        + ["--quantize", "fp16", "--frames", "4", "--report", str(tmp_path / "report.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "between the chained .tflite slices and the full model" in result.stderr
    assert "quantized fp16: max abs diff" in result.stderr and "top-1 agreement" in result.stderr
    manifest = json.loads((out / "slices.json").read_text())
    assert [s["tflite_fp16"] for s in manifest["slices"]] == ["slice0/model_fp16.tflite", "slice1/model_fp16.tflite"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == {"slices": [{"name": s["name"], "tflite": s["tflite"]} for s in manifest["slices"]]}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--quantize", "int4"], "--quantize must be fp16 or int8"),
        (["--quantize", "int8", "--no-tflite"], "drop --no-tflite"),
        (["--calibration", "/nonexistent"], "is not a directory"),
    ],
)
def test_cli_slice_bad_quantize_options_exit_2(tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, "-m", "splitdnn", "slice", "cnn14", "--at", "conv2d", "--out", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and message in result.stderr
