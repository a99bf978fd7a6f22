"""Slices as `.tflite` for LiteRT: conversion of each slice's Keras sub-model, numeric checks, quantization.

A slice is converted from a Keras model built around its sub-model — inputs named by the slice's input tensors,
outputs a dict keyed by its output tensors (pass-through tensors included) — so the `.tflite`'s `serving_default`
signature carries exactly the tensor names of `slices.json`. Converting the exported SavedModel instead
(`from_saved_model`, or `from_concrete_functions` of the serving function) lost the variables here: a 14 KB CNN14
slice whose outputs were far from the SavedModel's. So every converted slice is also checked numerically against
its Keras sub-model (`FLOAT_TOL` absolute, `REL_TOL` of the outputs' scale); one that does not convert (a Flex
op, say) or does not match is recorded with the reason and keeps only its SavedModel.

Quantized variants (`fp16`: float16 weights; `int8`: int8 weights and activations calibrated on frames, float32
inputs and outputs so the wire format is unchanged) are written next to the float one and compared, chained, with
the float model on held-out frames: max abs diff and top-1 agreement.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from splitdnn.graph import ModelGraph

FLOAT_TOL = 1e-4
REL_TOL = 1e-3  # of the largest |output|; float32 kernels that differ in summation order stay near 1e-6
QUANTIZE_MODES = ("fp16", "int8")

if TYPE_CHECKING:
    from splitdnn.agent.runtime import TensorSpec


@dataclass
class Converted:
    """One slice's float32 conversion: the flatbuffer, or why there is none; the numeric check's result."""

    content: bytes | None
    error: str | None = None
    max_abs_diff: float | None = None


def slice_keras_model(model, graph: ModelGraph, spec):
    """A Keras model for one slice: inputs named `spec.inputs` (in order), outputs {name: tensor} for `spec.outputs`."""
    import keras

    from splitdnn.slicer import submodel

    inputs = {n: keras.Input(graph.tensors[n].shape[1:], dtype=graph.tensors[n].dtype, name=n) for n in spec.inputs}
    sub, used, computed = submodel(model, graph, spec.first, spec.last)
    values = dict(inputs)  # pass-through tensors are the inputs themselves
    if sub is not None:
        out = sub([inputs[n] for n in used])
        values.update(zip(computed, out if isinstance(out, (list, tuple)) else [out]))
    return keras.Model([inputs[n] for n in spec.inputs], {n: values[n] for n in spec.outputs}, name=spec.name)


def convert(keras_model, quantize: str | None = None, representative: Callable[[], Iterator[dict]] | None = None):
    """Keras model → `.tflite` bytes (TFLite builtin ops only: a model needing Flex ops raises)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    if quantize == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if representative is None:
            raise ValueError("int8 quantization needs a representative dataset")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
    elif quantize is not None:
        raise ValueError(f"unknown quantization {quantize!r} (one of {', '.join(QUANTIZE_MODES)})")
    with _quiet_native_logs():
        return converter.convert()


def convert_and_check(keras_model, inputs: Sequence[dict], outputs: Sequence[dict], probe: dict) -> Converted:
    """Convert to float32 `.tflite` and compare its outputs with the Keras model's on `probe`, name by name."""
    try:
        content = convert(keras_model)
    except Exception as exc:  # the converter raises ConverterError, ValueError, … with the op that failed
        return Converted(None, error=f"does not convert to TFLite builtin ops: {_first_line(exc)}")
    try:
        got = run_tflite(content, inputs, outputs, probe)
    except Exception as exc:
        return Converted(None, error=f"converted .tflite does not run in LiteRT: {_first_line(exc)}")
    expected = keras_model(_ordered(probe, inputs), training=False)
    diff, relative = 0.0, 0.0
    for t in outputs:
        want = np.asarray(expected[t["name"]])
        err = float(np.abs(got[t["name"]] - want).max())
        scale = float(np.abs(want).max())
        diff = max(diff, err)
        relative = max(relative, err / scale if scale > 0 else 0.0)
    if not diff <= FLOAT_TOL:  # also catches nan
        return Converted(None, error=f"converted .tflite differs from the Keras slice by {diff:.2e} > {FLOAT_TOL}")
    # activations can be tiny (untrained deep models): an absolute bound alone would pass anything there
    if not relative <= REL_TOL:
        return Converted(None, error=f"converted .tflite differs from the Keras slice by {relative:.1e} relative")
    return Converted(content, max_abs_diff=diff)


