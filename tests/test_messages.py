"""Our TensorFlow-free message classes are wire-compatible with TensorFlow's and TF Serving's generated ones:
descriptors agree field by field, and messages serialised by one parse in the other and re-serialise bit-identically,
both ways."""

import subprocess
import sys

import numpy as np
import pytest

from splitdnn.agent import messages
from splitdnn.agent.wire import from_tensor_proto, to_tensor_proto

# fields TF has that our .proto files leave out on purpose (they need types a TF-free agent never uses)
LEFT_OUT = {"tensorflow.TensorInfo.composite_tensor"}


def real_classes():
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2

    return {
        "tensorflow.TensorProto": tensor_pb2.TensorProto,
        "tensorflow.TensorShapeProto": tensor_shape_pb2.TensorShapeProto,
        "tensorflow.TensorInfo": meta_graph_pb2.TensorInfo,
        "tensorflow.SignatureDef": meta_graph_pb2.SignatureDef,
        "tensorflow.serving.ModelSpec": model_pb2.ModelSpec,
        "tensorflow.serving.PredictRequest": predict_pb2.PredictRequest,
        "tensorflow.serving.PredictResponse": predict_pb2.PredictResponse,
        "tensorflow.serving.SignatureDefMap": get_model_metadata_pb2.SignatureDefMap,
        "tensorflow.serving.GetModelMetadataRequest": get_model_metadata_pb2.GetModelMetadataRequest,
        "tensorflow.serving.GetModelMetadataResponse": get_model_metadata_pb2.GetModelMetadataResponse,
        "tensorflow.serving.GetModelStatusRequest": get_model_status_pb2.GetModelStatusRequest,
        "tensorflow.serving.GetModelStatusResponse": get_model_status_pb2.GetModelStatusResponse,
    }


def field_signature(field) -> tuple:
    return (
        field.name,
        field.number,
        field.type,
        field.is_repeated,
        field.message_type.full_name if field.message_type else None,
        field.enum_type.full_name if field.enum_type else None,
        field.containing_oneof.name if field.containing_oneof else None,
        field.is_packed,
    )


def compare(ours, theirs, seen: set) -> int:
    """Recursively compare two message descriptors; returns how many fields were compared."""
    if theirs.full_name in seen:
        return 0
    seen.add(theirs.full_name)
    assert ours.full_name == theirs.full_name
    mine = {f.number: f for f in ours.fields}
    count = 0
    for field in theirs.fields:
        if f"{theirs.full_name}.{field.name}" in LEFT_OUT:
            assert field.number not in mine
            continue
        assert field.number in mine, f"{theirs.full_name}.{field.name} missing"
        assert field_signature(mine[field.number]) == field_signature(field), f"{theirs.full_name}.{field.name}"
        count += 1
        if field.enum_type:
            values = lambda e: [(v.name, v.number) for v in e.values if not v.name.endswith("_REF")]  # noqa: E731
            assert values(mine[field.number].enum_type) == values(field.enum_type), field.enum_type.full_name
        if field.message_type:
            count += compare(mine[field.number].message_type, field.message_type, seen)
    assert len(mine) == count_fields(theirs), f"{theirs.full_name}: we declare fields TF does not have"
    return count


def count_fields(descriptor) -> int:
    return sum(f"{descriptor.full_name}.{f.name}" not in LEFT_OUT for f in descriptor.fields)


def test_descriptors_agree_field_by_field():
    seen: set = set()
    compared = sum(
        compare(messages.CLASSES[name].DESCRIPTOR, cls.DESCRIPTOR, seen) for name, cls in real_classes().items()
    )
    assert compared > 60  # every field of every message reachable from the ones the agent uses


def rich_predict_request(module):
    """A PredictRequest using every kind of field: maps, oneofs, proto3 optionals, nested enums, packed repeats."""
    request = module.PredictRequest()
    request.model_spec.name = "cnn14"
    request.model_spec.version.value = 7
    request.model_spec.signature_name = "serving_default"
    rng = np.random.default_rng(0)
    to_tensor_proto(rng.random((1, 28, 28, 1), dtype=np.float32), request.inputs["input"])
    typed = request.inputs["typed"]
    typed.dtype = 1
    typed.tensor_shape.dim.add(size=3, name="n")
    typed.float_val.extend([0.5, -1.25, 3e-8])
    typed.int64_val.extend([1, -2, 1 << 40])
    typed.string_val.append(b"\x00bytes")
    typed.half_val.extend([15360, 0])
    handle = typed.resource_handle_val.add(device="/cpu:0", hash_code=(1 << 63) + 5)
    handle.dtypes_and_shapes.add(dtype=19).shape.unknown_rank = True
    typed.variant_val.add(type_name="v", metadata=b"m").tensors.add(dtype=3, int_val=[4])
    request.output_filter.extend(["dense_1", "aux"])
    request.predict_streamed_options.request_state = 2
    request.predict_streamed_options.split_dimensions["input"] = 0
    request.client_id = b""  # proto3 optional set to its default: present on the wire
    request.request_options.deterministic_mode = 1
    request.request_options.return_stoptokens.extend([3, 9])
    request.request_options.handshake.estimated_payload_bytes = 1 << 33
    request.request_options.max_cache_length = 0
    return request


