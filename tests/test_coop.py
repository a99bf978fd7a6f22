"""Cooperative execution of a block on N devices (issue #20, item 1): every feasible block of CNN14 and of small VGG-,
AlexNet- and odd-shaped models, N = 1..4, gives the unsplit layers' output (max abs diff ≤ 1e-5); a whole model run
as random consecutive blocks (hypothesis) gives the model's output; the halo geometry is checked by hand."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitdnn import coop

TOL = 1e-5


def _randomize_batch_norm(model, seed=0):
    """Fresh BatchNormalization layers are the identity; random statistics make slicing them count."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, w.shape).astype("float32")
                    if i in (0, 3)
                    else rng.normal(0, 0.3, w.shape).astype("float32")
                    for i, w in enumerate(layer.get_weights())
                ]
            )
    return model


def vgg_small():
    import keras

    keras.utils.set_random_seed(1)
    L = keras.layers
    return _randomize_batch_norm(
        keras.Sequential(
            [
                keras.Input((32, 32, 3)),
                L.Conv2D(8, 3, padding="same", activation="relu"),
                L.Conv2D(8, 3, padding="same", activation="relu"),
                L.MaxPooling2D(2),
                L.Conv2D(16, 3, padding="same", activation="relu"),
                L.BatchNormalization(),
                L.Conv2D(16, 3, padding="same", activation="relu"),
                L.MaxPooling2D(2),
                L.Flatten(),
                L.Dense(32, activation="relu"),
                L.Dropout(0.5),
                L.Dense(32, activation="relu"),
                L.Dense(10, activation="softmax"),
            ],
            name="vgg_small",
        )
    )


def alexnet_small():
    import keras

    keras.utils.set_random_seed(2)
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((99, 99, 3)),
            L.Conv2D(12, 11, strides=4, activation="relu"),
            L.MaxPooling2D(3, strides=2),  # 23 → 11
            L.Conv2D(16, 5, padding="same", activation="relu"),
            L.MaxPooling2D(3, strides=2),  # 11 → 5
            L.Conv2D(24, 3, padding="same", activation="relu"),
            L.Conv2D(24, 3, padding="same", activation="relu"),
            L.Conv2D(16, 3, padding="same", activation="relu"),
            L.MaxPooling2D(3, strides=2),  # 5 → 2
            L.Flatten(),
            L.Dense(48, activation="relu"),
            L.Dense(48, activation="relu"),
            L.Dense(10, activation="softmax"),
        ],
        name="alexnet_small",
    )


def odd_small():
    """Strided `same` convolutions on odd sizes, `same` average pooling (it divides by the real values only),
    `same` max pooling, an asymmetric kernel, per-position layers, a layer that runs on the coordinator
    (GlobalAveragePooling2D), batch norm on a vector, a softmax Activation."""
    import keras

    keras.utils.set_random_seed(3)
    L = keras.layers
    return _randomize_batch_norm(
        keras.Sequential(
            [
                keras.Input((23, 19, 3)),
                L.Conv2D(6, 3, strides=2, padding="same"),
                L.BatchNormalization(),
                L.Activation("relu"),
                L.AveragePooling2D(3, strides=2, padding="same"),
                L.Conv2D(8, 5, padding="same"),
                L.ReLU(),
                L.MaxPooling2D(3, strides=1, padding="same"),
                L.Conv2D(8, (2, 3), strides=(2, 1), padding="valid", activation="tanh"),
                L.AveragePooling2D(2, padding="same"),
                L.Conv2D(8, 3, strides=2, padding="same", activation="relu"),
                L.GlobalAveragePooling2D(),
                L.BatchNormalization(),
                L.Dense(16, activation="tanh"),
                L.BatchNormalization(),
                L.Dense(12),
                L.Activation("softmax"),
            ],
            name="odd_small",
        ),
        seed=4,
    )


BUILDERS = {"vgg_small": vgg_small, "alexnet_small": alexnet_small, "odd_small": odd_small}


@pytest.fixture(scope="module", params=["cnn14", *BUILDERS])
def model_case(request):
    """(model, geoms, input batch, every layer's output on it)."""
    if request.param == "cnn14":
        from splitdnn.models import load_model

        model = load_model("cnn14")
    else:
        model = BUILDERS[request.param]()
    geoms = coop.describe(model)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, *model.input_shape[1:])).astype("float32")
    acts = [x]
    for layer in model.layers:
        acts.append(np.asarray(layer(acts[-1], training=False)))
    return model, geoms, x, acts


def test_layers_are_described_as_the_issue_asks(model_case):
    model, geoms, _, _ = model_case
    kinds = {type(layer).__name__: g.kind for layer, g in zip(model.layers, geoms)}
    assert kinds.get("Conv2D", "conv") == "conv"
    assert kinds.get("MaxPooling2D", "pool") == "pool"
    assert kinds.get("Dense", "dense") == "dense"
    assert kinds.get("Flatten", "flatten") == "flatten"
    assert kinds.get("GlobalAveragePooling2D", "other") == "other"
    for layer, g in zip(model.layers, geoms):  # our geometry matches Keras's shapes
        assert g.out_shape == tuple(layer.output.shape[1:])


