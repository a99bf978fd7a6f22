"""LiteRT slice runtime: run one slice's `.tflite` (written by `splitdnn slice`) with `ai_edge_litert`, no TensorFlow.

Same shape as the TensorFlow runtime: `load(slices_dir, slice_name)` reads `slices.json`, `inputs`/`outputs` are
the slice's tensor specs from it (`{"name", "shape", "dtype"}`, in the listed order), and
`compute({name: array}) -> {name: array}` runs one call. The `.tflite` carries a `serving_default` signature whose
keys are the slice's tensor names; inputs and outputs are mapped to interpreter tensors by those names (never by the
converter's tensor order, which is not the listed order).

The interpreter is not thread-safe: one `LiteRTSlice` serves one stage worker (the agent computes one frame at a
time). XNNPACK is applied by default; `threads` is its thread count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

RUNTIME = "litert"
SIGNATURE = "serving_default"
VARIANTS = ("float32", "fp16", "int8")


class NoTFLite(ValueError):
    """The slice has no `.tflite` of the requested variant (it did not convert, or was not quantized)."""


class LiteRTSlice:
    runtime = RUNTIME

    def __init__(
        self,
        model_path: str | Path,
        inputs: Sequence[dict],
        outputs: Sequence[dict],
        threads: int = 1,
    ):
        from ai_edge_litert.interpreter import Interpreter

        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.path = Path(model_path)
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.threads = threads
        self._interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        signatures = self._interpreter.get_signature_list()
        if SIGNATURE not in signatures:
            raise ValueError(f"{self.path} has no {SIGNATURE!r} signature (has: {', '.join(signatures) or 'none'})")
        runner = self._interpreter.get_signature_runner(SIGNATURE)
        in_details, out_details = runner.get_input_details(), runner.get_output_details()
        del runner  # it holds the interpreter's internals; allocate_tensors refuses while it lives
        _check_names("input", [t["name"] for t in self.inputs], in_details, self.path)
        _check_names("output", [t["name"] for t in self.outputs], out_details, self.path)
        self._in = [(t["name"], in_details[t["name"]]["index"], np.dtype(t["dtype"])) for t in self.inputs]
        self._out = [(t["name"], out_details[t["name"]]["index"]) for t in self.outputs]
        self._interpreter.allocate_tensors()
        self._shapes = {index: tuple(self._interpreter.get_tensor(index).shape) for _, index, _ in self._in}

    def compute(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call: {input name: array} (all of the slice's inputs) -> {output name: array}, in the listed order."""
        it = self._interpreter
        resized = False
        for name, index, dtype in self._in:
            value = np.asarray(feed[name], dtype=dtype)
            if value.shape != self._shapes[index]:
                it.resize_tensor_input(index, value.shape, strict=True)
                self._shapes[index] = value.shape
                resized = True
        if resized:
            it.allocate_tensors()
        for name, index, dtype in self._in:
            it.set_tensor(index, np.ascontiguousarray(feed[name], dtype=dtype))
        it.invoke()
        return {name: it.get_tensor(index) for name, index in self._out}  # get_tensor copies

    __call__ = compute


def _check_names(kind: str, wanted: list[str], details: Mapping[str, dict], path: Path) -> None:
    if sorted(wanted) != sorted(details):
        raise ValueError(
            f"{path}: the {SIGNATURE!r} signature's {kind}s are {sorted(details)}, slices.json lists {wanted}"
        )


def tflite_key(variant: str) -> str:
    """slices.json key of a slice's `.tflite` for `variant`: "tflite" (float32), "tflite_fp16", "tflite_int8"."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (one of {', '.join(VARIANTS)})")
    return "tflite" if variant == "float32" else f"tflite_{variant}"


def slice_entry(slices_dir: str | Path, slice_name: str) -> dict:
    """The slice's entry of `slices_dir/slices.json`."""
    from splitdnn.slicer import load_manifest  # (the slicer imports TensorFlow only in its functions)

    slices = load_manifest(slices_dir)["slices"]
    for entry in slices:
        if entry["name"] == slice_name:
            return entry
    path = Path(slices_dir) / "slices.json"
    raise ValueError(f"slice {slice_name!r} is not in {path} (slices: {', '.join(s['name'] for s in slices)})")


def converts(slices_dir: str | Path, variant: str = "float32") -> bool:
    """Whether every slice in `slices_dir` has a `.tflite` of `variant` (a tier can then default to LiteRT)."""
    from splitdnn.slicer import load_manifest

    manifest = load_manifest(slices_dir)
    return all(tflite_key(variant) in s for s in manifest["slices"])


def load(slices_dir: str | Path, slice_name: str, threads: int = 1, variant: str = "float32") -> LiteRTSlice:
    """The LiteRT runtime for one slice of `slices_dir`; NoTFLite (with the slicer's reason) if it has none."""
    entry = slice_entry(slices_dir, slice_name)
    key = tflite_key(variant)
    if key not in entry:
        reason = entry.get(
            "tflite_error",
            "not written (re-run `splitdnn slice`" + ("" if variant == "float32" else f" --quantize {variant}") + ")",
        )
        raise NoTFLite(f"slice {slice_name!r} has no {variant} .tflite: {reason}")
    return LiteRTSlice(Path(slices_dir) / entry[key], entry["inputs"], entry["outputs"], threads=threads)
