"""A cooperative tier whose devices are separate processes, as pods are (issue #20, item 4): `splitdnn coop-device`
serves coordinators that hold the group's key; the tier's agent (`--coop-devices`) connects to each, sends its slice
and computes the slice with them. On loopback: the output equals the slice's, a port probe and a wrong key leave
the devices serving, a killed device fails only the frame in flight and is used again once it is back. In network
namespaces with real `tc tbf` links: the group's measured stage time beside what MLS predicted from the F and G it
measured on the group, and the bytes the gateway sent prove the shaped links carried the parts."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from agent_harness import predict, stub

from harness.mesh import Mesh
from splitdnn.agent import netns, runtime
from splitdnn.agent.local import free_port
from splitdnn.coop_run import KEY_ENV, DeviceLost, Group

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
KEY = "a-test-key-of-the-group-0123456789"
NETNS_OK, NETNS_WHY = netns.available()


def start_device(listen: str, log: Path, prefix: list[str] | None = None) -> subprocess.Popen:
    cmd = [*(prefix or []), sys.executable, "-m", "splitdnn", "coop-device", "--listen", listen]
    env = {**os.environ, KEY_ENV: KEY}
    return subprocess.Popen(cmd, stdout=log.open("a"), stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def wait_listening(host: str, port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"device exited with {proc.returncode}"
        try:
            socket.create_connection((host, port), timeout=1).close()  # a port probe, as the kubelet's
            return
        except OSError:
            assert time.monotonic() < deadline, f"device {host}:{port} not listening after {timeout:g} s"
            time.sleep(0.3)


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()


def test_devices_compute_the_slice_refuse_a_wrong_key_and_come_back(coop_slices, tmp_path, monkeypatch):
    addresses = [("127.0.0.1", free_port()) for _ in range(3)]
    procs = [start_device(f"{h}:{p}", tmp_path / f"device{d}.log") for d, (h, p) in enumerate(addresses)]
    group = None
    try:
        for (h, p), proc in zip(addresses, procs):
            wait_listening(h, p, proc)
        monkeypatch.setenv(KEY_ENV, KEY)
        x = np.random.default_rng(3).random((2, 28, 28, 1), dtype=np.float32)
        want = runtime.load(coop_slices, "slice0").compute({"input": x})["max_pooling2d_1"]
        group = runtime.load(coop_slices, "slice0", devices=3, coop="mls", coop_devices=addresses)
        assert isinstance(group, runtime.CoopRuntime) and group.plan.devices >= 2, group.plan
        assert len(set(group.device_names)) == 3, group.device_names  # three processes, each reporting its pid

        def diff() -> float:
            return float(np.abs(group.compute({"input": x})["max_pooling2d_1"] - want).max())

        assert diff() <= 1e-5
        slice_path = str(Path(coop_slices) / "slice0" / "model.keras")
        with pytest.raises(RuntimeError, match=f"device 0 at 127.0.0.1:{addresses[0][1]} refused the key"):
            Group(slice_path, 3, addresses=addresses, authkey=b"not-the-key-of-this-group", start_timeout=20)
        assert diff() <= 1e-5  # the probes and the refused coordinator changed nothing

        # device 0 (every plan uses it) dies: the frame in flight fails and names it ...
        procs[0].kill()
        procs[0].wait(timeout=10)
        with pytest.raises(DeviceLost, match=f"device 0 at 127.0.0.1:{addresses[0][1]}"):
            group.compute({"input": x})
        # ... and once a device answers at its address again (a restarted pod), the next frame uses it
        procs[0] = start_device(f"127.0.0.1:{addresses[0][1]}", tmp_path / "device0.log")
        wait_listening(*addresses[0], procs[0])
        assert diff() <= 1e-5
        assert "does not hold the group's key" in (tmp_path / "device0.log").read_text() + "".join(
            (tmp_path / f"device{d}.log").read_text() for d in (1, 2)
        )
    finally:
        if group is not None:
            group.close()
        stop(procs)


def test_bad_device_flags_are_named():
    def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "splitdnn", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env={k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None},
        )

    no_key = run("coop-device", "--listen", "127.0.0.1:0", env={KEY_ENV: None})  # type: ignore[dict-item]
    assert no_key.returncode != 0 and f"{KEY_ENV} must hold the group's shared key" in no_key.stderr
    bad_listen = run("coop-device", "--listen", "nowhere", env={KEY_ENV: KEY})
    assert bad_listen.returncode != 0 and "expected HOST:PORT, got 'nowhere'" in bad_listen.stderr
    mismatch = run("agent", "--slices", ".", "--slice", "slice0", "--devices", "3", "--coop-devices", "a:1,b:1")
    assert mismatch.returncode != 0 and "--coop-devices names 2 devices, --devices is 3" in mismatch.stderr


def metric(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


BUCKET = 2000  # bytes: tbf's burst, below what a device sends per frame (a 20-ms bucket would let it through unshaped)


@pytest.mark.netns
@pytest.mark.skipif(not NETNS_OK, reason=f"needs network namespaces: {NETNS_WHY}")
@pytest.mark.parametrize("mbit", [8, 80])
def test_a_group_over_shaped_links_against_its_mls_prediction(coop_slices, tmp_path, mbit):
    rate = mbit * 1e6 / 8  # bytes/s on every node's egress: the gateway's and each device's
    nodes = {"gw": rate, "d0": rate, "d1": rate, "d2": rate}
    procs: list[subprocess.Popen] = []
    with Mesh(nodes, tag="co", burst_bytes=BUCKET) as mesh:
        host = mesh.attach_host()
        try:
            for d in range(3):
                node = f"d{d}"
                procs.append(start_device(f"{mesh.addr(node)}:8600", tmp_path / f"{node}.log", mesh.run(node)))
            devices = ",".join(f"{mesh.addr(f'd{d}')}:8600" for d in range(3))
            agent = [sys.executable, "-m", "splitdnn", "agent", "--slices", coop_slices, "--slice", "slice0"]
            agent += ["--host", mesh.addr("gw"), "--port", "8500", "--metrics-port", "9100", "--si", "coop"]
            agent += ["--tier", "device", "--runtime", "tensorflow", "--devices", "3", "--coop", "mls"]
            agent += ["--coop-devices", devices]
            log = tmp_path / "agent.log"
            env = {**os.environ, KEY_ENV: KEY}
            procs.append(
                subprocess.Popen(mesh.run("gw", *agent), stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
            )
            client, channel = stub(f"{mesh.addr('gw')}:8500")
            x = np.random.default_rng(5).random((1, 28, 28, 1), dtype=np.float32)
            want = runtime.load(coop_slices, "slice0").compute({"input": x})["max_pooling2d_1"]
            deadline = time.monotonic() + 300
            while True:
                assert procs[-1].poll() is None, log.read_text()[-3000:]
                try:
                    predict(client, {"input": x}, model="cnn14", timeout=30)
                    break
                except Exception:  # noqa: BLE001 - not serving yet
                    assert time.monotonic() < deadline, log.read_text()[-3000:]
                    time.sleep(1)
            metrics_url = f"http://{mesh.addr('gw')}:9100/metrics"
            before = metric(mesh.get("gw", metrics_url), "splitdnn_stage_compute_seconds_sum")
            sent_before = {d: mesh.tx_bytes(f"d{d}") for d in range(3)}
            frames, worst = 8, 0.0
            for _ in range(frames):
                got = predict(client, {"input": x}, model="cnn14", timeout=60)["max_pooling2d_1"]
                worst = max(worst, float(np.abs(got - want).max()))
            sent = max(mesh.tx_bytes(f"d{d}") - sent_before[d] for d in range(3)) / frames
            text = mesh.get("gw", metrics_url)
            channel.close()
        finally:
            stop(procs)
    assert host
    predicted = metric(text, "splitdnn_coop_predicted_seconds")
    stage = (metric(text, "splitdnn_stage_compute_seconds_sum") - before) / frames
    plan = re.search(r'splitdnn_coop_predicted_seconds\{[^}]*blocks="([^"]*)"', text)
    print(
        f"3 devices on {mbit} mbit links: MLS blocks {plan.group(1) if plan else '?'}, predicted "
        f"{predicted * 1e3:.1f} ms, measured stage {stage * 1e3:.1f} ms per frame ({stage / predicted:.2f}x); the "
        f"busiest device sent {sent / 1e3:.1f} kB per frame, {sent / rate * 1e3:.1f} ms at the link's rate"
    )
    assert worst <= 1e-5
    assert predicted > 0 and plan is not None
    # the parts crossed the shaped links: a frame's stage lasts at least as long as a device's link needs for what
    # it sent back beyond the bucket (devices talk only to the gateway; frames are sequential, the bucket refills)
    assert sent > BUCKET
    assert stage >= 0.9 * (sent - BUCKET) / rate, (stage, sent, rate)
