"""The node link probe (issue #19, item 3): one `splitdnn probe` per candidate node measures round-trip time and
bandwidth to every other node at a bounded cost, and exports the link matrix for Prometheus:

    splitdnn_node_link_rtt_seconds{from,to}                    median of the last 5 UDP echoes
    splitdnn_node_link_bandwidth_bytes_per_second{from,to}     the last bulk transfer from `from` to `to`
    splitdnn_node_link_probe_bytes_total{from,to}              what probing that link has cost (payload bytes)

Wire protocol, one port for both (so one Service/hostPort serves a node):
  UDP: every datagram (≤ 64 bytes) is echoed back: the RTT probe, one per `rtt_interval` per peer.
  TCP: the client sends b"SDP1" + a big-endian uint64 length + that many bytes; the server reads them all and
       answers b"K". The time from the first byte sent to b"K" is one RTT plus length / bandwidth.
       b"SDPN" + length 0 asks the node's name instead (answered with the name and a newline): how probes that
       find each other by DNS (`--peers-dns`, a headless Service over a DaemonSet) learn the `to` label.

Cost bound: a bulk probe is sized to fill the link for about `probe_seconds` at the last measured bandwidth (first
probe: 64 KiB; at most 1 MiB), and the next one waits until the bytes sent stay within `budget` of that
bandwidth: the gap is size / (budget × bandwidth), i.e. probe_seconds / budget (20 s at 0.2 s and 1 %), and at
least `min_gap` (5 s). The RTT echoes add ~64 B/s per peer. So on any link the probe's average load is
≤ budget × capacity + 64 B/s, whatever the link's speed.
"""

from __future__ import annotations

import socket
import statistics
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

MAGIC = b"SDP1"
NAME_MAGIC = b"SDPN"
HEADER = struct.Struct("!4sQ")
PING_BYTES = 64
FIRST_PROBE_BYTES = 64 * 1024
MIN_PROBE_BYTES = 16 * 1024
# A probe of a fast link lasts less than probe_seconds rather than flood it, and when a link's capacity drops
# abruptly the next probe, sized for the old capacity, cannot hog the new one for long (1 MiB at 2 mbit: 4 s).
MAX_PROBE_BYTES = 1024 * 1024
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Budget:
    fraction: float = 0.01  # the share of a link's measured capacity probing may use on average
    probe_seconds: float = 0.2  # how long one bulk probe fills the link
    rtt_interval: float = 1.0  # seconds between RTT echoes per peer
    min_gap: float = 5.0  # seconds between bandwidth probes of a link however fast it is (cost then < budget)

    def __post_init__(self):
        if not 0 < self.fraction <= 0.5:
            raise ValueError(f"budget {self.fraction}: must be > 0 and ≤ 0.5 (a share of the link's capacity)")
        if self.probe_seconds <= 0 or self.rtt_interval <= 0:
            raise ValueError("probe seconds and RTT interval must be > 0")

    def probe_bytes(self, bandwidth: float | None) -> int:
        """The next bulk probe's size: `probe_seconds` of the last measured bandwidth, within fixed bounds."""
        if bandwidth is None:
            return FIRST_PROBE_BYTES
        return int(min(MAX_PROBE_BYTES, max(MIN_PROBE_BYTES, bandwidth * self.probe_seconds)))

    def gap_seconds(self, sent_bytes: int, bandwidth: float) -> float:
        """How long to wait after a probe of `sent_bytes` so that probing averages ≤ fraction × bandwidth."""
        return max(self.min_gap, sent_bytes / (self.fraction * bandwidth))


def bandwidth_of(sent_bytes: int, seconds: float, rtt: float | None) -> float:
    """Bytes per second of a timed transfer whose time includes one round trip (the first byte out, the ack back)."""
    transfer = seconds - (rtt or 0.0)
    return sent_bytes / max(transfer, seconds * 0.05, 1e-6)


@dataclass(frozen=True)
class Peer:
    name: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Peer:
        """NAME=HOST:PORT"""
        name, sep, address = text.partition("=")
        host, colon, port = address.rpartition(":")
        if not (sep and colon and name and host and port.isdigit()):
            raise ValueError(f"peer {text!r}: expected NAME=HOST:PORT")
        return cls(name, host.strip("[]"), int(port))