def run_tflite(content: bytes, inputs: Sequence[dict], outputs: Sequence[dict], feed: dict) -> dict:
    """Run a `.tflite` flatbuffer once through the LiteRT runtime (via a temporary file, as the agent loads it)."""
    from splitdnn.agent.litert_runtime import LiteRTSlice

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(content)
        return LiteRTSlice(path, inputs, outputs).compute(feed)


def representative_dataset(feeds: Sequence[dict], names: Sequence[str]) -> Callable[[], Iterator[dict]]:
    """Calibration samples for one slice: one dict {input name: (1, …) array} per frame."""

    def generate():
        for feed in feeds:
            yield {n: feed[n] for n in names}

    return generate


def calibration_frames(inputs: Sequence[TensorSpec], n: int, source: str | None = None, start: int = 0) -> list[dict]:
    """`n` frames for the model's inputs: images of `source` (a directory, as the agent's image source reads them)
    or seeded synthetic frames; frame indices start at `start` (calibration and evaluation use disjoint ranges)."""
    from splitdnn.agent.source import image_frames, synthetic_frames

    make = image_frames(source, inputs) if source else synthetic_frames(inputs, seed=0)
    return [make(start + i) for i in range(n)]


def quantization_report(floats: Sequence[dict], quantized: Sequence[dict], outputs: Sequence[str]) -> dict:
    """Chained quantized outputs vs float, frame by frame: max abs diff over every output; top-1 agreement (argmax
    of the first output's last axis)."""
    diff = max(float(np.abs(q[n] - f[n]).max()) for f, q in zip(floats, quantized) for n in outputs)
    agree = [
        bool(np.argmax(f[outputs[0]], -1).ravel()[0] == np.argmax(q[outputs[0]], -1).ravel()[0])
        for f, q in zip(floats, quantized)
    ]
    return {"max_abs_diff": diff, "top1_agreement": sum(agree) / len(agree), "frames": len(agree)}


def _ordered(feed: dict, inputs: Sequence[dict]) -> list:
    return [feed[t["name"]] for t in inputs]


def _first_line(exc: BaseException) -> str:
    """The part of a converter error a user can act on: the ops TFLite lacks, else the first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    missing = [line.split(":", 1)[1].strip() for line in lines if line.startswith(("Custom ops:", "Flex ops:"))]
    if missing:
        return f"needs ops outside the TFLite builtins (Flex/custom): {', '.join(missing)}"
    return (lines[0] if lines else type(exc).__name__)[:300]


class _quiet_native_logs:
    """The converter prints MLIR diagnostics and an `export` listing on stdout/stderr; keep them out of the CLI's."""

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = [os.dup(1), os.dup(2)]
        self._null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self._null, 1)
        os.dup2(self._null, 2)

    def __exit__(self, *exc):
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in (*self._saved, self._null):
            os.close(fd)


