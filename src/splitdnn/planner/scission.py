"""Adapter for Scission's shipped benchmark data (JSON export) and its query language, used to reproduce its printed
top-N answers with our planner and to benchmark against a Scission-style exhaustive enumeration.

Scission's setting maps onto ours as: tiers device → edge → cloud, one host per tier, every host triple
enumerated (we run the planner once per triple and merge: the union of per-triple top-N lists contains the global
top-N). Input (default 0.15 MB = 150,000 bytes) starts on the device. Links: ping/1000 s, round(mbps·125000) B/s.

Query language (``-d/-e/-c`` for device/edge/cloud, comma-separated criteria):
``-1`` tier unused (skip) · ``!-1`` tier used (use) · ``N`` Keras layer N on that tier (pin the block holding it) ·
``!N`` layer N not on that tier (forbid) · ``HOST`` / ``!HOST`` host is / is not HOST, and the tier is used
(naming a host forces the tier on, as in Scission; a numeric host name such as ``2500`` is read as a layer, as in
Scission) · ``--device-upload/--edge-upload MB`` · ``--device-time/--edge-time/--cloud-time S`` or ``P%``
(Scission: P% of total compute time) · ``-i MB`` input size · ``--result-count N``.
"""

from __future__ import annotations

import csv
import json
import shlex
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from . import Infeasible, plan
from .problem import Problem

TIERS = ("device", "edge", "cloud")
FLAG_TIER = {"-d": "device", "-e": "edge", "-c": "cloud"}


def load_hosts(folder: str | Path) -> dict[str, dict[str, dict]]:
    """{tier: {host: {model: [blocks]}}} from ``<tier>-<host>.json`` files."""
    out: dict[str, dict[str, dict]] = {t: {} for t in TIERS}
    for p in sorted(Path(folder).glob("*-*.json")):
        tier, host = p.stem.split("-", 1)
        if tier in out:
            out[tier][host] = json.loads(p.read_text())["models"]
    return out


def load_network(path: str | Path) -> dict[tuple[str, str], tuple[float, float]]:
    """{(src_host, dst_host): (ping seconds, bytes/s)} with Scission's unit conversion."""
    net = {}
    with open(path) as fh:
        rows = list(csv.reader(fh))
    for row in rows[1:]:
        if len(row) < 4:
            continue
        src, dst, ping, mbps = (x.strip() for x in row[:4])
        net[(src, dst)] = (float(ping) / 1000.0, float(round(float(mbps) * 125000)))
    return net


@dataclass
class Query:
    model: str
    network: str
    criteria: dict = field(default_factory=lambda: {t: [] for t in TIERS})
    upload_mb: dict = field(default_factory=dict)
    time: dict = field(default_factory=dict)  # tier -> ("s", seconds) | ("%", percent)
    input_mb: float = 0.15
    count: int = 5


def parse_query(argv: list[str]) -> Query:
    """Arguments after ``scission_predict.py`` (benchmark folder, network csv, model, options)."""
    pos, opts = [], []
    k = 0
    while k < len(argv):
        a = argv[k]
        if a.startswith("-") and a not in ("-1",) and not _is_number(a):
            opts.append((a, argv[k + 1]))
            k += 2
        else:
            pos.append(a)
            k += 1
    q = Query(model=pos[2], network=pos[1])
    for flag, val in opts:
        if flag in FLAG_TIER:
            q.criteria[FLAG_TIER[flag]].extend(v.strip() for v in val.split(","))
        elif flag in ("--device-upload", "--edge-upload"):
            q.upload_mb[flag[2:].split("-")[0]] = float(val)
        elif flag in ("--device-time", "--edge-time", "--cloud-time"):
            tier = flag[2:].split("-")[0]
            q.time[tier] = ("%", float(val[:-1])) if val.endswith("%") else ("s", float(val))
        elif flag == "-i":
            q.input_mb = float(val)
        elif flag == "--result-count":
            q.count = int(val)
        else:
            raise ValueError(f"unsupported Scission option {flag}")
    return q


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _int(s: str) -> int | None:
    try:
        return int(s)
    except ValueError:
        return None


@dataclass
class Answer:
    latency: float
    mb: float
    hosts: dict  # tier -> host or None (unused)
    layers: dict  # tier -> (first layer, last layer) or None
    nbytes: int
    ends: tuple

    def line(self, rank: int, device_host: str | None = None) -> str:
        device_host = self.hosts.get("device") or device_host

        def part(t, label, host):
            r = self.layers[t]
            a, b = r if r else (-1, -1)
            return f"{label}({host}) = {a} - {b}"

        return f"[{rank}] {self.latency:.4f}s - {self.mb:.4f}MB - " + ", ".join(
            [
                part("device", "Device", device_host),
                part("edge", "Edge", self.hosts["edge"]),
                part("cloud", "Cloud", self.hosts["cloud"]),
            ]
        )


