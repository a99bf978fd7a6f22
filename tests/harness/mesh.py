"""Nodes in network namespaces on one bridge, each node's egress shaped by real `tc tbf` (root only).

<tag><node> ──eth0 (tbf at the node's rate)── p<node> ── br0 in <tag>sw      10.79.<octet>.<1 + index>/24
"""

from __future__ import annotations

import os
import subprocess
import sys


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


class Mesh:
    """`Mesh({"a": bytes/s, ...}, tag)`: one namespace per node (in the given order), one bridge between them."""

    def __init__(self, rates: dict[str, float], tag: str = "pr", burst_bytes: int | None = None):
        self.rates = dict(rates)
        self.burst_bytes = burst_bytes  # tbf's bucket; default 20 ms of the rate
        self.tag = f"{tag}{os.getpid() % 100000}"
        self.octet = 10 + (os.getpid() + sum(map(ord, tag))) % 200
        self.names: list[str] = []

    def ns(self, node: str) -> str:
        return f"{self.tag}{node}"

    def addr(self, node: str) -> str:
        return f"10.79.{self.octet}.{1 + list(self.rates).index(node)}"

    def __enter__(self):
        sw = self.ns("sw")
        try:
            sh("ip", "netns", "add", sw)
            self.names.append(sw)
            sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", sw, "link", "set", "br0", "up")
            for node, rate in self.rates.items():
                ns = self.ns(node)
                sh("ip", "netns", "add", ns)
                self.names.append(ns)
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{node}", "netns", sw)
                sh("ip", "-n", sw, "link", "set", f"p{node}", "master", "br0", "up")
                sh("ip", "-n", ns, "addr", "add", f"{self.addr(node)}/24", "dev", "eth0")
                sh("ip", "-n", ns, "link", "set", "eth0", "up")
                # a bucket of 20 ms of the rate: with 10 ms, tbf reached its rate on some days and half of it on
                # others (here, with Docker's br_netfilter on the bridge: 40 mbit links gave 2.4-2.7 MB/s of 5)
                kbit = int(rate * 8 / 1000)
                burst = self.burst_bytes or max(int(rate / 50), 2000)
                sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate",
                   f"{kbit}kbit", "burst", str(burst), "latency", "200ms")  # fmt: skip
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for ns in reversed(self.names):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.names = []

    def tx_bytes(self, node: str) -> int:
        return int(sh("ip", "netns", "exec", self.ns(node), "cat", "/sys/class/net/eth0/statistics/tx_bytes"))

    def get(self, node: str, url: str) -> str:
        """GET `url` from inside the node's namespace."""
        code = f"import urllib.request;print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
        return sh("ip", "netns", "exec", self.ns(node), sys.executable, "-c", code)

    def run(self, node: str, *cmd: str) -> list[str]:
        """`cmd` as run inside the node's namespace."""
        return ["ip", "netns", "exec", self.ns(node), *cmd]

    def attach_host(self) -> str:
        """A veth from this (the root) namespace into the bridge, unshaped: the test's own address on the mesh."""
        dev, addr = f"h{self.tag}"[:15], f"10.79.{self.octet}.250"
        sh("ip", "link", "add", dev, "type", "veth", "peer", "name", "phost", "netns", self.ns("sw"))
        sh("ip", "-n", self.ns("sw"), "link", "set", "phost", "master", "br0", "up")
        sh("ip", "addr", "add", f"{addr}/24", "dev", dev)
        sh("ip", "link", "set", dev, "up")
        return addr
