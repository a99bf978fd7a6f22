"""UDP probes between two network namespaces, for measuring what `tc netem` does to a link (stdlib only, so it
starts fast under software emulation).

    python udp_probe.py echo ADDR PORT             # answer every datagram with itself until killed
    python udp_probe.py probe ADDR PORT N GAP_MS   # send N numbered datagrams GAP_MS apart, print JSON

`probe` keeps reading echoes while it sends (no receive-buffer overflow counts as loss), waits 2 s after the last
send, and prints `{"sent": N, "rtt_ms": {seq: round trip in ms}, "order": [seq in the order the echoes came back]}`;
a seq without an echo was lost.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time

LINGER = 2.0  # s to wait for echoes after the last send: far above any delay the tests configure


def echo(addr: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((addr, port))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(data, peer)


def probe(addr: str, port: int, n: int, gap: float) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((addr, port))
    sent, rtt, order = {}, {}, []
    start = time.monotonic()
    next_send, seq = start, 0
    while True:
        now = time.monotonic()
        if seq < n and now >= next_send:
            sent[seq] = time.monotonic()
            try:
                sock.send(struct.pack("!I", seq) + bytes(28))
            except OSError:  # a qdisc may refuse a packet outright: that is a loss too
                pass
            seq += 1
            next_send += gap
            continue
        end = next_send if seq < n else sent[n - 1] + LINGER
        if seq == n and (now >= end or len(rtt) == n):
            break
        ready, _, _ = select.select([sock], [], [], max(0.0, end - now))
        if ready:
            try:
                data = sock.recv(2048)
            except ConnectionRefusedError:  # ICMP from an echo server not yet bound: counts as lost
                continue
            got = struct.unpack("!I", data[:4])[0]
            if got in sent and got not in rtt:
                rtt[got] = (time.monotonic() - sent[got]) * 1e3
                order.append(got)
    return {"sent": n, "rtt_ms": rtt, "order": order}


if __name__ == "__main__":
    mode, host, port_text = sys.argv[1:4]
    if mode == "echo":
        echo(host, int(port_text))
    else:
        print(json.dumps(probe(host, int(port_text), int(sys.argv[4]), float(sys.argv[5]) / 1e3)))