def export_tflite(
    model,
    graph: ModelGraph,
    specs: Sequence,
    out_dir: str | Path,
    manifest: dict,
    quantize: str | None = None,
    calibration: str | None = None,
    frames: int = 100,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Write `<slice>/model.tflite` for every slice that converts and matches, recording it (or the reason it has
    none) in `manifest`'s slice entries; with `quantize`, also `<slice>/model_<mode>.tflite` and
    `manifest["quantization"]` (figures on `frames` held-out frames)."""
    from splitdnn.slicer import frame_shape

    out_dir = Path(out_dir)
    say = progress or (lambda line: None)
    keras_models = [slice_keras_model(model, graph, spec) for spec in specs]
    entries = {e["name"]: e for e in manifest["slices"]}
    rng = np.random.default_rng(seed)
    probe = {n: rng.random(frame_shape(graph, n, batch=2)).astype(graph.tensors[n].dtype) for n in graph.inputs}
    for spec, km in zip(specs, keras_models):
        if spec.name not in entries:  # a slice not exported this time (`export_slices(only=…)`): only the probe
            probe = _keras_outputs(km, [{"name": n} for n in spec.inputs], probe)  # moves on through it
            continue
        entry = entries[spec.name]
        result = convert_and_check(km, entry["inputs"], entry["outputs"], probe)
        for key in ("tflite", "tflite_max_abs_diff", "tflite_error"):
            entry.pop(key, None)
        if result.content is None:
            entry["tflite_error"] = result.error
            say(f"{spec.name}: no .tflite: {result.error}")
        else:
            path = f"{spec.name}/model.tflite"
            (out_dir / path).write_bytes(result.content)
            entry["tflite"] = path
            entry["tflite_max_abs_diff"] = result.max_abs_diff
            say(
                f"{spec.name}: {out_dir / path} ({len(result.content):,} bytes, max abs diff {result.max_abs_diff:.1e})"
            )
        probe = _keras_outputs(km, entry["inputs"], probe)
    if quantize:
        _export_quantized(keras_models, specs, out_dir, manifest, quantize, calibration, frames, say)


def _keras_outputs(keras_model, inputs: Sequence[dict], feed: dict) -> dict:
    out = keras_model(_ordered(feed, inputs), training=False)
    return {k: np.asarray(v) for k, v in out.items()}


def _export_quantized(keras_models, specs, out_dir: Path, manifest: dict, mode: str, calibration, frames: int, say):
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantization {mode!r} (one of {', '.join(QUANTIZE_MODES)})")
    if frames < 1:
        raise ValueError(f"quantization needs at least one frame, got {frames}")
    entries = [next(e for e in manifest["slices"] if e["name"] == spec.name) for spec in specs]
    key = f"tflite_{mode}"
    feeds = calibration_frames(entries[0]["inputs"], frames, calibration)
    for km, entry in zip(keras_models, entries):
        entry.pop(key, None)
        entry.pop(f"{key}_error", None)
        names = [t["name"] for t in entry["inputs"]]
        try:
            content = convert(km, mode, representative_dataset(feeds, names) if mode == "int8" else None)
        except Exception as exc:
            entry[f"{key}_error"] = f"does not convert: {_first_line(exc)}"
            say(f"{entry['name']}: no {mode} .tflite: {entry[f'{key}_error']}")
        else:
            path = f"{entry['name']}/model_{mode}.tflite"
            (out_dir / path).write_bytes(content)
            entry[key] = path
            say(f"{entry['name']}: {out_dir / path} ({len(content):,} bytes)")
        feeds = [_keras_outputs(km, entry["inputs"], feed) for feed in feeds]  # next slice's calibration frames
    # held-out frames: the chained quantized slices (float .tflite, else Keras, where a slice has no quantized one)
    held_out = calibration_frames(entries[0]["inputs"], frames, calibration, start=frames)
    floats, quantized = list(held_out), list(held_out)
    for km, entry in zip(keras_models, entries):
        floats = [_keras_outputs(km, entry["inputs"], f) for f in floats]
        path = entry.get(key) or entry.get("tflite")
        if path:
            from splitdnn.agent.litert_runtime import LiteRTSlice

            runtime = LiteRTSlice(out_dir / path, entry["inputs"], entry["outputs"])
            quantized = [runtime.compute(q) for q in quantized]
        else:
            quantized = [_keras_outputs(km, entry["inputs"], q) for q in quantized]
    report = quantization_report(floats, quantized, [t["name"] for t in entries[-1]["outputs"]])
    manifest["quantization"] = {"mode": mode, "calibration": calibration or "synthetic (seed 0)", **report}
    say(
        f"quantized {mode}: max abs diff {report['max_abs_diff']:.2e}, top-1 agreement "
        f"{report['top1_agreement']:.1%} vs float on {report['frames']} held-out frames"
    )


def verify_tflite(model, graph: ModelGraph, directory: str | Path, seed: int = 0) -> tuple[float, list[str]]:
    """Chain the float `.tflite` slices of `directory` on a random frame (a slice without one runs its SavedModel);
    returns (max abs diff to the full model, names of the slices that ran a SavedModel)."""
    import tensorflow as tf

    from splitdnn.agent.litert_runtime import LiteRTSlice
    from splitdnn.slicer import load_manifest, reference_frame

    directory = Path(directory)
    feed, expected = reference_frame(model, graph, seed)
    values, fallback = dict(feed), []
    for entry in load_manifest(directory)["slices"]:
        step = {t["name"]: values[t["name"]] for t in entry["inputs"]}
        if "tflite" in entry:
            values = LiteRTSlice(directory / entry["tflite"], entry["inputs"], entry["outputs"]).compute(step)
        else:
            fallback.append(entry["name"])
            signature = tf.saved_model.load(str(directory / entry["path"])).signatures["serving_default"]
            values = {k: v.numpy() for k, v in signature(**step).items()}
    diff = max(float(np.abs(values[n] - np.asarray(e)).max()) for n, e in zip(graph.outputs, expected))
    return diff, fallback
