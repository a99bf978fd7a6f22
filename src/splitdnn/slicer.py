"""Slicer: cut a model at layers L1 < L2 < … and export each slice as a TF SavedModel in TF Serving layout.

Slice k runs layers (L_{k-1}, L_k]. Its inputs are exactly the tensors crossing the cut before it (the model
inputs for slice 0) and its outputs exactly the tensors crossing the cut after it (the model outputs for the
last slice). A tensor that crosses both cuts but is not used inside the slice is passed through unchanged, so
each tier forwards its whole output dict to the next tier and nothing else: slice k's outputs are slice k+1's
inputs, by name.

Layout written by `export_slices(..., out_dir)`:
    out_dir/slices.json
    out_dir/slice0/1/saved_model.pb   (+ variables/)   signature `serving_default`, keys = tensor names
    out_dir/slice0/model.tflite       the same slice for LiteRT (float32), signature keys = tensor names
    out_dir/slice0/model_int8.tflite  (with --quantize int8; model_fp16.tflite with fp16)
    out_dir/slice1/1/saved_model.pb
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitdnn.graph import ModelGraph

MANIFEST = "slices.json"
VERSION = 1


class CutError(ValueError):
    """A split point that names no layer, or cuts that cannot be made."""


@dataclass(frozen=True)
class SliceSpec:
    name: str
    first: int  # first layer index (inclusive)
    last: int  # last layer index (inclusive)
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def passthrough(self) -> tuple[str, ...]:
        return tuple(n for n in self.outputs if n in self.inputs)


def resolve_cuts(graph: ModelGraph, split_points: Sequence[str]) -> list[int]:
    """Layer names → strictly increasing layer indices, with errors that name the problem."""
    names = [layer.name for layer in graph.layers]
    indices = []
    for point in split_points:
        point = point.strip()
        if point not in names:
            close = [n for n in names if point.lower() in n.lower()][:5]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise CutError(f"split point {point!r} is not a layer of model {graph.model_name!r}{hint}")
        index = names.index(point)
        if index == len(names) - 1:
            raise CutError(f"split point {point!r} is the last layer: a cut after it leaves an empty slice")
        indices.append(index)
    for a, b, pa, pb in zip(indices, indices[1:], split_points, split_points[1:]):
        if b <= a:
            raise CutError(
                f"split points must follow the layer order: {pb!r} (layer {b}) comes after {pa!r} (layer {a})"
            )
    return indices


def plan_slices(graph: ModelGraph, cuts: Sequence[int]) -> list[SliceSpec]:
    bounds = [-1, *cuts, len(graph.layers) - 1]
    slices = []
    for k, (before, last) in enumerate(zip(bounds, bounds[1:])):
        inputs = tuple(graph.crossing(before))
        outputs = tuple(graph.outputs) if k == len(bounds) - 2 else tuple(graph.crossing(last))
        slices.append(SliceSpec(f"slice{k}", before + 1, last, inputs, outputs))
    return slices


def submodel(model, graph: ModelGraph, first: int, last: int):
    """A Keras model computing layers first..last from the tensors they consume that were produced earlier.

    Returns (keras_model or None, input_names, output_names). Outputs are the tensors produced in the range that
    are still needed after `last`; None when the range computes nothing needed later (an InputLayer alone).
    """
    import keras

    kt = _keras_tensors(model, graph)
    wanted_out = [
        n
        for n in (graph.outputs if last == len(graph.layers) - 1 else graph.crossing(last))
        if first <= graph.tensors[n].producer <= last
    ]
    if not wanted_out:
        return None, [], []
    used = []
    for layer in graph.layers[first : last + 1]:
        for n in layer.inputs:
            if graph.tensors[n].producer < first and n not in used:
                used.append(n)
    sub = keras.Model([kt[n] for n in used], [kt[n] for n in wanted_out], name=f"{graph.model_name}_{first}_{last}")
    return sub, used, wanted_out


def _keras_tensors(model, graph: ModelGraph) -> dict:
    """Tensor name → KerasTensor in `model`, following build_graph's naming."""
    out = {name: t for name, t in zip(graph.inputs, model.inputs)}
    for layer, info in zip(model.layers, graph.layers):
        if info.cls == "InputLayer":
            continue
        outs = layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]
        for name, t in zip(info.outputs, outs):
            out[name] = t
    return out


