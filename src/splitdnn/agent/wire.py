"""Tensors on the wire: numpy <-> `TensorProto` with `tensor_content`, and chunking of serialized messages.

A message larger than the link's `maxMessageBytes` is cut into pieces of at most that many bytes and sent as a
client stream (see `server.CHUNKED_METHOD`); the receiver concatenates them and parses one `PredictRequest`. One
that fits goes whole (`server.ONE_METHOD`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

# tensorflow.core.framework.types_pb2 enum values (stable since TF 1.0); numpy dtype name <-> DataType.
DTYPES = {
    "float32": 1,
    "float64": 2,
    "int32": 3,
    "uint8": 4,
    "int16": 5,
    "int8": 6,
    "int64": 9,
    "bool": 10,
    "uint16": 17,
    "float16": 19,
    "uint32": 22,
    "uint64": 23,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_DIMS = 32  # numpy's own limit is 64 (and raises a plain ValueError beyond); no slice takes more than a few


class WireError(ValueError):
    """A tensor or message that cannot be decoded; the message names the problem."""


class TooLarge(ValueError):
    """A request over the tier's `--max-request-bytes` (gRPC RESOURCE_EXHAUSTED, HTTP 413)."""


def dtype_enum(dtype) -> int:
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise WireError(f"dtype {name} cannot be sent as a TensorProto here (supported: {', '.join(DTYPES)})")
    return DTYPES[name]


def to_tensor_proto(array, proto=None):
    """numpy array -> TensorProto (dtype, shape, raw little-endian `tensor_content`)."""
    if proto is None:
        from splitdnn.agent import messages

        proto = messages.TensorProto()
    array = np.asarray(array)
    proto.dtype = dtype_enum(array.dtype)
    proto.tensor_shape.Clear()
    for d in array.shape:
        proto.tensor_shape.dim.add(size=int(d))
    proto.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return proto


_VAL_FIELDS = {
    "float32": "float_val",
    "float64": "double_val",
    "int32": "int_val",
    "int16": "int_val",
    "int8": "int_val",
    "uint8": "int_val",
    "uint16": "int_val",
    "int64": "int64_val",
    "bool": "bool_val",
    "float16": "half_val",
    "uint32": "uint32_val",
    "uint64": "uint64_val",
}


def from_tensor_proto(proto, max_bytes: int | None = None) -> np.ndarray:
    """TensorProto -> numpy array. Reads `tensor_content`, and the typed `*_val` fields TF Serving clients may use
    (one value is broadcast, as TensorFlow does). The claimed shape is checked before anything is allocated: its
    size (exact, no int64 wrap-around) against `max_bytes` (TooLarge) and against the bytes or values sent."""
    if proto.dtype not in DTYPE_NAMES:
        raise WireError(f"unsupported tensor dtype enum {proto.dtype}")
    dtype = np.dtype(DTYPE_NAMES[proto.dtype])
    if proto.tensor_shape.unknown_rank:
        raise WireError("tensor has unknown rank")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise WireError(f"tensor shape {list(shape)} has a negative dimension")
    if len(shape) > MAX_DIMS:
        raise WireError(f"tensor shape has {len(shape)} dimensions, at most {MAX_DIMS} are supported")
    count = math.prod(shape)  # a Python int: dims like [2**32, 2**32] must not wrap around to 0
    nbytes = count * dtype.itemsize
    # numpy refuses even an empty array whose other dimensions multiply past its index range ([0, 2**40, 2**40])
    spans = math.prod(d for d in shape if d) * dtype.itemsize
    if max_bytes is not None and max(nbytes, spans) > max_bytes:
        what = f"claims {nbytes} bytes" if nbytes >= spans else f"spans {spans} bytes in its non-zero dimensions"
        raise TooLarge(
            f"tensor shape {list(shape)} of {dtype.name} {what}, over the limit of {max_bytes} (--max-request-bytes)"
        )
    if proto.tensor_content:
        if len(proto.tensor_content) != nbytes:
            raise WireError(
                f"tensor_content has {len(proto.tensor_content)} bytes, shape {list(shape)} of "
                f"{dtype.name} needs {nbytes}"
            )
        return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    values: Any = list(getattr(proto, _VAL_FIELDS[dtype.name]))
    if len(values) not in (count, 1) and not (count == 0 and not values):
        raise WireError(f"tensor has {len(values)} {_VAL_FIELDS[dtype.name]} values, shape {list(shape)} needs {count}")
    try:
        if dtype.name == "float16":  # half_val holds the bit patterns
            values = np.array(values, dtype=np.uint16).view(np.float16)
        if len(values) == count:
            return np.array(values, dtype=dtype).reshape(shape)
        if len(values) == 1:
            return np.full(shape, values[0], dtype=dtype)
        return np.zeros(shape, dtype=dtype)
    except OverflowError:  # int_val is int32 on the wire whatever the tensor's dtype: -174 for a uint8 tensor
        raise WireError(f"tensor has {_VAL_FIELDS[dtype.name]} values outside the range of {dtype.name}") from None


def split_chunks(data: bytes, max_bytes: int) -> list[bytes]:
    """Cut `data` into pieces of at most `max_bytes` (at least one piece, possibly empty)."""
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    if not data:
        return [b""]
    if len(data) <= max_bytes:  # one piece: the data itself (bytes() of a bytes object is that object: no copy)
        return [bytes(data)]
    view = memoryview(data)
    return [bytes(view[i : i + max_bytes]) for i in range(0, len(data), max_bytes)]


def join_chunks(chunks: Iterable[bytes]) -> bytes:
    return b"".join(chunks)


def predict_request(model: str, tensors: dict, signature: str = "serving_default"):
    from splitdnn.agent import messages

    request = messages.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in tensors.items():
        to_tensor_proto(value, request.inputs[name])
    return request


def predict_response(model: str, tensors: dict, signature: str = "serving_default"):
    from splitdnn.agent import messages

    response = messages.PredictResponse()
    response.model_spec.name = model
    response.model_spec.signature_name = signature
    for name, value in tensors.items():
        to_tensor_proto(value, response.outputs[name])
    return response


def tensors_of(field, max_bytes: int | None = None) -> dict:
    """A request's `inputs` or a response's `outputs` map -> {name: numpy array}. With `max_bytes`, the tensors
    together may claim at most that many bytes (checked for each before it is decoded)."""
    out = {}
    left = max_bytes
    for name, proto in field.items():
        try:
            out[name] = array = from_tensor_proto(proto, left)
        except (WireError, TooLarge) as exc:
            raise type(exc)(f"input {name!r}: {exc}") from None
        if left is not None:
            left -= array.nbytes
    return out
