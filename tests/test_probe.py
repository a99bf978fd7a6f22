"""The node link probe (issue #19 item 3): `splitdnn probe` on three "nodes" in network namespaces joined by a
bridge, every node's egress shaped by real `tc tbf` (node a: 4 mbit, b and c: 40 mbit). Each probe measures the
other two; the matrix read from their /metrics shows the shaping (a's links ten times slower than the others,
within 25 %), and probing stays within its budget: by its own counter and by the kernel's count of the bytes
node a's interface sent."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from harness.mesh import Mesh
from splitdnn.agent import netns
from splitdnn.probe import (
    FIRST_PROBE_BYTES,
    MAX_PROBE_BYTES,
    MIN_PROBE_BYTES,
    Budget,
    Peer,
    Prober,
    Server,
    bandwidth_of,
    discover,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_budget_sizes_and_spaces_probes():
    b = Budget(0.01, 0.2, 1.0)
    assert b.probe_bytes(None) == FIRST_PROBE_BYTES
    assert b.probe_bytes(500_000) == 100_000  # 0.2 s of the link
    assert b.probe_bytes(1_000) == MIN_PROBE_BYTES and b.probe_bytes(1e12) == MAX_PROBE_BYTES
    # a probe of 0.2 s of the link, then 20 s of quiet: 1 % on average
    assert b.gap_seconds(100_000, 500_000) == pytest.approx(20.0)
    assert b.gap_seconds(MAX_PROBE_BYTES, 1e9) == 5.0  # a fast link: probed less than the budget allows
    assert bandwidth_of(100_000, 0.21, 0.01) == pytest.approx(500_000)
    with pytest.raises(ValueError, match="budget"):
        Budget(0.9)


def test_peer_parse_and_cli_errors():
    assert Peer.parse("node-b=10.0.0.2:9200") == Peer("node-b", "10.0.0.2", 9200)
    for bad in ("10.0.0.2:9200", "b=10.0.0.2", "b=:9200"):
        with pytest.raises(ValueError, match="NAME=HOST:PORT"):
            Peer.parse(bad)
    for args, message in (
        (["--peer", "oops"], "expected NAME=HOST:PORT"),
        ([], "no --peer and no --peers-dns"),
        (["--peer", "b=127.0.0.1:1", "--budget", "2"], "budget 2.0"),
    ):
        p = subprocess.run(
            [sys.executable, "-m", "splitdnn", "probe", "--name", "a", *args], capture_output=True, text=True
        )
        assert p.returncode == 2 and message in p.stderr, (args, p.stderr)


def test_discovery_by_dns_and_peers_coming_and_going():
    """Probes behind one DNS name (here `localhost`) are found and named by their own answer; this node is left
    out; a peer that leaves is no longer probed and its series are removed."""
    b = Server("127.0.0.1", 0, name="b").start()
    try:
        assert discover(f"localhost:{b.port}", own_name="a") == [Peer("b", "127.0.0.1", b.port)]
        assert discover(f"localhost:{b.port}", own_name="b") == []
        updates, removed = [], []
        prober = Prober("a", Budget(0.01, 0.2, 0.1), lambda me, link, sent: updates.append(link.peer.name),
                        lambda me, link: removed.append(link.peer.name))  # fmt: skip
        prober.set_peers([Peer("b", "127.0.0.1", b.port), Peer("a", "127.0.0.1", 1)])  # itself: left out
        assert list(prober.links) == ["b"]
        deadline = time.monotonic() + 10
        while prober.links["b"].bandwidth is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert prober.links["b"].rtt and prober.links["b"].bandwidth, prober.links["b"]
        assert prober.links["b"].probe_bytes >= FIRST_PROBE_BYTES and "b" in updates
        prober.set_peers([])
        assert prober.links == {} and removed == ["b"]
        prober.stop()
    finally:
        b.stop()


NETNS_OK, NETNS_WHY = netns.available()
RATES = {"a": 4_000_000 / 8, "b": 40_000_000 / 8, "c": 40_000_000 / 8}  # egress bytes/s per node
PORT, METRICS = 9200, 9101


def metrics(mesh: Mesh, node: str) -> dict[tuple[str, str, str], float]:
    text = mesh.get(node, f"http://127.0.0.1:{METRICS}/metrics")
    out = {}
    for m in re.finditer(r'^(splitdnn_node_link_\w+)\{from="(\w)",to="(\w)"\} (\S+)$', text, re.M):
        out[(m.group(1), m.group(2), m.group(3))] = float(m.group(4))
    return out


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.skipif(not NETNS_OK, reason=f"needs network namespaces: {NETNS_WHY}")
def test_probes_measure_shaped_links_within_budget(tmp_path):
    budget = 0.01
    with Mesh(RATES) as mesh:
        procs = []
        try:
            for node in RATES:
                peers = [f"--peer={p}={mesh.addr(p)}:{PORT}" for p in RATES if p != node]
                cmd = ["ip", "netns", "exec", mesh.ns(node), sys.executable, "-m", "splitdnn", "probe"]
                cmd += ["--name", node, "--listen", f"{mesh.addr(node)}:{PORT}", *peers, "--budget", str(budget)]
                cmd += ["--metrics-port", str(METRICS)]
                log = (tmp_path / f"{node}.log").open("w")
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))

            def matrix():
                m = {}
                for node in RATES:
                    try:
                        m.update(metrics(mesh, node))
                    except subprocess.CalledProcessError:
                        return None
                bws = [k for k in m if k[0] == "splitdnn_node_link_bandwidth_bytes_per_second"]
                return m if len(bws) == 6 else None

            deadline = time.monotonic() + 60
            while (first := matrix()) is None:
                assert time.monotonic() < deadline, [(tmp_path / f"{n}.log").read_text() for n in RATES]
                time.sleep(0.5)
            t1, tx1 = time.monotonic(), mesh.tx_bytes("a")
            time.sleep(25)  # past the second bandwidth probe of a's links (~14 s after the first at 1 %)
            last = matrix()
            t2, tx2 = time.monotonic(), mesh.tx_bytes("a")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=10)

    bw = {(f, t): v for (name, f, t), v in last.items() if name.endswith("bandwidth_bytes_per_second")}
    rtt = {(f, t): v for (name, f, t), v in last.items() if name.endswith("rtt_seconds")}
    print("bandwidth (bytes/s): " + ", ".join(f"{f}->{t} {v:,.0f}" for (f, t), v in sorted(bw.items())))
    print("rtt (ms): " + ", ".join(f"{f}->{t} {v * 1e3:.3f}" for (f, t), v in sorted(rtt.items())))
    assert len(rtt) == 6 and all(0 < v < 0.05 for v in rtt.values()), rtt
    for (f, t), v in bw.items():  # the sender's egress shaping is the link's bottleneck
        assert v == pytest.approx(RATES[f], rel=0.25), (f, t, v, RATES[f])

    # the budget: what a sent to probe b and c over [t1, t2], by its own count and by the kernel's
    span = t2 - t1
    allowed = sum(budget * bw[("a", t)] * span + Budget(budget).probe_bytes(bw[("a", t)]) for t in "bc")
    echoes = 2 * 64 * (span + 1)
    probed = sum(
        last[("splitdnn_node_link_probe_bytes_total", "a", t)] - first[("splitdnn_node_link_probe_bytes_total", "a", t)]
        for t in "bc"
    )
    kernel = tx2 - tx1
    # the kernel also counts headers (~3 %), the echo replies and the ACKs for b's and c's probes of a
    acks = 0.05 * budget * span * (bw[("b", "a")] + bw[("c", "a")])
    print(
        f"a probed b and c with {probed:,.0f} B in {span:.1f} s (budget {allowed + echoes:,.0f} B); "
        f"a's interface sent {kernel:,} B; 1 % of a's links: {budget * RATES['a'] * 2 * span:,.0f} B"
    )
    assert 0 < probed <= allowed + echoes
    assert probed <= kernel <= 1.1 * (allowed + 2 * echoes) + acks