@pytest.mark.slow
def test_every_block_on_1_to_4_devices_equals_the_unsplit_layers(model_case):
    model, geoms, _, acts = model_case
    checked, worst, modes_seen = 0, 0.0, set()
    for first in range(len(geoms)):
        for last in range(first, len(geoms)):
            for mode in coop.block_modes(geoms, first, last):
                for n in range(1, 5):
                    plan = coop.plan_block(geoms, first, last, n, mode)
                    y = coop.run_block(model.layers, geoms, plan, acts[first])
                    assert y.shape == acts[last + 1].shape
                    diff = float(np.max(np.abs(y - acts[last + 1])))
                    assert diff <= TOL, f"layers {first}..{last} {mode} on {n}: {diff}"
                    worst, checked = max(worst, diff), checked + 1
                    modes_seen.add(mode)
    assert checked > 100
    assert {"stripes", "model"} <= modes_seen
    print(f"{model.name}: {checked} blocks, max abs diff {worst:.2e}")


def test_the_odd_model_uses_every_mode():
    geoms = coop.describe(odd_small())
    modes = {m for i in range(len(geoms)) for j in range(i, len(geoms)) for m in coop.block_modes(geoms, i, j)}
    assert modes == set(coop.MODES)


def _random_blocks(data, geoms):
    blocks, first = [], 0
    while first < len(geoms):
        ends = [j for j in range(first, len(geoms)) if coop.block_modes(geoms, first, j)]
        last = data.draw(st.sampled_from(ends))
        mode = data.draw(st.sampled_from(coop.block_modes(geoms, first, last)))
        blocks.append((first, last, data.draw(st.integers(1, 4)), mode))
        first = last + 1
    return blocks


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_whole_model_as_random_cooperative_blocks_equals_the_model(model_case, data):
    model, geoms, x, acts = model_case
    blocks = _random_blocks(data, geoms)
    y = coop.run_plan(model, blocks, x, geoms)
    assert float(np.max(np.abs(y - acts[-1]))) <= TOL


def test_halo_rows_are_prefetched_for_the_whole_block_and_padding_stays_at_the_true_border():
    # two `same` 3×3 convolutions on 8 rows, 2 devices: each needs 2 extra rows towards its neighbour
    g = coop.Chain((8, 5, 1)).conv(2, 3).conv(2, 3).layers
    top, bottom = coop.plan_block(g, 0, 1, 2, "stripes").tasks
    assert top.out_rows == (0, 4) and top.rows == (0, 6) and top.pads == ((1, 0), (1, 0))
    assert top.layer_rows == ((0, 5), (0, 4))
    assert bottom.out_rows == (4, 8) and bottom.rows == (2, 8) and bottom.pads == ((0, 1), (0, 1))
    # valid 3×3 then 2×2/2 pooling, 3 devices on 4 output rows: the last device gets 2 rows, an idle one None
    g = coop.Chain((11, 11, 1)).conv(1, 3, padding="valid").pool(2, 2).layers
    tasks = coop.plan_block(g, 0, 1, 3, "stripes").tasks
    assert [t.out_rows for t in tasks] == [(0, 1), (1, 2), (2, 4)]
    assert [t.rows for t in tasks] == [(0, 4), (2, 6), (4, 10)]
    assert coop.plan_block(g, 0, 1, 8, "stripes").tasks[0] is None


def test_a_device_gets_only_its_part(model_case):
    _, geoms, _, acts = model_case
    plan = coop.plan_block(geoms, 0, 1, 3, "stripes") if coop.block_modes(geoms, 0, 1) == ["stripes"] else None
    if plan is None:
        pytest.skip("first two layers are not a stripes block")
    parts = coop.scatter(plan, acts[0])
    for task, part in zip(plan.tasks, parts):
        assert part.shape[1] == task.rows[1] - task.rows[0] < acts[0].shape[1]


def test_models_that_are_not_chains_are_refused():
    import keras

    inp = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(2, 3, padding="same")(inp)
    skip = keras.Model(inp, keras.layers.Add()([a, keras.layers.Conv2D(2, 3, padding="same")(a)]), name="skip")
    with pytest.raises(ValueError, match="not a chain"):
        coop.describe(skip)
    functional = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(a)), name="functional_chain")
    assert [g.kind for g in coop.describe(functional)] == ["conv", "flatten", "dense"]


def test_bad_plans_are_refused():
    g = coop.Chain((8, 8, 1)).conv(2, 3).flatten().dense(4).dense(4).dense(2).layers
    assert coop.block_modes(g, 0, 4) == []  # three dense layers never share a block
    assert coop.block_modes(g, 2, 4) == []
    assert coop.block_modes(g, 2, 3) == ["hybrid"]
    assert coop.block_modes(g, 1, 2) == ["model", "data"]
    with pytest.raises(ValueError):
        coop.plan_block(g, 0, 4, 2, "stripes")
