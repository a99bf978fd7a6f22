"""Exact top-N latency/bytes plans for the tier planner, vectorized: the fast path of ``dp.topn_dp``.

1. A forward DP over tiers in order, each step vectorized over all block boundaries with numpy (int64 ticks):
   ``enter[t][i]`` = best cost until the tensor at boundary i arrives on tier t, ``end[t][j]`` = best cost of a
   plan prefix whose tier t ends at boundary j. A range i..j-1 on t costs ``S[t][j] - S[t][i]``, so
   ``end[t][j] = S[t][j] + min(enter[t][i] - S[t][i] for i in [lo(j), j-1])``: a range minimum over windows,
   answered for every j at once from a sparse table (O(n log n) per tier).
2. Every plan whose cost is at most a threshold is listed by walking back from the ends: a predecessor is kept only
   if its exact best prefix cost plus the suffix walked so far stays within the threshold, so every branch taken
   finishes. The threshold starts at the optimum; when fewer than N plans are within it, it becomes the cheapest
   pruned branch, which is exactly the next plan cost. Once N plans are listed, the N best by the planner's full
   order (objective, latency, bytes, cuts: ``problem.sort_key``) are among them.

The listing can blow up when very many plans tie; past ``limit`` plans it gives up (returns None) and ``topn_dp``
runs its heap DP instead, so the answer is always exact. Same constraints as ``topn_dp``: pins/forbids, skipped and
required tiers, upload caps, per-tier time caps, and the bottleneck cap that the throughput search passes.
"""

from __future__ import annotations

import numpy as np

from .problem import TICKS_PER_SECOND, Compiled, evaluate, sort_key

INF = 1 << 61  # "unreachable"; real costs stay far below (2**61 ticks is ~27 days)


def supports(cp: Compiled) -> bool:
    """Whether this path models the problem: it charges no per-tier call or send cost and no per-message cost yet (the
    served-stage terms of a calibrated problem); the heap DP answers those."""
    return not any(cp.call) and not any(cp.send) and not any(cp.transfer(a, b, 0) for a, b in cp.link)


def _windows(cp: Compiled, t: int, cap: int | None) -> np.ndarray:
    """lo[j], j = 0..n: smallest admissible first block of a range ending at boundary j on tier t (j: none).
    The same windows as dp._windows, computed with numpy."""
    n = cp.n
    S = np.asarray(cp.S[t], dtype=np.int64)
    tc = cp.time_cap.get(t)
    cap = tc if cap is None else (cap if tc is None else min(cap, tc))
    j = np.arange(n + 1)
    blocked = np.zeros(n + 1, dtype=np.int64)
    blocked[1:] = np.where(np.asarray(cp.allowed[t], dtype=bool), 0, j[1:])
    lo = np.maximum.accumulate(blocked)  # the first index after the last disallowed block
    if cap is not None:
        lo = np.maximum(lo, np.minimum(np.searchsorted(S, S - cap, side="left"), j))
    return lo


