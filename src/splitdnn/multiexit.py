"""A small multi-exit Keras model trained in code on procedurally generated images (no download), so that its
exits' confidences mean something: the model part of issue #19 item 4 (early exits, ADDNN's p_l).

- ``shapes(n, seed)``: 32x32 RGB images of six shape classes (disk, square, triangle, horizontal bars, vertical
  bars, cross) at random positions, sizes and colours, with per-image noise from faint to heavy, so some images are
  easy (an early exit is sure) and some are not.
- ``build()``: three blocks with an exit head after the first two and the final classifier after the third;
  outputs ``[exit0, exit1, final]`` (softmax each). ``segments()`` gives the same layers as separate callables
  (block k, head k) for timing each part alone.
- ``exit_table(probs, labels, thresholds, seconds)``: for each confidence threshold, a frame leaves at the first
  exit whose top probability is >= the threshold (the final classifier always answers): accuracy, the share
  leaving at each exit, the probability of reaching each block (ADDNN's p_l) and the expected latency from the
  measured per-part times.

Nothing here touches the agent or the operator; ``benchmarks/bench_multiexit.py`` trains the model and prints the
table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLASSES = ("disk", "square", "triangle", "hbars", "vbars", "cross")
SIZE = 32
EXITS = ("exit0", "exit1", "final")
DEFAULT_SEED = 1234


def shapes(n: int, seed: int = 0, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """n images (float32 in [0, 1], shape (n, size, size, 3)) and their labels (int64), classes balanced."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    images = np.empty((n, size, size, 3), dtype=np.float32)
    for k, c in enumerate(labels):
        cx, cy = rng.uniform(size * 0.3, size * 0.7, 2)
        r = rng.uniform(size * 0.15, size * 0.32)
        dx, dy = xx - cx, yy - cy
        if c == 0:
            mask = dx**2 + dy**2 <= r**2
        elif c == 1:
            mask = (np.abs(dx) <= r * 0.8) & (np.abs(dy) <= r * 0.8)
        elif c == 2:
            mask = (dy <= r * 0.7) & (dy >= -r * 0.9 + 1.8 * np.abs(dx))
        elif c == 3:
            period = rng.uniform(4, 7)
            mask = (np.abs(dx) <= r) & (np.abs(dy) <= r) & ((yy // (period / 2)) % 2 == 0)
        elif c == 4:
            period = rng.uniform(4, 7)
            mask = (np.abs(dx) <= r) & (np.abs(dy) <= r) & ((xx // (period / 2)) % 2 == 0)
        else:
            w = r * 0.3
            mask = ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
        background = rng.uniform(0.0, 0.5, 3).astype(np.float32)
        foreground = rng.uniform(0.4, 1.0, 3).astype(np.float32)
        img = np.where(mask[..., None], foreground, background)
        noise = rng.uniform(0.02, 0.45)  # from clean to hard: the exits see a spread of confidences
        img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
        images[k] = np.clip(img, 0.0, 1.0)
    return images, labels.astype(np.int64)


def _layers(num_classes: int):
    """Block k is the backbone up to exit k; head k a small conv classifier on block k's output. Most compute is in
    block2, so an early answer saves most of it."""
    import keras

    L = keras.layers
    relu = {"padding": "same", "activation": "relu"}
    return {
        "block0": [L.Conv2D(32, 3, **relu, name="b0_conv"), L.MaxPooling2D(2, name="b0_pool")],  # 16x16x32
        "head0": [
            L.Conv2D(16, 3, **relu, name="e0_conv"),
            L.MaxPooling2D(2, name="e0_pool"),
            L.Flatten(name="e0_flat"),
            L.Dense(num_classes, activation="softmax", name="exit0"),
        ],
        "block1": [L.Conv2D(64, 3, **relu, name="b1_conv"), L.MaxPooling2D(2, name="b1_pool")],  # 8x8x64
        "head1": [
            L.Conv2D(32, 3, **relu, name="e1_conv"),
            L.MaxPooling2D(2, name="e1_pool"),
            L.Flatten(name="e1_flat"),
            L.Dense(num_classes, activation="softmax", name="exit1"),
        ],
        "block2": [
            L.Conv2D(128, 3, **relu, name="b2_conv"),
            L.Conv2D(128, 3, **relu, name="b2_conv2"),
            L.MaxPooling2D(2, name="b2_pool"),
            L.GlobalAveragePooling2D(name="b2_gap"),
            L.Dense(64, activation="relu", name="b2_dense"),
            L.Dense(num_classes, activation="softmax", name="final"),
        ],
    }


def _apply(layers, x):
    for layer in layers:
        x = layer(x)
    return x


@dataclass
class MultiExit:
    model: Any  # keras.Model: image -> [exit0, exit1, final]
    parts: dict  # name -> keras.Model for block0, head0, block1, head1, block2 (shared weights)


def build(num_classes: int = len(CLASSES), seed: int = DEFAULT_SEED) -> MultiExit:
    import keras

    keras.utils.set_random_seed(seed)
    lay = _layers(num_classes)
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    f0 = _apply(lay["block0"], inp)
    f1 = _apply(lay["block1"], f0)
    outputs = [_apply(lay["head0"], f0), _apply(lay["head1"], f1), _apply(lay["block2"], f1)]
    model = keras.Model(inp, outputs, name="multiexit_shapes")
    parts = {}
    for name, src in (("block0", inp), ("head0", f0), ("block1", f0), ("head1", f1), ("block2", f1)):
        x = keras.Input(tuple(src.shape[1:]), name=f"{name}_in")
        parts[name] = keras.Model(x, _apply(lay[name], x), name=name)
    return MultiExit(model, parts)


def train(me: MultiExit, x: np.ndarray, y: np.ndarray, epochs: int = 6, batch_size: int = 64, verbose: int = 0):
    """All exits trained jointly (equal loss weights), Adam."""
    import keras

    me.model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=["sparse_categorical_crossentropy"] * 3,
        metrics=[["accuracy"]] * 3,
    )
    return me.model.fit(x, [y, y, y], epochs=epochs, batch_size=batch_size, verbose=verbose, shuffle=True)


def probabilities(me: MultiExit, x: np.ndarray) -> list[np.ndarray]:
    """Softmax of each exit, [exit0, exit1, final], each (n, classes)."""
    return [np.asarray(p) for p in me.model.predict(x, batch_size=256, verbose=0)]


def time_parts(me: MultiExit, repeats: int = 20, batch: int = 32) -> dict[str, float]:
    """Seconds of compute per frame in each part alone: the fastest of `repeats` compiled calls on `batch` frames
    (the least disturbed by other load), divided by `batch` (so the fixed cost of a call, paid once per tier hop
    whatever the split, is left out)."""
    import time

    import tensorflow as tf

    out = {}
    for name, part in me.parts.items():
        shape = tuple(part.inputs[0].shape[1:])
        fn = tf.function(part, reduce_retracing=True)
        frames = tf.constant(np.random.default_rng(0).random((batch, *shape), dtype=np.float32))
        for _ in range(3):
            fn(frames)
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.asarray(fn(frames))
            samples.append(time.perf_counter() - t0)
        out[name] = float(np.min(samples)) / batch
    return out


def exit_costs(seconds: dict[str, float]) -> list[float]:
    """Seconds until a frame's answer at exit 0, 1, final: the blocks before it plus every head checked on the way."""
    at0 = seconds["block0"] + seconds["head0"]
    at1 = at0 + seconds["block1"] + seconds["head1"]
    return [at0, at1, at1 + seconds["block2"]]


def exit_table(probs: list[np.ndarray], labels: np.ndarray, thresholds, seconds: dict[str, float]) -> list[dict]:
    """Per threshold: accuracy, share leaving at each exit, p of reaching each block, expected latency."""
    costs = exit_costs(seconds)
    conf = np.stack([p.max(1) for p in probs])  # (exits, n)
    pred = np.stack([p.argmax(1) for p in probs])
    n = len(labels)
    rows = []
    for tau in thresholds:
        leave = np.full(n, len(probs) - 1)
        for k in range(len(probs) - 2, -1, -1):  # the first sure exit wins
            leave = np.where(conf[k] >= tau, k, leave)
        answer = pred[leave, np.arange(n)]
        share = [float(np.mean(leave == k)) for k in range(len(probs))]
        reach = [1.0, 1.0 - share[0], share[2]]  # p of running block0, block1, block2: ADDNN's p_l
        rows.append(
            {
                "threshold": float(tau),
                "accuracy": float(np.mean(answer == labels)),
                "exit_share": share,
                "p_block": reach,
                "latency_s": float(sum(s * c for s, c in zip(share, costs))),
            }
        )
    return rows
