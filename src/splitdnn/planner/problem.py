"""Planner problem model: tiers, blocks, links, constraints; JSON loading with clear errors; exact cost evaluation.

Times are converted once to integer *ticks* (1 tick = 1e-12 s) so that every strategy (the dynamic programme, the
label-setting search, the brute-force oracle) sums exactly the same integers: rankings, ties and constraint checks
are identical across strategies, independent of summation order. Reported values are converted back to seconds.

A plan is a tuple of cumulative cuts ``(c_0, ..., c_{T-1})`` with ``c_{T-1} = n``: tier k runs blocks
``c_{k-1} .. c_k - 1`` (``c_{-1} = 0``); an empty range means the tier is unused. Frames originate on tier 0;
if tier 0 is unused, the input (``input_bytes``) is shipped from tier 0 to the first used tier.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

TICKS_PER_SECOND = 10**12


class ProblemError(ValueError):
    """The problem file/spec is malformed (message says where)."""


class Infeasible(RuntimeError):
    """No plan satisfies the constraints. The message lists the constraints that conflict."""


def to_ticks(seconds: float) -> int:
    return int(round(float(seconds) * TICKS_PER_SECOND))


def to_seconds(ticks: int) -> float:
    return ticks / TICKS_PER_SECOND


@dataclass
class Block:
    name: str
    time: dict[str, float]  # tier -> compute seconds
    out_bytes: int
    layers: tuple[int, int] | None = None  # optional (first, last) model-layer indices, for layer pins


@dataclass
class Link:
    latency: float  # seconds, charged once per hop
    bandwidth: float  # bytes per second


@dataclass
class Constraints:
    pin: dict[str, str] = field(default_factory=dict)  # block (or "layer:N") -> tier
    forbid: dict[str, list[str]] = field(default_factory=dict)  # block (or "layer:N") -> tiers
    use: list[str] = field(default_factory=list)  # tiers that must run >= 1 block
    skip: list[str] = field(default_factory=list)  # tiers that must run nothing
    max_upload_bytes: dict[str, int] = field(default_factory=dict)  # bytes sent out of a tier per frame
    max_time: dict[str, float] = field(default_factory=dict)  # compute seconds on a tier
    max_time_share: dict[str, float] = field(default_factory=dict)  # compute on tier <= share * total latency
    max_time_share_of: str = "latency"  # or "compute": share of total compute (Scission's P%)

    def empty(self) -> bool:
        return not any(
            (self.pin, self.forbid, self.use, self.skip, self.max_upload_bytes, self.max_time, self.max_time_share)
        )

    def to_json(self) -> dict:
        return {
            "pin": dict(self.pin),
            "forbid": {k: list(v) for k, v in self.forbid.items()},
            "use": list(self.use),
            "skip": list(self.skip),
            "max_upload_bytes": dict(self.max_upload_bytes),
            "max_time": dict(self.max_time),
            "max_time_share": dict(self.max_time_share),
            **({"max_time_share_of": self.max_time_share_of} if self.max_time_share_of != "latency" else {}),
        }


@dataclass
class Problem:
    tiers: list[str]
    blocks: list[Block]
    input_bytes: int
    links: dict[tuple[str, str], Link]
    constraints: Constraints = field(default_factory=Constraints)
    warnings: list = field(default_factory=list, repr=False, compare=False)  # non-fatal findings while loading

    # ---- JSON ------------------------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: Any, where: str = "problem") -> Problem:
        return _parse_problem(data, where)

    @classmethod
    def load(cls, path: str) -> Problem:
        try:
            with open(path) as fh:
                data = json.load(fh)
        except OSError as exc:
            raise ProblemError(f"cannot read problem file {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise ProblemError(f"{path}: not valid JSON: {exc}") from None
        return _parse_problem(data, path)

    def to_json(self) -> dict:
        return {
            "tiers": list(self.tiers),
            "input_bytes": self.input_bytes,
            "blocks": [
                {
                    "name": b.name,
                    "time": dict(b.time),
                    "out_bytes": b.out_bytes,
                    **({"layers": list(b.layers)} if b.layers else {}),
                }
                for b in self.blocks
            ],
            "links": [
                {"from": a, "to": b, "latency": l.latency, "bandwidth": l.bandwidth} for (a, b), l in self.links.items()
            ],
            "constraints": self.constraints.to_json(),
        }

    def with_constraints(self, constraints: Constraints) -> Problem:
        return Problem(self.tiers, self.blocks, self.input_bytes, self.links, constraints)

    def compile(self) -> Compiled:
        return Compiled(self)


# ---- parsing ---------------------------------------------------------------------------------------------------


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ProblemError(msg)


def _num(value: Any, where: str, minimum: float = 0.0, positive: bool = False) -> float:
    _need(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        f"{where}: expected a number, got {value!r}",
    )
    _need(
        value > 0 if positive else value >= minimum,
        f"{where}: must be {'> 0' if positive else f'>= {minimum:g}'}, got {value!r}",
    )
    return float(value)


def _parse_problem(data: Any, src: str) -> Problem:
    _need(isinstance(data, dict), f"{src}: top level must be a JSON object")
    unknown = set(data) - {"tiers", "input_bytes", "blocks", "links", "constraints", "model", "notes"}
    _need(not unknown, f"{src}: unknown key(s) {sorted(unknown)}")
    tiers = data.get("tiers")
    _need(
        isinstance(tiers, list) and tiers and all(isinstance(t, str) and t for t in tiers),
        f"{src}: 'tiers' must be a non-empty list of tier names",
    )
    _need(len(set(tiers)) == len(tiers), f"{src}: duplicate tier names in 'tiers'")
    input_bytes = int(_num(data.get("input_bytes", 0), f"{src}: input_bytes"))
    blocks_raw = data.get("blocks")
    _need(isinstance(blocks_raw, list) and blocks_raw, f"{src}: 'blocks' must be a non-empty list")
    blocks: list[Block] = []
    names: set[str] = set()
    for k, b in enumerate(blocks_raw):
        w = f"{src}: blocks[{k}]"
        _need(isinstance(b, dict), f"{w}: must be an object")
        name = b.get("name", str(k))
        _need(isinstance(name, str) and name, f"{w}: 'name' must be a non-empty string")
        _need(name not in names, f"{w}: duplicate block name {name!r}")
        names.add(name)
        time = b.get("time")
        _need(isinstance(time, dict), f"{w} ({name}): 'time' must map tier -> seconds")
        _need(
            set(time) == set(tiers),
            f"{w} ({name}): 'time' must give every tier exactly once; missing {sorted(set(tiers) - set(time))},"
            f" unknown {sorted(set(time) - set(tiers))}",
        )
        time = {t: _num(time[t], f"{w} ({name}).time.{t}") for t in tiers}
        out = int(_num(b.get("out_bytes", 0), f"{w} ({name}).out_bytes"))
        layers = b.get("layers")
        if layers is not None:
            _need(
                isinstance(layers, list)
                and len(layers) == 2
                and all(isinstance(x, int) for x in layers)
                and layers[0] <= layers[1],
                f"{w} ({name}).layers: expected [first, last] layer indices",
            )
            layers = (layers[0], layers[1])
        blocks.append(Block(name, time, out, layers))
    links: dict[tuple[str, str], Link] = {}
    links_raw = data.get("links", [])
    _need(isinstance(links_raw, list), f"{src}: 'links' must be a list")
    for k, l in enumerate(links_raw):
        w = f"{src}: links[{k}]"
        _need(isinstance(l, dict), f"{w}: must be an object")
        a, b = l.get("from"), l.get("to")
        _need(a in tiers and b in tiers, f"{w}: 'from'/'to' must be tier names, got {a!r} -> {b!r}")
        _need(tiers.index(a) < tiers.index(b), f"{w}: links go forward in tier order ({a} -> {b} does not)")
        _need((a, b) not in links, f"{w}: duplicate link {a} -> {b}")
        lat = l.get("latency", 0.0)
        if isinstance(lat, str):
            from splitdnn.units import parse_duration

            try:
                lat = parse_duration(lat)
            except ValueError as exc:
                raise ProblemError(f"{w}.latency: {exc}") from None
        bw = l.get("bandwidth")
        if isinstance(bw, str):
            from splitdnn.units import parse_rate

            try:
                bw = parse_rate(bw)
            except ValueError as exc:
                raise ProblemError(f"{w}.bandwidth: {exc}") from None
        links[(a, b)] = Link(_num(lat, f"{w}.latency"), _num(bw, f"{w}.bandwidth (bytes/s)", positive=True))
    constraints, warnings = _parse_constraints(data.get("constraints", {}) or {}, tiers, blocks, src)
    return Problem(list(tiers), blocks, input_bytes, links, constraints, warnings)


def _parse_constraints(c: Any, tiers: list[str], blocks: list[Block], src: str) -> tuple[Constraints, list]:
    w = f"{src}: constraints"
    _need(isinstance(c, dict), f"{w}: must be an object")
    aliases = {
        "maxUploadBytes": "max_upload_bytes",
        "maxTime": "max_time",
        "maxTimeShare": "max_time_share",
        "maxTimeShareOf": "max_time_share_of",
    }
    for camel, snake in aliases.items():  # the CRD's spelling (spec.planner.constraints) is accepted too
        if camel in c:
            _need(snake not in c, f"{w}: both {camel!r} and {snake!r} given")
            c = {**{k: v for k, v in c.items() if k != camel}, snake: c[camel]}
    unknown = set(c) - {
        "pin",
        "forbid",
        "use",
        "skip",
        "max_upload_bytes",
        "max_time",
        "max_time_share",
        "max_time_share_of",
    }
    _need(not unknown, f"{w}: unknown key(s) {sorted(unknown)}")

    def tier(t: Any, where: str) -> str:
        _need(isinstance(t, str) and t in tiers, f"{where}: unknown tier {t!r} (tiers: {', '.join(tiers)})")
        return t

    def tier_map(key: str, conv) -> dict:
        m = c.get(key, {}) or {}
        _need(isinstance(m, dict), f"{w}.{key}: must map tier -> value")
        return {tier(t, f"{w}.{key}"): conv(v, f"{w}.{key}.{t}") for t, v in m.items()}

    pin = c.get("pin", {}) or {}
    _need(isinstance(pin, dict), f"{w}.pin: must map block -> tier")
    pin = {str(k): tier(v, f"{w}.pin.{k}") for k, v in pin.items()}
    forbid = c.get("forbid", {}) or {}
    _need(isinstance(forbid, dict), f"{w}.forbid: must map block -> list of tiers")
    forbid2 = {}
    for k, v in forbid.items():
        if isinstance(v, str):
            v = [v]
        _need(isinstance(v, list), f"{w}.forbid.{k}: must be a list of tiers")
        forbid2[str(k)] = [tier(t, f"{w}.forbid.{k}") for t in v]
    for ref in pin:
        resolve_block(ref, blocks, f"{w}.pin")  # a pin on a block that does not exist cannot hold: error
    warnings = []
    for ref in list(forbid2):
        try:
            resolve_block(ref, blocks, f"{w}.forbid")
        except ProblemError as exc:  # forbidding a block that does not exist is vacuous: warn
            warnings.append(f"{exc}; ignored")
            del forbid2[ref]
    use = c.get("use", []) or []
    skip = c.get("skip", []) or []
    _need(isinstance(use, list) and isinstance(skip, list), f"{w}: 'use' and 'skip' must be lists of tiers")
    use = [tier(t, f"{w}.use") for t in use]
    skip = [tier(t, f"{w}.skip") for t in skip]

    def share(v, where):
        if isinstance(v, str):
            from splitdnn.units import parse_percent

            try:
                v = parse_percent(v)
            except ValueError as exc:
                raise ProblemError(f"{where}: {exc}") from None
        v = _num(v, where)
        _need(v <= 1.0, f"{where}: a share is a fraction in [0, 1] (or '30%'), got {v!r}")
        return v

    def secs(v, where):
        if isinstance(v, str):
            from splitdnn.units import parse_duration

            try:
                v = parse_duration(v)
            except ValueError as exc:
                raise ProblemError(f"{where}: {exc}") from None
        return _num(v, where)

    out = Constraints(
        pin=pin,
        forbid=forbid2,
        use=use,
        skip=skip,
        max_upload_bytes=tier_map("max_upload_bytes", lambda v, wh: int(_num(v, wh))),
        max_time=tier_map("max_time", secs),
        max_time_share=tier_map("max_time_share", share),
    )
    basis = c.get("max_time_share_of", "latency")
    _need(basis in ("latency", "compute"), f"{w}.max_time_share_of: 'latency' or 'compute', got {basis!r}")
    out.max_time_share_of = basis
    return out, warnings


def resolve_block(ref: str, blocks: list[Block], where: str = "constraint") -> int:
    """Block index for a constraint reference: a block name, or ``layer:N`` (the block whose layer range holds N)."""
    for k, b in enumerate(blocks):
        if b.name == ref:
            return k
    if ref.startswith("layer:"):
        try:
            n = int(ref[6:])
        except ValueError:
            raise ProblemError(f"{where}: bad layer reference {ref!r}") from None
        for k, b in enumerate(blocks):
            if b.layers and b.layers[0] <= n <= b.layers[1]:
                return k
        raise ProblemError(f"{where}: no block contains layer {n}")
    raise ProblemError(f"{where}: unknown block {ref!r}")


# ---- compiled (integer) form -------------------------------------------------------------------------------------


class Compiled:
    """Integer form of a problem shared by all strategies. Tier indices 0..T-1, block indices 0..n-1."""

    def __init__(self, p: Problem):
        self.problem = p
        T, n = len(p.tiers), len(p.blocks)
        self.T, self.n = T, n
        tix = {t: k for k, t in enumerate(p.tiers)}
        self.ct = [[to_ticks(b.time[t]) for b in p.blocks] for t in p.tiers]  # ct[t][b]
        self.S = []  # prefix sums S[t][i]
        for t in range(T):
            s, acc = [0], 0
            for x in self.ct[t]:
                acc += x
                s.append(acc)
            self.S.append(s)
        self.out = [b.out_bytes for b in p.blocks]
        self.input_bytes = p.input_bytes
        self.link = {}  # (a, b) -> (lat, bw)
        for (a, b), l in p.links.items():
            self.link[(tix[a], tix[b])] = (to_ticks(l.latency), l.bandwidth)
        c = p.constraints
        # allowed[t][b]: block b may run on tier t (pins, forbids, skipped tiers)
        allowed = [[True] * n for _ in range(T)]
        for ref, t in c.pin.items():
            k = resolve_block(ref, p.blocks, "pin")
            for u in range(T):
                if u != tix[t]:
                    allowed[u][k] = False
        for ref, ts in c.forbid.items():
            k = resolve_block(ref, p.blocks, "forbid")
            for t in ts:
                allowed[tix[t]][k] = False
        for t in c.skip:
            allowed[tix[t]] = [False] * n
        self.allowed = allowed
        self.skip = {tix[t] for t in c.skip}
        self.required = sorted({tix[t] for t in c.use})
        self.upload_cap = {tix[t]: v for t, v in c.max_upload_bytes.items()}
        self.time_cap = {tix[t]: to_ticks(v) for t, v in c.max_time.items()}
        # share: compute_t <= p/q * total  <=>  q*compute_t - p*total <= 0 (exact in integers); total = latency
        # (the default) or the sum of compute
        self.shares = []
        self.share_of_latency = c.max_time_share_of != "compute"  # else: share of total compute
        for t, s in c.max_time_share.items():
            fr = Fraction(s).limit_denominator(10**9)
            self.shares.append((tix[t], fr.numerator, fr.denominator))

    # hop cost in ticks: link latency + transfer; transfer alone is what a stream's period sees
    def transfer(self, a: int, b: int, nbytes: int) -> int:
        return int(round(nbytes * TICKS_PER_SECOND / self.link[(a, b)][1]))

    def hop_bytes(self, i: int) -> int:
        """Bytes crossing the boundary before block i (the input for i = 0)."""
        return self.input_bytes if i == 0 else self.out[i - 1]

    def blocks_between_required(self, a: int, b: int) -> bool:
        """True when a required tier lies strictly between tiers a and b (a may be -1)."""
        return any(a < r < b for r in self.required)

    def range_ok(self, t: int, i: int, j: int) -> bool:
        return all(self.allowed[t][i:j]) and (t not in self.time_cap or self.S[t][j] - self.S[t][i] <= self.time_cap[t])

    def hop_ok(self, a: int, b: int, i: int) -> bool:
        """Hop from tier a (a = -1: the source, data on tier 0) to tier b carrying the boundary-i tensor."""
        if a == -1:
            if b == 0:
                return True
            a = 0
            if 0 in self.required:
                return False
        if (a, b) not in self.link or self.blocks_between_required(a, b):
            return False
        cap = self.upload_cap.get(a)
        return cap is None or self.hop_bytes(i) <= cap


@dataclass(frozen=True)
class Metrics:
    latency: int  # ticks
    bottleneck: int  # ticks
    bytes: int
    compute: tuple  # ticks per tier
    upload: tuple  # bytes sent out of each tier


def ranges_of(cuts: tuple, T: int) -> list[tuple[int, int]]:
    out, prev = [], 0
    for k in range(T):
        out.append((prev, cuts[k]))
        prev = cuts[k]
    return out


def evaluate(cp: Compiled, cuts: tuple) -> Metrics | None:
    """Exact metrics of a plan, or None when it needs a hop that has no link."""
    T = cp.T
    compute = [0] * T
    upload = [0] * T
    lat = bn = nbytes = 0
    prev = -1  # last used tier; -1 = data still at the source (tier 0, nothing computed)
    for t, (i, j) in enumerate(ranges_of(cuts, T)):
        if j <= i:
            continue
        if prev != t and not (prev == -1 and t == 0):
            a = 0 if prev == -1 else prev
            if (a, t) not in cp.link:
                return None
            b = cp.hop_bytes(i)
            tr = cp.transfer(a, t, b)
            lat += cp.link[(a, t)][0] + tr
            bn = max(bn, tr)
            nbytes += b
            upload[a] += b
        x = cp.S[t][j] - cp.S[t][i]
        compute[t] = x
        lat += x
        bn = max(bn, x)
        prev = t
    return Metrics(lat, bn, nbytes, tuple(compute), tuple(upload))


def feasible(cp: Compiled, cuts: tuple, m: Metrics | None = None) -> bool:
    """All constraints, checked directly on a full plan (the oracle's definition)."""
    m = m if m is not None else evaluate(cp, cuts)
    if m is None:
        return False
    rs = ranges_of(cuts, cp.T)
    for t, (i, j) in enumerate(rs):
        if not all(cp.allowed[t][i:j]):
            return False
        if t in cp.time_cap and m.compute[t] > cp.time_cap[t]:
            return False
        if t in cp.upload_cap and m.upload[t] > cp.upload_cap[t]:
            return False
    for r in cp.required:
        if rs[r][1] <= rs[r][0]:
            return False
    total = m.latency if cp.share_of_latency else sum(m.compute)
    for t, p, q in cp.shares:
        if q * m.compute[t] - p * total > 0:
            return False
    return True


OBJECTIVES = ("latency", "throughput", "bytes")


def sort_key(objective: str, m: Metrics, cuts: tuple) -> tuple:
    """Total order on plans: the objective, then latency, then bytes, then cut order."""
    if objective == "latency":
        return (m.latency, m.bytes, cuts)
    if objective == "bytes":
        return (m.bytes, m.latency, cuts)
    if objective == "throughput":
        return (m.bottleneck, m.latency, m.bytes, cuts)
    raise ValueError(f"unknown objective {objective!r} (choose from {', '.join(OBJECTIVES)})")


def all_cuts(n: int, T: int) -> Iterable[tuple]:
    """Every plan: non-decreasing cut tuples ending at n."""
    from itertools import combinations_with_replacement

    for c in combinations_with_replacement(range(n + 1), T - 1):
        yield c + (n,)