class Server:
    """Answers the peers' probes: UDP echo and TCP bulk sink (and its name), on one address and port."""

    def __init__(self, host: str, port: int, name: str = ""):
        self.name = name
        self.tcp = socket.create_server((host, port))
        self.port = self.tcp.getsockname()[1]  # port 0: the kernel's choice, then the same port for UDP
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((host, self.port))
        self._stop = threading.Event()

    def start(self) -> Server:
        threading.Thread(target=self._echo, daemon=True, name="probe-udp").start()
        threading.Thread(target=self._accept, daemon=True, name="probe-tcp").start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for s in (self.udp, self.tcp):
            s.close()

    def _echo(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.udp.recvfrom(PING_BYTES)
                self.udp.sendto(data, addr)
            except OSError:
                return

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._sink, args=(conn,), daemon=True, name="probe-sink").start()

    def _sink(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(120)
            try:
                head = _recv_exactly(conn, HEADER.size)
                magic, length = HEADER.unpack(head)
                if magic == NAME_MAGIC:
                    conn.sendall(self.name.encode() + b"\n")
                    return
                if magic != MAGIC or length > MAX_PROBE_BYTES:
                    return
                left = length
                while left:
                    chunk = conn.recv(min(CHUNK, left))
                    if not chunk:
                        return
                    left -= len(chunk)
                conn.sendall(b"K")
            except OSError:
                return


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        buf += chunk
    return buf


def ping(peer: Peer, timeout: float = 1.0) -> float | None:
    """One UDP echo's round-trip time (None: lost or refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        payload = struct.pack("!d", time.perf_counter()).ljust(PING_BYTES, b"\0")
        t0 = time.perf_counter()
        try:
            s.sendto(payload, (peer.host, peer.port))
            while True:
                data, _ = s.recvfrom(PING_BYTES)
                if data == payload:
                    return time.perf_counter() - t0
        except OSError:
            return None


def bulk(peer: Peer, size: int, timeout: float = 60.0) -> float:
    """Send `size` bytes to the peer's sink; seconds from the first byte sent to its acknowledgement. The TCP
    connection is set up before the clock starts."""
    payload = bytes(min(CHUNK, size))
    with socket.create_connection((peer.host, peer.port), timeout=timeout) as s:
        t0 = time.perf_counter()
        s.sendall(HEADER.pack(MAGIC, size))
        left = size
        while left:
            n = min(len(payload), left)
            s.sendall(payload[:n])
            left -= n
        if _recv_exactly(s, 1) != b"K":
            raise ConnectionError("bad acknowledgement")
        return time.perf_counter() - t0


def name_of(host: str, port: int, timeout: float = 3.0) -> str:
    """A probe's node name (its answer to b"SDPN")."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(HEADER.pack(NAME_MAGIC, 0))
        data = b""
        while not data.endswith(b"\n") and len(data) < 256:
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
    name = data.decode(errors="replace").strip()
    if not name:
        raise ConnectionError(f"{host}:{port} did not say its name")
    return name


def discover(address: str, own_name: str) -> list[Peer]:
    """The probes behind a DNS name (HOST:PORT; a headless Service has one A record per pod), named by their own
    answer; this node itself is left out. A probe that does not answer is left out until the next round."""
    host, _, port = address.rpartition(":")
    ips = sorted({str(info[4][0]) for info in socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)})
    peers = []
    for ip in ips:
        try:
            name = name_of(ip, int(port))
        except OSError:
            continue
        if name != own_name:
            peers.append(Peer(name, ip, int(port)))
    return peers


@dataclass
class Link:
    """What one node knows of its link to one peer."""

    peer: Peer
    rtts: deque = field(default_factory=lambda: deque(maxlen=5))
    bandwidth: float | None = None
    next_bulk: float = 0.0  # monotonic time the next bulk probe may start
    probe_bytes: int = 0  # everything probing this link has sent (RTT echoes and bulk payloads)

    @property
    def rtt(self) -> float | None:
        return statistics.median(self.rtts) if self.rtts else None