class SliceFunction:
    """A plain callable {name: tensor} → {name: tensor} for one slice (Keras, no SavedModel round trip)."""

    def __init__(self, model, graph: ModelGraph, spec: SliceSpec):
        self.spec = spec
        self.keras_model, self._used, self._computed = submodel(model, graph, spec.first, spec.last)

    def __call__(self, feed: dict) -> dict:
        result: dict = {}
        if self.keras_model is not None:
            values = self.keras_model([feed[n] for n in self._used], training=False)
            values = values if isinstance(values, (list, tuple)) else [values]
            result.update(zip(self._computed, values))
        for n in self.spec.passthrough:
            result[n] = feed[n]
        return {n: result[n] for n in self.spec.outputs}


def slice_function(model, graph: ModelGraph, spec: SliceSpec) -> SliceFunction:
    return SliceFunction(model, graph, spec)


REPORT_REASON_CHARS = 300  # a pod's termination message holds 4 KiB in all


def conversion_report(manifest: dict) -> dict:
    """Which slices have a float32 `.tflite` and why the others do not: the slices.json keys `name`, `tflite`,
    `tflite_error` (reasons cut short), small enough for a pod's termination message."""
    slices = []
    for entry in manifest["slices"]:
        row = {"name": entry["name"]}
        if "tflite" in entry:
            row["tflite"] = entry["tflite"]
        elif "tflite_error" in entry:
            row["tflite_error"] = entry["tflite_error"][:REPORT_REASON_CHARS]
        slices.append(row)
    return {"slices": slices}


def export_slices(
    model,
    graph: ModelGraph,
    cuts: Sequence[int],
    out_dir: str | Path,
    progress: Callable[[str], None] | None = None,
    tflite: bool = True,
    quantize: str | None = None,
    calibration: str | None = None,
    frames: int = 100,
    keras: bool = False,
    only: set[str] | None = None,
) -> dict:
    """Write every slice (`only`: the slices of these names) as a SavedModel, (with `tflite`) as a checked
    `.tflite` (see `splitdnn.tflite`), (with `keras`) as a flat `.keras` chain of its layers for cooperative tiers
    (see `chain_keras_model`), and `slices.json`; returns the manifest."""
    import tensorflow as tf

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "model": graph.model_name,
        "cuts": [graph.layers[i].name for i in cuts],
        "slices": [],
    }
    every = plan_slices(graph, cuts)
    specs = [s for s in every if only is None or s.name in only]
    for spec in specs:
        run = slice_function(model, graph, spec)
        module = tf.Module()
        module.model = run.keras_model  # tracks the slice's variables
        signature = [tf.TensorSpec(graph.tensors[n].shape, graph.tensors[n].dtype, name=n) for n in spec.inputs]
        fn = tf.function(_serving_fn(run, spec.inputs), input_signature=signature)
        path = f"{spec.name}/{VERSION}"
        tf.saved_model.save(module, str(out_dir / path), signatures={"serving_default": fn.get_concrete_function()})
        manifest["slices"].append(
            {
                "name": spec.name,
                "path": path,
                "layers": [graph.layers[spec.first].name, graph.layers[spec.last].name],
                "inputs": [_tensor_json(graph, n) for n in spec.inputs],
                "outputs": [_tensor_json(graph, n) for n in spec.outputs],
            }
        )
        if progress:
            progress(f"{spec.name}: layers {spec.first}..{spec.last} → {out_dir / path}")
    if keras:
        for spec, entry in zip(specs, manifest["slices"]):
            try:
                chain_keras_model(model, graph, spec).save(out_dir / spec.name / "model.keras")
                entry["keras"] = f"{spec.name}/model.keras"
            except ValueError as exc:  # not a chain: the slice runs on one device only
                entry["keras_error"] = str(exc)
    if tflite:
        from splitdnn.tflite import export_tflite

        if quantize and only is not None:
            raise ValueError("quantization calibrates along the whole chain: export every slice")
        # (every slice: the check's probe frames run through the ones not exported too)
        export_tflite(model, graph, every, out_dir, manifest, quantize, calibration, frames, progress=progress)
    elif quantize:
        raise ValueError("quantization writes .tflite slices: it needs tflite=True")
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def chain_keras_model(model, graph: ModelGraph, spec: SliceSpec):
    """The slice as a flat `keras.Sequential` of the model's own layers (weights shared): what a cooperative tier
    (`splitdnn.coop`) splits block by block. Only for a slice that is a chain (one tensor in, one out, each layer
    taking the previous one's output); ValueError otherwise."""
    import keras

    from splitdnn.coop import chain_layers

    chain = {layer.name for layer in chain_layers(model)}  # raises for a model that is not a chain
    names = [graph.layers[i].name for i in range(spec.first, spec.last + 1)]
    layers = [model.get_layer(n) for n in names if n in chain]
    if len(spec.inputs) != 1 or len(spec.outputs) != 1 or not layers:
        raise ValueError(f"{spec.name}: a cooperative slice needs one input, one output and at least one layer")
    tensor = graph.tensors[spec.inputs[0]]
    return keras.Sequential([keras.Input(tensor.shape[1:], dtype=tensor.dtype), *layers], name=spec.name)