def build_problem(
    hosts: dict, model: str, triple: dict, net: dict, input_bytes: int, constraints: dict | None = None
) -> Problem:
    blocks = []
    ref = hosts["device"][triple["device"]][model]
    for k, b in enumerate(ref):
        times = {t: hosts[t][triple[t]][model][k]["exec_time_s"] for t in TIERS}
        blocks.append(
            {"name": b["name"], "layers": list(b["layer_range"]), "out_bytes": b["output_size_bytes"], "time": times}
        )
    links = []
    for a, b in (("device", "edge"), ("device", "cloud"), ("edge", "cloud")):
        key = (triple[a], triple[b])
        if key in net:
            links.append({"from": a, "to": b, "latency": net[key][0], "bandwidth": net[key][1]})
    return Problem.from_json(
        {
            "tiers": list(TIERS),
            "input_bytes": input_bytes,
            "blocks": blocks,
            "links": links,
            "constraints": constraints or {},
        },
        f"scission {model}",
    )


def answer(q: Query, hosts: dict, net: dict, strategy: str = "dp") -> list[Answer]:
    """Scission's top-N answer for query q, computed with our planner (empty list = "No results")."""
    input_bytes = int(round(q.input_mb * 1e6))
    ref = next(iter(hosts["device"].values()))[q.model]
    layer_block = {}
    for b in ref:
        for layer in range(b["layer_range"][0], b["layer_range"][1] + 1):
            layer_block[layer] = b["name"]
    cons: dict[str, Any] = {
        "pin": {},
        "forbid": {},
        "use": [],
        "skip": [],
        "max_upload_bytes": {},
        "max_time": {},
        "max_time_share": {},
    }
    host_is: dict[str, set] = {}
    host_not: dict[str, set] = {}
    impossible = False
    for tier, crits in q.criteria.items():
        for c in crits:
            neg = c.startswith("!")
            body = c[1:] if neg else c
            n = _int(body)
            if n == -1:
                (cons["use"] if neg else cons["skip"]).append(tier)
            elif n is not None:
                if n not in layer_block:
                    if not neg:
                        impossible = True  # Scission: no block holds that layer -> no results
                    continue
                name = layer_block[n]
                if neg:
                    cons["forbid"].setdefault(name, []).append(tier)
                elif cons["pin"].get(name, tier) != tier:
                    impossible = True
                else:
                    cons["pin"][name] = tier
            else:
                (host_not if neg else host_is).setdefault(tier, set()).add(body)
                cons["use"].append(tier)
    for tier, mb in q.upload_mb.items():
        cons["max_upload_bytes"][tier] = int(mb * 1e6 + 1e-6)
    for tier, (kind, v) in q.time.items():
        if kind == "s":
            cons["max_time"][tier] = v
        else:
            cons["max_time_share"][tier] = v / 100.0
            cons["max_time_share_of"] = "compute"  # Scission: P% of total compute time
    if impossible:
        return []
    answers: dict = {}
    choices = {t: sorted(hosts[t]) for t in TIERS}
    for combo in product(*(choices[t] for t in TIERS)):
        triple = dict(zip(TIERS, combo))
        if any(triple[t] not in s for t, s in host_is.items()) or any(triple[t] in s for t, s in host_not.items()):
            continue
        problem = build_problem(hosts, q.model, triple, net, input_bytes, cons)
        try:
            plans = plan(problem, "latency", q.count, strategy=strategy)
        except Infeasible:
            continue
        for p in plans:
            used = {t: p.assignment[t] is not None for t in TIERS}
            # the device host stays part of the answer even when it computes nothing: the input starts there
            hs = {t: (triple[t] if used[t] or t == "device" else None) for t in TIERS}
            layers: dict[str, tuple[int, int] | None] = {}
            for t in TIERS:
                r = p.assignment[t]
                if r is None:
                    layers[t] = None
                else:
                    first = next(b for b in problem.blocks if b.name == r[0]).layers
                    last = next(b for b in problem.blocks if b.name == r[1]).layers
                    assert first is not None and last is not None  # Scission's blocks carry layer ranges
                    layers[t] = (first[0], last[1])
            key = (tuple(hs.values()), p.ends)
            answers[key] = Answer(p.latency, p.bytes / 1e6, hs, layers, p.bytes, p.ends)
    ranked = sorted(
        answers.values(),
        key=lambda a: (round(a.latency * 1e12), a.nbytes, a.ends, tuple(str(h) for h in a.hosts.values())),
    )
    return ranked[: q.count]


