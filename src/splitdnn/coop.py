"""Cooperative execution of a block of layers on N devices (CoopAI, Yang et al.): geometry and execution.

A *block* is a run of consecutive layers that N devices compute in one round, without talking to each other: the
coordinator (the paper's gateway) scatters each device its input, every device computes its part of all the
block's layers, the coordinator gathers. How a block is cut up depends on its layers (the block's *mode*):

- ``stripes`` — convolutions, pooling and per-position layers (batch norm, activations) on (H, W, C) tensors,
  optionally ending with Flatten: the block's output rows are split evenly; each device receives the input rows its
  stripe needs through *all* the block's layers (the paper's data prefetching: the halo grows with every layer) and
  computes them with valid padding on a stripe that is zero-padded only where it touches the true image border.
- ``model`` — one Dense layer by output units: every device gets the whole input vector, computes its units.
- ``data``  — one Dense layer by input units: each device multiplies its input chunk by its rows of the kernel; the
  coordinator sums the partial outputs and adds the bias and activation.
- ``hybrid`` — two Dense layers (the paper's Fig. 7): the first by output units, the second by input units.
- ``split`` — only per-unit layers on a vector (Flatten, batch norm, activations): each device its chunk.
- ``coordinator`` — any other layer (GlobalAveragePooling, Reshape, …) runs on the coordinator alone.

The pure part (``Geom``, ``describe_layer``, ``block_modes``, ``plan_block``, ``owned``) needs no TensorFlow; the
execution part (``scatter``, ``compute_part``, ``gather``, ``run_block``, ``run_plan``) uses each Keras layer's own
weights through TensorFlow ops. ``compute_part`` sees only the device's input part, so a device never reads data
it was not sent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MODES = ("stripes", "split", "model", "data", "hybrid", "coordinator")
_ELTWISE_CLASSES = {
    "BatchNormalization",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "Dropout",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "Identity",
}
_MIXING_ACTIVATIONS = {"softmax", "log_softmax"}  # activations that mix the units of a vector


@dataclass(frozen=True)
class Geom:
    """One layer as the planner and the slicer see it (shapes for one frame, no batch dimension)."""

    name: str
    kind: str  # conv | pool | eltwise | flatten | dense | other
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)  # zero rows/columns added around the input: top, bottom, left, right
    pool: str = ""  # max | avg
    unitwise: bool = True  # acts on each unit of a vector alone (False for softmax): may run on a slice of units
    flops_per_row: float | None = None  # a convolution-like layer whose FLOPs are not its kernel's (a paper model)

    @property
    def flops(self) -> float:
        """FLOPs for one frame; like the paper, only convolutions and dense layers count (a multiply-add is 2)."""
        if self.kind == "conv":
            return self.row_flops * self.out_shape[0]
        if self.kind == "dense":
            return 2.0 * self.in_shape[0] * self.out_shape[0]
        return 0.0

    @property
    def row_flops(self) -> float:
        """FLOPs of one output row of a convolution."""
        if self.kind != "conv":
            return 0.0
        if self.flops_per_row is not None:
            return self.flops_per_row
        kh, kw = self.kernel
        return 2.0 * kh * kw * self.in_shape[2] * self.out_shape[1] * self.out_shape[2]


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's `same` padding along one axis: (before, after); the extra row goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def window_geom(
    name: str, kind: str, in_shape: Sequence[int], channels: int, kernel, stride, padding, pool: str = ""
) -> Geom:
    """A convolution or pooling layer from its parameters; `padding` is 'same', 'valid' or
    (top, bottom, left, right)."""
    h, w, c = in_shape
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if padding == "same":
        pad = same_pads(h, kh, sh) + same_pads(w, kw, sw)
    elif padding == "valid":
        pad = (0, 0, 0, 0)
    else:
        pad = tuple(padding)
    oh = (h + pad[0] + pad[1] - kh) // sh + 1
    ow = (w + pad[2] + pad[3] - kw) // sw + 1
    out_c = channels if kind == "conv" else c
    return Geom(name, kind, (h, w, c), (oh, ow, out_c), (kh, kw), (sh, sw), pad, pool)


class Chain:
    """A layer table built one layer at a time, each layer's input the previous output (models without weights:
    the paper's, and small instances for the planner's tests)."""

    def __init__(self, shape):
        self.shape, self.layers = tuple(shape), []

    def conv(self, filters, kernel, stride=1, padding="same"):
        return self.add(window_geom(f"conv{len(self.layers)}", "conv", self.shape, filters, kernel, stride, padding))

    def pool(self, size, stride, padding="valid"):
        return self.add(window_geom(f"pool{len(self.layers)}", "pool", self.shape, 0, size, stride, padding, "max"))

    def flatten(self):
        size = self.shape[0] * self.shape[1] * self.shape[2]
        return self.add(Geom(f"flatten{len(self.layers)}", "flatten", self.shape, (size,)))

    def eltwise(self, unitwise=True):
        return self.add(Geom(f"eltwise{len(self.layers)}", "eltwise", self.shape, self.shape, unitwise=unitwise))

    def dense(self, units, softmax=False):
        return self.add(Geom(f"fc{len(self.layers)}", "dense", self.shape, (units,), unitwise=not softmax))

    def add(self, g: Geom):
        self.layers.append(g)
        self.shape = g.out_shape
        return self


def _shape(tensor) -> tuple[int, ...]:
    return tuple(int(d) for d in tensor.shape[1:])


def _activation_name(fn) -> str:
    return getattr(fn, "__name__", str(fn))


def describe_layer(layer) -> Geom:
    """The `Geom` of a Keras layer; anything we cannot slice is kind `other` (it runs on the coordinator)."""
    cls = type(layer).__name__
    try:
        ins, outs = layer.input, layer.output
    except (AttributeError, ValueError):
        return Geom(layer.name, "other", (), ())
    if isinstance(ins, (list, tuple)) or isinstance(outs, (list, tuple)):
        return Geom(layer.name, "other", (), ())
    in_shape, out_shape = _shape(ins), _shape(outs)
    cfg = layer.get_config()
    four_d = len(in_shape) == 3 and len(out_shape) == 3
    channels_last = cfg.get("data_format", "channels_last") == "channels_last"
    if (
        cls == "Conv2D"
        and four_d
        and channels_last
        and tuple(cfg["dilation_rate"]) == (1, 1)
        and cfg.get("groups", 1) == 1
        and cfg["padding"] in ("same", "valid")
    ):
        g = window_geom(
            layer.name, "conv", in_shape, cfg["filters"], cfg["kernel_size"], cfg["strides"], cfg["padding"]
        )
    elif cls in ("MaxPooling2D", "AveragePooling2D") and four_d and channels_last:
        pool = "max" if cls.startswith("Max") else "avg"
        g = window_geom(layer.name, "pool", in_shape, 0, cfg["pool_size"], cfg["strides"], cfg["padding"], pool)
    elif (
        cls in _ELTWISE_CLASSES
        and in_shape == out_shape
        and (cls != "BatchNormalization" or cfg["axis"] in (-1, len(in_shape), [-1], [len(in_shape)]))
    ):
        unitwise = not (cls == "Activation" and _activation_name(layer.activation) in _MIXING_ACTIVATIONS)
        return Geom(layer.name, "eltwise", in_shape, out_shape, unitwise=unitwise)
    elif cls == "Flatten" and channels_last:
        return Geom(layer.name, "flatten", in_shape, out_shape)
    elif cls == "Dense" and len(in_shape) == 1:
        unitwise = _activation_name(layer.activation) not in _MIXING_ACTIVATIONS
        return Geom(layer.name, "dense", in_shape, out_shape, unitwise=unitwise)
    else:
        return Geom(layer.name, "other", in_shape, out_shape)
    if g.out_shape != out_shape:  # our geometry must agree with Keras, or we would compute something else
        return Geom(layer.name, "other", in_shape, out_shape)
    return g


def chain_layers(model) -> list:
    """The model's layers without InputLayers, checked to form a chain: each layer takes the previous one's output
    (and only that), the last one's output is the model's. Anything else (branches, skips) is refused."""
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    if type(model).__name__ == "Sequential":  # a chain by construction (a loaded one rebuilds its tensors)
        return layers
    expected = list(model.inputs)
    for layer in layers:
        ins = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        if len(ins) != 1 or len(expected) != 1 or ins[0] is not expected[0]:
            raise ValueError(
                f"model {model.name!r} is not a chain of layers: layer {layer.name!r} does not take "
                "exactly the previous layer's output"
            )
        expected = [layer.output]
    if len(model.outputs) != 1 or model.outputs[0] is not expected[0]:
        raise ValueError(f"model {model.name!r} is not a chain of layers: its output is not its last layer's")
    return layers


def describe(model) -> list[Geom]:
    """`Geom`s of a chain model's layers (see `chain_layers`), in order."""
    return [describe_layer(layer) for layer in chain_layers(model)]


