"""A tier's slice runtime: load slice NAME of `slices.json`, validate request tensors against its inputs, compute.

`load(slices_dir, slice_name, runtime=...)` returns a `SliceRuntime`: the one interface the agent computes through.
Two implement it: `tensorflow` (the slice's SavedModel) and `litert` (the slice's checked `.tflite`, run by
`ai_edge_litert` without TensorFlow). Both validate requests with `validate_tensors` against the same slices.json
specs, so a client sees the same errors whichever runtime a tier uses. `auto` (what a tier without
`tiers[].runtime` gets) is `litert` where the slicer wrote a checked `.tflite`, else `tensorflow` with the
slicer's reason (`choose`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypedDict

import numpy as np

SIGNATURE = "serving_default"
RUNTIMES = ("tensorflow", "litert")
AUTO = "auto"  # litert where the slice converted, else tensorflow (`choose`)
RUNTIME_CHOICES = (*RUNTIMES, AUTO)  # what the agent's --runtime takes
COOP_METHODS = ("mls", "sls", "off")  # how a tier of several devices splits its slice (planner.coop)


class TensorSpec(TypedDict):
    """One tensor of slices.json: name, shape (None = any size) and numpy dtype name."""

    name: str
    shape: list[int | None]
    dtype: str


class BadRequest(ValueError):
    """A request with wrong model, signature, tensor names, shapes or dtypes (gRPC INVALID_ARGUMENT, HTTP 400)."""


@dataclass(frozen=True)
class SliceEntry:
    """What slices.json says about one slice, and the model it belongs to."""

    model: str
    name: str
    index: int
    path: str  # the SavedModel directory, relative to the slices directory
    cut: str  # the layer this slice ends after ("" for the last slice)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    model_outputs: list[TensorSpec]  # the last slice's outputs: what every tier's Predict returns


def read_entry(slices_dir: str | Path, slice_name: str) -> SliceEntry:
    from splitdnn.slicer import load_manifest  # (the slicer imports TensorFlow only in its functions)

    manifest = load_manifest(slices_dir)
    names = [s["name"] for s in manifest["slices"]]
    if slice_name not in names:
        raise ValueError(
            f"slice {slice_name!r} is not in {Path(slices_dir) / 'slices.json'} (slices: {', '.join(names)})"
        )
    index = names.index(slice_name)
    entry = manifest["slices"][index]
    cuts = manifest.get("cuts", [])
    return SliceEntry(
        model=manifest["model"],
        name=slice_name,
        index=index,
        path=entry["path"],
        cut=cuts[index] if index < len(cuts) else "",
        inputs=entry["inputs"],
        outputs=entry["outputs"],
        model_outputs=manifest["slices"][-1]["outputs"],
    )


def _same_shape(expected: Sequence[int | None], actual: tuple[int, ...]) -> bool:
    return len(expected) == len(actual) and all(e is None or e == a for e, a in zip(expected, actual))


def describe(specs: Sequence[TensorSpec]) -> str:
    """`input float32[None, 28, 28, 1], ...`: what a slice takes, for error messages."""
    return ", ".join(f"{s['name']} {s['dtype']}[{', '.join(str(d) for d in s['shape'])}]" for s in specs)


def validate_tensors(specs: Sequence[TensorSpec], tensors: Mapping[str, np.ndarray], where: str) -> dict:
    """Check names, dtypes and shapes against `specs`; the message names every problem. Returns the tensors in
    the specs' order. `where` says whose inputs these are (e.g. "model 'cnn14' slice 'slice0'")."""
    expected = {t["name"]: t for t in specs}
    problems = []
    missing = [n for n in expected if n not in tensors]
    unexpected = sorted(n for n in tensors if n not in expected)
    if missing:
        problems.append(f"missing input {', '.join(map(repr, missing))}")
    if unexpected:
        problems.append(f"unexpected input {', '.join(map(repr, unexpected))}")
    batch = set()
    for name, spec in expected.items():
        if name not in tensors:
            continue
        value = tensors[name]
        if value.dtype != np.dtype(spec["dtype"]):
            problems.append(f"input {name!r} has dtype {value.dtype.name}, expected {spec['dtype']}")
        if not _same_shape(spec["shape"], value.shape):
            shape = ["None" if d is None else d for d in spec["shape"]]
            problems.append(f"input {name!r} has shape {list(value.shape)}, expected [{', '.join(map(str, shape))}]")
        elif value.ndim:
            batch.add(value.shape[0])
    if len(batch) > 1:
        problems.append(f"inputs disagree on the batch size: {sorted(batch)}")
    if problems:
        raise BadRequest(f"{'; '.join(problems)} ({where} takes: {describe(specs)})")
    return {n: tensors[n] for n in expected}