class Prober:
    """Probes every peer from node `name`, one thread per peer; `on_update(name, link, sent)` after every
    measurement, with the bytes that round of probing sent."""

    def __init__(
        self,
        name: str,
        budget: Budget,
        on_update: Callable[[str, Link, int], None],
        on_remove: Callable[[str, Link], None] | None = None,
    ):
        self.name, self.budget, self.on_update, self.on_remove = name, budget, on_update, on_remove
        self.links: dict[str, Link] = {}
        self._stop = threading.Event()
        # one bulk probe at a time leaves this node: two at once would share its uplink and each see half of it
        self._bulk = threading.Lock()

    def set_peers(self, peers: list[Peer]) -> None:
        """Probe these peers from now on: new ones get a thread, gone ones (or moved: a new address) stop."""
        wanted = {p.name: p for p in peers if p.name != self.name}
        for name, link in list(self.links.items()):
            if wanted.get(name) != link.peer:
                del self.links[name]
                if self.on_remove:
                    self.on_remove(self.name, link)
        for name, peer in wanted.items():
            if name not in self.links:
                link = self.links[name] = Link(peer)
                threading.Thread(target=self._run, args=(link,), daemon=True, name=f"probe-{name}").start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self, link: Link) -> None:
        while not self._stop.is_set() and self.links.get(link.peer.name) is link:
            rtt = ping(link.peer)
            sent = PING_BYTES
            if rtt is not None:
                link.rtts.append(rtt)
            now = time.monotonic()
            if rtt is not None and now >= link.next_bulk:
                size = self.budget.probe_bytes(link.bandwidth)
                try:
                    with self._bulk:
                        seconds = bulk(link.peer, size)
                except OSError:
                    link.next_bulk = now + self.budget.rtt_interval * 5  # unreachable for bulk: try again later
                else:
                    sent += size
                    link.bandwidth = bandwidth_of(size, seconds, link.rtt)
                    link.next_bulk = time.monotonic() + self.budget.gap_seconds(size, link.bandwidth)
            link.probe_bytes += sent
            if self.links.get(link.peer.name) is link:
                self.on_update(self.name, link, sent)
            self._stop.wait(self.budget.rtt_interval)


def serve(
    name: str,
    listen: str,
    peers: list[Peer],
    budget: Budget,
    metrics_port: int,
    peers_dns: str | None = None,
    rediscover_seconds: float = 30.0,
) -> None:
    """`splitdnn probe`: answer the peers, probe them (the given ones and, with `peers_dns`, those found behind
    that name every `rediscover_seconds`), export the matrix on `metrics_port` until interrupted."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry()
    labels = ["from", "to"]
    rtt = Gauge(
        "splitdnn_node_link_rtt_seconds",
        "round-trip time to a node (median of 5 UDP echoes)",
        labels,
        registry=registry,
    )
    bw = Gauge(
        "splitdnn_node_link_bandwidth_bytes_per_second",
        "bandwidth to a node (last bulk probe)",
        labels,
        registry=registry,
    )
    cost = Counter("splitdnn_node_link_probe_bytes", "bytes sent to probe a link", labels, registry=registry)

    def update(me: str, link: Link, sent: int) -> None:
        to = link.peer.name
        if link.rtt is not None:
            rtt.labels(me, to).set(link.rtt)
        if link.bandwidth is not None:
            bw.labels(me, to).set(link.bandwidth)
        cost.labels(me, to).inc(sent)

    def remove(me: str, link: Link) -> None:
        for metric in (rtt, bw, cost):
            try:
                metric.remove(me, link.peer.name)
            except KeyError:
                pass

    server = Server(host or "0.0.0.0", int(port), name).start()
    start_http_server(metrics_port, registry=registry)
    prober = Prober(name, budget, update, remove)
    prober.set_peers(peers)
    print(f"probe {name}: listening on {listen}, budget {budget.fraction:g}, peers {sorted(prober.links)}", flush=True)
    try:
        while peers_dns:
            try:
                found = discover(peers_dns, name)
            except OSError as exc:  # DNS not ready yet (the Service's first pods), or gone for a moment
                print(f"probe {name}: cannot resolve {peers_dns}: {exc}", flush=True)
            else:
                before = set(prober.links)
                prober.set_peers(peers + found)
                if set(prober.links) != before:
                    print(f"probe {name}: peers {sorted(prober.links)}", flush=True)
            # no peer yet (the DaemonSet still starting): look again soon
            time.sleep(rediscover_seconds if prober.links else 5)
        threading.Event().wait()
    finally:
        prober.stop()
        server.stop()
