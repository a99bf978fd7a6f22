"""Exact layer-to-node placement under ADDNN's cost model (Reisinger et al. 2021; docs/placement.md).

A chain of layers goes onto nodes spread over ordered tiers (device 0, edge 1, cloud 2, ...). The objective is the
expected latency of one inference: compute p_l * flops_l / speed(node) for every layer, p_l * (8 * bytes_l /
throughput + latency) for every hop between different nodes, and the input's transfer from the input node (not
weighted by p). Constraints: per-node memory and storage caps (summed over all the node's layers), tiers never go
back down, and contiguity in one of two readings of ADDNN:

* ``"ilp"`` (default): ADDNN's ILP. It forbids A,B,A (a one-layer visit to another node in between) but allows a
  node to come back after two or more layers (A,B,B,A), the caps holding for the node's layers together;
* ``"strict"``: ADDNN's genetic algorithm. Every node hosts at most one contiguous run.

The search (``solve``) is a dynamic program over (layer, node) on *runs*: a run on node n over layers i..j costs its
compute and is feasible if its layers fit n's caps; consecutive runs are on different nodes, tiers non-decreasing.
That DP ignores what earlier runs used, so it solves a relaxation in O(L^2 N + L N^2). When its optimum uses every
node in one run (always the case on ADDNN's instances) it satisfies both readings and is optimal for both. Otherwise
an A* search over run sequences, with the DP's exact cost-to-go as its heuristic, finds the optimum under the chosen
reading. That fallback is exponential in the worst case, as it must be: with caps that let each node hold one layer
the problem contains the shortest Hamiltonian path, so no exact algorithm is polynomial on every instance unless
P = NP.

Pure: numpy only, no I/O beyond ``PlacementProblem.load``.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CONTIGUITY = ("ilp", "strict")
INF = math.inf


class PlacementError(ValueError):
    """A malformed placement problem (the CLI's exit 2) or one without any feasible placement."""


class NoPlacement(PlacementError):
    """The problem is well formed but no placement satisfies its constraints."""


@dataclass(frozen=True)
class Layer:
    name: str
    flops: float  # compute demand (ADDNN: fvcore's count, one multiply-add = one flop)
    memory_bytes: float  # parameters + input + intermediates while it runs
    storage_bytes: float  # the serialized layer
    input_bytes: float  # what crosses a hop into this layer (layer 0: the sample from the input node)
    p: float = 1.0  # probability that a sample reaches this layer (early exits before it)


@dataclass(frozen=True)
class Node:
    name: str
    tier: int
    memory_bytes: float
    storage_bytes: float
    flops_per_second: float
    input: bool = False
    bandwidth_bps: float | None = None  # stands in for unmeasured throughputs from this node (as in ADDNN)


@dataclass
class PlacementProblem:
    layers: tuple[Layer, ...]
    nodes: tuple[Node, ...]
    throughput_bps: np.ndarray  # (N, N) bits/s from row node to column node; the diagonal is unused
    latency_ms: np.ndarray  # (N, N) milliseconds
    contiguity: str = "ilp"
    tiers: tuple[str, ...] | None = None  # optional tier names, index = tier number
    input_node: int = field(init=False)

    def __post_init__(self) -> None:
        inputs = [k for k, n in enumerate(self.nodes) if n.input]
        if len(inputs) != 1:
            raise PlacementError(f'exactly one node needs "input": true (found {len(inputs)})')
        self.input_node = inputs[0]
        if self.contiguity not in CONTIGUITY:
            raise PlacementError(f"contiguity {self.contiguity!r}: expected one of {', '.join(CONTIGUITY)}")

    # ---- JSON ---------------------------------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: Any) -> PlacementProblem:
        return _parse(data)

    @classmethod
    def load(cls, path: str) -> PlacementProblem:
        try:
            with open(path) as fh:
                data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise PlacementError(f"{path}: not JSON ({exc})") from None
        return _parse(data)

    def to_json(self) -> dict:
        names = [n.name for n in self.nodes]
        links: dict = {"throughput_bps": {}, "latency_ms": {}}
        for a, na in enumerate(names):
            links["throughput_bps"][na] = {nb: _num(self.throughput_bps[a, b]) for b, nb in enumerate(names) if a != b}
            links["latency_ms"][na] = {nb: _num(self.latency_ms[a, b]) for b, nb in enumerate(names) if a != b}
        out: dict = {}
        if self.tiers:
            out["tiers"] = list(self.tiers)
        out["contiguity"] = self.contiguity
        out["nodes"] = [
            {
                "name": n.name,
                "tier": n.tier,
                "memory_bytes": _num(n.memory_bytes),
                "storage_bytes": _num(n.storage_bytes),
                "flops_per_second": _num(n.flops_per_second),
                **({"input": True} if n.input else {}),
            }
            for n in self.nodes
        ]
        out["layers"] = [
            {
                "name": ly.name,
                "flops": _num(ly.flops),
                "memory_bytes": _num(ly.memory_bytes),
                "storage_bytes": _num(ly.storage_bytes),
                "input_bytes": _num(ly.input_bytes),
                "p": ly.p,
            }
            for ly in self.layers
        ]
        out["links"] = links
        return out

    def with_contiguity(self, contiguity: str) -> PlacementProblem:
        return PlacementProblem(self.layers, self.nodes, self.throughput_bps, self.latency_ms, contiguity, self.tiers)


def _num(x: float) -> float | int:
    x = float(x)
    return int(x) if x.is_integer() and abs(x) < 2**53 else x


NODE_KEYS = {"name", "tier", "memory_bytes", "storage_bytes", "flops_per_second", "input", "bandwidth_bps"}
LAYER_KEYS = {"name", "flops", "memory_bytes", "storage_bytes", "input_bytes", "p"}
TOP_KEYS = {"tiers", "contiguity", "nodes", "layers", "links"}


def _number(where: str, value: Any, *, positive: bool = False, at_most: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PlacementError(f"{where}: expected a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise PlacementError(f"{where}: must be {'> 0' if positive else '>= 0'}, got {value!r}")
    if at_most is not None and value > at_most:
        raise PlacementError(f"{where}: must be <= {at_most}, got {value!r}")
    return float(value)


def _keys(where: str, obj: Any, allowed: set, required: Iterable[str]) -> dict:
    if not isinstance(obj, dict):
        raise PlacementError(f"{where}: expected an object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise PlacementError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    missing = [k for k in required if k not in obj]
    if missing:
        raise PlacementError(f"{where}: missing {missing[0]!r}")
    return obj


def _parse(data: Any) -> PlacementProblem:
    _keys("problem", data, TOP_KEYS, ("nodes", "layers", "links"))
    tiers = data.get("tiers")
    if tiers is not None and (not isinstance(tiers, list) or not all(isinstance(t, str) for t in tiers) or not tiers):
        raise PlacementError("tiers: expected a non-empty list of tier names, lowest (device) first")
    if not isinstance(data["nodes"], list) or not data["nodes"]:
        raise PlacementError("nodes: expected a non-empty list")
    if not isinstance(data["layers"], list) or not data["layers"]:
        raise PlacementError("layers: expected a non-empty list")
    nodes = []
    for k, raw in enumerate(data["nodes"]):
        w = f"nodes[{k}]"
        _keys(w, raw, NODE_KEYS, ("name", "tier", "memory_bytes", "storage_bytes", "flops_per_second"))
        name = raw["name"]
        if not isinstance(name, str) or not name:
            raise PlacementError(f"{w}.name: expected a non-empty string")
        tier = raw["tier"]
        if isinstance(tier, str):
            if not tiers or tier not in tiers:
                raise PlacementError(f'{w}.tier {tier!r}: not in "tiers" ({tiers})')
            tier = tiers.index(tier)
        elif isinstance(tier, bool) or not isinstance(tier, int) or tier < 0:
            raise PlacementError(f'{w}.tier: expected a tier number >= 0 or a name from "tiers", got {tier!r}')
        if not isinstance(raw.get("input", False), bool):
            raise PlacementError(f"{w}.input: expected true or false")
        bw = raw.get("bandwidth_bps")
        nodes.append(
            Node(
                name,
                tier,
                _number(f"{w}.memory_bytes", raw["memory_bytes"]),
                _number(f"{w}.storage_bytes", raw["storage_bytes"]),
                _number(f"{w}.flops_per_second", raw["flops_per_second"], positive=True),
                raw.get("input", False),
                None if bw is None else _number(f"{w}.bandwidth_bps", bw, positive=True),
            )
        )
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise PlacementError(f"nodes: duplicate name {dup!r}")
    layers = []
    for k, raw in enumerate(data["layers"]):
        w = f"layers[{k}]"
        _keys(w, raw, LAYER_KEYS, ("flops", "memory_bytes", "storage_bytes", "input_bytes"))
        layers.append(
            Layer(
                str(raw.get("name", k)),
                _number(f"{w}.flops", raw["flops"]),
                _number(f"{w}.memory_bytes", raw["memory_bytes"]),
                _number(f"{w}.storage_bytes", raw["storage_bytes"]),
                _number(f"{w}.input_bytes", raw["input_bytes"]),
                _number(f"{w}.p", raw.get("p", 1.0), at_most=1.0),
            )
        )
    links = _keys("links", data["links"], {"throughput_bps", "latency_ms"}, ("throughput_bps", "latency_ms"))
    index = {n: k for k, n in enumerate(names)}
    thr = np.full((len(nodes), len(nodes)), np.nan)
    lat = np.full((len(nodes), len(nodes)), np.nan)
    for key, matrix, positive in (("throughput_bps", thr, True), ("latency_ms", lat, False)):
        rows = links[key]
        if not isinstance(rows, dict):
            raise PlacementError(f"links.{key}: expected an object {{from: {{to: value}}}}")
        for a, row in rows.items():
            if a not in index or not isinstance(row, dict):
                raise PlacementError(f"links.{key}.{a}: " + ("not a node" if a not in index else "expected an object"))
            for b, value in row.items():
                if b not in index:
                    raise PlacementError(f"links.{key}.{a}.{b}: not a node")
                if a != b:
                    matrix[index[a], index[b]] = _number(f"links.{key}.{a}.{b}", value, positive=positive)
    for a, na in enumerate(names):
        for b, nb in enumerate(names):
            if a == b:
                thr[a, b] = lat[a, b] = 0.0
                continue
            if np.isnan(thr[a, b]):
                if nodes[a].bandwidth_bps is None:
                    raise PlacementError(
                        f"links.throughput_bps: nothing from {na!r} to {nb!r} "
                        f"(give it, or the node's bandwidth_bps as a fallback)"
                    )
                thr[a, b] = nodes[a].bandwidth_bps
            if np.isnan(lat[a, b]):
                raise PlacementError(f"links.latency_ms: nothing from {na!r} to {nb!r}")
    contiguity = data.get("contiguity", "ilp")
    return PlacementProblem(tuple(layers), tuple(nodes), thr, lat, contiguity, tuple(tiers) if tiers else None)


# ---- cost and feasibility (the reference the search is checked against) ---------------------------------------


def latency(problem: PlacementProblem, placement: Sequence[int]) -> float:
    """ADDNN's estimate_ent_to_end_latency, term by term and in its order (compute, hops, input)."""
    L, nodes = problem.layers, problem.nodes
    compute = float(np.sum([ly.p * ly.flops / nodes[placement[k]].flops_per_second for k, ly in enumerate(L)]))
    comm = 0.0
    for k in range(1, len(L)):
        a, b = placement[k - 1], placement[k]
        if a != b:
            comm += L[k].p * (L[k].input_bytes * 8 / problem.throughput_bps[a, b] + problem.latency_ms[a, b] / 1000.0)
    inp, first = problem.input_node, placement[0]
    entry = 0.0
    if first != inp:
        entry = L[0].input_bytes * 8 / problem.throughput_bps[inp, first] + problem.latency_ms[inp, first] / 1000.0
    return float(compute + comm + entry)


def runs_of(placement: Sequence[int]) -> list[tuple[int, int, int]]:
    """(node, first layer, last layer) of each maximal run of equal nodes."""
    out: list[tuple[int, int, int]] = []
    for k, n in enumerate(placement):
        if out and out[-1][0] == n:
            out[-1] = (n, out[-1][1], k)
        else:
            out.append((n, k, k))
    return out


def violation(problem: PlacementProblem, placement: Sequence[int], contiguity: str | None = None) -> str | None:
    """Why a placement is infeasible under the problem's (or the given) contiguity reading; None if feasible."""
    contiguity = contiguity or problem.contiguity
    L, nodes = problem.layers, problem.nodes
    if len(placement) != len(L) or any(not 0 <= n < len(nodes) for n in placement):
        return "not one node index per layer"
    mem: dict[int, float] = {}
    sto: dict[int, float] = {}
    for k, n in enumerate(placement):
        mem[n] = mem.get(n, 0.0) + L[k].memory_bytes
        sto[n] = sto.get(n, 0.0) + L[k].storage_bytes
    for n in mem:
        if mem[n] > nodes[n].memory_bytes:
            return f"memory of {nodes[n].name}: {mem[n]:.0f} > {nodes[n].memory_bytes:.0f}"
        if sto[n] > nodes[n].storage_bytes:
            return f"storage of {nodes[n].name}: {sto[n]:.0f} > {nodes[n].storage_bytes:.0f}"
    for k in range(1, len(L)):
        if nodes[placement[k]].tier < nodes[placement[k - 1]].tier:
            return f"layer {k} goes back to a lower tier"
    runs = runs_of(placement)
    if contiguity == "strict":
        seen = [r[0] for r in runs]
        if len(set(seen)) != len(seen):
            return "a node hosts two separate runs"
    else:
        for k in range(1, len(L) - 1):
            if placement[k - 1] == placement[k + 1] != placement[k]:
                return f"layers {k - 1} and {k + 1} on one node, layer {k} elsewhere (A,B,A)"
    return None


def brute_force(problem: PlacementProblem, contiguity: str | None = None) -> tuple[float, tuple[int, ...]]:
    """Every node per layer (N^L placements): the oracle for small instances. (inf, ()) when none is feasible."""
    best: tuple[float, tuple[int, ...]] = (INF, ())
    for placement in itertools.product(range(len(problem.nodes)), repeat=len(problem.layers)):
        if violation(problem, placement, contiguity) is None:
            value = latency(problem, placement)
            if value < best[0]:
                best = (value, placement)
    return best


# ---- the search ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Solution:
    latency: float  # ADDNN's latency of the placement (``latency()``)
    placement: tuple[int, ...]  # node index per layer
    proven: bool  # optimal under the problem's contiguity reading
    method: str  # "dp": the relaxation's optimum was feasible; "search": A* was needed
    bound: float  # the relaxation's optimum, a lower bound
    expansions: int = 0  # A* states expanded (0 on the DP path)

    def names(self, problem: PlacementProblem) -> list[str]:
        return [problem.nodes[n].name for n in self.placement]


class _Arrays:
    """Everything the DP and the search need, as arrays (built once per solve)."""

    def __init__(self, problem: PlacementProblem):
        L, N = len(problem.layers), len(problem.nodes)
        self.L, self.N = L, N
        lay, nod = problem.layers, problem.nodes
        self.p = np.array([ly.p for ly in lay])
        self.bytes = np.array([ly.input_bytes for ly in lay])
        self.mem = np.array([ly.memory_bytes for ly in lay])
        self.sto = np.array([ly.storage_bytes for ly in lay])
        self.P = np.concatenate(([0.0], np.cumsum(self.p * np.array([ly.flops for ly in lay]))))
        self.invc = 1.0 / np.array([n.flops_per_second for n in nod])
        self.capm = np.array([n.memory_bytes for n in nod])
        self.caps = np.array([n.storage_bytes for n in nod])
        tier = np.array([n.tier for n in nod])
        thr = problem.throughput_bps.copy()
        np.fill_diagonal(thr, 1.0)
        self.bits = 8.0 / thr  # seconds per byte on each ordered pair
        self.delay = problem.latency_ms / 1000.0
        # hops allowed: to another node, never to a lower tier
        self.blocked = np.where((tier[None, :] >= tier[:, None]) & ~np.eye(N, dtype=bool), 0.0, INF)
        inp = problem.input_node
        self.entry = self.bytes[0] * self.bits[inp] + self.delay[inp]
        self.entry[inp] = 0.0
        # lo[j, n]: the earliest first layer of a run that ends at layer j and fits node n (j + 1: none fits)
        Mp = np.concatenate(([0.0], np.cumsum(self.mem)))
        Sp = np.concatenate(([0.0], np.cumsum(self.sto)))
        self.Mp, self.Sp = Mp, Sp
        self.lo = np.maximum(
            np.searchsorted(Mp, Mp[1:, None] - self.capm[None, :], side="left"),
            np.searchsorted(Sp, Sp[1:, None] - self.caps[None, :], side="left"),
        )

    def hop_row(self, layer: int, n: int) -> np.ndarray:
        """hop(layer)[n]: from node n to every node, without building the whole matrix."""
        return self.p[layer] * (self.bytes[layer] * self.bits[n] + self.delay[n]) + self.blocked[n]

    def hop(self, layer: int) -> np.ndarray:
        """(N, N) expected cost of sending layer's input from row node to column node (inf where not allowed)."""
        return self.p[layer] * (self.bytes[layer] * self.bits + self.delay) + self.blocked

    def forward(self) -> tuple[float, list[tuple[int, int, int]]]:
        """The relaxed DP: best cost and its runs (node, first, last). (inf, []) when even it is infeasible."""
        L, N = self.L, self.N
        cols = np.arange(N)
        E = np.full((L, N), INF)  # E[i, n]: cost before the run on n that starts at layer i (its hop paid)
        E[0] = self.entry
        B = np.empty((L, N))  # B[j, n]: cost of layers 0..j with a run on n ending at j
        start = np.empty((L, N), dtype=np.int64)
        came = np.zeros((L, N), dtype=np.int64)
        for j in range(L):
            A = E[: j + 1] - self.P[: j + 1, None] * self.invc
            A[np.arange(j + 1)[:, None] < self.lo[j][None, :]] = INF
            start[j] = A.argmin(0)
            B[j] = A[start[j], cols] + self.P[j + 1] * self.invc
            if j + 1 < L:
                C = B[j][:, None] + self.hop(j + 1)
                came[j + 1] = C.argmin(0)
                E[j + 1] = C[came[j + 1], cols]
        n = int(B[L - 1].argmin())
        best = float(B[L - 1, n])
        if not math.isfinite(best):
            return INF, []
        runs, j = [], L - 1
        while True:
            i = int(start[j, n])
            runs.append((n, i, j))
            if i == 0:
                break
            n, j = int(came[i, n]), i - 1
        return best, runs[::-1]

    def backward(self) -> np.ndarray:
        """D[i, n]: relaxed cost of layers i..L-1 when a run on n starts at i (its hop paid). The A* heuristic."""
        L, N = self.L, self.N
        D = np.full((L + 1, N), INF)
        G = np.zeros((L, N))  # G[j, n]: best continuation after a run on n that ends at j
        for i in range(L - 1, -1, -1):
            if i + 1 < L:
                G[i] = (self.hop(i + 1) + D[i + 1][None, :]).min(1)
            V = (self.P[i + 1 : L + 1, None] - self.P[i]) * self.invc + G[i:]
            V[self.lo[i:] > i] = INF  # lo[j, n] > i: layers i..j do not fit n
            D[i] = V.min(0)
        return D[:L]


@dataclass
class _State:
    node: int
    start: int  # first layer of the run on ``node``
    g: float  # cost of layers before ``start`` plus the hop into this run
    parent: _State | None
    end: int = -1  # set on a finished run (goal states)

    def history(self) -> list[_State]:
        out, s = [], self.parent
        while s is not None:
            out.append(s)
            s = s.parent
        return out


def _search(ar: _Arrays, contiguity: str, max_expansions: int) -> tuple[float, list[tuple[int, int, int]], int, bool]:
    """A* over run sequences under the exact constraints; the relaxed cost-to-go D is admissible and consistent,
    so the first finished placement popped is optimal."""
    D = ar.backward()
    L = ar.L
    ub, best = INF, None
    tick = itertools.count()
    heap: list = []

    def children(st: _State):
        """(f, state) of each feasible next step: a goal when the run ends at L-1, else a run on another node."""
        hist = st.history()
        used_m = sum(ar.Mp[h.end + 1] - ar.Mp[h.start] for h in hist if h.node == st.node)
        used_s = sum(ar.Sp[h.end + 1] - ar.Sp[h.start] for h in hist if h.node == st.node)
        earlier = {h.node for h in hist} | {st.node}
        usage: dict[int, tuple[float, float]] = {}
        for h in hist:
            m, s = usage.get(h.node, (0.0, 0.0))
            usage[h.node] = (m + ar.Mp[h.end + 1] - ar.Mp[h.start], s + ar.Sp[h.end + 1] - ar.Sp[h.start])
        out = []
        for j in range(st.start, L):
            if (
                ar.Mp[j + 1] - ar.Mp[st.start] + used_m > ar.capm[st.node]
                or ar.Sp[j + 1] - ar.Sp[st.start] + used_s > ar.caps[st.node]
            ):
                break
            g = st.g + (ar.P[j + 1] - ar.P[st.start]) * ar.invc[st.node]
            if j == L - 1:
                out.append((g, _State(st.node, st.start, st.g, st.parent, end=j)))
                break
            row = ar.hop_row(j + 1, st.node)
            f = g + row + D[j + 1]
            if contiguity == "strict":
                f[list(earlier)] = INF
            elif j == st.start and st.parent is not None:
                f[st.parent.node] = INF  # A,B,A: a one-layer visit between two runs of one node
            for k in np.flatnonzero(f < ub):
                m, s = usage.get(int(k), (0.0, 0.0))
                if m + ar.mem[j + 1] > ar.capm[k] or s + ar.sto[j + 1] > ar.caps[k]:
                    continue
                finished = _State(st.node, st.start, st.g, st.parent, end=j)
                out.append((float(f[k]), _State(int(k), j + 1, g + float(row[k]), finished)))
        return out

    starts = []
    for n in range(ar.N):
        f = ar.entry[n] + D[0, n]
        if math.isfinite(f):
            starts.append((float(f), next(tick), _State(n, 0, float(ar.entry[n]), None)))
    # A first incumbent from a greedy dive (always the cheapest-looking feasible step): with it, children worse than a
    # known placement are never queued.
    if starts:
        st = min(starts)[2]
        for _ in range(L + 1):
            kids = children(st)
            if not kids:
                break
            f, st = min(kids, key=lambda kid: kid[0])
            if st.end == L - 1:
                ub, best = f, st
                break
    heap = [item for item in starts if item[0] <= ub]
    heapq.heapify(heap)
    expansions = 0
    closed: set = set()
    while heap:
        f, _, st = heapq.heappop(heap)
        if f > ub:
            break
        if st.end == L - 1:
            best, ub = st, f
            break
        # What the rest may do depends only on this key, and with a consistent heuristic the first expansion of a key
        # has the cheapest prefix: later ones are dominated (Held-Karp style).
        key = _key(ar, st, contiguity)
        if key in closed:
            continue
        closed.add(key)
        expansions += 1
        if expansions > max_expansions:
            break
        for fc, child in children(st):
            if fc <= ub:
                if child.end == L - 1 and fc < ub:
                    best, ub = child, fc  # an incumbent: prunes everything worse from now on
                heapq.heappush(heap, (fc, next(tick), child))
    proven = expansions <= max_expansions
    if best is None:
        return INF, [], expansions, proven
    return ub, [(s.node, s.start, s.end) for s in [best, *best.history()]][::-1], expansions, proven


def _key(ar: _Arrays, st: _State, contiguity: str) -> tuple:
    """(node, first layer, node of the previous run, what earlier runs used): everything the constraints of the rest
    of a placement depend on (strict: the set of used nodes; ilp: memory and storage used per node)."""
    hist = st.history()
    prev = hist[0].node if hist else -1
    if contiguity == "strict":
        return st.node, st.start, prev, frozenset(h.node for h in hist)
    usage: dict[int, tuple[float, float]] = {}
    for h in hist:
        m, s = usage.get(h.node, (0.0, 0.0))
        usage[h.node] = (m + ar.Mp[h.end + 1] - ar.Mp[h.start], s + ar.Sp[h.end + 1] - ar.Sp[h.start])
    return st.node, st.start, prev, frozenset(usage.items())


def _feasible_runs(ar: _Arrays, runs: list[tuple[int, int, int]], contiguity: str) -> bool:
    nodes = [r[0] for r in runs]
    if contiguity == "strict":
        return len(set(nodes)) == len(nodes)
    for a in range(len(runs) - 2):
        if runs[a][0] == runs[a + 2][0] and runs[a + 1][1] == runs[a + 1][2]:
            return False  # A,B,A
    mem: dict[int, float] = {}
    sto: dict[int, float] = {}
    for n, i, j in runs:
        mem[n] = mem.get(n, 0.0) + ar.Mp[j + 1] - ar.Mp[i]
        sto[n] = sto.get(n, 0.0) + ar.Sp[j + 1] - ar.Sp[i]
    return all(mem[n] <= ar.capm[n] and sto[n] <= ar.caps[n] for n in mem)


def _expand(runs: list[tuple[int, int, int]]) -> tuple[int, ...]:
    return tuple(n for n, i, j in runs for _ in range(i, j + 1))


def solve(problem: PlacementProblem, contiguity: str | None = None, max_expansions: int = 200_000) -> Solution:
    """The optimal placement under the problem's contiguity reading (or the one given). Raises NoPlacement."""
    contiguity = contiguity or problem.contiguity
    if contiguity not in CONTIGUITY:
        raise PlacementError(f"contiguity {contiguity!r}: expected one of {', '.join(CONTIGUITY)}")
    ar = _Arrays(problem)
    bound, runs = ar.forward()
    if not runs:
        raise NoPlacement("no placement fits: some layer fits no node that the tier order lets it use")
    if _feasible_runs(ar, runs, contiguity):
        placement = _expand(runs)
        return Solution(latency(problem, placement), placement, True, "dp", bound)
    _, runs, expansions, proven = _search(ar, contiguity, max_expansions)
    if not runs:
        if proven:
            raise NoPlacement(f"no placement satisfies the memory/storage caps with {contiguity} contiguity")
        raise PlacementError(f"search gave up after {max_expansions} expansions without a feasible placement")
    placement = _expand(runs)
    return Solution(latency(problem, placement), placement, proven, "search", bound, expansions)


# ---- ADDNN's anchor data ---------------------------------------------------------------------------------------


def from_addnn(instance: dict, layer_profiles: list[dict], links: dict) -> PlacementProblem:
    """One instance of ../shared/anchors/addnn (results.json "instances" entry, its model's "layer_profiles" and
    instances_links.json entry) as a PlacementProblem with ADDNN's ILP reading of contiguity."""
    return _parse(
        {
            "tiers": ["device", "edge", "cloud"],
            "nodes": [
                {
                    "name": n["host"],
                    "tier": n["tier"],
                    "memory_bytes": n["memory_B"],
                    "storage_bytes": n["storage_B"],
                    "flops_per_second": n["compute_flops_per_s"],
                    **({"input": True} if n["is_input"] else {}),
                }
                for n in instance["nodes"]
            ],
            "layers": [
                {
                    "name": str(ly["layer"]),
                    "flops": ly["flops"],
                    "memory_bytes": ly["in_memory_size"],
                    "storage_bytes": ly["storage_size"],
                    "input_bytes": ly["marshalled_input_size"],
                    "p": ly["execution_probability"],
                }
                for ly in layer_profiles
            ],
            "links": {"throughput_bps": links["throughput_bps"], "latency_ms": links["latency_ms"]},
        }
    )
