"""A chain of network namespaces, one per tier, for `splitdnn run --netns` and the data-plane tests (root only).

    root ──mgmt veth── ns0 ──link0── ns1 ──link1── ns2        (one /30 per veth pair inside 10.77.<octet>.0/24)

- link k joins tier k and tier k+1 (tier k: 10.77.o.4k+1, tier k+1: 10.77.o.4k+2); tier k's outgoing link is its
  end of link k, and the last tier's is its end of the link to the previous tier (it sends the results back);
- a management veth from the root namespace to each tier (10.77.o.128+4k+1 / +2) carries client calls and
  Prometheus scrapes only; tiers reach each other only through the links.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def available() -> tuple[bool, str]:
    """(usable, why not): root and `ip netns` are needed."""
    if os.geteuid() != 0:
        return False, "needs root (network namespaces and veth pairs)"
    try:
        subprocess.run(["ip", "netns", "list"], capture_output=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"`ip netns` does not work here: {exc}"
    return True, ""


@dataclass
class Chain:
    tiers: int
    octet: int = field(default_factory=lambda: 10 + os.getpid() % 200)
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}")
    created: list = field(default_factory=list)
    prefix: str = "sdnn"  # namespace names: <prefix><tag>t<k>
    dev_prefix: str = "sd"  # interface names in the root namespace and on the links

    def ns(self, k: int) -> str:
        return f"{self.prefix}{self.tag}t{k}"

    def link_dev(self, k: int, side: int) -> str:
        return f"{self.dev_prefix}{self.tag}l{k}{'ab'[side]}"

    def egress_dev(self, k: int) -> str:
        """The interface in tier k's namespace that carries what tier k sends on its outgoing link."""
        return self.link_dev(k, 0) if k < self.tiers - 1 else self.link_dev(k - 1, 1)

    def link_addr(self, k: int, side: int) -> str:
        return f"10.77.{self.octet}.{4 * k + 1 + side}"

    def next_addr(self, k: int) -> str:
        """Where tier k reaches tier k+1."""
        return self.link_addr(k, 1)

    def mgmt_addr(self, k: int) -> str:
        """Where the root namespace reaches tier k."""
        return f"10.77.{self.octet}.{128 + 4 * k + 2}"

    def exec_prefix(self, k: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns(k)]

    def create(self) -> Chain:
        if self.tiers > 30:
            raise ValueError("at most 30 tiers in a namespace chain")
        try:
            for k in range(self.tiers):
                _ip("netns", "add", self.ns(k))
                self.created.append(self.ns(k))
                _ip("-n", self.ns(k), "link", "set", "lo", "up")
                root_dev, ns_dev = f"{self.dev_prefix}{self.tag}m{k}", "mgmt0"
                _ip("link", "add", root_dev, "type", "veth", "peer", "name", ns_dev, "netns", self.ns(k))
                _ip("addr", "add", f"10.77.{self.octet}.{128 + 4 * k + 1}/30", "dev", root_dev)
                _ip("link", "set", root_dev, "up")
                _ip("-n", self.ns(k), "addr", "add", f"{self.mgmt_addr(k)}/30", "dev", ns_dev)
                _ip("-n", self.ns(k), "link", "set", ns_dev, "up")
            for k in range(self.tiers - 1):
                a, b = self.link_dev(k, 0), self.link_dev(k, 1)
                _ip("link", "add", a, "netns", self.ns(k), "type", "veth", "peer", "name", b, "netns", self.ns(k + 1))
                for side, (dev, ns) in enumerate(((a, self.ns(k)), (b, self.ns(k + 1)))):
                    _ip("-n", ns, "addr", "add", f"{self.link_addr(k, side)}/30", "dev", dev)
                    _ip("-n", ns, "link", "set", dev, "up")
        except Exception:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        """Delete the namespaces (their veths go with them). Safe to call twice."""
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self.created.clear()

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.destroy()
