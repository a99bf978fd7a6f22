"""TensorFlow Serving's messages without TensorFlow: wire-compatible classes built from our own `.proto` files.

`tensorflow-serving-api` pins `tensorflow`, so a TensorFlow-free agent (LiteRT tiers, the `agent-lite` image) cannot
import `predict_pb2` & co. The files under `proto/` declare the messages the agent uses — same proto packages,
message names and field numbers as TensorFlow's and TF Serving's (PredictRequest/Response, GetModelMetadata*,
GetModelStatus*, TensorProto, TensorShapeProto, ModelSpec, SignatureDef) — and this module turns them into message
classes when first imported, with nothing but `google.protobuf`: a small parser for the proto3 subset those files
use (messages, nested types, enums, `oneof`, `map<,>`, `optional`, `repeated`, `import`) fills
`descriptor_pb2.FileDescriptorProto`s, which go into a private `DescriptorPool` (so TensorFlow's own classes can live
in the same process) and `message_factory` makes the classes.

Why not protoc: `grpcio-tools` (which bundles protoc) is not a dependency and protoc-generated code is tied to a
protobuf runtime version; parsing ~200 lines of proto3 at import takes a few milliseconds and works with any
protobuf ≥ 4 on any architecture. tests/test_messages.py proves the classes are wire-compatible with TensorFlow's:
the descriptors agree field by field, and messages round-trip bit-identically both ways.

    from splitdnn.agent import messages
    request = messages.PredictRequest()
    request.inputs["input"].CopyFrom(tensor)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

PROTO_DIR = Path(__file__).with_name("proto")
FILES = (
    "tensorflow/core/framework/types.proto",
    "tensorflow/core/framework/tensor_shape.proto",
    "tensorflow/core/framework/resource_handle.proto",
    "tensorflow/core/framework/tensor.proto",
    "tensorflow/core/protobuf/error_codes.proto",
    "tensorflow/core/protobuf/meta_graph.proto",
    "tensorflow_serving/apis/model.proto",
    "tensorflow_serving/apis/predict.proto",
    "tensorflow_serving/apis/get_model_metadata.proto",
    "tensorflow_serving/apis/status.proto",
    "tensorflow_serving/apis/get_model_status.proto",
)
# protobuf's own well-known types, shipped with the protobuf package (no TensorFlow)
WELL_KNOWN = {"google/protobuf/any.proto": any_pb2, "google/protobuf/wrappers.proto": wrappers_pb2}

FDP = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    "double": FDP.TYPE_DOUBLE,
    "float": FDP.TYPE_FLOAT,
    "int64": FDP.TYPE_INT64,
    "uint64": FDP.TYPE_UINT64,
    "int32": FDP.TYPE_INT32,
    "fixed64": FDP.TYPE_FIXED64,
    "fixed32": FDP.TYPE_FIXED32,
    "bool": FDP.TYPE_BOOL,
    "string": FDP.TYPE_STRING,
    "bytes": FDP.TYPE_BYTES,
    "uint32": FDP.TYPE_UINT32,
    "sfixed32": FDP.TYPE_SFIXED32,
    "sfixed64": FDP.TYPE_SFIXED64,
    "sint32": FDP.TYPE_SINT32,
    "sint64": FDP.TYPE_SINT64,
}
_TOKEN = re.compile(r'"[^"]*"|[A-Za-z_][\w.]*|-?\d+|[{}\[\]<>=;,()]')


class ProtoSyntaxError(ValueError):
    pass


def _tokens(text: str) -> Iterator[str]:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    pos = 0
    for match in _TOKEN.finditer(text):
        if text[pos : match.start()].strip():
            raise ProtoSyntaxError(f"unexpected {text[pos : match.start()].strip()[:20]!r}")
        pos = match.end()
        yield match.group()


class _Parser:
    """proto3 text → FileDescriptorProto, with type names left as written (resolved later, across files)."""

    def __init__(self, name: str, text: str):
        self.toks = list(_tokens(text))
        self.i = 0
        self.file = descriptor_pb2.FileDescriptorProto(name=name)

    def peek(self) -> str:
        return self.toks[self.i] if self.i < len(self.toks) else ""

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if not tok or (expected is not None and tok != expected):
            raise ProtoSyntaxError(f"{self.file.name}: expected {expected or 'more'}, got {tok or 'end of file'!r}")
        self.i += 1
        return tok

    def skip_statement(self) -> None:
        while self.take() != ";":
            pass

    def parse(self) -> descriptor_pb2.FileDescriptorProto:
        while self.peek():
            tok = self.take()
            if tok == "syntax":
                self.take("=")
                self.file.syntax = self.take().strip('"')
                self.take(";")
            elif tok == "package":
                self.file.package = self.take()
                self.take(";")
            elif tok == "import":
                self.file.dependency.append(self.take().strip('"'))
                self.take(";")
            elif tok == "option":
                self.skip_statement()
            elif tok == "message":
                self.message(self.file.message_type.add())
            elif tok == "enum":
                self.enum(self.file.enum_type.add())
            else:
                raise ProtoSyntaxError(f"{self.file.name}: unexpected {tok!r} at top level")
        return self.file

    def enum(self, enum) -> None:
        enum.name = self.take()
        self.take("{")
        while self.peek() != "}":
            if self.peek() in ("option", "reserved"):
                self.skip_statement()
                continue
            value = enum.value.add(name=self.take())
            self.take("=")
            value.number = int(self.take())
            self.skip_statement()  # ";" or value options
        self.take("}")

    def message(self, msg) -> None:
        msg.name = self.take()
        self.take("{")
        while self.peek() != "}":
            tok = self.peek()
            if tok == "message":
                self.take()
                self.message(msg.nested_type.add())
            elif tok == "enum":
                self.take()
                self.enum(msg.enum_type.add())
            elif tok in ("option", "reserved"):
                self.skip_statement()
            elif tok == "oneof":
                self.take()
                index = len(msg.oneof_decl)
                msg.oneof_decl.add(name=self.take())
                self.take("{")
                while self.peek() != "}":
                    self.field(msg, oneof=index)
                self.take("}")
            elif tok == "map":
                self.map_field(msg)
            else:
                self.field(msg)
        self.take("}")

    def field(self, msg, oneof: int | None = None) -> None:
        label = FDP.LABEL_OPTIONAL
        optional = False
        if self.peek() == "repeated":
            self.take()
            label = FDP.LABEL_REPEATED
        elif self.peek() == "optional":
            self.take()
            optional = True
        field = msg.field.add(label=label)
        _set_type(field, self.take())
        field.name = self.take()
        self.take("=")
        field.number = int(self.take())
        field.json_name = _camel(field.name, upper=False)
        if self.peek() == "[":
            self.take()
            while self.peek() != "]":
                key = self.take()
                self.take("=")
                value = self.take()
                if key == "packed":
                    field.options.packed = value == "true"
                if self.peek() == ",":
                    self.take()
            self.take("]")
        self.take(";")
        if oneof is not None:
            field.oneof_index = oneof
        elif optional:  # proto3 `optional`: a synthetic one-field oneof named _<field>
            field.proto3_optional = True
            field.oneof_index = len(msg.oneof_decl)
            msg.oneof_decl.add(name=f"_{field.name}")

    def map_field(self, msg) -> None:
        self.take("map")
        self.take("<")
        key_type = self.take()
        self.take(",")
        value_type = self.take()
        self.take(">")
        name = self.take()
        self.take("=")
        number = int(self.take())
        self.take(";")
        entry = msg.nested_type.add(name=_camel(name, upper=True) + "Entry")
        entry.options.map_entry = True
        for i, (fname, ftype) in enumerate((("key", key_type), ("value", value_type)), start=1):
            f = entry.field.add(name=fname, number=i, label=FDP.LABEL_OPTIONAL, json_name=fname)
            _set_type(f, ftype)
        msg.field.add(
            name=name,
            number=number,
            label=FDP.LABEL_REPEATED,
            type=FDP.TYPE_MESSAGE,
            type_name=entry.name,
            json_name=_camel(name, upper=False),
        )


def _set_type(field, written: str) -> None:
    if written in SCALARS:
        field.type = SCALARS[written]
    else:
        field.type_name = written  # message or enum: decided when resolving


def _camel(name: str, upper: bool) -> str:
    parts = name.split("_")
    text = parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])
    return text[:1].upper() + text[1:] if upper else text


def _declared(file, types: dict) -> None:
    """Fully qualified name → "message" | "enum" for everything `file` declares."""

    def walk(prefix: str, messages, enums) -> None:
        for enum in enums:
            types[f"{prefix}.{enum.name}"] = "enum"
        for msg in messages:
            full = f"{prefix}.{msg.name}"
            types[full] = "message"
            walk(full, msg.nested_type, msg.enum_type)

    walk(f".{file.package}" if file.package else "", file.message_type, file.enum_type)


def _resolve(file, types: dict) -> None:
    """Type names as written → fully qualified `.pkg.Name`, searched from the innermost scope outwards (protoc's
    rule), and the field type (message or enum) set accordingly."""

    def lookup(written: str, scope: str) -> str:
        if written.startswith("."):
            candidates = [written]
        else:
            parts = scope.split(".")
            candidates = [".".join(parts[:k] + [written]) for k in range(len(parts), 0, -1)]
            candidates = [c if c.startswith(".") else "." + c for c in candidates] + ["." + written]
        for candidate in candidates:
            if candidate in types:
                return candidate
        raise ProtoSyntaxError(f"{file.name}: unknown type {written!r} in {scope.lstrip('.')}")

    def walk(scope: str, messages) -> None:
        for msg in messages:
            inner = f"{scope}.{msg.name}"
            for field in msg.field:
                if field.type_name and not field.type_name.startswith("."):
                    full = lookup(field.type_name, inner)
                    field.type_name = full
                    field.type = FDP.TYPE_MESSAGE if types[full] == "message" else FDP.TYPE_ENUM
            walk(inner, msg.nested_type)

    walk(f".{file.package}" if file.package else "", file.message_type)


def parse_files(directory: Path = PROTO_DIR, names=FILES) -> list[descriptor_pb2.FileDescriptorProto]:
    """Our `.proto` files (and the well-known types they import) as resolved FileDescriptorProtos, dependencies
    first."""
    files = []
    for module in WELL_KNOWN.values():
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        files.append(proto)
    files += [_Parser(name, (directory / name).read_text()).parse() for name in names]
    types: dict[str, str] = {}
    for f in files:
        _declared(f, types)
    for f in files[len(WELL_KNOWN) :]:
        _resolve(f, types)
    return files


def build(directory: Path = PROTO_DIR) -> tuple[descriptor_pool.DescriptorPool, dict]:
    """A private descriptor pool with our files, and {full message name: class}."""
    pool = descriptor_pool.DescriptorPool()
    files = parse_files(directory)
    for f in files:
        pool.Add(f)
    return pool, message_factory.GetMessages(files, pool=pool)


POOL, CLASSES = build()
TensorProto = CLASSES["tensorflow.TensorProto"]
TensorShapeProto = CLASSES["tensorflow.TensorShapeProto"]
TensorInfo = CLASSES["tensorflow.TensorInfo"]
SignatureDef = CLASSES["tensorflow.SignatureDef"]
ModelSpec = CLASSES["tensorflow.serving.ModelSpec"]
PredictRequest = CLASSES["tensorflow.serving.PredictRequest"]
PredictResponse = CLASSES["tensorflow.serving.PredictResponse"]
SignatureDefMap = CLASSES["tensorflow.serving.SignatureDefMap"]
GetModelMetadataRequest = CLASSES["tensorflow.serving.GetModelMetadataRequest"]
GetModelMetadataResponse = CLASSES["tensorflow.serving.GetModelMetadataResponse"]
GetModelStatusRequest = CLASSES["tensorflow.serving.GetModelStatusRequest"]
GetModelStatusResponse = CLASSES["tensorflow.serving.GetModelStatusResponse"]
ModelVersionStatus = CLASSES["tensorflow.serving.ModelVersionStatus"]
