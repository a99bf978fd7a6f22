"""TF Serving's API on real `splitdnn agent` processes: REST (`--rest-port`) over real HTTP, ModelService,
metadata and the Classify/Regress/MultiInference answers through the real `tensorflow-serving-api` stubs, gRPC
health checking, and the JSON formats' pure parsing. Results are compared with the unsplit model."""

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from agent_harness import frame, predict, slices_dir, start_chain, stub  # noqa: F401

from splitdnn.agent import api
from splitdnn.agent.local import free_port, stop_all
from splitdnn.agent.metrics import scrape, value
from splitdnn.agent.runtime import BadRequest, validate_tensors

pytestmark = pytest.mark.slow

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # agents are local: never via a proxy


def http(method: str, url: str, body=None, timeout: float = 60.0) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with OPENER.open(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def rest_chain(slices: str, tmp, tiers: int, si: str):
    """`tiers` agents, each with a REST port; (agents, REST base URLs)."""
    ports = [free_port() for _ in range(tiers)]
    agents = start_chain(
        slices, tmp, [{}] * tiers, extra={k: ["--rest-port", str(p)] for k, p in enumerate(ports)}, si=si
    )
    return agents, [f"http://127.0.0.1:{p}" for p in ports]


def wait_until(check, timeout: float = 60.0, interval: float = 0.3):
    import time

    end = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > end:
            return result
        time.sleep(interval)


@pytest.fixture(scope="module")
def chain(slices_dir, tmp_path_factory):
    agents, urls = rest_chain(slices_dir, tmp_path_factory.mktemp("rest"), 3, "rest")
    try:
        assert wait_until(
            lambda: http("GET", f"{urls[0]}/v1/models/cnn14")[1]["model_version_status"][0]["state"] == "AVAILABLE"
        )
        yield agents, urls
    finally:
        stop_all(agents)


AVAILABLE = {
    "model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]
}


# --- REST ---------------------------------------------------------------------------------------------------------


def test_model_status_is_tf_serving_json(chain):
    _, urls = chain
    for url in urls:  # every tier: the chain behind each answers
        assert http("GET", f"{url}/v1/models/cnn14") == (200, AVAILABLE)
        assert http("GET", f"{url}/v1/models/cnn14/versions/1") == (200, AVAILABLE)


def test_metadata_is_the_signature_with_dtypes_and_shapes(chain):
    _, urls = chain
    status, doc = http("GET", f"{urls[0]}/v1/models/cnn14/metadata")
    assert status == 200
    assert doc["model_spec"] == {"name": "cnn14", "signature_name": "", "version": "1"}
    sig = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert list(sig["inputs"]) == ["input"] and list(sig["outputs"]) == ["dense_1"]
    assert sig["inputs"]["input"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sig["inputs"]["input"]["tensor_shape"]["dim"]] == ["-1", "28", "28", "1"]
    assert [d["size"] for d in sig["outputs"]["dense_1"]["tensor_shape"]["dim"]] == ["-1", "10"]
    # a middle tier describes its own inputs and the model's outputs
    _, edge = http("GET", f"{urls[1]}/v1/models/cnn14/versions/1/metadata")
    assert list(edge["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]) == ["conv2d"]


def test_predict_row_and_columnar_formats_equal_the_unsplit_model(chain, cnn14_model):
    _, urls = chain
    x = frame(3, seed=11)
    expected = np.asarray(cnn14_model(x, training=False))
    status, rows = http("POST", f"{urls[0]}/v1/models/cnn14:predict", {"instances": x.tolist()})
    assert status == 200 and list(rows) == ["predictions"]
    assert np.abs(np.array(rows["predictions"]) - expected).max() <= 1e-5
    status, named = http(
        "POST", f"{urls[0]}/v1/models/cnn14/versions/1:predict", {"instances": [{"input": r} for r in x.tolist()]}
    )
    assert status == 200 and np.abs(np.array(named["predictions"]) - expected).max() <= 1e-5
    status, columns = http(
        "POST", f"{urls[0]}/v1/models/cnn14:predict", {"signature_name": "serving_default", "inputs": x.tolist()}
    )
    assert status == 200 and list(columns) == ["outputs"]
    assert np.abs(np.array(columns["outputs"]) - expected).max() <= 1e-5
    status, columns = http("POST", f"{urls[0]}/v1/models/cnn14:predict", {"inputs": {"input": x[:1].tolist()}})
    assert status == 200 and np.abs(np.array(columns["outputs"]) - expected[:1]).max() <= 1e-5


def test_predict_with_a_chunked_body(chain, cnn14_model):
    """A body without Content-Length, in chunks (curl -T -, Go clients, the API server's service proxy): answered
    like a sized one; broken framing, an over-limit chunk and an unknown coding get TF Serving's error shape."""
    import http.client
    from urllib.parse import urlsplit

    _, urls = chain
    url = urlsplit(urls[0])
    x = frame(2, seed=5)
    expected = np.asarray(cnn14_model(x, training=False))
    data = json.dumps({"instances": x.tolist()}).encode()

    def send(body, headers: dict, encode_chunked: bool = False) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        try:
            conn.request("POST", "/v1/models/cnn14:predict", body, headers, encode_chunked=encode_chunked)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    pieces = iter([data[i : i + 1000] for i in range(0, len(data), 1000)])
    status, doc = send(pieces, {"Transfer-Encoding": "chunked"}, encode_chunked=True)
    assert status == 200, doc
    assert np.abs(np.array(doc["predictions"]) - expected).max() <= 1e-5
    status, doc = send(b"zz\r\n{}\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"})
    assert status == 400 and "malformed chunk size" in doc["error"], doc
    status, doc = send(b"%x\r\n{}" % (1 << 40), {"Transfer-Encoding": "chunked"})
    assert status == 413 and "over the limit" in doc["error"], doc
    status, doc = send(b"{}", {"Transfer-Encoding": "gzip", "Content-Length": "2"})
    assert status == 501 and "not supported" in doc["error"], doc


def test_a_batch_is_computed_once_sent_once_and_counted_per_row(chain):
    agents, urls = chain

    def counts():
        s = [scrape(a.metrics_url) for a in agents]
        return (
            [value(t, "splitdnn_stage_compute_seconds_count") for t in s],
            [value(t, "splitdnn_link_transfer_seconds_count") for t in s[:2]],
            {o: value(s[0], "splitdnn_frames_total", outcome=o) for o in ("completed", "dropped", "failed")},
            value(s[0], "splitdnn_frame_latency_seconds_count"),
        )

    before = counts()
    assert http("POST", f"{urls[0]}/v1/models/cnn14:predict", {"instances": frame(3, seed=1).tolist()})[0] == 200
    client, channel = stub(agents[0].grpc_addr)
    assert predict(client, {"input": frame(4, seed=2)})["dense_1"].shape == (4, 10)
    channel.close()
    after = counts()
    assert [b - a for a, b in zip(before[0], after[0])] == [2, 2, 2]  # one stage call per request on every tier
    assert [b - a for a, b in zip(before[1], after[1])] == [2, 2]  # one message per request on every link
    assert {o: after[2][o] - before[2][o] for o in after[2]} == {"completed": 7, "dropped": 0, "failed": 0}
    assert after[3] - before[3] == 7


@pytest.mark.parametrize(
    "method, path, body, status, message",
    [
        ("POST", "/v1/models/cnn14:predict", b"{not json", 400, "JSON parse error"),
        ("POST", "/v1/models/cnn14:predict", [1, 2], 400, "must be a JSON object"),
        ("POST", "/v1/models/cnn14:predict", {"instances": [{"image": [[[0.0]]]}]}, 400, "missing input 'input'"),
        ("POST", "/v1/models/cnn14:predict", {"inputs": {"image": [0.0]}}, 400, "unexpected input 'image'"),
        (
            "POST",
            "/v1/models/cnn14:predict",
            {"instances": [[0.0] * 28]},
            400,
            "has shape [1, 28], expected [None, 28, 28, 1]",
        ),
        ("POST", "/v1/models/cnn14:predict", {"instances": [[[0.0]], [[0.0], [1.0]]]}, 400, "different lengths"),
        ("POST", "/v1/models/cnn14:predict", {"instances": [["a"]]}, 400, "strings where 'input' takes float32"),
        ("POST", "/v1/models/cnn14:predict", {"instances": [], "inputs": []}, 400, "exactly one of"),
        (
            "POST",
            "/v1/models/cnn14:predict",
            {"signature_name": "x", "inputs": []},
            400,
            "signature 'x' does not exist",
        ),
        ("POST", "/v1/models/resnet:predict", {"inputs": []}, 404, "model 'resnet' is not served here"),
        ("GET", "/v1/models/resnet", None, 404, "model 'resnet' is not served here"),
        ("GET", "/v1/models/resnet/metadata", None, 404, "model 'resnet' is not served here"),
        ("GET", "/v1/models/cnn14/versions/2", None, 404, "no version 2"),
        ("POST", "/v1/models/cnn14/versions/7:predict", {"inputs": []}, 404, "no version 7"),
        ("POST", "/v1/models/cnn14:classify", {"examples": []}, 501, "no tf.Example signatures"),
        ("POST", "/v1/models/cnn14:regress", {"examples": []}, 501, "no tf.Example signatures"),
        ("GET", "/v1/models/cnn14:predict", None, 400, "Malformed request: GET /v1/models/cnn14:predict"),
        ("GET", "/v2/models", None, 404, "Malformed request"),
    ],
)
def test_bad_requests_get_tf_serving_errors_and_the_agent_keeps_serving(chain, method, path, body, status, message):
    _, urls = chain
    got, doc = http(method, urls[0] + path, body)
    assert got == status and list(doc) == ["error"] and message in doc["error"], doc
    ok, rows = http("POST", f"{urls[0]}/v1/models/cnn14:predict", {"instances": frame().tolist()})
    assert ok == 200 and np.array(rows["predictions"]).shape == (1, 10)


# --- gRPC: ModelService, metadata, UNIMPLEMENTED, health --------------------------------------------------------


def test_grpc_model_status_metadata_and_unimplemented_with_the_tf_serving_stubs(chain):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        inference_pb2,
        model_service_pb2_grpc,
        prediction_service_pb2_grpc,
        regression_pb2,
    )

    agents, _ = chain
    channel = grpc.insecure_channel(agents[0].grpc_addr)
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "cnn14"
    (status,) = models.GetModelStatus(request, timeout=20).model_version_status
    assert status.version == 1 and status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0 and status.status.error_message == ""
    request.model_spec.version.value = 2
    with pytest.raises(grpc.RpcError) as err:
        models.GetModelStatus(request, timeout=20)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "resnet"
    with pytest.raises(grpc.RpcError) as err:
        models.GetModelStatus(request, timeout=20)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "'resnet' is not served here" in err.value.details()

    service = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    meta = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    meta.model_spec.name = "cnn14"
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    service.GetModelMetadata(meta, timeout=20).metadata["signature_def"].Unpack(sig_map)
    assert list(sig_map.signature_def["serving_default"].outputs) == ["dense_1"]

    for call, message in (
        (service.Classify, classification_pb2.ClassificationRequest()),
        (service.Regress, regression_pb2.RegressionRequest()),
        (service.MultiInference, inference_pb2.MultiInferenceRequest()),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call(message, timeout=20)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED and "no tf.Example signatures" in err.value.details()

    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "tensorflow.serving.PredictionService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=20).status == 1  # SERVING
    channel.close()


def test_status_follows_the_whole_chain(slices_dir, tmp_path):
    """Stopping the last tier makes the middle tier not ready (it no longer answers), and the first tier too (its
    next tier answers but is not ready): REST status, ModelService, gRPC health and /ready all say so."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    agents, urls = rest_chain(slices_dir, tmp_path, 3, "follow")
    try:
        assert wait_until(lambda: http("GET", f"{urls[0]}/v1/models/cnn14") == (200, AVAILABLE))
        agents[2].proc.send_signal(15)
        assert agents[2].proc.wait(30) == 0

        def state(url):
            return http("GET", f"{url}/v1/models/cnn14")[1]["model_version_status"][0]

        assert wait_until(lambda: "does not answer" in state(urls[1])["status"]["error_message"])
        assert wait_until(lambda: "does not answer" in state(urls[0])["status"]["error_message"])
        for url in urls[:2]:
            s = state(url)
            assert s["state"] == "LOADING" and s["status"]["error_code"] == "UNAVAILABLE"
        # the first tier's next tier answers, but is not ready: why, in its words
        assert "is not ready: the next tier" in state(urls[0])["status"]["error_message"]
        channel = grpc.insecure_channel(agents[0].grpc_addr)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "cnn14"
        (status,) = (
            model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=20).model_version_status
        )
        assert status.state == get_model_status_pb2.ModelVersionStatus.LOADING and status.status.error_code == 14
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=20)
        assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
        channel.close()
        with pytest.raises(urllib.error.HTTPError) as err:
            OPENER.open(agents[0].metrics_url.replace("/metrics", "/ready"), timeout=5)
        assert err.value.code == 503
    finally:
        stop_all(agents)


# --- a model with two inputs and two outputs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_input_model(tmp_path_factory):
    """A small functional Keras model (image + meta → scores + value), sliced after `flat` by the project's slicer."""
    import keras

    from splitdnn.graph import build_graph
    from splitdnn.slicer import export_slices, resolve_cuts

    keras.utils.set_random_seed(1)
    image = keras.Input((8, 8, 1), name="image")
    meta = keras.Input((3,), name="meta")
    x = keras.layers.Flatten(name="flat")(keras.layers.Conv2D(4, 3, activation="relu", name="conv")(image))
    m = keras.layers.Dense(4, activation="relu", name="meta_dense")(meta)
    h = keras.layers.Concatenate(name="join")([x, m])
    model = keras.Model(
        [image, meta], [keras.layers.Dense(3, name="scores")(h), keras.layers.Dense(1, name="value")(h)], name="twoin"
    )
    out = tmp_path_factory.mktemp("twoin")
    graph = build_graph(model)
    export_slices(model, graph, resolve_cuts(graph, ["flat"]), out)
    return model, str(out)


def test_two_inputs_and_two_outputs_in_both_formats(two_input_model, tmp_path):
    model, slices = two_input_model
    rng = np.random.default_rng(5)
    image, meta = rng.random((3, 8, 8, 1), dtype=np.float32), rng.random((3, 3), dtype=np.float32)
    scores, val = (np.asarray(t) for t in model([image, meta], training=False))
    agents, urls = rest_chain(slices, tmp_path, 2, "twoin")
    try:
        assert wait_until(
            lambda: http("GET", f"{urls[0]}/v1/models/twoin")[1]["model_version_status"][0]["state"] == "AVAILABLE"
        )
        rows = [{"image": i.tolist(), "meta": m.tolist()} for i, m in zip(image, meta)]
        status, doc = http("POST", f"{urls[0]}/v1/models/twoin:predict", {"instances": rows})
        assert status == 200 and len(doc["predictions"]) == 3 and set(doc["predictions"][0]) == {"scores", "value"}
        assert np.abs(np.array([p["scores"] for p in doc["predictions"]]) - scores).max() <= 1e-5
        assert np.abs(np.array([p["value"] for p in doc["predictions"]]) - val).max() <= 1e-5
        status, doc = http(
            "POST", f"{urls[0]}/v1/models/twoin:predict", {"inputs": {"image": image.tolist(), "meta": meta.tolist()}}
        )
        assert status == 200 and set(doc["outputs"]) == {"scores", "value"}
        assert np.abs(np.array(doc["outputs"]["scores"]) - scores).max() <= 1e-5
        assert np.abs(np.array(doc["outputs"]["value"]) - val).max() <= 1e-5
        bad, err = http("POST", f"{urls[0]}/v1/models/twoin:predict", {"instances": image.tolist()})
        assert bad == 400 and "object naming the model's inputs (image, meta)" in err["error"]
        bad, err = http(
            "POST",
            f"{urls[0]}/v1/models/twoin:predict",
            {"inputs": {"image": image.tolist(), "meta": meta[:2].tolist()}},
        )
        assert bad == 400 and "disagree on the batch size" in err["error"]
        _, md = http("GET", f"{urls[0]}/v1/models/twoin/metadata")
        assert set(md["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]) == {"image", "meta"}
    finally:
        stop_all(agents)


# --- pure: the JSON formats ---------------------------------------------------------------------------------------

SPECS = [{"name": "a", "shape": [None, 2], "dtype": "float32"}, {"name": "b", "shape": [None], "dtype": "int32"}]


def test_row_and_columnar_parsing_agree():
    rows, is_row = api.parse_predict(
        json.dumps({"instances": [{"a": [1, 2], "b": 3}, {"a": [4, 5], "b": 6}]}).encode(), SPECS
    )
    cols, is_col_row = api.parse_predict(json.dumps({"inputs": {"a": [[1, 2], [4, 5]], "b": [3, 6]}}).encode(), SPECS)
    assert is_row and not is_col_row
    for t in (rows, cols):
        assert t["a"].dtype == np.float32 and t["b"].dtype == np.int32
        np.testing.assert_array_equal(t["a"], [[1, 2], [4, 5]])
        np.testing.assert_array_equal(t["b"], [3, 6])
    validate_tensors(SPECS, rows, "test")
    with pytest.raises(api.ApiError, match="fraction"):
        api.parse_predict(b'{"inputs": {"a": [[1, 2]], "b": [1.5]}}', SPECS)
    with pytest.raises(api.ApiError, match="mixes objects and values"):
        api.parse_predict(b'{"instances": [{"a": [1, 2], "b": 1}, [1, 2]]}', SPECS)
    with pytest.raises(api.ApiError, match="instance 1 names"):
        api.parse_predict(b'{"instances": [{"a": [1, 2], "b": 1}, {"a": [1, 2]}]}', SPECS)
    with pytest.raises(BadRequest, match="disagree on the batch size"):
        validate_tensors(SPECS, api.parse_predict(b'{"inputs": {"a": [[1, 2]], "b": [1, 2]}}', SPECS)[0], "test")
    nan, _ = api.parse_predict(b'{"inputs": {"a": [[NaN, Infinity]], "b": [1]}}', SPECS)  # TF Serving's JSON
    assert np.isnan(nan["a"][0, 0]) and np.isinf(nan["a"][0, 1])


def test_rendering_follows_tf_serving():
    one = {"y": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)}
    two = {"y": one["y"], "z": np.array([5, 6], np.int64)}
    assert api.render_predict(one, row=True) == {"predictions": [[1.0, 2.0], [3.0, 4.0]]}
    assert api.render_predict(one, row=False) == {"outputs": [[1.0, 2.0], [3.0, 4.0]]}
    assert api.render_predict(two, row=True) == {"predictions": [{"y": [1.0, 2.0], "z": 5}, {"y": [3.0, 4.0], "z": 6}]}
    assert api.render_predict(two, row=False) == {"outputs": {"y": [[1.0, 2.0], [3.0, 4.0]], "z": [5, 6]}}
    assert (
        api.HTTP_STATUS[grpc.StatusCode.INVALID_ARGUMENT] == 400 and api.HTTP_STATUS[grpc.StatusCode.NOT_FOUND] == 404
    )
