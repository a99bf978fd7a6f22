"""MLS and SLS (CoopAI, Yang et al., Section IV): how many layers each cooperative block holds, on k devices.

Cost of a block of layers i..j on k identical devices (eq. 3):
    e = max over devices d of  ζ(d) / F  +  φ(d) / (G / k)
ζ(d) — FLOPs of device d's part (convolution and dense layers only, as the paper; halo rows recomputed by
neighbours count for each device that computes them); φ(d) = ti + τo + to (eq. 5), in bits:
- ti(d): block input values d receives from the gateway — the values it needs that it does not already hold;
- τo(d): values of the *preceding* block's output that d uploads because another device of this block needs them
  (the paper postpones this term to the succeeding block, whose halo decides it);
- to(d): what d uploads at the end of this block when the output cannot stay on the devices (partial sums of a
  data/hybrid Dense block, logits of a softmax layer) or when this is the model's last block.
The gateway's own computation is not modelled (as in the paper).

The recurrence (eq. 2), T_i^k = min_r T_r^k + e_{r+1,i}^k, keeps one extra bit of state: whether the output of
layer r stays distributed on the devices or ends at the gateway — τo and ti depend on it, and the paper says the
modes of consecutive rounds must be examined jointly. With that bit the DP is exact: it equals a brute-force search
over every block partition and mode (tests/test_mls.py). k = 1 is the paper's special case: the whole model on one
device, only the first input and the last output cross the gateway. T* = min over k of T_L^k (eq. 1).

SLS (layer-by-layer slicing, the paper's baseline after DeepThings/MoDNN) is the same DP restricted to blocks of
one convolution or dense layer each (with the pooling, per-unit layers and Flatten that follow it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from splitdnn.coop import Geom, StripeTask, block_modes, needed_ranges, owned, plan_block

BITS_PER_VALUE = 32  # float32 activations (an assumption: the paper does not state the data type)


@dataclass(frozen=True)
class Platform:
    flops: float  # F: FLOP/s of one device
    bandwidth_bps: float  # G: the gateway's bandwidth in bit/s, shared evenly by the k devices of a round
    bits_per_value: int = BITS_PER_VALUE


@dataclass(frozen=True)
class BlockParts:
    """Per device: (FLOPs, values moved through the gateway) for one block; independent of F and G."""

    devices: tuple[tuple[float, int], ...]
    distributed_output: bool

    def seconds(self, platform: Platform) -> float:
        """e (eq. 3): the slowest device's compute plus its transfer at G/k."""
        k = len(self.devices)
        per_value = platform.bits_per_value / (platform.bandwidth_bps / k)
        return max(flops / platform.flops + values * per_value for flops, values in self.devices)


@dataclass(frozen=True)
class Plan:
    seconds: float
    devices: int
    blocks: tuple[tuple[int, int, int, str], ...]  # (first_layer, last_layer, devices, mode), 0-based, inclusive

    @property
    def block_list(self) -> list[list[int]]:
        """The `mls_blocks` contract: [[first_layer, last_layer, devices]]."""
        return [[first, last, n] for first, last, n, _ in self.blocks]


def _length(ranges: Sequence[tuple[int, int]]) -> int:
    """Total length of a union of half-open ranges."""
    total, end = 0, None
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if end is None or lo >= end:
            total += hi - lo
            end = hi
        elif hi > end:
            total += hi - end
            end = hi
    return total


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return max(a[0], b[0]), min(a[1], b[1])