# --- pure geometry: which block modes are feasible, who owns what, who needs what ---------------------------------


def _is_spatial(g: Geom) -> bool:
    return g.kind in ("conv", "pool", "eltwise") and len(g.in_shape) == 3 and len(g.out_shape) == 3


def block_modes(geoms: Sequence[Geom], first: int, last: int) -> list[str]:
    """The modes in which layers first..last (inclusive) can form one block; [] when they cannot."""
    layers = geoms[first : last + 1]
    if not layers:
        return []
    if any(g.kind == "other" for g in layers):
        return ["coordinator"] if len(layers) == 1 else []
    modes = _sliced_modes(layers)
    return modes if modes or len(layers) > 1 else ["coordinator"]  # a lone layer we cannot slice: coordinator


def _sliced_modes(layers: Sequence[Geom]) -> list[str]:
    body = list(layers)
    while body and body[-1].kind == "flatten":
        body.pop()
    if body and all(_is_spatial(g) for g in body):
        return ["stripes"]
    # vector blocks: Flatten only at the start, then per-unit layers and at most two Dense layers
    rest = list(layers)
    while rest and rest[0].kind == "flatten":
        rest.pop(0)
    if any(g.kind == "flatten" or len(g.in_shape) != 1 for g in rest):
        return []
    dense = [k for k, g in enumerate(rest) if g.kind == "dense"]
    pre = rest[: dense[0]] if dense else rest
    if not dense:
        return ["split"] if all(g.unitwise for g in pre) else []
    if len(dense) == 1:
        modes = ["model"]
        if all(g.unitwise for g in pre):
            modes.append("data")
        return modes
    if len(dense) == 2:
        d1, d2 = dense
        return ["hybrid"] if all(g.unitwise for g in rest[d1:d2]) else []
    return []