def _serving_fn(run: SliceFunction, names: Sequence[str]):
    """Positional signature arguments (TF needs them) → the slice's dict-in/dict-out callable."""
    import tensorflow as tf

    def serve(*args):
        return {n: tf.identity(v, name=n) for n, v in run(dict(zip(names, args))).items()}

    return serve


def _tensor_json(graph: ModelGraph, name: str) -> dict:
    t = graph.tensors[name]
    return {"name": name, "shape": list(t.shape), "dtype": t.dtype}


def frame_shape(graph: ModelGraph, name: str, batch: int = 1) -> tuple[int, ...]:
    """Shape of `batch` frames of tensor `name` (an unknown dimension other than the batch: 1)."""
    return (batch, *(d or 1 for d in graph.tensors[name].shape[1:]))


def load_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `splitdnn slice` first")
    return json.loads(path.read_text())


def reference_frame(model, graph: ModelGraph, seed: int = 0) -> tuple[dict, list]:
    """A seeded random frame for the model's inputs (name → array) and the full model's outputs on it, in
    `graph.outputs` order: what a chain of slices is checked against."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feed = {n: rng.random(frame_shape(graph, n)).astype(graph.tensors[n].dtype) for n in graph.inputs}
    expected = model(
        [feed[n] for n in graph.inputs] if len(graph.inputs) > 1 else feed[graph.inputs[0]], training=False
    )
    return feed, list(expected) if isinstance(expected, (list, tuple)) else [expected]


def verify_slices(model, graph: ModelGraph, directory: str | Path, seed: int = 0) -> float:
    """Chain the SavedModels in `directory` on a random frame; max abs difference to the full model's outputs."""
    import numpy as np
    import tensorflow as tf

    directory = Path(directory)
    feed, expected = reference_frame(model, graph, seed)
    values = dict(feed)
    for entry in load_manifest(directory)["slices"]:
        signature = tf.saved_model.load(str(directory / entry["path"])).signatures["serving_default"]
        values = {k: v.numpy() for k, v in signature(**{t["name"]: values[t["name"]] for t in entry["inputs"]}).items()}
    return max(float(np.abs(values[n] - np.asarray(e)).max()) for n, e in zip(graph.outputs, expected))


def verify_slice(model, graph: ModelGraph, directory: str | Path, entry: dict, seed: int = 0) -> float:
    """One exported slice's SavedModel against the Keras slice on a random frame of its own inputs (a slice
    exported alone, `export_slices(only=…)`, has no chain to compose); the max abs difference."""
    import numpy as np
    import tensorflow as tf

    first, last = (graph.layer_index(n) for n in entry["layers"])
    cuts = ([first - 1] if first > 0 else []) + ([last] if last < len(graph.layers) - 1 else [])
    spec = next(s for s in plan_slices(graph, cuts) if (s.first, s.last) == (first, last))
    rng = np.random.default_rng(seed)
    feed = {n: rng.random(frame_shape(graph, n)).astype(graph.tensors[n].dtype) for n in spec.inputs}
    want = slice_function(model, graph, spec)(feed)
    signature = tf.saved_model.load(str(Path(directory) / entry["path"])).signatures["serving_default"]
    got = {k: v.numpy() for k, v in signature(**feed).items()}
    return max((float(np.abs(got[n] - np.asarray(want[n])).max()) for n in spec.outputs), default=0.0)