class CostModel:
    """Per-device FLOPs and transfers of every block of one model on k devices, cached: the DP asks for each block
    and input state once, and the figures do not depend on F or G, so one model serves every platform."""

    def __init__(self, geoms: Sequence[Geom], devices: int):
        self.geoms, self.k = list(geoms), devices
        self.parts = lru_cache(maxsize=None)(self._parts)
        self.modes = lru_cache(maxsize=None)(lambda i, j: block_modes(self.geoms, i, j))
        self.plan = lru_cache(maxsize=None)(lambda i, j, mode: plan_block(self.geoms, i, j, self.k, mode))

    def needs(self, first: int, last: int, mode: str) -> list[tuple[int, int]]:
        """Flat ranges of the block input each device needs ((0, 0): nothing)."""
        return needed_ranges(self.geoms, self.plan(first, last, mode))

    def _parts(self, first: int, last: int, mode: str, distributed_input: bool) -> BlockParts:
        g, k = self.geoms, self.k
        plan = self.plan(first, last, mode)
        last_block = last == len(g) - 1
        needs = [(0, 0)] * k if mode == "coordinator" else self.needs(first, last, mode)
        have = owned(g, first - 1, k) if distributed_input else [(0, 0)] * k
        out_own = owned(g, last, k)
        devices = []
        for d in range(k):
            mine = _overlap(needs[d], have[d])
            ti = max(0, needs[d][1] - needs[d][0]) - max(0, mine[1] - mine[0])
            if mode == "coordinator":  # the gateway itself needs every value
                tau = max(0, have[d][1] - have[d][0])
            else:
                tau = _length([_overlap(have[d], needs[e]) for e in range(k) if e != d])
            to = self._upload(plan, d, out_own[d], last_block)
            devices.append((self._flops(plan, d), ti + tau + to))
        return BlockParts(tuple(devices), plan.distributed_output)

    def _upload(self, plan, d: int, own: tuple[int, int], last_block: bool) -> int:
        task = plan.tasks[d]
        if plan.mode == "coordinator":
            return 0
        if plan.distributed_output:  # the next block's τo moves it, unless nothing comes next
            return own[1] - own[0] if last_block else 0
        if task is None:
            return 0
        if plan.mode == "model":  # logits of a unit-mixing (softmax) layer, by units
            return task.units[1] - task.units[0]
        return _partial_sums(self.geoms, plan)

    def _flops(self, plan, d: int) -> float:
        task = plan.tasks[d]
        if task is None:
            return 0.0
        block = [self.geoms[i] for i in plan.layers]
        if isinstance(task, StripeTask):
            spatial = [x for x in block if x.kind != "flatten"]
            return sum(x.row_flops * (hi - lo) for x, (lo, hi) in zip(spatial, task.layer_rows))
        dense = [x for x in block if x.kind == "dense"]
        lo, hi = task.units
        if plan.mode == "model":
            return 2.0 * dense[0].in_shape[0] * (hi - lo)
        if plan.mode == "data":
            return 2.0 * (hi - lo) * dense[0].out_shape[0]
        if plan.mode == "hybrid":
            return 2.0 * dense[0].in_shape[0] * (hi - lo) + 2.0 * (hi - lo) * dense[1].out_shape[0]
        return 0.0


def _last_dense(geoms: Sequence[Geom], plan) -> int:
    return max(i for i in plan.layers if geoms[i].kind == "dense")


def _partial_sums(geoms: Sequence[Geom], plan) -> int:
    """Values a device uploads in a data/hybrid block: a partial pre-activation of the last Dense layer."""
    return int(geoms[_last_dense(geoms, plan)].out_shape[0])


def single_device(geoms: Sequence[Geom], platform: Platform) -> Plan:
    """k = 1 (eq. 2, second case): every layer on one device; the input goes in and the output comes out once."""
    values = _size(geoms[0].in_shape) + _size(geoms[-1].out_shape)
    seconds = sum(g.flops for g in geoms) / platform.flops + values * platform.bits_per_value / platform.bandwidth_bps
    return Plan(seconds, 1, ((0, len(geoms) - 1, 1, "local"),))


def _size(shape: Sequence[int]) -> int:
    size = 1
    for s in shape:
        size *= int(s)
    return size