def rich_metadata_response(module_tensor, module_sig, module_meta):
    sig = module_sig.SignatureDef(method_name="tensorflow/serving/predict")
    info = sig.inputs["input"]
    info.name = "input"
    info.dtype = 1
    for d in (-1, 28, 28, 1):
        info.tensor_shape.dim.add(size=d)
    sig.outputs["dense_1"].coo_sparse.values_tensor_name = "v"
    sig.defaults["k"].CopyFrom(module_tensor.TensorProto(dtype=3, int_val=[1]))
    sig_map = module_meta.SignatureDefMap()
    sig_map.signature_def["serving_default"].CopyFrom(sig)
    response = module_meta.GetModelMetadataResponse()
    response.model_spec.name = "cnn14"
    response.model_spec.version_label = "stable"
    response.metadata["signature_def"].Pack(sig_map)
    return response


def round_trip(theirs, our_cls, their_cls):
    """TF → ours → TF, bit-identical in deterministic serialisation (without it, protobuf may write a map's
    entries in any order, so two equal messages need not serialise alike); and ours → TF → ours."""
    for deterministic in (False, True):
        data = theirs.SerializeToString(deterministic=deterministic)
        ours = our_cls.FromString(data)
        if deterministic:
            assert ours.SerializeToString(deterministic=True) == data
        back = their_cls.FromString(ours.SerializeToString(deterministic=deterministic))
        assert back == theirs
        if deterministic:
            assert back.SerializeToString(deterministic=True) == data
    return ours


def test_predict_request_round_trips_bit_identical():
    from tensorflow_serving.apis import predict_pb2

    theirs = rich_predict_request(predict_pb2)
    ours = round_trip(theirs, messages.PredictRequest, predict_pb2.PredictRequest)
    # built with ours, the same message serialises to the same bytes
    assert rich_predict_request(messages).SerializeToString(deterministic=True) == theirs.SerializeToString(
        deterministic=True
    )
    assert ours.HasField("client_id") and ours.request_options.HasField("max_cache_length")
    np.testing.assert_array_equal(from_tensor_proto(ours.inputs["input"]), from_tensor_proto(theirs.inputs["input"]))


def test_predict_response_and_status_round_trip():
    from tensorflow_serving.apis import get_model_status_pb2, predict_pb2

    response = predict_pb2.PredictResponse()
    response.model_spec.name = "cnn14"
    for name, value in {"dense_1": np.arange(10, dtype=np.float32)[None], "ids": np.array([[1, 2]], np.int64)}.items():
        to_tensor_proto(value, response.outputs[name])
    round_trip(response, messages.PredictResponse, predict_pb2.PredictResponse)

    status = get_model_status_pb2.GetModelStatusResponse()
    version = status.model_version_status.add(version=1, state=30)
    version.status.error_code = 3
    version.status.error_message = "bad"
    round_trip(status, messages.GetModelStatusResponse, get_model_status_pb2.GetModelStatusResponse)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "cnn14"
    round_trip(request, messages.GetModelStatusRequest, get_model_status_pb2.GetModelStatusRequest)


def test_model_metadata_round_trips_and_any_unpacks():
    from tensorflow.core.framework import tensor_pb2
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    theirs = rich_metadata_response(tensor_pb2, meta_graph_pb2, get_model_metadata_pb2)
    ours = round_trip(theirs, messages.GetModelMetadataResponse, get_model_metadata_pb2.GetModelMetadataResponse)
    sig_map = messages.SignatureDefMap()
    assert ours.metadata["signature_def"].Unpack(sig_map)
    assert [d.size for d in sig_map.signature_def["serving_default"].inputs["input"].tensor_shape.dim] == [
        -1,
        28,
        28,
        1,
    ]
    # built with ours (Any packed by our classes), TF's client reads it
    built = rich_metadata_response(messages, messages, messages)
    parsed = get_model_metadata_pb2.GetModelMetadataResponse.FromString(built.SerializeToString())
    assert parsed == theirs
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "cnn14"
    round_trip(request, messages.GetModelMetadataRequest, get_model_metadata_pb2.GetModelMetadataRequest)


def test_left_out_field_survives_as_unknown():
    """TensorInfo.composite_tensor is not declared by us; a message carrying it still round-trips bit-identically."""
    from tensorflow.core.protobuf import meta_graph_pb2

    info = meta_graph_pb2.TensorInfo(dtype=1)
    info.composite_tensor.components.add(name="c")
    data = info.SerializeToString()
    ours = messages.TensorInfo.FromString(data)
    assert ours.dtype == 1 and ours.SerializeToString() == data
    assert meta_graph_pb2.TensorInfo.FromString(ours.SerializeToString()) == info


def test_messages_import_no_tensorflow():
    code = (
        "import sys\n"
        "from splitdnn.agent import messages\n"
        "r = messages.PredictRequest(); r.inputs['x'].dtype = 1\n"
        "assert messages.PredictRequest.FromString(r.SerializeToString()) == r\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_serving', 'keras')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_parser_reports_unknown_types(tmp_path):
    (tmp_path / "a.proto").write_text('syntax = "proto3";\npackage p;\nmessage M { Missing m = 1; }\n')
    with pytest.raises(messages.ProtoSyntaxError, match="unknown type 'Missing' in p.M"):
        messages.parse_files(tmp_path, ["a.proto"])
