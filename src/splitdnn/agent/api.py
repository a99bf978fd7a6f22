"""TF Serving's API on a tier, shared by the gRPC shell (`server`) and the REST shell (`rest`): model status,
metadata, the REST JSON formats of Predict, and which error becomes which status code.

The model name is the one in slices.json and it has one version, 1, with one signature, `serving_default`:
the inputs of this tier's slice and the model's outputs. Status: `AVAILABLE` while the chain behind this tier
answers, else `LOADING` (the next tier does not answer, yet or any more) or `UNLOADING` (stopping), with error
code UNAVAILABLE and a message that says why. Classify, Regress and MultiInference need tf.Example signatures,
which a sliced Keras model does not have: they answer UNIMPLEMENTED.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent import futures
from typing import Any

import grpc
import numpy as np

from splitdnn.agent.runtime import SIGNATURE, BadRequest, TensorSpec
from splitdnn.agent.stage import QueueFull
from splitdnn.agent.wire import TooLarge, WireError, dtype_enum

VERSION = 1

# TF Serving's mapping of status codes to HTTP (model_servers/http_server.cc)
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,  # except a request over the size limit: 413 (see `rest`)
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class ApiError(Exception):
    """A request the API refuses, with its status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


_CODES: list[tuple[type[BaseException] | tuple[type[BaseException], ...], grpc.StatusCode]] = [
    ((BadRequest, WireError), grpc.StatusCode.INVALID_ARGUMENT),
    (TooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ((TimeoutError, futures.TimeoutError), grpc.StatusCode.DEADLINE_EXCEEDED),
]


def error_of(exc: BaseException, tier: str, next_address: str | None = None) -> ApiError:
    """The ApiError for what a request raised: this tier's own problems say the tier's name, the next tier's
    errors (grpc.RpcError) keep their code and say where they came from. Unknown exceptions are INTERNAL."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return ApiError(exc.code(), f"{next_address}: {exc.details()}")
    code = next((c for types, c in _CODES if isinstance(exc, types)), grpc.StatusCode.INTERNAL)
    return ApiError(code, f"{tier}: {exc}" if str(exc) else f"{tier}: {type(exc).__name__}")


def unimplemented(model: str, method: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"{method}: model {model!r} has no tf.Example signatures (classify, regress): its only signature is "
        f"{SIGNATURE!r}, a Predict signature; use Predict",
    )


def check_model(
    served: str,
    name: str,
    version: int | None = None,
    label: str = "",
    unknown: grpc.StatusCode = grpc.StatusCode.NOT_FOUND,
) -> None:
    """The request names the served model (and, if any, its version 1); else `unknown` (TF Serving: NOT_FOUND;
    gRPC Predict and GetModelMetadata have answered INVALID_ARGUMENT here since before ModelService existed)."""
    if name != served:
        raise ApiError(unknown, f"model {name!r} is not served here: this agent serves {served!r}")
    if version is not None and version != VERSION:
        raise ApiError(grpc.StatusCode.NOT_FOUND, f"model {served!r} has no version {version}: its only version is 1")
    if label:
        raise ApiError(grpc.StatusCode.NOT_FOUND, f"model {served!r} has no version label {label!r}")


def check_signature(name: str) -> None:
    if name not in ("", SIGNATURE):
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT, f"signature {name!r} does not exist: the only one is {SIGNATURE!r}"
        )


def model_version_state(ready: bool, stopping: bool) -> str:
    return "AVAILABLE" if ready else ("UNLOADING" if stopping else "LOADING")


def model_status(ready: bool, stopping: bool, reason: str):
    """GetModelStatusResponse of the one version: AVAILABLE and OK, or LOADING/UNLOADING, UNAVAILABLE, `reason`."""
    from splitdnn.agent import messages

    response = messages.GetModelStatusResponse()
    status = response.model_version_status.add()
    status.version = VERSION
    status.state = messages.ModelVersionStatus.State.Value(model_version_state(ready, stopping))
    status.status.SetInParent()  # TF Serving always sends a status, OK included
    if not ready:
        status.status.error_code = grpc.StatusCode.UNAVAILABLE.value[0]
        status.status.error_message = reason or "not ready"
    return response


def signature_def_map(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]):
    """The SignatureDefMap with `serving_default`: this tier's inputs and the model's outputs."""
    from splitdnn.agent import messages

    sig = messages.SignatureDef(method_name="tensorflow/serving/predict")
    for target, tensors in ((sig.inputs, inputs), (sig.outputs, outputs)):
        for t in tensors:
            info = target[t["name"]]
            info.name = t["name"]
            info.dtype = dtype_enum(t["dtype"])
            for d in t["shape"]:
                info.tensor_shape.dim.add(size=-1 if d is None else d)
    sig_map = messages.SignatureDefMap()
    sig_map.signature_def[SIGNATURE].CopyFrom(sig)
    return sig_map


def model_metadata(model: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]):
    """GetModelMetadataResponse (gRPC): the signature map packed in `metadata["signature_def"]`."""
    from splitdnn.agent import messages

    response = messages.GetModelMetadataResponse()
    response.model_spec.name = model
    response.model_spec.signature_name = SIGNATURE
    response.metadata["signature_def"].Pack(signature_def_map(inputs, outputs))
    return response


def to_json(message) -> dict:
    """A protobuf message as TF Serving's REST API prints it (proto field names, default values included)."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True)


def metadata_json(model: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> dict:
    """GET /v1/models/NAME/metadata: as TF Serving, the signature map unpacked."""
    return {
        "model_spec": {"name": model, "signature_name": "", "version": str(VERSION)},
        "metadata": {"signature_def": to_json(signature_def_map(inputs, outputs))},
    }


# --- REST Predict: JSON <-> tensors -------------------------------------------------------------------------------


def _bad(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _array(value: Any, spec: TensorSpec, what: str) -> np.ndarray:
    """A JSON value (number, bool or nested lists of them) -> an array of the input's dtype."""
    if isinstance(value, dict):
        if "b64" in value:
            raise _bad(f"{what}: binary ('b64') values need a string input; {spec['name']!r} is {spec['dtype']}")
        raise _bad(f"{what}: expected a number or a (nested) list of numbers, got an object")
    try:
        array = np.array(value)
    except ValueError:  # numpy refuses ragged nested lists
        raise _bad(f"{what}: nested lists of different lengths (a tensor needs a regular shape)") from None
    dtype = np.dtype(spec["dtype"])
    kind = array.dtype.kind
    if kind not in "biuf" or (kind == "b") != (dtype.kind == "b"):
        got = {"U": "strings", "O": "nested lists of different lengths or mixed types"}.get(kind, array.dtype.name)
        raise _bad(f"{what}: {got} where {spec['name']!r} takes {spec['dtype']}")
    if dtype.kind in "iu":
        if kind == "f" and not np.all(np.mod(array, 1) == 0):
            raise _bad(f"{what}: {spec['name']!r} takes {spec['dtype']}, got numbers with a fraction")
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise _bad(f"{what}: values outside the range of {spec['dtype']}")
    return array.astype(dtype)


def parse_predict(body: bytes, specs: Sequence[TensorSpec]) -> tuple[dict[str, np.ndarray], bool]:
    """A REST Predict body -> ({input name: array}, row format?). Row format ("instances"): one item per row, a
    value when the model has one input, else an object naming each input; columnar ("inputs"): the whole batch,
    a value for a one-input model or an object naming each input. Shapes and names are checked afterwards by the
    slice runtime."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"JSON parse error: {exc}") from None
    except RecursionError:  # json's decoder recurses once per nested list or object
        raise _bad("JSON parse error: nested too deeply") from None
    if not isinstance(doc, dict):
        raise _bad("the request body must be a JSON object with 'instances' or 'inputs'")
    check_signature(doc.get("signature_name") or "")
    unknown = sorted(set(doc) - {"signature_name", "instances", "inputs"})
    if unknown:
        raise _bad(f"unknown key {', '.join(map(repr, unknown))}: a Predict body has 'instances' or 'inputs'")
    if ("instances" in doc) == ("inputs" in doc):
        raise _bad("a Predict body needs exactly one of 'instances' (row format) and 'inputs' (columnar format)")
    names = [s["name"] for s in specs]
    by_name = {s["name"]: s for s in specs}
    if "inputs" in doc:
        value = doc["inputs"]
        if isinstance(value, dict) and "b64" not in value:
            named = value
        elif len(specs) == 1:
            named = {names[0]: value}
        else:
            raise _bad(f"'inputs' must be an object naming each input ({', '.join(names)})")
        # a name the slice does not take gets a placeholder: the runtime's check names it among the problems
        tensors = {n: _array(v, by_name[n], f"input {n!r}") if n in by_name else np.empty(0) for n, v in named.items()}
        return tensors, False
    rows = doc["instances"]
    if not isinstance(rows, list) or not rows:
        raise _bad("'instances' must be a non-empty list, one item per row")
    objects = [isinstance(r, dict) and "b64" not in r for r in rows]
    if any(objects) and not all(objects):
        raise _bad("'instances' mixes objects and values: use one form for every row")
    if not all(objects):
        if len(specs) != 1:
            raise _bad(f"each instance must be an object naming the model's inputs ({', '.join(names)})")
        return {names[0]: _array(rows, specs[0], "'instances'")}, True
    keys = set(rows[0])
    for i, row in enumerate(rows):
        if set(row) != keys:
            raise _bad(f"instance {i} names {sorted(row)}, instance 0 names {sorted(keys)}: every row names the same")
    tensors = {}
    for n in keys:
        values = [row[n] for row in rows]
        tensors[n] = _array(values, by_name[n], f"input {n!r}") if n in by_name else np.empty(0)
    return tensors, True


def render_predict(outputs: Mapping[str, np.ndarray], row: bool) -> dict:
    """The model's outputs as TF Serving answers: row format {"predictions": one item per row (a value for one
    output, else an object)}, columnar {"outputs": the value for one output, else an object}."""
    if not row:
        if len(outputs) == 1:
            return {"outputs": next(iter(outputs.values())).tolist()}
        return {"outputs": {n: v.tolist() for n, v in outputs.items()}}
    if len(outputs) == 1:
        return {"predictions": next(iter(outputs.values())).tolist()}
    sizes = {v.shape[0] if v.ndim else None for v in outputs.values()}
    if len(sizes) != 1 or None in sizes:
        raise _bad("the outputs do not share a batch dimension: ask in the columnar format ('inputs')")
    batch = sizes.pop() or 0
    listed = {n: v.tolist() for n, v in outputs.items()}
    return {"predictions": [{n: listed[n][i] for n in outputs} for i in range(batch)]}