def batch_size(feed: Mapping[str, np.ndarray]) -> int:
    """Rows in a validated feed (its inputs agree on dimension 0; a scalar input is one row)."""
    return next((int(v.shape[0]) for v in feed.values() if v.ndim), 1)


class SliceRuntime(Protocol):
    """What the agent needs from a loaded slice."""

    entry: SliceEntry

    @property
    def name(self) -> str:
        """One of RUNTIMES."""
        ...

    @property
    def threads(self) -> int | None:
        """Compute threads (None: the runtime's default)."""
        ...

    def validate(self, tensors: Mapping[str, np.ndarray]) -> dict:
        """The slice's inputs from `tensors`, or BadRequest naming every problem."""
        ...

    def compute(self, feed: Mapping[str, np.ndarray]) -> dict:
        """Validated inputs (a batch of any size) -> {output name: array}."""
        ...


class SavedModelRuntime:
    """A slice as a TF SavedModel, called through its `serving_default` signature."""

    name = "tensorflow"

    def __init__(self, slices_dir: str | Path, entry: SliceEntry, threads: int | None = None):
        import tensorflow as tf

        if threads is not None:
            try:  # TF takes its thread counts only before its first op; an agent loads one slice, first
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError as exc:
                raise ValueError(f"threads={threads}: TensorFlow is already initialised in this process") from exc
        self.entry = entry
        self.threads = threads
        self._tf: Any = tf
        self._signature = tf.saved_model.load(str(Path(slices_dir) / entry.path)).signatures[SIGNATURE]

    def validate(self, tensors: Mapping[str, np.ndarray]) -> dict:
        return validate_tensors(self.entry.inputs, tensors, f"model {self.entry.model!r} slice {self.entry.name!r}")

    def compute(self, feed: Mapping[str, np.ndarray]) -> dict:
        out = self._signature(**{n: self._tf.constant(v) for n, v in feed.items()})
        return {n: v.numpy() for n, v in out.items()}


class LiteRTRuntime:
    """A slice as its float32 `.tflite` (written and checked by `splitdnn slice`), run by LiteRT's interpreter.

    The interpreter is not thread-safe; the agent computes one frame at a time (its Stage thread), which is the
    only caller of `compute`."""

    name = "litert"

    def __init__(self, slices_dir: str | Path, entry: SliceEntry, threads: int | None = None):
        from splitdnn.agent import litert_runtime

        self.entry = entry
        self.threads = threads or 1
        self._slice = litert_runtime.load(slices_dir, entry.name, threads=self.threads)

    def validate(self, tensors: Mapping[str, np.ndarray]) -> dict:
        return validate_tensors(self.entry.inputs, tensors, f"model {self.entry.model!r} slice {self.entry.name!r}")

    def compute(self, feed: Mapping[str, np.ndarray]) -> dict:
        return self._slice.compute(feed)