def _dp(
    geoms: Sequence[Geom],
    k: int,
    platform: Platform,
    allowed: Callable[[int, int], bool],
    costs: CostModel | None = None,
) -> Plan:
    """min over block partitions and modes of the summed block costs, exactly (eq. 2 with the state bit)."""
    if k == 1:
        return single_device(geoms, platform)
    costs = costs or CostModel(geoms, k)
    n = len(geoms)
    # best[(i, distributed)]: (seconds, blocks) for layers 0..i-1 with layer i-1's output distributed or not
    best: dict[tuple[int, bool], tuple[float, tuple]] = {(0, False): (0.0, ())}
    for j in range(n):
        for i in range(j + 1):
            if not allowed(i, j):
                continue
            modes = costs.modes(i, j)
            for dist_in in (False, True):
                if (i, dist_in) not in best:
                    continue
                before, blocks = best[(i, dist_in)]
                for mode in modes:
                    parts = costs.parts(i, j, mode, dist_in)
                    key = (j + 1, parts.distributed_output)
                    total = before + parts.seconds(platform)
                    if key not in best or total < best[key][0] - 1e-15:
                        best[key] = (total, blocks + ((i, j, k, mode),))
    finals = [best[(n, s)] for s in (False, True) if (n, s) in best]
    if not finals:
        raise ValueError("no block partition covers this model")
    seconds, blocks = min(finals, key=lambda t: t[0])
    return Plan(seconds, k, blocks)


def plan_seconds(geoms: Sequence[Geom], blocks: Sequence[tuple[int, int, int, str]], platform: Platform) -> float:
    """Completion time of a given block partition (every block on the same k ≥ 2 devices), state carried along."""
    costs = CostModel(geoms, blocks[0][2])
    total, dist = 0.0, False
    for first, last, _, mode in blocks:
        parts = costs.parts(first, last, mode, dist)
        total, dist = total + parts.seconds(platform), parts.distributed_output
    return total


def plan_values(geoms: Sequence[Geom], blocks: Sequence[tuple[int, int, int, str]]) -> int:
    """Values a plan moves through the gateway for one frame: Σ over blocks and devices of ti + τo + to (k = 1:
    the input and the output)."""
    if blocks[0][3] == "local":
        return _size(geoms[0].in_shape) + _size(geoms[-1].out_shape)
    costs, dist, total = CostModel(geoms, blocks[0][2]), False, 0
    for first, last, _, mode in blocks:
        parts = costs.parts(first, last, mode, dist)
        total += sum(values for _, values in parts.devices)
        dist = parts.distributed_output
    return total


def mls(geoms: Sequence[Geom], k: int, platform: Platform, costs: CostModel | None = None) -> Plan:
    """MLS on exactly k devices (T_L^k): any block of consecutive layers that has a feasible mode."""
    return _dp(geoms, k, platform, lambda i, j: True, costs)


def sls_units(geoms: Sequence[Geom]) -> list[tuple[int, int]]:
    """Layer-by-layer blocks: a new block at every convolution, dense or coordinator layer (and at layer 0); the
    pooling, per-unit layers and Flatten after it stay in its block, as far as they form a feasible block (per-unit
    layers on the vector after a Flatten start a block of their own)."""
    starts = [0] + [i for i, g in enumerate(geoms) if i > 0 and g.kind in ("conv", "dense", "other")]
    units: list[tuple[int, int]] = []
    for a, end in zip(starts, starts[1:] + [len(geoms)]):
        while a < end:  # the longest feasible prefix; a single layer is always feasible
            b = max(b for b in range(a, end) if block_modes(geoms, a, b))
            units.append((a, b))
            a = b + 1
    return units


def sls(geoms: Sequence[Geom], k: int, platform: Platform, costs: CostModel | None = None) -> Plan:
    """SLS on exactly k devices: layer-by-layer blocks, the best mode for each."""
    units = set(sls_units(geoms))
    return _dp(geoms, k, platform, lambda i, j: (i, j) in units, costs)


def best_over_devices(
    geoms: Sequence[Geom],
    max_devices: int,
    platform: Platform,
    algo: Callable[[Sequence[Geom], int, Platform], Plan] = mls,
) -> Plan:
    """T* (eq. 1): the best plan over 1..max_devices devices."""
    return min((algo(geoms, k, platform) for k in range(1, max_devices + 1)), key=lambda p: p.seconds)
