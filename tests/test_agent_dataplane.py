"""The data plane for real: `splitdnn agent` processes, real gRPC, real TF slices of CNN14.

Three agents in three network namespaces joined by veth pairs (root only, marker `netns`): outputs equal the full
model, bad requests get INVALID_ARGUMENT, tensors above 4 MB cross, `tc` rate shaping on a veth limits what the
agent measures, and `splitdnn netem apply/clear` on a real interface. What the kernel's sch_netem does to a link
(delay, jitter, loss) is measured in test_netem_kernel.py, which scripts/netem-vm.sh runs in a VM whose kernel has
it. Loopback runs (overload, in-process delay, `splitdnn run`) are in test_agent_run.py.
"""

import json
import time

import grpc
import numpy as np
import pytest
from agent_harness import frame, predict, slices_dir, splitdnn, start_chain, stub, tc_show  # noqa: F401

from splitdnn.agent import netns
from splitdnn.agent.local import stop_all
from splitdnn.agent.metrics import scrape, value

NETNS_OK, NETNS_WHY = netns.available()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.skipif(not NETNS_OK, reason=f"data-plane netns tests: {NETNS_WHY}"),
]

METRICS = (
    "splitdnn_frames_total",
    "splitdnn_stage_compute_seconds_count",
    "splitdnn_link_transfer_seconds_count",
    "splitdnn_link_bytes_total",
    "splitdnn_link_rtt_seconds",
    "splitdnn_link_bandwidth_bytes_per_second",
    "splitdnn_inflight_frames",
    "splitdnn_queue_depth",
    "splitdnn_slice_info",
    "splitdnn_link_emulation_info",
)


@pytest.fixture(scope="module")
def chain_agents(slices_dir, tmp_path_factory):
    if not NETNS_OK:
        pytest.skip(f"data-plane netns tests: {NETNS_WHY}")
    tmp = tmp_path_factory.mktemp("netns-agents")
    chain = netns.Chain(3).create()
    agents = []
    try:
        # maxMessageBytes 500000 as in Cho 2021 Type 1: everything above is chunked
        specs = [{"name": n, "maxMessageBytes": 500000} for n in ("device", "edge", "cloud")]
        agents = start_chain(slices_dir, tmp, specs, chain=chain)
        yield chain, agents
    finally:
        stop_all(agents)
        chain.destroy()


@pytest.mark.parametrize("batch", [1, 8])
def test_outputs_equal_the_full_model(chain_agents, cnn14_model, batch):
    _, agents = chain_agents
    client, channel = stub(agents[0].grpc_addr)
    x = frame(batch, seed=batch)
    out = predict(client, {"input": x})
    channel.close()
    assert list(out) == ["dense_1"] and out["dense_1"].shape == (batch, 10)
    assert np.abs(out["dense_1"] - np.asarray(cnn14_model(x, training=False))).max() <= 1e-5


def test_tensors_above_4mb_are_chunked(chain_agents, cnn14_model):
    _, agents = chain_agents
    client, channel = stub(agents[0].grpc_addr)
    x = frame(64, seed=9)  # the device sends 64 × 26×26×32 float32 = 5.5 MB to the edge, in 500 kB chunks
    before = value(scrape(agents[0].metrics_url), "splitdnn_link_bytes_total")
    out = predict(client, {"input": x})
    channel.close()
    assert np.abs(out["dense_1"] - np.asarray(cnn14_model(x, training=False))).max() <= 1e-5
    assert value(scrape(agents[0].metrics_url), "splitdnn_link_bytes_total") - before > 5_000_000


@pytest.mark.parametrize(
    "tensors, model, message",
    [
        ({"image": frame()}, "cnn14", "missing input 'input'; unexpected input 'image'"),
        ({"input": frame().astype(np.float64)}, "cnn14", "dtype float64, expected float32"),
        ({"input": frame()[:, :27]}, "cnn14", "shape [1, 27, 28, 1], expected [None, 28, 28, 1]"),
        ({"input": frame()[0]}, "cnn14", "shape [28, 28, 1]"),
        ({"input": frame()}, "resnet", "model 'resnet' is not served here"),
    ],
)
def test_bad_requests_get_invalid_argument_and_the_agent_keeps_serving(chain_agents, tensors, model, message):
    _, agents = chain_agents
    client, channel = stub(agents[0].grpc_addr)
    with pytest.raises(grpc.RpcError) as err:
        predict(client, tensors, model=model, timeout=20)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    assert predict(client, {"input": frame()})["dense_1"].shape == (1, 10)
    channel.close()


