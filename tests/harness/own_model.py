"""A model of the tests' own (not a builtin): a small functional model with a branch, trained a little on a rule so
its outputs mean something. The control plane's and kind's "bring your own model" tests serve it."""

from __future__ import annotations

import numpy as np

INPUT = "image"
SPLIT = ["join"]  # a cut after the branch joins: two tiers
SPLIT3 = ["join", "pool"]  # three tiers


def own_model():
    """Not a builtin: a small functional model with a branch, trained a little on a rule so it means something."""
    import keras

    keras.utils.set_random_seed(11)
    L = keras.layers
    x = keras.Input(shape=(12, 12, 3), name="image")
    stem = L.Conv2D(8, 3, activation="relu", name="stem")(x)
    left = L.Conv2D(8, 3, padding="same", activation="relu", name="left")(stem)
    right = L.Conv2D(8, 1, name="right")(stem)
    joined = L.Add(name="join")([left, right])
    pooled = L.GlobalAveragePooling2D(name="pool")(joined)
    model = keras.Model(x, L.Dense(2, activation="softmax", name="head")(pooled), name="mine")
    rng = np.random.default_rng(0)
    images = rng.random((64, 12, 12, 3), dtype=np.float32)
    labels = (images[..., 0].mean(axis=(1, 2)) > 0.5).astype("int32")  # brighter red channel or not
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=2, verbose=0)
    return model
