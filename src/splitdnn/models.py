"""Model sources: the built-in CNN14 of Cho 2021, `.keras` files, and `keras.applications` models.

A model *spec* is one string, the same in the CLI and the CRD:
- `cnn14`                      the 14-layer CNN of Cho 2021, Table 1 (random weights, seeded);
- `keras.applications.<Name>`  e.g. `keras.applications.ResNet50`, built with `weights=None`;
- a `.keras` file by storageUri: `https://…`, `http://…`, `s3://BUCKET/KEY`, `pvc://CLAIM/PATH` or a path,
  fetched by `splitdnn.storage` (size limit, optional sha256 pin, cache) and loaded with `safe_mode=True`
  (Lambda layers are code; we never run untrusted code).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from splitdnn import storage

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BUILTIN_MODELS = ("cnn14",)
APPLICATIONS_PREFIX = "keras.applications."
DEFAULT_SEED = 1234


class ModelSourceError(ValueError):
    """The model spec names nothing we can build or load. `reason`: a CamelCase word for a Kubernetes condition
    (storage.StorageError's reasons, NotKerasArchive, UnsafeModel, InvalidModel)."""

    def __init__(self, message: str, reason: str = "InvalidModel"):
        super().__init__(message)
        self.reason = reason


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


def load_model(
    spec: str,
    input_shape: Sequence[int] | None = None,
    seed: int = DEFAULT_SEED,
    *,
    sha256: str | None = None,
    max_bytes: int | None = None,
    say: Callable[[str], None] | None = None,
):
    """Build or load the model named by `spec` (see the module docstring).

    `input_shape` (without the batch dimension) applies to `keras.applications` models only; their defaults
    (224×224×3, 299×299×3 for Inception) are used otherwise. `sha256`, `max_bytes` apply to files
    (`splitdnn.storage.fetch`); `say` gets progress lines of a download.
    """
    return load_source(spec, input_shape, seed, sha256=sha256, max_bytes=max_bytes, say=say)[0]


def load_source(
    spec: str,
    input_shape: Sequence[int] | None = None,
    seed: int = DEFAULT_SEED,
    *,
    sha256: str | None = None,
    max_bytes: int | None = None,
    say: Callable[[str], None] | None = None,
) -> tuple[Any, storage.Fetched | None]:
    """`load_model`, and the model file it loaded (path, sha256, size) for a file or storageUri (None for a
    builtin or keras.applications model: code, not a file)."""
    import keras

    if spec in BUILTIN_MODELS:
        return cnn14(seed), None
    if spec.startswith(APPLICATIONS_PREFIX):
        name = spec[len(APPLICATIONS_PREFIX) :]
        builder = getattr(keras.applications, name, None)
        if builder is None or not callable(builder) or not name[:1].isupper():
            raise ModelSourceError(f"unknown model {spec!r}: keras.applications has no model named {name!r}")
        keras.utils.set_random_seed(seed)
        kwargs: dict[str, object] = {"weights": None}
        if input_shape is not None:
            kwargs["input_shape"] = tuple(int(d) for d in input_shape)
        return builder(**kwargs), None
    if storage.is_uri(spec) or spec.endswith(".keras"):
        fetched = fetch_model(spec, sha256=sha256, max_bytes=max_bytes, say=say)
        return load_keras_file(fetched.path, spec), fetched
    raise ModelSourceError(
        f"unknown model {spec!r}: expected 'cnn14', 'keras.applications.<Name>', a path to a .keras file, "
        "or a storageUri (https://, http://, s3://BUCKET/KEY, pvc://CLAIM/PATH)"
    )


def fetch_model(
    source: str, sha256: str | None = None, max_bytes: int | None = None, say: Callable[[str], None] | None = None
) -> storage.Fetched:
    """The model file of a storageUri or path on this machine (downloaded into the cache if remote)."""
    loc = storage.parse(source) if storage.is_uri(source) else None
    if (loc is None or loc.scheme in ("file", "pvc")) and not source.endswith(".keras"):
        raise ModelSourceError(f"model file {source!r}: expected a .keras file", "InvalidURI")

    def progress(done: int, total: int | None) -> None:
        if say is not None:
            of = f" of {total / 1e6:.1f}" if total else ""
            say(f"fetching {source}: {done / 1e6:.1f}{of} MB")

    try:
        return storage.fetch(
            source,
            sha256=sha256,
            max_bytes=storage.DEFAULT_MAX_BYTES if max_bytes is None else max_bytes,
            progress=progress,
        )
    except storage.StorageError as exc:
        raise ModelSourceError(str(exc), exc.reason) from exc


def load_keras_file(path: Path, label: str):
    """A `.keras` archive, loaded with `safe_mode=True`; anything else gets one line that says what it is."""
    import keras

    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(8)
        what = (
            "an HDF5 (.h5) file: re-save it as .keras"
            if head.startswith(b"\x89HDF")
            else ("text or HTML (an error page?)" if head.lstrip()[:1] in (b"<", b"{") else f"starts with {head!r}")
        )
        raise ModelSourceError(f"model {label!r} is not a .keras archive (a zip file): {what}", "NotKerasArchive")
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # keras raises many types; the user needs the file name and the reason
        text = str(exc)
        if "Lambda" in text and "safe_mode" in text:
            raise ModelSourceError(
                f"model {label!r} has a Lambda layer (Python code): refused, .keras files are loaded with "
                "safe_mode=True",
                "UnsafeModel",
            ) from exc
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
        raise ModelSourceError(f"cannot load model {label!r}: {first[:300]}") from exc
    return functional(model) if isinstance(model, keras.Sequential) else model


def functional(model):
    """A Sequential model loaded from a file as a functional model of the same layers and weights: a loaded
    Sequential rebuilds its graph on first use, so its layers' inputs are not its previous layers' outputs and the
    graph cannot be followed (`build_graph` said "consumes a tensor produced outside the model's layer order")."""
    import keras

    first = model.inputs[0]
    inputs = keras.Input(shape=tuple(first.shape[1:]), dtype=first.dtype, name=getattr(first, "name", None))
    x = inputs
    for layer in model.layers:
        clone = layer.__class__.from_config(layer.get_config())
        x = clone(x)
        clone.set_weights(layer.get_weights())
    return keras.Model(inputs, x, name=model.name)