def _range_min(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """min(values[lo[k] .. hi[k]]) for every k with lo[k] <= hi[k] (INF elsewhere), from a sparse table."""
    m = len(values)
    levels = max(1, m.bit_length())
    table = np.full((levels, m), INF, dtype=np.int64)  # table[k, i] = min(values[i .. i + 2^k - 1])
    table[0] = values
    for k in range(1, levels):
        w = 1 << (k - 1)
        table[k, : m - w] = np.minimum(table[k - 1, : m - w], table[k - 1, w:])
    out = np.full(len(lo), INF, dtype=np.int64)
    ok = lo <= hi
    a, b = lo[ok], hi[ok]
    k = np.frexp((b - a + 1).astype(np.float64))[1].astype(np.int64) - 1  # floor(log2(length)), exactly
    out[ok] = np.minimum(table[k, a], table[k, b - (1 << k) + 1])
    return out


def topn_threshold(
    cp: Compiled, objective: str, top: int, cap: int | None = None, limit: int = 4096
) -> list[tuple] | None:
    """The exact top-N plans (cut tuples) for latency|bytes, as ``dp.topn_dp``; None past ``limit`` listed plans."""
    T, n = cp.T, cp.n
    tiers = [t for t in range(T) if t not in cp.skip]
    if n == 0 or not tiers:
        return None
    latency = objective == "latency"
    zero = np.zeros(n + 1, dtype=np.int64)
    W = {t: np.asarray(cp.S[t], dtype=np.int64) if latency else zero for t in tiers}  # range cost, objective units
    lo = {t: _windows(cp, t, cap) for t in tiers}
    nbytes = np.array([cp.input_bytes, *cp.out[: n - 1]], dtype=np.int64)  # boundary i's tensor (i = 0: input)

    # hop costs in objective units, INF where not allowed; source hops (data at tier 0, nothing computed) apart
    source = {}
    for b in tiers:
        if b == 0:
            source[b] = 0
        elif cp.hop_ok(-1, b, 0):
            tr = cp.transfer(0, b, cp.input_bytes)
            source[b] = INF if cap is not None and tr > cap else (cp.link[(0, b)][0] + tr if latency else nbytes[0])
        else:
            source[b] = INF
    hop = {}
    for (a, b), (delay, bandwidth) in cp.link.items():
        if a not in W or b not in W or a >= b or cp.blocks_between_required(a, b):
            continue
        ticks = np.rint(nbytes.astype(np.float64) * float(TICKS_PER_SECOND) / bandwidth).astype(np.int64)
        ok = np.ones(n, dtype=bool)
        ok[0] = False  # boundary 0 only leaves the source
        if a in cp.upload_cap:
            ok &= nbytes <= cp.upload_cap[a]
        if cap is not None:
            ok &= ticks <= cap
        hop[(a, b)] = np.where(ok, (delay + ticks) if latency else nbytes, INF)

    # forward DP, tier by tier
    enter: dict[int, np.ndarray] = {}
    end: dict[int, np.ndarray] = {}
    jj = np.arange(n + 1)
    for t in tiers:
        e = np.full(n, INF, dtype=np.int64)
        e[0] = source[t]
        for t1 in tiers:
            if t1 < t and (t1, t) in hop:
                e = np.minimum(e, np.minimum(end[t1][:n] + hop[(t1, t)], INF))
        enter[t] = e
        shifted = np.where(e < INF, e - W[t][:n], INF)
        best = _range_min(shifted, lo[t], jj - 1)
        end[t] = np.where(best < INF, best + W[t], INF)
        end[t][0] = INF

    finals = [t for t in tiers if not any(r > t for r in cp.required) and end[t][n] < INF]
    if not finals:
        return []
    theta = min(int(end[t][n]) for t in finals)
    while True:
        plans, nxt = _list(cp, tiers, W, lo, hop, enter, end, finals, theta, limit)
        if plans is None:
            return None
        if len(plans) >= top or nxt >= INF:
            break
        theta = nxt
    scored = []
    for c in plans:
        m = evaluate(cp, c)
        assert m is not None  # every listed plan uses links that exist
        scored.append((sort_key(objective, m, c), c))
    scored.sort()
    return [c for _, c in scored[:top]]


def _list(cp, tiers, W, lo, hop, enter, end, finals, theta, limit):
    """Every plan with cost <= theta (as cut tuples) and the cheapest cost above theta; (None, _) past limit."""
    T, n = cp.T, cp.n
    plans: list[tuple] = []
    nxt = INF
    # (kind, tier, boundary, suffix cost, ranges so far as (tier, end boundary)); kind 0 = End, 1 = Enter
    stack: list[tuple] = []
    for t in finals:
        if end[t][n] <= theta:
            stack.append((0, t, n, 0, ((t, n),)))
        else:
            nxt = min(nxt, int(end[t][n]))
    while stack:
        kind, t, k, sigma, ranges = stack.pop()
        if kind == 0:  # End(k, t): the range on t starts at some i in [lo, k-1]
            a = int(lo[t][k])
            if a >= k:
                continue
            run = W[t][k] - W[t][a:k]
            total = enter[t][a:k] + run + sigma
            fine = enter[t][a:k] < INF
            within = fine & (total <= theta)
            over = fine & ~within
            if over.any():
                nxt = min(nxt, int(total[over].min()))
            for off in np.flatnonzero(within):
                stack.append((1, t, a + int(off), sigma + int(run[off]), ranges))
        elif k == 0:  # Enter(0, t): straight from the source, a whole plan
            cuts, cur, used = [], 0, dict(ranges)
            for u in range(T):
                cur = used.get(u, cur)
                cuts.append(cur)
            plans.append(tuple(cuts))
            if len(plans) > limit:
                return None, INF
        else:  # Enter(k, t): from End(k, t1) on an earlier tier
            for t1 in tiers:
                if t1 >= t or (t1, t) not in hop:
                    continue
                h = int(hop[(t1, t)][k])
                if h >= INF or end[t1][k] >= INF:
                    continue
                total = int(end[t1][k]) + h + sigma
                if total <= theta:
                    stack.append((0, t1, k, sigma + h, ((t1, k), *ranges)))
                else:
                    nxt = min(nxt, total)
    return plans, nxt
