"""Brute-force oracle: enumerate every plan, filter by the constraints, sort. Exponential in the number of tiers
(C(n+T-1, T-1) plans); kept as the reference the fast strategies are tested against."""

from __future__ import annotations

from .problem import Compiled, all_ends, evaluate, feasible, sort_key


def brute_force(cp: Compiled, objective: str, top: int) -> list[tuple]:
    scored = []
    for c in all_ends(cp.n, cp.T):
        m = evaluate(cp, c)
        if m is None or not feasible(cp, c, m):
            continue
        scored.append((sort_key(objective, m, c), c))
    scored.sort()
    return [c for _, c in scored[:top]]


class BruteStrategy:
    """Exhaustive enumeration (the test oracle). Only for small problems."""

    name = "brute"

    def solve(self, cp: Compiled, objective: str, top: int) -> list[tuple]:
        return brute_force(cp, objective, top)