def test_one_message_requests_go_unary_and_streams_remain_for_an_earlier_next_tier(chain_agents, cnn14_model):
    """A frame that fits one message crosses on /splitdnn.Link/PredictOne (the receiver says its own time in the
    trailing metadata); garbage there is INVALID_ARGUMENT. A next tier without the method (an earlier version,
    mid-rollout) makes the sender fall back to the chunked stream for good, and the frame still gets its answer."""
    from concurrent import futures

    from splitdnn.agent.downstream import CHUNKED_METHOD, ONE_METHOD, SERVER_SECONDS, Downstream
    from splitdnn.agent.link import LinkEmulator, LinkParams
    from splitdnn.agent.metrics import AgentMetrics
    from splitdnn.agent.wire import predict_request

    _, agents = chain_agents
    conv = np.asarray(cnn14_model.get_layer("conv2d")(frame(2, seed=4)))
    request = predict_request("cnn14", {"conv2d": conv}).SerializeToString()  # 173 kB: one 500 kB message
    with grpc.insecure_channel(agents[1].grpc_addr) as channel:  # the edge tier, as the device calls it
        reply, call = channel.unary_unary(ONE_METHOD).with_call(request, timeout=30)
        assert float(dict(call.trailing_metadata())[SERVER_SECONDS]) > 0
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(ONE_METHOD)(b"\xff garbage", timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a PredictRequest" in err.value.details()

    # an earlier next tier: only the chunked stream (it acknowledges, then answers)
    def chunked(request_iterator, context):
        b"".join(request_iterator)
        yield b""
        yield reply

    old = grpc.server(futures.ThreadPoolExecutor(2))
    old.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "splitdnn.Link", {"PredictChunked": grpc.stream_stream_rpc_method_handler(chunked)}
            ),
        )
    )
    port = old.add_insecure_port("127.0.0.1:0")
    old.start()
    link = Downstream(f"127.0.0.1:{port}", LinkEmulator(LinkParams()), AgentMetrics("t", "t"), 500_000)
    try:
        assert link.unary and link.forward(request, timeout=30) == reply
        assert not link.unary  # it asked PredictOne once, got UNIMPLEMENTED, and streams from now on
        assert link.forward(request, timeout=30) == reply
    finally:
        link.close()
        old.stop(None)
    assert CHUNKED_METHOD == "/splitdnn.Link/PredictChunked"


def test_middle_tier_validates_its_own_inputs(chain_agents):
    chain, agents = chain_agents
    client, channel = stub(agents[1].grpc_addr)
    with pytest.raises(grpc.RpcError) as err:
        predict(client, {"input": frame()}, timeout=20)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing input 'conv2d'" in err.value.details()
    channel.close()


def test_model_metadata_describes_the_whole_model_at_the_first_tier(chain_agents):
    from tensorflow_serving.apis import get_model_metadata_pb2

    _, agents = chain_agents
    client, channel = stub(agents[0].grpc_addr)
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = "cnn14"
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    client.GetModelMetadata(req, timeout=20).metadata["signature_def"].Unpack(sig_map)
    sig = sig_map.signature_def["serving_default"]
    assert list(sig.inputs) == ["input"] and list(sig.outputs) == ["dense_1"]
    assert [d.size for d in sig.inputs["input"].tensor_shape.dim] == [-1, 28, 28, 1]
    channel.close()


