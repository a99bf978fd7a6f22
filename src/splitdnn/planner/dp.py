"""Exact top-N planner: dynamic programming over (block boundary, tier) states.

States. ``End(j, t)``: tier t's range ends at boundary j (t ran blocks ..j-1 and holds their output).
``Enter(i, t)``: the tensor crossing boundary i (the input when i = 0) has arrived on tier t, which will run
blocks i.. . A plan is a path ``source -> Enter(0|., t1) -> End(j1, t1) -> Enter(j1, t2) -> ... -> End(n, tk)``
with t1 < t2 < ... < tk. Edges ``End(i, t) -> Enter(i, t')`` are hops (link latency + bytes/bandwidth; filtered by
links, upload caps, and "a required tier may not be jumped over"); edges ``Enter(i, t) -> End(j, t)`` run the
range i..j-1 on t (filtered by pins/forbids and per-tier time caps, which turn the admissible i into a sliding
window [lo(j), j-1] because compute times are non-negative; a tier's send cost for a chunked output adds a
constant per end j, which shifts that range's labels and lowers its cap: lo(j) is then found by bisection).

Latency and bytes objectives (``topn_dp``): each state keeps its N best labels ``(objective, tie-breaks, block
prefix)``. The cost of a range is ``S[t][j] - S[t][i]`` (prefix sums), so the best N over the window are the best N
of the *shifted* labels ``label(i) - S[t][i]``, kept in a heap with lazy deletion of expired i. The per-state
order is the global order restricted to paths that share a continuation, so keeping N labels per state is exact
(classic k-best on a DAG). Work: O(n · T² · N log N).

Throughput (``throughput``): the bottleneck is a max, not a sum, so it is handled by thresholds. A counting DP
(same states, counts instead of labels, sliding-window sums) gives the number of feasible plans with bottleneck
<= B (integer ticks); binary search over B in [max over blocks of the cheapest allowed tier, the largest
bottleneck among the latency DP's top N] finds the smallest B_N with at least N plans -- necessarily some plan's
bottleneck, since the count only changes there. The answer is every plan with bottleneck <= B_N - 1 (fewer than
N: the latency DP capped at B_N - 1 returns them all) plus the best remaining plans with bottleneck = B_N (the
latency DP capped at B_N contains them, ranked by latency, bytes, block ends). O(n · T² · log(range in ticks)).

Time-share constraints (``compute on tier <= share × total latency``) are not decomposable, but with integer
ticks ``q·compute_t - p·latency <= 0`` is an *additive* resource, so the problem is a resource-constrained
k-shortest-path problem (weakly NP-hard in general: no polynomial bound is claimed here). ``share_search`` first
enumerates plans in objective order with the polynomial DP ignoring the shares (top-K, K = 32, 128, ... 4096) and
keeps the feasible ones: as soon as N feasible plans are among the K best, nothing better is missing. Otherwise
``label_search`` answers: per state it keeps every label dominated by fewer than N others (dominated = worse
order, no smaller share resources, no smaller bottleneck) and drops labels that provably cannot finish feasibly
(suffix lower bounds on each share resource) or within a known bound. Both are exact and checked against the
brute force in the property tests.
"""

from __future__ import annotations

import heapq

from .problem import Compiled, feasible, metrics_of, sort_key

# ---- window helpers ----------------------------------------------------------------------------------------------


def _windows(cp: Compiled, t: int, cap: int | None) -> list[int]:
    """lo[j] for j = 1..n (lo[0] unused): smallest admissible start of a range ending at j on tier t, or j if none.

    Admissible start i: blocks i..j-1 allowed on t, and S[t][j]-S[t][i] + call[t] + send[t][j-1] <= cap (cap =
    min(tier time cap, B)): the call cost is the same for every range of t, so it just lowers the cap; a send cost
    lowers it per end j, so lo is then not monotone in j (found by bisection instead of a moving pointer)."""
    from bisect import bisect_left

    n = cp.n
    S = cp.S[t]
    allowed = cp.allowed[t]
    tc = cp.time_cap.get(t)
    if cap is None:
        cap = tc
    elif tc is not None:
        cap = min(cap, tc)
    if cap is not None:
        cap -= cp.call[t]
    send = cp.send[t]
    lo = [0] * (n + 1)
    barrier = 0  # first index after the last disallowed block seen
    p = 0  # cap pointer
    for j in range(1, n + 1):
        if not allowed[j - 1]:
            barrier = j
            lo[j] = j  # empty window
            continue
        if cap is not None and send:
            room = cap - send[j - 1]  # S non-decreasing: the first p with S[p] >= S[j] - room
            p = bisect_left(S, S[j] - room, 0, j) if room >= 0 else j
        elif cap is not None:
            while p < j and S[j] - S[p] > cap:
                p += 1
            if S[j] - S[p] > cap:
                p = j  # cap < 0: nothing fits
        lo[j] = max(barrier, p)
    return lo


