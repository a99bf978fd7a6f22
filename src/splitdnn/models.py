"""Model sources: the built-in CNN14 of Cho 2021, `.keras` files, and `keras.applications` models.

A model *spec* is one string, the same in the CLI and the CRD:
- `cnn14`                      the 14-layer CNN of Cho 2021, Table 1 (random weights, seeded);
- `keras.applications.<Name>`  e.g. `keras.applications.ResNet50`, built with `weights=None`;
- a path to a `.keras` file    loaded with `safe_mode=True` (Lambda layers are code; we never run untrusted code).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BUILTIN_MODELS = ("cnn14",)
APPLICATIONS_PREFIX = "keras.applications."
DEFAULT_SEED = 1234


class ModelSourceError(ValueError):
    """The model spec names nothing we can build or load."""


def cnn14(seed: int = DEFAULT_SEED):
    """Cho 2021, Table 1: input 28×28×1, 14 layers, 673,930 parameters.

    Layer names are Keras's own defaults for this model in a fresh session (conv2d, conv2d_1, …), fixed here so
    split points in YAML files do not depend on how many models a process built before.
    """
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1), name="input"),
            L.Conv2D(32, 3, activation="relu", name="conv2d"),  # 1  (26,26,32)  320
            L.Conv2D(64, 3, activation="relu", name="conv2d_1"),  # 2  (24,24,64)  18,496
            L.MaxPooling2D(2, name="max_pooling2d"),  # 3  (12,12,64)  0
            L.BatchNormalization(name="batch_normalization"),  # 4  (12,12,64)  256
            L.Conv2D(128, 3, activation="relu", name="conv2d_2"),  # 5  (10,10,128) 73,856
            L.Conv2D(128, 3, activation="relu", name="conv2d_3"),  # 6  (8,8,128)   147,584
            L.MaxPooling2D(2, name="max_pooling2d_1"),  # 7  (4,4,128)   0
            L.BatchNormalization(name="batch_normalization_1"),  # 8  (4,4,128)   512
            L.Conv2D(256, 3, activation="relu", name="conv2d_4"),  # 9  (2,2,256)   295,168
            L.MaxPooling2D(2, name="max_pooling2d_2"),  # 10 (1,1,256)   0
            L.Flatten(name="flatten"),  # 11 (256,)      0
            L.BatchNormalization(name="batch_normalization_2"),  # 12 (256,)      1,024
            L.Dense(512, activation="relu", name="dense"),  # 13 (512,)      131,584
            L.Dense(10, activation="softmax", name="dense_1"),  # 14 (10,)       5,130
        ],
        name="cnn14",
    )


def load_model(spec: str, input_shape: Sequence[int] | None = None, seed: int = DEFAULT_SEED):
    """Build or load the model named by `spec` (see the module docstring).

    `input_shape` (without the batch dimension) applies to `keras.applications` models only; their defaults
    (224×224×3, 299×299×3 for Inception) are used otherwise.
    """
    import keras

    if spec in BUILTIN_MODELS:
        return cnn14(seed)
    if spec.startswith(APPLICATIONS_PREFIX):
        name = spec[len(APPLICATIONS_PREFIX) :]
        builder = getattr(keras.applications, name, None)
        if builder is None or not callable(builder) or not name[:1].isupper():
            raise ModelSourceError(f"unknown model {spec!r}: keras.applications has no model named {name!r}")
        keras.utils.set_random_seed(seed)
        kwargs: dict[str, object] = {"weights": None}
        if input_shape is not None:
            kwargs["input_shape"] = tuple(int(d) for d in input_shape)
        return builder(**kwargs)
    path = Path(spec)
    if path.suffix == ".keras":
        if not path.is_file():
            raise ModelSourceError(f"model file {spec!r} does not exist")
        try:
            return keras.saving.load_model(path, safe_mode=True, compile=False)
        except Exception as exc:  # keras raises many types; the user needs the file name and the reason
            raise ModelSourceError(f"cannot load model file {spec!r}: {exc}") from exc
    raise ModelSourceError(
        f"unknown model {spec!r}: expected 'cnn14', 'keras.applications.<Name>' or a path to a .keras file"
    )