class CoopRuntime:
    """A slice computed by a cooperative group of `devices` workers (CoopAI, `splitdnn.coop`): the coordinator
    (this process) splits each block of layers by rows or output units, scatters the parts with the halo each
    needs, and gathers. The blocks come from MLS (or SLS) on F and G measured on the group at start-up. The
    devices are `addresses` (running `splitdnn coop-device`s) or else processes of this tier, each with `threads`
    TensorFlow threads (`splitdnn.coop_run.Group`)."""

    name = "coop"

    def __init__(
        self,
        slices_dir: str | Path,
        entry: SliceEntry,
        devices: int,
        method: str,
        threads: int | None,
        addresses: list[tuple[str, int]] | None = None,
    ):
        import keras

        from splitdnn import coop
        from splitdnn.agent.source import zero_frame
        from splitdnn.coop_run import Group, group_key
        from splitdnn.mls import best_over_devices, mls, sls
        from splitdnn.slicer import load_manifest

        written = load_manifest(slices_dir)["slices"][entry.index]
        keras_path = written.get("keras")
        if not keras_path:
            why = written.get("keras_error", "not written (slice with --keras)")
            raise ValueError(f"slice {entry.name!r} cannot run on a cooperative tier: {why}")
        self.entry = entry
        self.threads = threads or 1
        self.devices = devices
        self.method = method
        path = str(Path(slices_dir) / keras_path)
        self._model = keras.models.load_model(path)
        self._geoms = coop.describe(self._model)
        if addresses:  # running devices (pods), which share the group's key with this coordinator
            self._group = Group(path, devices, addresses=addresses, authkey=group_key())
        else:
            self._group = Group(path, devices, threads=self.threads)
        x = next(iter(zero_frame(entry.inputs).values()))
        self.platform, _ = self._group.measure_platform(self._model, self._geoms, x)
        algo = sls if method == "sls" else mls
        self.plan = best_over_devices(self._geoms, devices, self.platform, algo)
        self._output = entry.outputs[0]["name"]
        self.device_names = self._group.names

    def validate(self, tensors: Mapping[str, np.ndarray]) -> dict:
        return validate_tensors(self.entry.inputs, tensors, f"model {self.entry.model!r} slice {self.entry.name!r}")

    def compute(self, feed: Mapping[str, np.ndarray]) -> dict:
        (x,) = feed.values()
        y, _ = self._group.run_plan(self._model, self._geoms, self.plan.blocks, x, stateful=True)
        return {self._output: np.asarray(y)}

    def close(self) -> None:
        self._group.close()


def choose(requested: str | None, entry: Mapping[str, Any], cooperative: bool = False) -> tuple[str, str | None]:
    """The runtime a tier runs: `requested` (one of RUNTIMES) as given; `auto`/None: `litert` where the slice's
    slices.json `entry` has a checked float32 `.tflite`, else `tensorflow` and why (the slicer's reason). A
    cooperative group computes with TensorFlow. Returns (runtime, why it is not litert, or None)."""
    if requested not in (None, AUTO):
        return str(requested), None
    if cooperative:
        return "tensorflow", "a cooperative group computes with TensorFlow"
    if "tflite" in entry:
        return "litert", None
    return "tensorflow", f"slice {entry.get('name')!r} has no .tflite: {entry.get('tflite_error', 'not written')}"


def load(
    slices_dir: str | Path,
    slice_name: str,
    runtime: str = "tensorflow",
    threads: int | None = None,
    devices: int = 1,
    coop: str = "mls",
    coop_devices: list[tuple[str, int]] | None = None,
) -> SliceRuntime:
    """Load and warm up slice `slice_name` of `slices_dir/slices.json` with `runtime` (one of RUNTIME_CHOICES; the first
    call pays TF's tracing or LiteRT's allocation). A slice without a `.tflite` cannot run on `litert`: the error
    gives the slicer's reason (e.g. a Flex op). `devices` > 1 (and `coop` not "off"): a cooperative group of that
    many workers computes the slice (CoopRuntime, TensorFlow)."""
    from splitdnn.agent.source import zero_frame

    if runtime not in RUNTIME_CHOICES:
        raise ValueError(f"unknown runtime {runtime!r} (one of {', '.join(RUNTIME_CHOICES)})")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if devices < 1 or coop not in COOP_METHODS:
        raise ValueError(f"devices must be >= 1 and coop one of {', '.join(COOP_METHODS)} (got {devices}, {coop!r})")
    entry = read_entry(slices_dir, slice_name)
    if runtime == AUTO:
        from splitdnn.agent.litert_runtime import slice_entry

        runtime, why = choose(AUTO, slice_entry(slices_dir, slice_name), cooperative=devices > 1 and coop != "off")
        if why:
            logging.getLogger(__name__).warning("runtime auto: %s, %s", runtime, why)
    loaded: SliceRuntime
    if devices > 1 and coop != "off":
        if runtime == "litert":
            raise ValueError("a cooperative tier (devices > 1) computes with TensorFlow: use runtime tensorflow")
        loaded = CoopRuntime(slices_dir, entry, devices, coop, threads, coop_devices)
    else:
        make = LiteRTRuntime if runtime == "litert" else SavedModelRuntime
        loaded = make(slices_dir, entry, threads)
    loaded.compute(zero_frame(entry.inputs))
    return loaded