def _hop_table(cp: Compiled) -> dict:
    """{(a, b): [None | (cost ticks, bytes, transfer ticks)] * (n+1)} for every admissible hop (a = -1: source),
    computed once per compiled problem (constraints that do not depend on a bottleneck cap included)."""
    tab = getattr(cp, "_hop_cache", None)
    if tab is not None:
        return tab
    tab = {}
    for b in range(cp.T):
        row: list[tuple[int, int, int] | None] = [None] * (cp.n + 1)
        if b == 0:
            row[0] = (0, 0, 0)
        elif cp.hop_ok(-1, b, 0):
            nb = cp.input_bytes
            tr = cp.transfer(0, b, nb)
            row[0] = (cp.link[(0, b)][0] + tr, nb, tr)
        tab[(-1, b)] = row
    for a, b in cp.link:
        row = [None] * (cp.n + 1)
        for i in range(1, cp.n):
            if cp.hop_ok(a, b, i):
                nb = cp.out[i - 1]
                tr = cp.transfer(a, b, nb)
                row[i] = (cp.link[(a, b)][0] + tr, nb, tr)
        tab[(a, b)] = row
    cp._hop_cache = tab
    return tab


def _hop(cp: Compiled, a: int, b: int, i: int, cap: int | None):
    """(cost ticks, bytes) of a hop from tier a (-1 = source) to b carrying boundary i, or None if not allowed."""
    row = _hop_table(cp).get((a, b))
    if row is None:
        return None
    h = row[i]
    if h is None or (cap is not None and h[2] > cap):
        return None
    return (h[0], h[1])


def _final_ok(cp: Compiled, t: int) -> bool:
    return not any(r > t for r in cp.required)


def _suffix_min(lo: list[int]) -> list[int]:
    out = list(lo)
    for j in range(len(out) - 2, 0, -1):
        out[j] = min(out[j], out[j + 1])
    return out


# ---- latency / bytes: top-N DP -----------------------------------------------------------------------------------


def topn_dp(cp: Compiled, objective: str, top: int, cap: int | None = None) -> list[tuple]:
    """Exact top-N plans (block-end tuples) by (objective, tie-breaks, block order) for objective latency|bytes.

    cap (ticks): optional bound on every tier's compute and every hop's transfer time (used by throughput)."""
    from .fast_topn import supports, topn_threshold  # vectorized, exact; None when too many plans tie

    fast = topn_threshold(cp, objective, top, cap) if supports(cp) else None
    if fast is not None:
        return fast
    T, n = cp.T, cp.n
    lat_slot = 0 if objective == "latency" else 1  # label = (a, b, prefix); latency lives in slot lat_slot
    tiers = [t for t in range(T) if t not in cp.skip]
    lo = {t: _windows(cp, t, cap) for t in tiers}
    # below gone[t][j] a start is outside every window from j on (lo itself is monotone unless a send cost varies)
    gone = {t: _suffix_min(lo[t]) for t in tiers}
    heaps: dict[int, list] = {t: [] for t in tiers}
    end: list[dict[int, list]] = [dict() for _ in range(n + 1)]  # end[j][t] = labels

    def push_enter(i: int) -> None:
        for t2 in tiers:
            if i == n:
                break
            cands = []
            if i == 0:
                h = _hop(cp, -1, t2, 0, cap)
                if h is not None:
                    cost, nb = h
                    lab = (cost, nb) if lat_slot == 0 else (nb, cost)
                    cands.append((lab[0], lab[1], (0,) * t2))
            else:
                for t1, labs in end[i].items():
                    if t1 >= t2:
                        continue
                    h = _hop(cp, t1, t2, i, cap)
                    if h is None:
                        continue
                    cost, nb = h
                    pad = (i,) * (t2 - t1 - 1)
                    if lat_slot == 0:
                        cands.extend((a + cost, b + nb, pre + pad) for a, b, pre in labs)
                    else:
                        cands.extend((a + nb, b + cost, pre + pad) for a, b, pre in labs)
            if not cands:
                continue
            if len(cands) > top:
                cands = heapq.nsmallest(top, cands)
            s = cp.S[t2][i] - cp.call[t2]  # the range i..j-1 will add S[j] - S[i] + call
            hp = heaps[t2]
            for a, b, pre in cands:
                if lat_slot == 0:
                    heapq.heappush(hp, ((a - s, b, pre), i))
                else:
                    heapq.heappush(hp, ((a, b - s, pre), i))

    for j in range(1, n + 1):
        push_enter(j - 1)
        for t in tiers:
            lj = lo[t][j]
            if lj >= j:
                continue
            hp = heaps[t]
            got: list = []
            aside: list = []  # outside this window, maybe inside a later one
            while hp and len(got) < top:
                item = heapq.heappop(hp)
                if item[1] < gone[t][j]:
                    continue  # expired for good
                (aside if item[1] < lj else got).append(item)
            for item in got + aside:
                heapq.heappush(hp, item)
            if not got:
                continue
            send = cp.send[t]
            s = cp.S[t][j] + (send[j - 1] if send else 0)
            if lat_slot == 0:
                end[j][t] = [(a + s, b, pre + (j,)) for (a, b, pre), _ in got]
            else:
                end[j][t] = [(a, b + s, pre + (j,)) for (a, b, pre), _ in got]
    finals: list[tuple[int, ...]] = []
    for t, labs in end[n].items():
        if _final_ok(cp, t):
            finals.extend(pre + (n,) * (T - 1 - t) for _, _, pre in labs)
    scored = []
    for c in finals:
        m = metrics_of(cp, c)
        scored.append((sort_key(objective, m, c), c))
    scored.sort()
    return [c for _, c in scored[:top]]