def even_split(size: int, n: int) -> list[tuple[int, int]]:
    return [((d * size) // n, ((d + 1) * size) // n) for d in range(n)]


def _values_per_row(shape: Sequence[int]) -> int:
    return int(math.prod(shape[1:])) if len(shape) == 3 else 1


def owned(geoms: Sequence[Geom], index: int, n: int) -> list[tuple[int, int]]:
    """Flat value ranges of layer `index`'s output (index -1: the model input) that device d holds after a block
    that leaves its output distributed: (H, W, C) tensors by even row stripes, vectors by even unit chunks; layers
    that keep the flat order (Flatten, per-unit layers) keep their input's ranges. The data-parallel chunks of
    `split` and `data` blocks are these ranges too, so a device already holds the chunk it computes."""
    if index < 0:
        shape = geoms[0].in_shape
    else:
        g = geoms[index]
        if g.kind in ("flatten", "eltwise") and len(g.in_shape) in (1, 3):
            return owned(geoms, index - 1, n)
        shape = g.out_shape
    if len(shape) == 3:
        per_row = _values_per_row(shape)
        return [(a * per_row, b * per_row) for a, b in even_split(shape[0], n)]
    return even_split(int(math.prod(shape)), n)


@dataclass(frozen=True)
class StripeTask:
    """One device's part of a `stripes` block."""

    rows: tuple[int, int]  # rows of the block input it receives (real rows: halo included, padding not)
    pads: tuple[tuple[int, int], ...]  # per spatial layer: zero rows added above and below (only at true borders)
    layer_rows: tuple[tuple[int, int], ...]  # per spatial layer: the output rows it computes
    out_rows: tuple[int, int]  # its stripe of the block's output


@dataclass(frozen=True)
class UnitTask:
    """One device's part of a vector block."""

    inputs: tuple[int, int]  # flat input values it receives
    units: tuple[int, int]  # output units of the first Dense (model, hybrid) or its chunk (data, split)


@dataclass(frozen=True)
class BlockPlan:
    first: int
    last: int
    devices: int
    mode: str
    tasks: tuple[Any, ...]  # StripeTask | UnitTask | None (an idle device) per device
    distributed_output: bool  # True: devices keep their output parts (`owned`); False: it ends at the coordinator

    @property
    def layers(self) -> range:
        return range(self.first, self.last + 1)


def stripe_task(block: Sequence[Geom], out_rows: tuple[int, int]) -> StripeTask | None:
    """Walk a stripe of the block's output back through its layers: the input rows it needs (halo included) and,
    per layer, the zero rows that stand in for `same` padding where the stripe meets the image border."""
    lo, hi = out_rows
    if hi <= lo:
        return None
    pads, layer_rows = [], []
    for g in reversed([g for g in block if g.kind != "flatten"]):
        layer_rows.append((lo, hi))
        if g.kind in ("conv", "pool"):
            (kh, _), (sh, _), top = g.kernel, g.stride, g.pad[0]
            vlo, vhi = lo * sh - top, (hi - 1) * sh - top + kh
            height = g.in_shape[0]
            pads.append((max(0, -vlo), max(0, vhi - height)))
            lo, hi = max(vlo, 0), min(vhi, height)
        else:
            pads.append((0, 0))
    return StripeTask((lo, hi), tuple(reversed(pads)), tuple(reversed(layer_rows)), out_rows)


def _dense_parts(block: Sequence[Geom]):
    """(pre, dense1, mid, dense2, post) of a vector block; dense1/dense2 are None when absent."""
    rest = [g for g in block if g.kind != "flatten"]
    idx = [k for k, g in enumerate(rest) if g.kind == "dense"]
    if not idx:
        return rest, None, [], None, []
    if len(idx) == 1:
        return rest[: idx[0]], rest[idx[0]], [], None, rest[idx[0] + 1 :]
    a, b = idx
    return rest[:a], rest[a], rest[a + 1 : b], rest[b], rest[b + 1 :]


def plan_block(geoms: Sequence[Geom], first: int, last: int, n: int, mode: str) -> BlockPlan:
    """Each of the n devices' part of block first..last in `mode` (one of `block_modes`)."""
    if mode not in block_modes(geoms, first, last):
        raise ValueError(f"layers {first}..{last} cannot form a {mode!r} block")
    if n < 1:
        raise ValueError("a block needs at least one device")
    block = geoms[first : last + 1]
    in_size = int(math.prod(geoms[first].in_shape))
    tasks: list[Any]
    if mode == "coordinator":
        return BlockPlan(first, last, n, mode, (None,) * n, False)
    if mode == "stripes":
        out_h = [g for g in block if g.kind != "flatten"][-1].out_shape[0]
        tasks = [stripe_task(block, rows) for rows in even_split(out_h, n)]
        return BlockPlan(first, last, n, mode, tuple(tasks), True)
    chunks = owned(geoms, first - 1, n)
    _, d1, _, _, post = _dense_parts(block)
    if mode in ("split", "data"):
        tasks = [UnitTask(c, c) if c[1] > c[0] else None for c in chunks]
        return BlockPlan(first, last, n, mode, tuple(tasks), mode == "split")
    assert d1 is not None
    units = even_split(d1.out_shape[0], n)
    tasks = [UnitTask((0, in_size), u) if u[1] > u[0] else None for u in units]
    distributed = mode == "model" and d1.unitwise and all(g.unitwise for g in post)
    return BlockPlan(first, last, n, mode, tuple(tasks), distributed)


def needed_ranges(geoms: Sequence[Geom], plan: BlockPlan) -> list[tuple[int, int]]:
    """Flat ranges of the block input each device needs ((0, 0): nothing, an idle device or the coordinator)."""
    in_shape = geoms[plan.first].in_shape
    per_row = _values_per_row(in_shape)
    out: list[tuple[int, int]] = []
    for task in plan.tasks:
        if isinstance(task, StripeTask):
            out.append((task.rows[0] * per_row, task.rows[1] * per_row))
        elif isinstance(task, UnitTask):
            out.append(task.inputs)
        else:
            out.append((0, 0))
    return out


# --- execution with TensorFlow ------------------------------------------------------------------------------------


def _tf():
    import tensorflow as tf

    return tf


def scatter(plan: BlockPlan, x) -> list[Any]:
    """What the coordinator sends each device: its input rows (stripes) or its flat input values; None if idle."""
    import numpy as np

    x = np.asarray(x)
    parts: list[Any] = []
    if plan.mode == "coordinator":
        return [None] * plan.devices
    flat = x.reshape(x.shape[0], -1)
    for task in plan.tasks:
        if task is None:
            parts.append(None)
        elif isinstance(task, StripeTask):
            parts.append(x[:, task.rows[0] : task.rows[1]])
        else:
            parts.append(flat[:, task.inputs[0] : task.inputs[1]])
    return parts


def _pad_rows(x, top: int, bottom: int, left: int, right: int, value: float = 0.0):
    tf = _tf()
    if top == bottom == left == right == 0:
        return x
    return tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=value)


def _window_layer(layer, g: Geom, x, top: int, bottom: int):
    """Layer `layer` on a stripe: explicit padding (rows only at true borders, columns as the layer does),
    then valid."""
    tf = _tf()
    left, right = g.pad[2], g.pad[3]
    strides = [1, g.stride[0], g.stride[1], 1]
    if g.kind == "conv":
        y = tf.nn.conv2d(_pad_rows(x, top, bottom, left, right), layer.kernel, strides, "VALID")
        if layer.bias is not None:
            y = tf.nn.bias_add(y, layer.bias)
        return layer.activation(y)
    ksize = [1, g.kernel[0], g.kernel[1], 1]
    if g.pool == "max":
        return tf.nn.max_pool2d(_pad_rows(x, top, bottom, left, right, float("-inf")), ksize, strides, "VALID")
    if top == bottom == left == right == 0:
        return tf.nn.avg_pool2d(x, ksize, strides, "VALID")
    # `same` average pooling divides by the number of real values under the window, not the window size
    total = tf.nn.avg_pool2d(_pad_rows(x, top, bottom, left, right), ksize, strides, "VALID")
    ones = _pad_rows(tf.ones_like(x[..., :1]), top, bottom, left, right)
    count = tf.nn.avg_pool2d(ones, ksize, strides, "VALID")
    return total / count


def _unit_layer(layer, x, units: tuple[int, int] | None):
    """A per-unit layer on units[0]:units[1] of a vector (None: the whole vector)."""
    if units is None or type(layer).__name__ != "BatchNormalization":
        return layer(x, training=False)
    tf = _tf()
    lo, hi = units
    inv = tf.math.rsqrt(layer.moving_variance[lo:hi] + layer.epsilon)
    if layer.scale:
        inv = inv * layer.gamma[lo:hi]
    shift = -layer.moving_mean[lo:hi] * inv
    if layer.center:
        shift = shift + layer.beta[lo:hi]
    return x * inv + shift


def compute_part(layers: Sequence[Any], geoms: Sequence[Geom], plan: BlockPlan, device: int, part):
    """Device `device`'s work on its input part (what `scatter` sent it), with the real layers' weights.
    `layers[i]` is the Keras layer of `geoms[i]`. Returns a numpy array (None for an idle device)."""
    import numpy as np

    task = plan.tasks[device]
    if task is None or part is None:
        return None
    tf = _tf()
    x = tf.convert_to_tensor(part)
    block = [(layers[i], geoms[i]) for i in plan.layers]
    if isinstance(task, StripeTask):
        spatial = [(layer, g) for layer, g in block if g.kind != "flatten"]
        for (layer, g), (top, bottom) in zip(spatial, task.pads):
            x = _window_layer(layer, g, x, top, bottom) if g.kind in ("conv", "pool") else layer(x, training=False)
        if len(spatial) < len(block):
            x = tf.reshape(x, (x.shape[0], -1))
        return np.asarray(x)
    pre, d1, mid, d2, post = _dense_parts([g for _, g in block])
    by_name = {g.name: layer for layer, g in block}
    if plan.mode == "split":
        for g in pre:
            x = _unit_layer(by_name[g.name], x, task.units)
        return np.asarray(x)
    if plan.mode == "data":
        for g in pre:
            x = _unit_layer(by_name[g.name], x, task.units)
        lo, hi = task.units
        return np.asarray(tf.matmul(x, by_name[d1.name].kernel[lo:hi, :]))
    for g in pre:  # model and hybrid modes: the whole input vector
        x = _unit_layer(by_name[g.name], x, None)
    dense1 = by_name[d1.name]
    lo, hi = task.units
    z = tf.matmul(x, dense1.kernel[:, lo:hi])
    if dense1.bias is not None:
        z = z + dense1.bias[lo:hi]
    if plan.mode == "model" and not plan.distributed_output:
        return np.asarray(z)  # a unit-mixing activation: the coordinator finishes the layer
    z = dense1.activation(z)
    if plan.mode == "model":
        for g in post:
            z = _unit_layer(by_name[g.name], z, task.units)
        return np.asarray(z)
    for g in mid:
        z = _unit_layer(by_name[g.name], z, task.units)
    return np.asarray(tf.matmul(z, by_name[d2.name].kernel[lo:hi, :]))


def gather(layers: Sequence[Any], geoms: Sequence[Geom], plan: BlockPlan, parts: Sequence[Any], x=None):
    """The coordinator's side: join the devices' results into the block output (`x`: the block input, needed only
    by a `coordinator` block)."""
    import numpy as np

    tf = _tf()
    if plan.mode == "coordinator":
        return np.asarray(layers[plan.first](tf.convert_to_tensor(x), training=False))
    done = [p for p in parts if p is not None]
    if plan.mode in ("stripes", "split") or (plan.mode == "model" and plan.distributed_output):
        return np.concatenate(done, axis=1)
    block = [geoms[i] for i in plan.layers]
    by_name = {geoms[i].name: layers[i] for i in plan.layers}
    _, d1, _, d2, post = _dense_parts(block)
    if plan.mode == "model":  # logits by units, then the unit-mixing activation and what follows, here
        y, last = tf.convert_to_tensor(np.concatenate(done, axis=1)), by_name[d1.name]
    else:  # data and hybrid: partial sums of the last Dense layer's pre-activation
        last = by_name[(d2 or d1).name]
        y = tf.add_n([tf.convert_to_tensor(p) for p in done])
        if last.bias is not None:
            y = y + last.bias
    y = last.activation(y)
    for g in post:
        y = by_name[g.name](y, training=False)
    return np.asarray(y)


def run_block(layers: Sequence[Any], geoms: Sequence[Geom], plan: BlockPlan, x):
    """Scatter, compute every device's part, gather: the block's output as the unsplit layers would give it."""
    parts = scatter(plan, x)
    results = [compute_part(layers, geoms, plan, d, p) for d, p in enumerate(parts)]
    return gather(layers, geoms, plan, results, x)


def run_plan(model, blocks: Sequence[tuple[int, int, int, str]], x, geoms: Sequence[Geom] | None = None):
    """A whole model as consecutive cooperative blocks [(first, last, devices, mode)] covering every layer."""
    geoms = list(geoms) if geoms is not None else describe(model)
    layers = chain_layers(model)
    expected = 0
    for first, last, n, mode in blocks:
        if first != expected:
            raise ValueError(f"blocks must cover the layers in order: expected a block at layer {expected}")
        x = run_block(layers, geoms, plan_block(geoms, first, last, n, mode), x)
        expected = last + 1
    if expected != len(layers):
        raise ValueError(f"blocks end at layer {expected - 1}, the model has {len(layers)} layers")
    return x