def test_metrics_have_the_contract_names_and_labels(chain_agents):
    _, agents = chain_agents
    client, channel = stub(agents[0].grpc_addr)
    for seed in range(3):
        predict(client, {"input": frame(seed=seed)})
    channel.close()
    time.sleep(1.5)  # at least one ping after the warm-up
    first = scrape(agents[0].metrics_url)
    names = {n for n, _ in first}
    assert set(METRICS) <= names, set(METRICS) - names
    assert all({"si", "tier"} <= dict(lab).keys() for n, lab in first if n.startswith("splitdnn_"))
    assert value(first, "splitdnn_slice_info", slice="slice0", cut="conv2d", model="cnn14", tier="device") == 1
    assert value(first, "splitdnn_link_emulation_info", path="none") == 1
    assert value(first, "splitdnn_link_rtt_seconds") > 0
    last = scrape(agents[2].metrics_url)
    assert value(last, "splitdnn_slice_info", slice="slice2", cut="", tier="cloud") == 1
    assert value(last, "splitdnn_stage_compute_seconds_count") >= 3


def test_tc_rate_shaping_on_a_veth_limits_the_measured_bandwidth(chain_agents):
    chain, agents = chain_agents
    dev, ns = chain.egress_dev(0), chain.ns(0)
    client, channel = stub(agents[0].grpc_addr)
    x = frame(16, seed=3)  # 1.38 MB from device to edge

    def transfer_seconds():
        s0 = scrape(agents[0].metrics_url)
        predict(client, {"input": x})
        s1 = scrape(agents[0].metrics_url)
        return (
            value(s1, "splitdnn_link_transfer_seconds_sum") - value(s0, "splitdnn_link_transfer_seconds_sum"),
            value(s1, "splitdnn_link_bytes_total") - value(s0, "splitdnn_link_bytes_total"),
        )

    free_seconds, nbytes = transfer_seconds()
    proc = splitdnn("netem", "apply", "--dev", dev, "--rate", "8mbit", ns=ns)  # 1 MB/s
    try:
        assert proc.returncode == 0, proc.stderr
        assert ("tbf" in tc_show(dev, ns)) or ("htb" in tc_show(dev, ns))
        shaped_seconds, _ = transfer_seconds()
        bandwidth = value(scrape(agents[0].metrics_url), "splitdnn_link_bandwidth_bytes_per_second")
    finally:
        splitdnn("netem", "clear", "--dev", dev, ns=ns)
        channel.close()
    assert shaped_seconds >= 0.8 * nbytes / 1e6  # cannot beat the shaped wire
    assert shaped_seconds > 2 * free_seconds
    assert bandwidth < 1.5e6  # what re-planning reads follows the shaping (smoothed, so above the true 1 MB/s)


def test_netem_apply_and_clear_on_a_real_interface(chain_agents, tmp_path):
    chain, _ = chain_agents
    dev, ns = chain.egress_dev(2), chain.ns(2)
    report = tmp_path / "netem.json"
    proc = splitdnn(
        "netem",
        "apply",
        "--dev",
        dev,
        "--delay",
        "20ms",
        "--jitter",
        "1ms",
        "--loss",
        "0.5%",
        "--rate",
        "50mbit",
        "--report",
        report,
        ns=ns,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(report.read_text())
    shown = tc_show(dev, ns)
    assert result["applied"]["rate"] == "50mbit" and ("tbf" in shown or "htb" in shown)
    if result["kernel"]["netem"]:
        assert "netem" in shown and "delay" in result["applied"] and result["not_applied"] == {}
    else:  # this kernel has no sch_netem: the report hands delay/jitter/loss to the agent's in-process emulation
        assert result["not_applied"] == {"delay": "20ms", "jitter": "1ms", "loss": "0.5%"}
        assert "NOT applied" in proc.stdout
    assert splitdnn("netem", "clear", "--dev", dev, ns=ns).returncode == 0
    assert "tbf" not in tc_show(dev, ns) and "netem" not in tc_show(dev, ns)
    bad = splitdnn("netem", "apply", "--dev", dev, "--delay", "20", "--report", report, ns=ns)
    assert bad.returncode == 2 and "bad duration '20'" in bad.stderr
    missing = splitdnn("netem", "apply", "--dev", "nosuchdev0", "--rate", "1mbit", ns=ns)
    assert missing.returncode == 2 and "no network device" in missing.stderr