# ---- throughput: thresholds + counting ---------------------------------------------------------------------------


def count_plans(cp: Compiled, cap: int | None) -> int:
    """Number of feasible plans (share constraints ignored) whose bottleneck is <= cap (None: no cap)."""
    T, n = cp.T, cp.n
    tiers = [t for t in range(T) if t not in cp.skip]
    lo = {t: _windows(cp, t, cap) for t in tiers}
    pe = {t: [0] * (n + 1) for t in tiers}  # pe[t][i] = sum of Enter counts at boundaries < i
    endc: list[dict[int, int]] = [dict() for _ in range(n + 1)]
    for j in range(1, n + 1):
        i = j - 1
        for t2 in tiers:
            c = 0
            if i == 0:
                if _hop(cp, -1, t2, 0, cap) is not None:
                    c = 1
            else:
                for t1, cnt in endc[i].items():
                    if t1 < t2 and _hop(cp, t1, t2, i, cap) is not None:
                        c += cnt
            pe[t2][j] = pe[t2][j - 1] + c
        for t in tiers:
            lj = lo[t][j]
            if lj < j:
                c = pe[t][j] - pe[t][lj]
                if c:
                    endc[j][t] = c
    return sum(c for t, c in endc[n].items() if _final_ok(cp, t))


def throughput(cp: Compiled, top: int) -> list[tuple]:
    base = topn_dp(cp, "latency", top, None)
    if len(base) < top:  # fewer than `top` feasible plans: they are all in `base`
        cand = base
    else:
        # every plan runs each block somewhere it is allowed: the bottleneck is at least the largest such minimum
        lo_ = max((min(cp.ct[t][b] for t in range(cp.T) if cp.allowed[t][b]) for b in range(cp.n)), default=0)
        hi = max(metrics_of(cp, c).bottleneck for c in base)  # `top` plans have bottleneck <= hi
        # smallest integer B with count(B) >= top; count only steps at actual bottleneck values, so B is one
        while lo_ < hi:
            mid = (lo_ + hi) // 2
            if count_plans(cp, mid) >= top:
                hi = mid
            else:
                lo_ = mid + 1
        cand = topn_dp(cp, "latency", top, lo_)  # contains the best plans with bottleneck == B
        if lo_ > 0:
            cand += topn_dp(cp, "latency", top, lo_ - 1)  # all (< top) plans with bottleneck < B
    scored = sorted({c: sort_key("throughput", metrics_of(cp, c), c) for c in cand}.items(), key=lambda kv: kv[1])
    return [c for c, _ in scored[:top]]


# ---- label search (share constraints; exact for every objective) -------------------------------------------------


