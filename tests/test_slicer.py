"""Slices are real TF SavedModels whose composition equals the full model (max abs diff ≤ 1e-5, float32)."""

import json

import numpy as np
import pytest

from splitdnn.graph import build_graph
from splitdnn.slicer import CutError, export_slices, plan_slices, resolve_cuts

TOL = 1e-5


def run_saved_slices(out_dir, feed):
    """Chain the exported SavedModels through their `serving_default` signatures, by tensor name."""
    import tensorflow as tf

    manifest = json.loads((out_dir / "slices.json").read_text())
    for entry in manifest["slices"]:
        assert (out_dir / entry["path"] / "saved_model.pb").is_file()
        signature = tf.saved_model.load(str(out_dir / entry["path"])).signatures["serving_default"]
        assert sorted(signature.structured_input_signature[1]) == sorted(t["name"] for t in entry["inputs"])
        feed = {
            k: v.numpy()
            for k, v in signature(**{t["name"]: tf.constant(feed[t["name"]]) for t in entry["inputs"]}).items()
        }
        assert sorted(feed) == sorted(t["name"] for t in entry["outputs"])
    return manifest, feed


def frames(graph, n=2, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.random((n, *graph.tensors[name].shape[1:]), dtype=np.float32) for name in graph.inputs}


def reference(model, graph, feed):
    out = model([feed[n] for n in graph.inputs] if len(graph.inputs) > 1 else feed[graph.inputs[0]], training=False)
    out = out if isinstance(out, (list, tuple)) else [out]
    return dict(zip(graph.outputs, (np.asarray(o) for o in out)))


def assert_composition(model, graph, cuts, out_dir):
    feed = frames(graph)
    export_slices(model, graph, cuts, out_dir)
    manifest, result = run_saved_slices(out_dir, feed)
    expected = reference(model, graph, feed)
    for name, value in expected.items():
        assert np.abs(result[name] - value).max() <= TOL, name
    return manifest


def test_cnn14_every_cut_at_once(cnn14_model, cnn14_graph, tmp_path):
    """13 cuts → 14 one-layer SavedModels; chained they equal the model, so every cut composes."""
    cuts = list(range(len(cnn14_graph.layers) - 1))
    manifest = assert_composition(cnn14_model, cnn14_graph, cuts, tmp_path)
    assert [s["name"] for s in manifest["slices"]] == [f"slice{i}" for i in range(14)]
    assert manifest["slices"][0]["inputs"] == [{"name": "input", "shape": [None, 28, 28, 1], "dtype": "float32"}]
    assert manifest["slices"][-1]["outputs"][0]["name"] == "dense_1"
    # each later slice's inputs are the previous slice's outputs, by name
    for a, b in zip(manifest["slices"], manifest["slices"][1:]):
        assert a["outputs"] == b["inputs"]


@pytest.mark.parametrize("cut", range(13))
def test_cnn14_each_single_cut_in_keras(cnn14_model, cnn14_graph, cut):
    """The Keras sub-models behind the SavedModels, at every single cut (fast path of the same code)."""
    from splitdnn.slicer import slice_function

    feed = frames(cnn14_graph)
    expected = reference(cnn14_model, cnn14_graph, feed)
    for spec in plan_slices(cnn14_graph, [cut]):
        feed = {k: np.asarray(v) for k, v in slice_function(cnn14_model, cnn14_graph, spec)(feed).items()}
    assert np.abs(feed["dense_1"] - expected["dense_1"]).max() <= TOL


def test_branching_model_multi_cut(tmp_path):
    from test_graph import branching_model

    model = branching_model()
    graph = build_graph(model)
    multi = [c.index for c in graph.boundaries if not c.single_tensor]
    cuts = [multi[0], multi[len(multi) // 2], multi[-1]]
    manifest = assert_composition(model, graph, sorted(set(cuts)), tmp_path)
    # an unused tensor (the `meta` input) is passed through slices that do not consume it
    assert any("meta" in [t["name"] for t in s["outputs"]] for s in manifest["slices"][:-1])


APPS = [
    ("ResNet50", (64, 64, 3)),
    ("MobileNetV2", (64, 64, 3)),
    ("InceptionV3", (75, 75, 3)),
    ("DenseNet121", (64, 64, 3)),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,shape", APPS, ids=[a[0] for a in APPS])
def test_keras_applications_single_and_multi_tensor_cuts(name, shape, tmp_path):
    from splitdnn.models import load_model

    model = load_model(f"keras.applications.{name}", input_shape=shape)
    graph = build_graph(model)
    singles = [c.index for c in graph.boundaries if c.single_tensor and c.index > 0]
    multis = [c.index for c in graph.boundaries if not c.single_tensor]
    assert singles and multis, "these models have both kinds of cut"
    single = singles[len(singles) // 2]
    multi = max(multis, key=lambda i: (len(graph.boundaries[i].tensors), -abs(i - len(graph.layers) // 2)))
    assert_composition(model, graph, [single], tmp_path / "single")
    assert_composition(model, graph, sorted({multi, singles[-1]}), tmp_path / "multi")


def test_bad_split_points_name_the_problem(cnn14_graph):
    with pytest.raises(CutError, match="'conv9' is not a layer of model 'cnn14'"):
        resolve_cuts(cnn14_graph, ["conv9"])
    with pytest.raises(CutError, match="follow the layer order"):
        resolve_cuts(cnn14_graph, ["flatten", "conv2d"])
    with pytest.raises(CutError, match="last layer"):
        resolve_cuts(cnn14_graph, ["dense_1"])
    assert resolve_cuts(cnn14_graph, ["conv2d", "batch_normalization_1"]) == [0, 7]
