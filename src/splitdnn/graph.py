"""Model graph: layers in order, the tensors between them, and every boundary with the tensors that cross it.

Order is `model.layers` (Keras keeps it topological). The boundary "after layer L" (split point L) puts layers
0..L in the earlier slice. The tensors crossing it are the ones produced at or before L and needed after L — by a
later layer, or as a model output (the result must reach the end of the pipeline). Model inputs count as produced
before layer 0: frames enter at the first tier, so a later slice that needs the raw input has it shipped along.

Tensor names: the producing layer's name, `<layer>__<i>` for the i-th output of a multi-output layer; a
model input is named after its input layer. Only public Keras 3 APIs are used (`model.layers`,
`layer.input`, `layer.output`, `model.inputs`, `model.outputs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | None, ...]  # with the batch dimension (None)
    dtype: str
    producer: int  # index of the producing layer; -1 for model inputs

    @property
    def bytes(self) -> int:
        """Bytes for one frame (batch 1)."""
        return int(math.prod(d for d in self.shape[1:] if d is not None)) * _dtype_size(self.dtype)


@dataclass(frozen=True)
class LayerInfo:
    name: str
    cls: str
    output_shape: Any  # tuple, or a list of tuples for multi-output layers
    params: int
    flops: int
    output_bytes: int
    inputs: tuple[str, ...]  # tensor names consumed
    outputs: tuple[str, ...]  # tensor names produced


@dataclass(frozen=True)
class Boundary:
    """Between layer `index` and the next: what a link carries when a slice ends at that layer."""

    after: str  # layer name
    index: int  # layer index
    tensors: tuple[str, ...]
    bytes: int
    single_tensor: bool


@dataclass
class ModelGraph:
    model_name: str
    layers: list[LayerInfo]
    tensors: dict[str, TensorInfo]
    inputs: list[str]  # model input tensor names
    outputs: list[str]  # model output tensor names
    boundaries: list[Boundary] = field(default_factory=list)

    @property
    def params_total(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def input_bytes(self) -> int:
        return sum(self.tensors[n].bytes for n in self.inputs)

    def layer_index(self, name: str) -> int:
        for i, layer in enumerate(self.layers):
            if layer.name == name:
                return i
        raise KeyError(name)

    def crossing(self, index: int) -> list[str]:
        """Tensors crossing the boundary after layer `index` (-1: before everything = the model inputs)."""
        if index < 0:
            return list(self.inputs)
        needed_after = self._last_use
        return [name for name, t in self.tensors.items() if t.producer <= index and needed_after[name] > index]

    @cached_property
    def _last_use(self) -> dict[str, int]:
        """Tensor name → index of the last layer that needs it (len(layers) for model outputs)."""
        last = {name: -1 for name in self.tensors}
        for i, layer in enumerate(self.layers):
            for name in layer.inputs:
                last[name] = max(last[name], i)
        for name in self.outputs:
            last[name] = len(self.layers)
        return last

    def summary(self) -> GraphSummary:
        """What planning needs of this graph, as plain data (no TensorFlow needed to read it back)."""
        return GraphSummary(
            model=self.model_name,
            layers=tuple(l.name for l in self.layers),
            classes=tuple(l.cls for l in self.layers),
            params=tuple(l.params for l in self.layers),
            flops=tuple(l.flops for l in self.layers),
            boundary_bytes={c.after: c.bytes for c in self.boundaries},
            boundary_tensors={c.after: list(c.tensors) for c in self.boundaries},
            input_bytes=self.input_bytes,
            output_bytes=sum(self.tensors[n].bytes for n in self.outputs),
        )

    def to_json(self) -> dict:
        """The `splitdnn inspect --json` contract (its key "cuts" lists the boundaries)."""
        return {
            "model": self.model_name,
            "params_total": self.params_total,
            "input_bytes": self.input_bytes,
            "layers": [
                {
                    "name": l.name,
                    "class": l.cls,
                    "output_shape": l.output_shape,
                    "params": l.params,
                    "flops": l.flops,
                    "output_bytes": l.output_bytes,
                }
                for l in self.layers
            ],
            "cuts": [
                {
                    "after": c.after,
                    "index": c.index,
                    "tensors": list(c.tensors),
                    "bytes": c.bytes,
                    "single_tensor": c.single_tensor,
                }
                for c in self.boundaries
            ],
        }


SUMMARY_FORMAT = "splitdnn.graph-summary/1"


@dataclass(frozen=True)
class GraphSummary:
    """A model graph reduced to what planning and the deployed plan need, per layer in model order and per
    boundary (keyed by the layer it follows). Plain data: `to_json`/`from_json` round-trip it, so a process
    without TensorFlow (the operator) can plan from a document another process wrote."""

    model: str
    layers: tuple[str, ...]
    classes: tuple[str, ...] = ()  # Keras class per layer; empty = unknown (no InputLayer to skip)
    params: tuple[int, ...] = ()
    flops: tuple[int, ...] = ()
    boundary_bytes: dict[str, int] = field(default_factory=dict)  # layer → bytes crossing the boundary after it
    boundary_tensors: dict[str, list[str]] = field(default_factory=dict)  # layer → tensors crossing it
    input_bytes: int = 0  # the model inputs, one frame
    output_bytes: int = 0  # the model outputs, one frame

    def to_json(self) -> dict:
        return {
            "format": SUMMARY_FORMAT,
            "model": self.model,
            "layers": list(self.layers),
            "classes": list(self.classes),
            "params": list(self.params),
            "flops": list(self.flops),
            "boundary_bytes": dict(self.boundary_bytes),
            "boundary_tensors": {k: list(v) for k, v in self.boundary_tensors.items()},
            "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes,
        }

    @classmethod
    def from_json(cls, doc: dict) -> GraphSummary:
        if not isinstance(doc, dict) or doc.get("format") != SUMMARY_FORMAT:
            raise ValueError(f"not a graph summary (expected format {SUMMARY_FORMAT!r})")
        return cls(
            model=str(doc["model"]),
            layers=tuple(doc["layers"]),
            classes=tuple(doc.get("classes", ())),
            params=tuple(int(x) for x in doc.get("params", ())),
            flops=tuple(int(x) for x in doc.get("flops", ())),
            boundary_bytes={k: int(v) for k, v in doc.get("boundary_bytes", {}).items()},
            boundary_tensors={k: list(v) for k, v in doc.get("boundary_tensors", {}).items()},
            input_bytes=int(doc.get("input_bytes", 0)),
            output_bytes=int(doc.get("output_bytes", 0)),
        )


def _dtype_size(dtype: str) -> int:
    import numpy as np

    return np.dtype(dtype).itemsize


def _flatten(x) -> list:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        out = []
        for item in x:
            out.extend(_flatten(item))
        return out
    if isinstance(x, dict):
        out = []
        for key in sorted(x):
            out.extend(_flatten(x[key]))
        return out
    return [x]


def _shape(t) -> tuple[int | None, ...]:
    return tuple(None if d is None else int(d) for d in t.shape)


def build_graph(model) -> ModelGraph:
    """Walk `model.layers` and record tensors, layers and boundaries. Raises ValueError for shared layers."""
    by_id: dict[int, str] = {}
    tensors: dict[str, TensorInfo] = {}
    input_names: list[str] = []

    for t in model.inputs:
        name = t.name  # a model input's KerasTensor carries its input layer's name
        by_id[id(t)] = name
        tensors[name] = TensorInfo(name, _shape(t), str(t.dtype), -1)
        input_names.append(name)

    layers: list[LayerInfo] = []
    for index, layer in enumerate(model.layers):
        cls = type(layer).__name__
        try:
            outs = _flatten(layer.output)
            ins = [] if cls == "InputLayer" else _flatten(layer.input)
        except (AttributeError, ValueError) as exc:
            raise ValueError(
                f"layer {layer.name!r} cannot be placed in a slice: {exc} (shared layers are not supported)"
            ) from exc
        in_names = []
        for t in ins:
            if id(t) not in by_id:
                raise ValueError(f"layer {layer.name!r} consumes a tensor produced outside the model's layer order")
            in_names.append(by_id[id(t)])
        out_names = []
        if cls == "InputLayer":
            out_names = [by_id[id(t)] for t in outs]
        else:
            for i, t in enumerate(outs):
                name = layer.name if len(outs) == 1 else f"{layer.name}__{i}"
                by_id[id(t)] = name
                tensors[name] = TensorInfo(name, _shape(t), str(t.dtype), index)
                out_names.append(name)
        shapes = [list(_shape(t)) for t in outs]
        layers.append(
            LayerInfo(
                name=layer.name,
                cls=cls,
                output_shape=shapes[0] if len(shapes) == 1 else shapes,
                params=int(layer.count_params()) if layer.built else 0,
                flops=estimate_flops(layer, ins, outs),
                output_bytes=sum(tensors[n].bytes for n in out_names),
                inputs=tuple(in_names),
                outputs=tuple(out_names),
            )
        )

    output_names = [by_id[id(t)] for t in model.outputs]
    graph = ModelGraph(model.name, layers, tensors, input_names, output_names)
    for index in range(len(layers) - 1):
        crossing = graph.crossing(index)
        graph.boundaries.append(
            Boundary(
                after=layers[index].name,
                index=index,
                tensors=tuple(crossing),
                bytes=sum(tensors[n].bytes for n in crossing),
                single_tensor=len(crossing) == 1,
            )
        )
    return graph


def estimate_flops(layer, ins, outs) -> int:
    """Floating-point operations for one frame (a multiply-add counts as 2). An estimate for planning: exact for
    dense and convolution layers, one or two operations per output element for the rest."""
    cls = type(layer).__name__
    out_elems = sum(int(math.prod(d for d in t.shape[1:] if d is not None)) for t in outs)
    in_elems = sum(int(math.prod(d for d in t.shape[1:] if d is not None)) for t in ins)
    cfg = layer.get_config() if hasattr(layer, "get_config") else {}
    if cls == "Dense":
        return 2 * int(ins[0].shape[-1]) * int(outs[0].shape[-1]) * max(1, out_elems // int(outs[0].shape[-1]))
    if cls in ("Conv1D", "Conv2D", "Conv3D", "Conv2DTranspose"):
        kernel = math.prod(cfg.get("kernel_size", (1,)))
        channels_in = int(ins[0].shape[-1]) // int(cfg.get("groups", 1) or 1)
        return 2 * kernel * channels_in * out_elems
    if cls in ("DepthwiseConv2D", "DepthwiseConv1D"):
        return 2 * math.prod(cfg.get("kernel_size", (1,))) * out_elems
    if cls in ("SeparableConv2D", "SeparableConv1D"):
        kernel = math.prod(cfg.get("kernel_size", (1,)))
        return 2 * kernel * in_elems * int(cfg.get("depth_multiplier", 1)) + 2 * int(ins[0].shape[-1]) * out_elems
    if cls in ("MaxPooling2D", "AveragePooling2D", "MaxPooling1D", "AveragePooling1D"):
        return math.prod(cfg.get("pool_size", (1,))) * out_elems
    if cls.startswith("Global"):
        return in_elems
    if cls in ("BatchNormalization", "LayerNormalization"):
        return 2 * out_elems
    if cls in ("InputLayer", "Flatten", "Reshape", "ZeroPadding2D", "Cropping2D", "Dropout", "Permute"):
        return 0
    return out_elems
