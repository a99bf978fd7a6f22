"""Planner problem model: tiers, blocks, links, constraints; JSON loading with clear errors; exact cost evaluation.

Times are converted once to integer *ticks* (1 tick = 1e-12 s) so that every strategy (the dynamic programme, the
label-setting search, the brute-force oracle) sums exactly the same integers: rankings, ties and constraint checks
are identical across strategies, independent of summation order. Reported values are converted back to seconds.

A plan is a tuple of block ends ``(e_0, ..., e_{T-1})`` with ``e_{T-1} = n``: tier k runs blocks
``e_{k-1} .. e_k - 1`` (``e_{-1} = 0``); an empty range means the tier is unused. Frames originate on tier 0;
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
    message_seconds: float = 0.0  # fixed cost of one message (serialisation at both ends, the gRPC call)
    max_message_bytes: int = 0  # a tensor is sent in messages (chunks) of at most this size; 0 = one message
    hop_seconds: float = 0.0  # fixed cost of one hop whatever its messages (what a calibrated link fit measures)

    def messages(self, nbytes: int) -> int:
        """Messages a hop of `nbytes` takes: one, or one per chunk of at most `max_message_bytes`."""
        return max(1, -(-int(nbytes) // self.max_message_bytes)) if self.max_message_bytes > 0 else 1


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
    # fixed cost of one call of a tier's runtime, paid once per frame by every tier that runs blocks (the served
    # stage time is call_seconds + the sum of its blocks' times); tiers not named pay nothing
    call_seconds: dict[str, float] = field(default_factory=dict)
    # stage time a tier pays per extra message of its output: a tensor over the tier's max_message_bytes goes on a
    # stream in m > 1 chunks, whose sending runs in the tier's process beside the next frame's compute (and is
    # slowed like it); a range ending at boundary j < n costs send_seconds × (messages − 1) more. Tiers not named: 0
    send_seconds: dict[str, float] = field(default_factory=dict)

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
                {
                    "from": a,
                    "to": b,
                    "latency": l.latency,
                    "bandwidth": l.bandwidth,
                    **({"message_seconds": l.message_seconds} if l.message_seconds else {}),
                    **({"max_message_bytes": l.max_message_bytes} if l.max_message_bytes else {}),
                    **({"hop_seconds": l.hop_seconds} if l.hop_seconds else {}),
                }
                for (a, b), l in self.links.items()
            ],
            **({"call_seconds": dict(self.call_seconds)} if self.call_seconds else {}),
            **({"send_seconds": dict(self.send_seconds)} if self.send_seconds else {}),
            "constraints": self.constraints.to_json(),
        }

    def with_constraints(self, constraints: Constraints) -> Problem:
        return Problem(
            self.tiers,
            self.blocks,
            self.input_bytes,
            self.links,
            constraints,
            call_seconds=dict(self.call_seconds),
            send_seconds=dict(self.send_seconds),
        )

    def compile(self) -> Compiled:
        return Compiled(self)


# ---- parsing ---------------------------------------------------------------------------------------------------
# The JSON Schema checks shapes, types and ranges; `_parse_problem` then checks what refers to what (tiers, blocks,
# links) and converts unit strings. Every error names the field: "<src>: blocks[2].time.edge: ...".

_NUMBER = {"type": "number", "minimum": 0}
_TIERS_OF = {"type": "array", "items": {"type": "string"}}
_CONSTRAINT_PROPS: dict[str, Any] = {
    "pin": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
    "forbid": {
        "type": ["object", "null"],
        "additionalProperties": {"type": ["string", "array"], "items": {"type": "string"}},
    },
    "use": {"type": ["array", "null"], "items": {"type": "string"}},
    "skip": {"type": ["array", "null"], "items": {"type": "string"}},
    "max_upload_bytes": {"type": ["object", "null"], "additionalProperties": _NUMBER},
    "max_time": {"type": ["object", "null"], "additionalProperties": {"anyOf": [_NUMBER, {"type": "string"}]}},
    "max_time_share": {
        "type": ["object", "null"],
        "additionalProperties": {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "string"}]},
    },
    "max_time_share_of": {"enum": ["latency", "compute"]},
}
# the CRD's spelling (spec.planner.constraints) is accepted too
CRD_SPELLING = {
    "maxUploadBytes": "max_upload_bytes",
    "maxTime": "max_time",
    "maxTimeShare": "max_time_share",
    "maxTimeShareOf": "max_time_share_of",
}
SCHEMA: dict[str, Any] = {  # "x-message": what to say when this node fails (the field is named before it)
    "type": "object",
    "x-message": "top level must be a JSON object with 'tiers' and 'blocks'",
    "required": ["tiers", "blocks"],
    "additionalProperties": False,
    "properties": {
        "tiers": {
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"type": "string", "minLength": 1},
            "x-message": "'tiers' must be a non-empty list of distinct tier names",
        },
        "input_bytes": _NUMBER,
        "call_seconds": {
            "type": "object",
            "additionalProperties": _NUMBER,
            "x-message": "'call_seconds' must map tier -> seconds (the fixed cost of one call of its runtime)",
        },
        "send_seconds": {
            "type": "object",
            "additionalProperties": _NUMBER,
            "x-message": "'send_seconds' must map tier -> seconds (stage time per extra message of its output)",
        },
        "model": {},
        "notes": {},
        "blocks": {
            "type": "array",
            "minItems": 1,
            "x-message": "'blocks' must be a non-empty list",
            "items": {
                "type": "object",
                "required": ["time"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "time": {
                        "type": "object",
                        "additionalProperties": _NUMBER,
                        "x-message": "'time' must map tier -> seconds",
                    },
                    "out_bytes": _NUMBER,
                    "layers": {
                        "type": "array",
                        "minItems": 2,
                        "maxItems": 2,
                        "items": {"type": "integer"},
                        "x-message": "expected [first, last] layer indices",
                    },
                    "flops": _NUMBER,
                },
            },
        },
        "links": {
            "type": "array",
            "x-message": "'links' must be a list",
            "items": {
                "type": "object",
                "required": ["from", "to", "bandwidth"],
                "additionalProperties": False,
                "properties": {
                    "from": {"type": "string"},
                    "to": {"type": "string"},
                    "latency": {"anyOf": [_NUMBER, {"type": "string"}]},
                    "bandwidth": {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string"}]},
                    "message_seconds": {"anyOf": [_NUMBER, {"type": "string"}]},
                    "max_message_bytes": {"type": "integer", "minimum": 0},
                    "hop_seconds": {"anyOf": [_NUMBER, {"type": "string"}]},
                },
            },
        },
        "constraints": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                **_CONSTRAINT_PROPS,
                **{camel: _CONSTRAINT_PROPS[snake] for camel, snake in CRD_SPELLING.items()},
            },
        },
    },
}


def _need(cond: object, msg: str) -> None:
    if not cond:
        raise ProblemError(msg)


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _validate(data: Any, src: str) -> None:
    import jsonschema

    validator = jsonschema.Draft7Validator(SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return
    e = errors[0]
    # the deepest, most specific reason of an anyOf (a number out of range rather than "not a string")
    while e.context:
        e = min(e.context, key=lambda c: (c.validator == "type", len(c.relative_path)))
    where = _path(e.absolute_path)
    if e.validator != "additionalProperties" and "x-message" in e.schema:
        prefix = f"{where}: " if len(e.absolute_path) > 1 else ""  # a top-level key's message names the key
        raise ProblemError(f"{src}: {prefix}{e.schema['x-message']}")
    if e.validator == "additionalProperties":
        known = set((e.schema.get("properties") or {}).keys())
        unknown = sorted(set(e.instance) - known)
        raise ProblemError(f"{src}: {where}: unknown key(s) {unknown}")
    if e.validator == "enum":
        raise ProblemError(f"{src}: {where}: {' or '.join(map(repr, e.validator_value))}, got {e.instance!r}")
    if e.validator == "exclusiveMinimum":
        raise ProblemError(f"{src}: {where}: must be > {e.validator_value:g}, got {e.instance!r}")
    if e.validator == "maximum" and "share" in where.lower():
        raise ProblemError(f"{src}: {where}: a share is a fraction in [0, 1] (or '30%'), got {e.instance!r}")
    raise ProblemError(f"{src}: {where}: {e.message}")


def _unit(value: Any, parse: Any, where: str) -> float:
    """A number, or a string in the unit `parse` reads ("5ms", "4mbit", "30%")."""
    if isinstance(value, str):
        try:
            value = parse(value)
        except ValueError as exc:
            raise ProblemError(f"{where}: {exc}") from None
    _need(math.isfinite(value) and value >= 0, f"{where}: must be a finite number >= 0, got {value!r}")
    return float(value)


def _parse_problem(data: Any, src: str) -> Problem:
    from splitdnn.units import parse_duration, parse_rate

    _validate(data, src)
    tiers: list[str] = list(data["tiers"])
    blocks: list[Block] = []
    names: set[str] = set()
    for k, b in enumerate(data["blocks"]):
        name = b.get("name", str(k))
        w = f"{src}: blocks[{k}] ({name})"
        _need(name not in names, f"{src}: blocks[{k}]: duplicate block name {name!r}")
        names.add(name)
        time = b["time"]
        _need(
            set(time) == set(tiers),
            f"{w}: 'time' must give every tier exactly once; missing {sorted(set(tiers) - set(time))},"
            f" unknown {sorted(set(time) - set(tiers))}",
        )
        layers = b.get("layers")
        _need(layers is None or layers[0] <= layers[1], f"{w}.layers: expected [first, last] layer indices")
        blocks.append(
            Block(
                name,
                {t: _unit(time[t], None, f"{w}.time.{t}") for t in tiers},
                int(_unit(b.get("out_bytes", 0), None, f"{w}.out_bytes")),
                (layers[0], layers[1]) if layers is not None else None,
            )
        )
    links: dict[tuple[str, str], Link] = {}
    for k, l in enumerate(data.get("links", [])):
        w = f"{src}: links[{k}]"
        a, b = l["from"], l["to"]
        _need(a in tiers and b in tiers, f"{w}: 'from'/'to' must be tier names, got {a!r} -> {b!r}")
        _need(tiers.index(a) < tiers.index(b), f"{w}: links go forward in tier order ({a} -> {b} does not)")
        _need((a, b) not in links, f"{w}: duplicate link {a} -> {b}")
        bandwidth = _unit(l["bandwidth"], parse_rate, f"{w}.bandwidth (bytes/s)")
        _need(bandwidth > 0, f"{w}.bandwidth (bytes/s): must be > 0, got {l['bandwidth']!r}")
        links[(a, b)] = Link(
            _unit(l.get("latency", 0.0), parse_duration, f"{w}.latency"),
            bandwidth,
            _unit(l.get("message_seconds", 0.0), parse_duration, f"{w}.message_seconds"),
            int(l.get("max_message_bytes", 0)),
            _unit(l.get("hop_seconds", 0.0), parse_duration, f"{w}.hop_seconds"),
        )
    per_tier = {}
    for key in ("call_seconds", "send_seconds"):
        given = data.get(key) or {}
        unknown = sorted(set(given) - set(tiers))
        _need(not unknown, f"{src}: {key}: unknown tier(s) {unknown} (tiers: {', '.join(tiers)})")
        per_tier[key] = {t: _unit(v, None, f"{src}: {key}.{t}") for t, v in given.items()}
    constraints, warnings = _parse_constraints(data.get("constraints") or {}, tiers, blocks, src)
    return Problem(
        tiers,
        blocks,
        int(data.get("input_bytes", 0)),
        links,
        constraints,
        warnings,
        per_tier["call_seconds"],
        per_tier["send_seconds"],
    )


def _parse_constraints(
    c: dict[str, Any], tiers: list[str], blocks: list[Block], src: str
) -> tuple[Constraints, list[str]]:
    from splitdnn.units import parse_duration, parse_percent

    w = f"{src}: constraints"
    for camel, snake in CRD_SPELLING.items():
        if camel in c:
            _need(snake not in c, f"{w}: both {camel!r} and {snake!r} given")
            c = {**{k: v for k, v in c.items() if k != camel}, snake: c[camel]}

    def tier(t: str, where: str) -> str:
        _need(t in tiers, f"{where}: unknown tier {t!r} (tiers: {', '.join(tiers)})")
        return t

    def by_tier(key: str) -> dict[str, Any]:
        return {tier(t, f"{w}.{key}"): v for t, v in (c.get(key) or {}).items()}

    pin = {str(k): tier(v, f"{w}.pin.{k}") for k, v in (c.get("pin") or {}).items()}
    forbid = {
        str(k): [tier(t, f"{w}.forbid.{k}") for t in ([v] if isinstance(v, str) else v)]
        for k, v in (c.get("forbid") or {}).items()
    }
    for ref in pin:
        resolve_block(ref, blocks, f"{w}.pin")  # a pin on a block that does not exist cannot hold: error
    warnings = []
    for ref in list(forbid):
        try:
            resolve_block(ref, blocks, f"{w}.forbid")
        except ProblemError as exc:  # forbidding a block that does not exist is vacuous: warn
            warnings.append(f"{exc}; ignored")
            del forbid[ref]
    shares = {}
    for t, v in by_tier("max_time_share").items():
        share = _unit(v, parse_percent, f"{w}.max_time_share.{t}")
        _need(share <= 1.0, f"{w}.max_time_share.{t}: a share is a fraction in [0, 1] (or '30%'), got {v!r}")
        shares[t] = share
    out = Constraints(
        pin=pin,
        forbid=forbid,
        use=[tier(t, f"{w}.use") for t in c.get("use") or []],
        skip=[tier(t, f"{w}.skip") for t in c.get("skip") or []],
        max_upload_bytes={t: int(v) for t, v in by_tier("max_upload_bytes").items()},
        max_time={t: _unit(v, parse_duration, f"{w}.max_time.{t}") for t, v in by_tier("max_time").items()},
        max_time_share=shares,
        max_time_share_of=c.get("max_time_share_of", "latency"),
    )
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


def extra_messages(p: Problem, tier: str, j: int) -> int:
    """Messages beyond the first that `tier`'s output at boundary j takes. The chunk size is the tier's own (its
    links' smallest max_message_bytes: an agent's --max-message-bytes is per tier, whichever tier it sends to);
    0 when unchunked, without links, or at j = n (the result goes back, not forward)."""
    sizes = [l.max_message_bytes for (a, _), l in p.links.items() if a == tier and l.max_message_bytes > 0]
    if j >= len(p.blocks) or not sizes:
        return 0
    return -(-p.blocks[j - 1].out_bytes // min(sizes)) - 1


class Compiled:
    """Integer form of a problem shared by all strategies. Tier indices 0..T-1, block indices 0..n-1."""

    def __init__(self, p: Problem):
        self.problem = p
        T, n = len(p.tiers), len(p.blocks)
        self.T, self.n = T, n
        tix = {t: k for k, t in enumerate(p.tiers)}
        self.ct = [[to_ticks(b.time[t]) for b in p.blocks] for t in p.tiers]  # ct[t][b]
        self.S: list[list[int]] = []  # prefix sums S[t][i]
        for t in range(T):
            s, acc = [0], 0
            for x in self.ct[t]:
                acc += x
                s.append(acc)
            self.S.append(s)
        self.out = [b.out_bytes for b in p.blocks]
        self.input_bytes = p.input_bytes
        # per-tier fixed call cost, charged once on every used tier: a range i..j-1 on t costs S[t][j]-S[t][i]+call[t]
        self.call = [to_ticks(p.call_seconds.get(t, 0.0)) for t in p.tiers]
        # send[t][j - 1]: what a range ending at boundary j costs tier t for sending its output in chunks
        self.send: list[list[int] | None] = []
        for name in p.tiers:
            per = to_ticks(p.send_seconds.get(name, 0.0))
            self.send.append([per * extra_messages(p, name, j) for j in range(1, n + 1)] if per else None)
        self.link: dict[tuple[int, int], tuple[int, float]] = {}  # (a, b) -> (latency ticks, bytes/s)
        self._links: dict[tuple[int, int], Link] = {}
        for (a, b), l in p.links.items():
            self.link[(tix[a], tix[b])] = (to_ticks(l.latency), l.bandwidth)
            self._links[(tix[a], tix[b])] = l
        c = p.constraints
        # allowed[t][b]: block b may run on tier t (pins, forbids, skipped tiers)
        allowed = [[True] * n for _ in range(T)]
        for ref, tier in c.pin.items():
            k = resolve_block(ref, p.blocks, "pin")
            for u in range(T):
                if u != tix[tier]:
                    allowed[u][k] = False
        for ref, forbidden in c.forbid.items():
            k = resolve_block(ref, p.blocks, "forbid")
            for tier in forbidden:
                allowed[tix[tier]][k] = False
        for tier in c.skip:
            allowed[tix[tier]] = [False] * n
        self.allowed = allowed
        self._hop_cache: dict | None = None  # dp._hop_table's, per compiled problem
        self.skip = {tix[t] for t in c.skip}
        self.required = sorted({tix[t] for t in c.use})
        self.upload_cap = {tix[t]: v for t, v in c.max_upload_bytes.items()}
        self.time_cap = {tix[t]: to_ticks(v) for t, v in c.max_time.items()}
        # share: compute_t <= p/q * total  <=>  q*compute_t - p*total <= 0 (exact in integers); total = latency
        # (the default) or the sum of compute
        self.shares: list[tuple[int, int, int]] = []
        self.share_of_latency = c.max_time_share_of != "compute"  # else: share of total compute
        for tier, share in c.max_time_share.items():
            fr = Fraction(share).limit_denominator(10**9)
            self.shares.append((tix[tier], fr.numerator, fr.denominator))

    # hop cost in ticks: link latency + transfer; transfer alone is what a stream's period sees
    def transfer(self, a: int, b: int, nbytes: int) -> int:
        """bytes / bandwidth + messages × per-message cost (ticks): the time the hop occupies the link."""
        link = self._links[(a, b)]
        return (
            int(round(nbytes * TICKS_PER_SECOND / link.bandwidth))
            + link.messages(nbytes) * to_ticks(link.message_seconds)
            + to_ticks(link.hop_seconds)
        )

    def range_cost(self, t: int, i: int, j: int) -> int:
        """Stage time (ticks) of tier t running blocks i..j-1 (j > i): the call cost plus the blocks, plus sending
        the output in chunks (`Problem.send_seconds`)."""
        send = self.send[t]
        return self.S[t][j] - self.S[t][i] + self.call[t] + (send[j - 1] if send else 0)

    def hop_bytes(self, i: int) -> int:
        """Bytes crossing the boundary before block i (the input for i = 0)."""
        return self.input_bytes if i == 0 else self.out[i - 1]

    def blocks_between_required(self, a: int, b: int) -> bool:
        """True when a required tier lies strictly between tiers a and b (a may be -1)."""
        return any(a < r < b for r in self.required)

    def range_ok(self, t: int, i: int, j: int) -> bool:
        return all(self.allowed[t][i:j]) and (t not in self.time_cap or self.range_cost(t, i, j) <= self.time_cap[t])

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


def ranges_of(ends: tuple[int, ...], T: int) -> list[tuple[int, int]]:
    out, prev = [], 0
    for k in range(T):
        out.append((prev, ends[k]))
        prev = ends[k]
    return out


def evaluate(cp: Compiled, ends: tuple[int, ...]) -> Metrics | None:
    """Exact metrics of a plan, or None when it needs a hop that has no link."""
    T = cp.T
    compute = [0] * T
    upload = [0] * T
    lat = bn = nbytes = 0
    prev = -1  # last used tier; -1 = data still at the source (tier 0, nothing computed)
    for t, (i, j) in enumerate(ranges_of(ends, T)):
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
        x = cp.range_cost(t, i, j)
        compute[t] = x
        lat += x
        bn = max(bn, x)
        prev = t
    return Metrics(lat, bn, nbytes, tuple(compute), tuple(upload))


def metrics_of(cp: Compiled, ends: tuple[int, ...]) -> Metrics:
    """`evaluate` for a plan a strategy found (its hops have links by construction)."""
    m = evaluate(cp, ends)
    if m is None:
        raise ValueError(f"plan {ends} needs a hop between tiers that have no link")
    return m


def feasible(cp: Compiled, ends: tuple[int, ...], m: Metrics | None = None) -> bool:
    """All constraints, checked directly on a full plan (the oracle's definition)."""
    m = m if m is not None else evaluate(cp, ends)
    if m is None:
        return False
    rs = ranges_of(ends, cp.T)
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


def sort_key(objective: str, m: Metrics, ends: tuple[int, ...]) -> tuple:
    """Total order on plans: the objective, then latency, then bytes, then block order."""
    if objective == "latency":
        return (m.latency, m.bytes, ends)
    if objective == "bytes":
        return (m.bytes, m.latency, ends)
    if objective == "throughput":
        return (m.bottleneck, m.latency, m.bytes, ends)
    raise ValueError(f"unknown objective {objective!r} (choose from {', '.join(OBJECTIVES)})")


def all_ends(n: int, T: int) -> Iterable[tuple[int, ...]]:
    """Every plan: non-decreasing block-end tuples ending at n."""
    from itertools import combinations_with_replacement

    for c in combinations_with_replacement(range(n + 1), T - 1):
        yield c + (n,)