def _prune(labels: list, top: int, use_bn: bool) -> list:
    """Keep labels dominated by fewer than `top` others. label = (key, bn, g, prefix)."""
    labels.sort(key=lambda l: l[0])
    kept: list = []
    for lab in labels:
        key, bn, g, _ = lab
        dom = 0
        for other in kept:  # only earlier (smaller key) labels can dominate; kept ones suffice (transitivity)
            if (not use_bn or other[1] <= bn) and all(x <= y for x, y in zip(other[2], g)):
                dom += 1
                if dom >= top:
                    break
        if dom < top:
            kept.append(lab)
    return kept


def _suffix_bounds(cp: Compiled, w_range, w_hop, w_call=lambda t: 0):
    """Lower bounds on the cost of finishing a plan, ignoring every constraint except the links.

    Returns (F, G): F[j][t] from End(j, t) (the next step is a hop to a later tier), G[j][t] from Enter(j, t)
    (block j runs on t next, its call cost not paid yet). w_range(t, b), w_hop(a, b, i) and w_call(t) (a used
    tier's call cost) are the additive weights."""
    T, n = cp.T, cp.n
    INF_ = float("inf")
    F = [[INF_] * T for _ in range(n + 1)]
    G = [[INF_] * T for _ in range(n + 1)]
    links = [[(a, b) in cp.link for b in range(T)] for a in range(T)]
    for t in range(T):
        F[n][t] = 0
        G[n][t] = 0
    for j in range(n - 1, -1, -1):
        for t in range(T - 1, -1, -1):
            G[j][t] = w_range(t, j) + min(G[j + 1][t] if j + 1 < n else 0, F[j + 1][t])
        for t in range(T):
            best = INF_
            if j > 0:
                for t2 in range(t + 1, T):
                    if links[t][t2] and G[j][t2] < INF_:
                        best = min(best, w_hop(t, t2, j) + w_call(t2) + G[j][t2])
            F[j][t] = best
    # H (continuing on t, call paid) -> from Enter the call is still due; F already charges it on the next tier
    return F, [[G[j][t] + w_call(t) for t in range(T)] for j in range(n + 1)]


