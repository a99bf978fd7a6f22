"""Pure pieces of the data plane: wire format, chunking, link emulation and measurement, stage, frame source,
netem command planning and the init-container report. No processes, no kernel."""

import json
import subprocess
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitdnn.agent import netem
from splitdnn.agent.link import LinkEmulator, LinkMeter, LinkParams, TokenBucket
from splitdnn.agent.server import emulation_plan
from splitdnn.agent.source import OUTCOMES, FrameSource, synthetic_frames
from splitdnn.agent.stage import QueueFull, Stage
from splitdnn.agent.wire import (
    TooLarge,
    WireError,
    from_tensor_proto,
    join_chunks,
    split_chunks,
    tensors_of,
    to_tensor_proto,
)


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


# --- wire ---------------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), max_size=4),
    dtype=st.sampled_from(["float32", "float64", "int32", "int64", "uint8", "int8", "bool", "float16"]),
    seed=st.integers(0, 1000),
)
def test_tensor_proto_round_trip_uses_tensor_content(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    array = (rng.random(shape) * 100).astype(dtype)
    proto = to_tensor_proto(array)
    assert proto.tensor_content == array.tobytes()
    assert not proto.float_val and not proto.int_val
    back = from_tensor_proto(proto)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_tensor_proto_matches_tensorflow():
    import tensorflow as tf

    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(tf.make_ndarray(to_tensor_proto(array)), array)
    np.testing.assert_array_equal(from_tensor_proto(tf.make_tensor_proto(array)), array)  # TF's own encoding
    np.testing.assert_array_equal(from_tensor_proto(tf.make_tensor_proto([1.5, 2.5], dtype=tf.float32)), [1.5, 2.5])


def test_bad_tensor_content_is_named():
    proto = to_tensor_proto(np.zeros((2, 3), np.float32))
    proto.tensor_content = proto.tensor_content[:-4]
    with pytest.raises(WireError, match="20 bytes.*needs 24"):
        from_tensor_proto(proto)


def claimed(dims, dtype=1, **values):
    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto(dtype=dtype, **values)
    for d in dims:
        proto.tensor_shape.dim.add(size=d)
    return proto


def test_claimed_size_is_checked_against_the_limit_before_allocating():
    import tracemalloc

    # 40 GB; wraps around to 0 in int64; empty but past numpy's index range
    protos = [claimed(dims, float_val=[1.0]) for dims in ([100_000, 100_000], [2**32, 2**32], [0, 2**31, 2**41])]
    tracemalloc.start()
    try:
        for proto in protos:
            with pytest.raises(TooLarge, match="max-request-bytes"):
                from_tensor_proto(proto, max_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # nothing of the claimed size was allocated
    # [2**32, 2**32] wraps around to 0 elements in int64: without the exact count, empty content would match it
    with pytest.raises(WireError, match="needs 73786976294838206464"):
        from_tensor_proto(claimed([2**32, 2**32], tensor_content=b"\0" * 4))


def test_malformed_tensors_are_wire_errors():
    with pytest.raises(WireError, match="at most 32"):
        from_tensor_proto(claimed([1] * 70, float_val=[1.0]))
    with pytest.raises(WireError, match="outside the range of uint8"):
        from_tensor_proto(claimed([1], dtype=4, int_val=[-174]))
    with pytest.raises(WireError, match="negative"):
        from_tensor_proto(claimed([-1, 3]))


def test_tensors_share_one_limit():
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    for name in ("a", "b"):
        to_tensor_proto(np.zeros(200, np.float32), request.inputs[name])  # 800 bytes each
    assert set(tensors_of(request.inputs, max_bytes=1600)) == {"a", "b"}
    with pytest.raises(TooLarge, match="input '[ab]'.* claims 800 bytes, over the limit of 200 "):
        tensors_of(request.inputs, max_bytes=1000)  # (a protobuf map's order is not the order of insertion)


@settings(deadline=None)
@given(data=st.binary(max_size=5000), size=st.integers(1, 700))
def test_chunks_reassemble_and_respect_the_limit(data, size):
    chunks = split_chunks(data, size)
    assert join_chunks(chunks) == data
    assert all(len(c) <= size for c in chunks)
    assert len(chunks) == max(1, -(-len(data) // size))


# --- link ---------------------------------------------------------------------------------------------------------


def test_token_bucket_serializes_concurrent_senders():
    clock = FakeClock()
    bucket = TokenBucket(1000.0, clock)
    assert bucket.reserve(500) == pytest.approx(0.5)
    assert bucket.reserve(500) == pytest.approx(1.0)  # queued behind the first
    clock.now = 5.0
    assert bucket.reserve(100) == pytest.approx(5.1)  # an idle wire does not bank credit


def test_emulator_rate_and_delay():
    clock = FakeClock()
    emu = LinkEmulator(LinkParams(delay=0.25, rate=1000.0), clock=clock, sleep=clock.sleep)
    out = list(emu.send([b"x" * 500, b"y" * 500]))
    assert out == [b"x" * 500, b"y" * 500]
    assert clock.now == pytest.approx(1.0 + 0.25)  # bytes/rate + one propagation delay


def test_emulator_jitter_stays_in_range_and_loss_costs_a_timeout():
    clock = FakeClock()
    emu = LinkEmulator(LinkParams(delay=0.1, jitter=0.05), seed=3, clock=clock, sleep=clock.sleep)
    draws = [emu.propagation() for _ in range(200)]
    assert min(draws) >= 0.05 and max(draws) <= 0.15 and np.std(draws) > 0.01
    clock2 = FakeClock()
    lossy = LinkEmulator(LinkParams(loss=0.5, delay=0.01), seed=1, clock=clock2, sleep=clock2.sleep)
    for _ in range(50):
        list(lossy.send([b"z"]))
    retransmits = (clock2.now - 50 * 0.01) / lossy.rto
    assert 20 <= retransmits <= 90  # ~50 expected at 50% loss


def test_inactive_emulator_never_sleeps():
    emu = LinkEmulator(LinkParams(), sleep=lambda s: pytest.fail("slept"))
    assert list(emu.send([b"a", b"b"])) == [b"a", b"b"]
    emu.delay_small_message()


def test_meter_estimates_bandwidth_from_transfers_minus_rtt():
    meter = LinkMeter(alpha=0.5)
    meter.observe_rtt(0.2)
    assert meter.observe_rtt(0.0) == pytest.approx(0.1)  # smoothed
    assert meter.observe_transfer(1000, 0.105) is None  # latency-dominated: no estimate rather than a wrong one
    assert meter.observe_transfer(1000, 0.5) is None  # too small to say anything, however slow
    assert meter.observe_transfer(1_000_000, 2.1) == pytest.approx(500_000)
    assert meter.observe_transfer(1000, 0.105) == pytest.approx(500_000)  # kept
    assert meter.observe_transfer(1_000_000, 0.6) == pytest.approx(2_000_000)  # follows a faster link at once


# --- stage --------------------------------------------------------------------------------------------------------


def test_stage_overhead_is_ratio_times_compute():
    clock = FakeClock()

    def compute(x):
        clock.now += 0.02  # 20 ms of "compute"
        return x * 2

    done = []
    stage = Stage(compute, overhead_ratio=5, on_done=done.append, clock=clock, sleep=clock.sleep)
    assert stage(21, timeout=5) == 42
    stage.close()
    assert clock.slept == [pytest.approx(0.1)]
    assert done == [pytest.approx(0.12)]


def test_stage_one_at_a_time_with_bounded_queue():
    gate = threading.Event()
    running = []

    def compute(x):
        running.append(x)
        gate.wait(5)
        return x

    stage = Stage(compute, queue_size=2)
    first = stage.submit(1)
    while not running:
        time.sleep(0.001)
    queued = [stage.submit(2), stage.submit(3)]
    assert stage.depth == 2
    with pytest.raises(QueueFull):
        stage.submit(4)
    assert running == [1]  # nothing else runs while frame 1 computes
    gate.set()
    assert [f.result(5) for f in [first, *queued]] == [1, 2, 3]
    stage.close()


def test_stage_errors_reach_the_caller():
    stage = Stage(lambda x: 1 / x)
    with pytest.raises(ZeroDivisionError):
        stage(0, timeout=5)
    assert stage(4, timeout=5) == 0.25
    stage.close()


# --- source -------------------------------------------------------------------------------------------------------


def test_synthetic_frames_are_seeded():
    inputs = [{"name": "input", "shape": [None, 28, 28, 1], "dtype": "float32"}]
    a, b = synthetic_frames(inputs, 7), synthetic_frames(inputs, 7)
    assert a(3)["input"].shape == (1, 28, 28, 1)
    np.testing.assert_array_equal(a(3)["input"], b(3)["input"])
    assert not np.array_equal(a(3)["input"], a(4)["input"])


def test_source_accounts_for_every_frame_under_overload():
    def pipeline(frame, timeout):
        i = frame["i"]
        if i % 7 == 3:
            raise RuntimeError("boom")
        time.sleep(0.03 if i % 5 else 0.08)

    seen = []
    source = FrameSource(
        lambda i: {"i": i},
        pipeline,
        fps=400,
        frames=200,
        deadline=0.05,
        max_inflight=3,
        on_outcome=lambda o, lat: seen.append(o),
    )
    snapshots = []
    poller = threading.Thread(
        target=lambda: [snapshots.append(source.outcomes.snapshot()) or time.sleep(0.005) for _ in range(100)]
    )
    poller.start()
    result = source.run()
    poller.join()
    assert result["offered"] == 200 == sum(result[o] for o in OUTCOMES) == len(seen)
    assert result["inflight"] == 0
    assert result["dropped"] > 0 and result["completed"] > 0 and result["failed"] > 0 and result["late"] > 0
    assert result["drop_rate"] == pytest.approx((200 - result["completed"]) / 200)
    for snap in snapshots:  # the invariant holds at every instant, not only at the end
        assert snap["offered"] == sum(snap[o] for o in OUTCOMES)
        assert 0 <= snap["inflight"] <= 3


def test_source_stops_when_asked():
    source = FrameSource(lambda i: {}, lambda f, t: None, fps=50, frames=0, deadline=1, max_inflight=2)
    threading.Timer(0.2, source.stop).start()
    result = source.run()
    assert 2 <= result["offered"] <= 30


# --- netem planning and the init-container report -----------------------------------------------------------------

ALL = dict.fromkeys(netem.QDISCS, True)


def test_plan_with_netem_uses_netem_and_a_tbf_child_for_rate():
    commands, applied, missing = netem.plan("eth0", netem.NetemParams("252.5ms", "10ms", "1%", "4mbit", 1000), ALL)
    assert commands[0] == [
        "tc",
        "qdisc",
        "replace",
        "dev",
        "eth0",
        "root",
        "handle",
        "1:",
        "netem",
        "limit",
        "1000",
        "delay",
        "252500us",
        "10000us",
        "loss",
        "1%",
    ]
    assert commands[1][:9] == ["tc", "qdisc", "replace", "dev", "eth0", "parent", "1:1", "handle", "10:"]
    assert commands[1][9:12] == ["tbf", "rate", "4000000bit"]
    assert set(applied) == {"delay", "jitter", "loss", "rate", "limit"} and missing == {}


def test_plan_without_netem_shapes_rate_only_and_reports_the_rest():
    kernel = {"netem": False, "tbf": True, "htb": True}
    commands, applied, missing = netem.plan("eth0", netem.NetemParams(delay="5ms", rate="8mbit"), kernel)
    assert commands == [["tc", "qdisc", "replace", "dev", "eth0", "root", "handle", "1:", *netem.tbf_args("8mbit")]]
    assert applied == {"rate": "8mbit"} and missing == {"delay": "5ms"}
    commands, applied, _ = netem.plan(
        "eth0", netem.NetemParams(rate="8mbit"), {"netem": False, "tbf": False, "htb": True}
    )
    assert commands[0][-3:] == ["htb", "default", "10"] and commands[1][:3] == ["tc", "class", "replace"]
    assert applied == {"rate": "8mbit"}
    commands, applied, missing = netem.plan("eth0", netem.NetemParams(delay="5ms"), {})
    assert commands == [] and applied == {} and missing == {"delay": "5ms"}


@pytest.mark.parametrize(
    "params, message",
    [
        (netem.NetemParams(delay="5"), "bad duration"),
        (netem.NetemParams(rate="4mb"), "bad rate"),
        (netem.NetemParams(loss="120%"), "more than 100%"),
        (netem.NetemParams(jitter="5ms"), "needs a delay"),
        (netem.NetemParams(delay="5ms", jitter="10ms"), "larger than the delay"),
        (netem.NetemParams(delay="5ms", limit=0), "bad limit"),
    ],
)
def test_bad_parameters_are_errors(params, message):
    with pytest.raises(netem.NetemError, match=message):
        params.validate()


def test_apply_on_a_kernel_without_netem_writes_the_report(tmp_path):
    ran = []

    def runner(argv):
        ran.append(argv)
        unknown = "netem" in argv and "replace" in argv
        return subprocess.CompletedProcess(
            argv, 2 if unknown else 0, "", "Error: Specified qdisc kind is unknown.\n" if unknown else ""
        )

    report = tmp_path / "run" / "netem.json"
    result = netem.apply("eth0", netem.NetemParams(delay="250ms", loss="1%", rate="4mbit"), runner, str(report))
    assert result["kernel"] == {"netem": False, "tbf": True, "htb": True}
    assert result["applied"] == {"rate": "4mbit"} and result["not_applied"] == {"delay": "250ms", "loss": "1%"}
    assert json.loads(report.read_text()) == result
    assert ran[-1][5:9] == ["root", "handle", "1:", "tbf"]


def test_apply_without_tc_or_permission_still_reports_and_does_not_fail(tmp_path):
    def no_tc(argv):
        raise FileNotFoundError("tc")

    result = netem.apply("eth0", netem.NetemParams(delay="5ms", rate="1mbit"), no_tc, str(tmp_path / "r.json"))
    assert result["applied"] == {} and result["not_applied"] == {"delay": "5ms", "rate": "1mbit"}
    assert result["errors"]

    def denied(argv):
        return subprocess.CompletedProcess(argv, 2, "", "RTNETLINK answers: Operation not permitted\n")

    result = netem.apply("eth0", netem.NetemParams(rate="1mbit"), denied)
    assert result["applied"] == {} and result["not_applied"] == {"rate": "1mbit"} and result["errors"]


def test_image_frames_resize_and_cycle(tmp_path):
    from PIL import Image

    from splitdnn.agent.source import image_frames

    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("L", (10, 10), 0).save(tmp_path / "b.jpg")
    make = image_frames(tmp_path, [{"name": "input", "shape": [None, 28, 28, 1], "dtype": "float32"}])
    a, b, a2 = make(0)["input"], make(1)["input"], make(2)["input"]
    assert a.shape == (1, 28, 28, 1) and a.dtype == np.float32
    assert 0 < a.mean() < 1 and b.max() == 0 and np.array_equal(a, a2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        image_frames(tmp_path / "empty", [{"name": "x", "shape": [None, 2, 2, 1], "dtype": "float32"}])


def test_emulation_plan_follows_the_report():
    flags = {"delay": "250ms", "jitter": None, "loss": "1%", "rate": "4mbit"}
    params, applied, paths = emulation_plan(flags, None)  # no report: emulate everything given
    assert params == LinkParams(delay=0.25, loss=0.01, rate=500000.0) and applied == () and paths == {"inprocess"}
    params, applied, paths = emulation_plan(flags, {"applied": {"rate": "4mbit"}, "not_applied": {"delay": "250ms"}})
    assert params == LinkParams(delay=0.25, loss=0.01) and applied == ("rate",) and paths == {"tc", "inprocess"}
    params, _, paths = emulation_plan(flags, {"applied": {"delay": "", "loss": "", "rate": ""}})
    assert not params.active and paths == {"tc"}
    assert emulation_plan({}, None)[2] == {"none"}


def test_a_second_agent_server_on_a_taken_port_fails():
    """gRPC servers share a port by default (SO_REUSEPORT) and the kernel then splits connections between them;
    an agent must refuse to start instead (two local runs at once, a stale agent)."""
    from splitdnn.agent.server import build_server

    first = build_server(None)
    port = first.add_insecure_port("127.0.0.1:0")
    first.start()
    try:
        second = build_server(None)
        try:
            bound = second.add_insecure_port(f"127.0.0.1:{port}")
        except RuntimeError:
            bound = 0
        assert bound == 0
    finally:
        first.stop(None)


def test_settings_from_the_environment_are_read_at_start_up():
    from splitdnn.agent.server import AgentConfig, env_settings

    assert env_settings({}) == {}
    config = AgentConfig(slices="s", slice="slice0", port=1, **env_settings({"SPLITDNN_RECONNECT_SECONDS": "2.5"}))
    assert config.reconnect_seconds == 2.5 and AgentConfig(slices="s", slice="slice0", port=1).reconnect_seconds == 10
    with pytest.raises(ValueError, match="SPLITDNN_RECONNECT_SECONDS='soon'"):
        env_settings({"SPLITDNN_RECONNECT_SECONDS": "soon"})