# ---- expected_outputs.txt ---------------------------------------------------------------------------------------


@dataclass
class Recorded:
    title: str
    argv: list
    lines: list  # printed result lines ("[k] ..."), or [] for "No results"
    no_results: bool
    search_ms: float | None = None


def parse_expected(path: str | Path) -> list[Recorded]:
    """The recorded queries: command line, printed top-N lines, Scission's median search time."""
    import re

    out = []
    cur = None
    for raw in Path(path).read_text().splitlines():
        line = raw.rstrip()
        if line.startswith("====="):
            cur = None
            continue
        if line.startswith("### "):
            cur = None
            title = line[4:]
            out.append(Recorded(title, [], [], False))
            cur = out[-1]
            continue
        if cur is None:
            continue
        if line.startswith("$ ") and cur.argv:
            cur = None  # a second command in one section (the host-scaling runs): not a query record
            continue
        if line.startswith("$ ") and "scission_predict.py" in line:
            args = shlex.split(line[2:])
            k = next(i for i, a in enumerate(args) if a.endswith("scission_predict.py"))
            cur.argv = args[k + 1 :]
        elif re.match(r"^\[\d+\] ", line):
            cur.lines.append(line)
        elif line.startswith("No results"):
            cur.no_results = True
        elif "search_s=" in line:
            m = re.search(r"search_s=([0-9.]+) ms", line)
            if m:
                cur.search_ms = float(m.group(1))
    return [r for r in out if r.argv and "<scaled" not in " ".join(r.argv) and (r.lines or r.no_results)]


def parse_line(line: str) -> dict:
    """'[1] 0.8586s - 0.1500MB - Device(raspi4) = -1 - -1, Edge(None) = ..., Cloud(...) = 0 - 25' -> fields."""
    import re

    m = re.match(r"^\[(\d+)\] ([0-9.]+)s - ([0-9.]+)MB - (.*)$", line)
    if not m:
        raise ValueError(f"not a Scission result line: {line!r}")
    parts = {}
    for t, label in zip(TIERS, ("Device", "Edge", "Cloud")):
        mm = re.search(label + r"\((.*?)\) = (-?\d+) - (-?\d+)", m.group(4))
        if not mm:
            raise ValueError(f"no {label} part in Scission result line: {line!r}")
        host, a, b = mm.group(1), int(mm.group(2)), int(mm.group(3))
        parts[t] = (None if host == "None" else host, None if a == -1 else (a, b))
    return {"rank": int(m.group(1)), "latency": float(m.group(2)), "mb": float(m.group(3)), "tiers": parts}


def quirk_cost(hosts: dict, net: dict, model: str, parsed: dict, input_bytes: int = 150000) -> tuple[float, float]:
    """Latency and MB of a printed plan under Scission's zero-time quirk as observed in its output: a used tier
    whose compute is exactly 0 s receives its hop with 0 bytes (ping still charged), and its own output is
    counted in the printed MB. Used only to explain the answers our (quirk-free) model does not reproduce."""
    blocks = hosts["device"]["raspi4"][model]
    ranges = {}
    for t in TIERS:
        r = parsed["tiers"][t][1]
        if r:
            ks = [k for k, b in enumerate(blocks) if r[0] <= b["layer_range"][0] and b["layer_range"][1] <= r[1]]
            ranges[t] = (ks[0], ks[-1])
    lat, mb_bytes = 0.0, 0
    prev = None
    for t in TIERS:
        if t not in ranges:
            continue
        host = parsed["tiers"][t][0] or "raspi4"
        i, j = ranges[t]
        comp = sum(hosts[t][host][model][k]["exec_time_s"] for k in range(i, j + 1))
        src = prev if prev else (("device", "raspi4") if t != "device" else None)
        if src is not None:
            ping, bw = net[(src[1], host)]
            nb = input_bytes if i == 0 else blocks[i - 1]["output_size_bytes"]
            if comp == 0.0:
                lat += ping
                mb_bytes += blocks[j]["output_size_bytes"]
            else:
                lat += ping + nb / bw
                mb_bytes += nb
        lat += comp
        prev = (t, host)
    return lat, mb_bytes / 1e6
