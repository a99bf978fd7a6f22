"""Model graph and cuts: CNN14 exactly as Cho 2021 Table 1, and branching / multi-input / multi-output models."""

from splitdnn.graph import build_graph

# Cho 2021, Table 1 (the paper's BatchNormalization #4 row misprints 128 channels; 256 params means 64).
TABLE1 = [
    ("Conv2D", (26, 26, 32), 320),
    ("Conv2D", (24, 24, 64), 18_496),
    ("MaxPooling2D", (12, 12, 64), 0),
    ("BatchNormalization", (12, 12, 64), 256),
    ("Conv2D", (10, 10, 128), 73_856),
    ("Conv2D", (8, 8, 128), 147_584),
    ("MaxPooling2D", (4, 4, 128), 0),
    ("BatchNormalization", (4, 4, 128), 512),
    ("Conv2D", (2, 2, 256), 295_168),
    ("MaxPooling2D", (1, 1, 256), 0),
    ("Flatten", (256,), 0),
    ("BatchNormalization", (256,), 1_024),
    ("Dense", (512,), 131_584),
    ("Dense", (10,), 5_130),
]


def test_cnn14_matches_table1(cnn14_graph):
    g = cnn14_graph
    assert [(l.cls, tuple(l.output_shape[1:]), l.params) for l in g.layers] == TABLE1
    assert g.params_total == 673_930
    assert g.input_bytes == 28 * 28 * 4
    assert g.layers[0].flops == 2 * 9 * 1 * 26 * 26 * 32  # exact for convolutions
    assert g.layers[-1].flops == 2 * 512 * 10


def test_cnn14_cuts_are_single_tensor_with_bytes(cnn14_graph):
    g = cnn14_graph
    assert len(g.boundaries) == 13
    for cut, layer in zip(g.boundaries, g.layers):
        assert cut.single_tensor and cut.tensors == (layer.name,)
        assert cut.bytes == layer.output_bytes
    assert g.boundaries[0].bytes == 26 * 26 * 32 * 4


def test_cnn14_weights_are_seeded():
    from splitdnn.models import load_model

    a, b = load_model("cnn14"), load_model("cnn14")
    assert all((wa == wb).all() for wa, wb in zip(a.get_weights(), b.get_weights()))


def branching_model():
    import keras

    L = keras.layers
    image = keras.Input((8, 8, 3), name="image")
    meta = keras.Input((4,), name="meta")
    x = L.Conv2D(4, 3, padding="same", name="stem")(image)
    a = L.Conv2D(4, 1, name="branch_a")(x)
    b = L.Conv2D(4, 3, padding="same", name="branch_b")(x)
    y = L.Add(name="merge")([a, b])
    y = L.GlobalAveragePooling2D(name="pool")(y)
    z = L.Concatenate(name="concat")([y, L.Dense(4, name="meta_dense")(meta)])
    out = L.Dense(3, name="head")(z)
    aux = L.Dense(2, name="aux")(y)
    return keras.Model([image, meta], [out, aux], name="branchy")


def test_branching_multi_input_multi_output_cuts():
    g = build_graph(branching_model())
    names = [l.name for l in g.layers]
    assert g.inputs == ["image", "meta"] and g.outputs == ["head", "aux"]
    by_after = {c.after: c for c in g.boundaries}
    # After the stem, both the stem output and the still-unused second model input cross.
    stem = by_after["stem"]
    assert set(stem.tensors) == {"stem", "meta"} and not stem.single_tensor
    assert stem.bytes == 8 * 8 * 4 * 4 + 4 * 4
    # Inside the branch both branch outputs (or the branch input) must be shipped.
    first_branch = min(names.index("branch_a"), names.index("branch_b"))
    assert len(g.boundaries[first_branch].tensors) >= 3
    # An early model output (aux) crosses every later cut: the result must reach the end of the pipeline.
    aux_at = names.index("aux")
    for cut in g.boundaries[aux_at:]:
        assert "aux" in cut.tensors
    for cut in g.boundaries:
        assert cut.bytes == sum(g.tensors[t].bytes for t in cut.tensors)


def test_multi_output_layer_tensor_names():
    import keras

    class Split(keras.layers.Layer):
        def call(self, x):
            return [x[:, :2], x[:, 2:]]

        def compute_output_shape(self, s):
            return [(s[0], 2), (s[0], s[1] - 2)]

    inp = keras.Input((5,), name="x")
    p, q = Split(name="split")(inp)
    out = keras.layers.Concatenate(name="cat")([keras.layers.Dense(2, name="dp")(p), q])
    g = build_graph(keras.Model(inp, out))
    assert g.layers[[l.name for l in g.layers].index("split")].outputs == ("split__0", "split__1")
    assert "split__1" in g.boundaries[[c.after for c in g.boundaries].index("dp")].tensors