def label_search(cp: Compiled, objective: str, top: int, bound: int | None = None) -> list[tuple]:
    """Exact for every objective and constraint. bound: optional primary-objective value that `top` feasible
    plans are known to reach (labels that cannot finish within it are dropped)."""
    T, n = cp.T, cp.n
    use_bn = objective == "throughput"
    shares = cp.shares

    def hopc(a: int, b: int, i: int) -> int:
        return cp.link[(a, b)][0] + cp.transfer(a, b, cp.hop_bytes(i))

    lat_F, lat_G = _suffix_bounds(cp, lambda t, b: cp.ct[t][b], hopc, lambda t: cp.call[t])
    g_bounds = []
    # the share bounds leave out send costs (≥ 0), which lower a share resource on the tiers it is not about: with
    # send costs they are no bounds, so nothing is pruned by them (the final check below still applies)
    for ts, p, q in [] if any(cp.send) else shares:
        g_bounds.append(
            _suffix_bounds(
                cp,
                lambda t, b, ts=ts, p=p, q=q: ((q - p) if t == ts else -p) * cp.ct[t][b],
                lambda a, b, i, p=p: -p * hopc(a, b, i) if cp.share_of_latency else 0,
                lambda t, ts=ts, p=p, q=q: ((q - p) if t == ts else -p) * cp.call[t],
            )
        )
    if objective == "bytes" and bound is not None:
        by_F, by_G = _suffix_bounds(cp, lambda t, b: 0, lambda a, b, i: cp.hop_bytes(i))

    def hopeless(key, bn, g, j, t, at_end):
        for k, (F, G) in enumerate(g_bounds):
            if g[k] + (F if at_end else G)[j][t] > 0:
                return True
        if bound is not None:
            if objective == "latency":
                return key[0] + (lat_F if at_end else lat_G)[j][t] > bound
            if objective == "bytes":
                return key[0] + (by_F if at_end else by_G)[j][t] > bound
            return bn > bound
        return False

    def key_add(key, dlat, dbytes, newpre):
        lat, nb = (key[0], key[1]) if objective != "bytes" else (key[1], key[0])
        lat += dlat
        nb += dbytes
        return (lat, nb, newpre) if objective != "bytes" else (nb, lat, newpre)

    def g_hop(g, cost):
        if not cp.share_of_latency:
            return g
        return tuple(x - p * cost for x, (t, p, q) in zip(g, shares))

    def g_range(g, tier, x):
        return tuple(v + ((q - p) * x if t == tier else -p * x) for v, (t, p, q) in zip(g, shares))

    tiers = [t for t in range(T) if t not in cp.skip]
    end: list[dict[int, list]] = [dict() for _ in range(n + 1)]
    enter: list[dict[int, list]] = [dict() for _ in range(n + 1)]
    g0 = tuple(0 for _ in shares)
    for j in range(1, n + 1):
        i = j - 1
        for t2 in tiers:
            cands = []
            if i == 0:
                h = _hop(cp, -1, t2, 0, None)
                if h is not None:
                    cost, nb = h
                    tr = cost - (cp.link[(0, t2)][0] if t2 > 0 else 0)
                    pre = (0,) * t2
                    key = (cost, nb, pre) if objective != "bytes" else (nb, cost, pre)
                    g = g_hop(g0, cost)
                    if not hopeless(key, tr, g, 0, t2, False):
                        cands.append((key, tr, g, pre))
            else:
                for t1, labs in end[i].items():
                    if t1 >= t2:
                        continue
                    h = _hop(cp, t1, t2, i, None)
                    if h is None:
                        continue
                    cost, nb = h
                    tr = cost - cp.link[(t1, t2)][0]
                    pad = (i,) * (t2 - t1 - 1)
                    for key, bn, g, pre in labs:
                        p2 = pre + pad
                        k2, b2, g2 = key_add(key, cost, nb, p2), max(bn, tr), g_hop(g, cost)
                        if not hopeless(k2, b2, g2, i, t2, False):
                            cands.append((k2, b2, g2, p2))
            if cands:
                enter[i][t2] = _prune(cands, top, use_bn)
        for t in tiers:
            cands = []
            for i0 in range(j - 1, -1, -1):
                if not cp.allowed[t][i0]:
                    break
                x = cp.range_cost(t, i0, j)
                if t in cp.time_cap and x > cp.time_cap[t]:
                    break
                for key, bn, g, pre in enter[i0].get(t, ()):
                    p2 = pre + (j,)
                    k2, b2, g2 = key_add(key, x, 0, p2), max(bn, x), g_range(g, t, x)
                    if not hopeless(k2, b2, g2, j, t, True):
                        cands.append((k2, b2, g2, p2))
            if cands:
                end[j][t] = _prune(cands, top, use_bn)
    finals: list[tuple[int, ...]] = []
    for t, labs in end[n].items():
        if not _final_ok(cp, t):
            continue
        for _key, _bn, g, pre in labs:
            if all(x <= 0 for x in g):
                finals.append(pre + (n,) * (T - 1 - t))
    scored = sorted((sort_key(objective, metrics_of(cp, c), c), c) for c in finals)
    return [c for _, c in scored[:top]]


def share_search(cp: Compiled, objective: str, top: int, k0: int = 32, kmax: int = 4096) -> list[tuple]:
    """Share constraints: enumerate plans in objective order ignoring the shares (exact top-K DP, K = k0, 4·k0, ...
    up to kmax) and keep the feasible ones -- once `top` feasible plans are among the K best, nothing better can
    be missing. If that needs more than kmax plans, the label search (pruned by suffix bounds on the share
    resources) finishes the job."""
    import copy

    free = copy.copy(cp)
    free.shares = []
    k = max(k0, top)
    while True:
        cand = throughput(free, k) if objective == "throughput" else topn_dp(free, objective, k)
        ok = [c for c in cand if feasible(cp, c)]
        if len(ok) >= top or len(cand) < k:  # enough, or every plan was enumerated
            return ok[:top]
        if k >= kmax:
            return label_search(cp, objective, top)
        k = min(kmax, 4 * k)


# ---- strategy ----------------------------------------------------------------------------------------------------


class DPStrategy:
    """Default strategy: exact and polynomial (see the module docstring for the share-constraint caveat)."""

    name = "dp"

    def solve(self, cp: Compiled, objective: str, top: int) -> list[tuple]:
        if cp.shares:
            return share_search(cp, objective, top)
        if objective == "throughput":
            return throughput(cp, top)
        return topn_dp(cp, objective, top)


class LabelStrategy:
    """Label-setting search for every objective (slower; a second exact method)."""

    name = "labels"

    def solve(self, cp: Compiled, objective: str, top: int) -> list[tuple]:
        return label_search(cp, objective, top)
