"""ADDNN's "optimal" placement strategy as an integer program in PuLP, solved by CBC: the yardstick for
``placement.solve``. Written from the formulation in ../shared/anchors/addnn/README.txt section 1 (variables,
objective and every constraint family, including the redundant ones, so its size matches the anchor's
"ILP cols/rows"); not ADDNN's code. PuLP is a test extra (``pip install splitdnn[test]``); it is imported lazily.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

from splitdnn.planner.placement import PlacementProblem, latency, violation


@dataclass(frozen=True)
class IlpResult:
    status: str  # "optimal", "timeout" (no proof within the limit) or "infeasible"
    latency: float | None  # latency() of the returned placement when proven optimal, else None
    placement: tuple[int, ...] | None
    seconds: float  # build + solve + read, wall (as the anchor's "wall")
    build_seconds: float
    columns: int
    rows: int
    incumbent: float | None = None  # latency of CBC's best integer solution at a timeout, if it had one


def build(problem: PlacementProblem):
    """The PuLP model and its placement variables x[n][l]."""
    import pulp

    nodes, layers = problem.nodes, problem.layers
    N, L = len(nodes), len(layers)
    ns, ls = range(N), range(L)
    thr, lat = problem.throughput_bps, problem.latency_ms
    prob = pulp.LpProblem("layer_placement", pulp.LpMinimize)
    with warnings.catch_warnings():  # PuLP 3 deprecates LpVariable.dicts for 4.0; it is what ADDNN's model uses
        warnings.simplefilter("ignore", DeprecationWarning)
        x = pulp.LpVariable.dicts("x", (ns, ls), 0, 1, pulp.LpInteger)
        s = pulp.LpVariable.dicts("s", (ns, ns, ls), 0, 1, pulp.LpInteger)  # s[n][m][l]: l on n and l+1 on m
    inp = problem.input_node
    compute = pulp.lpSum(layers[l].p * layers[l].flops / nodes[n].flops_per_second * x[n][l] for l in ls for n in ns)
    hops = pulp.lpSum(
        layers[l].p * (8 * layers[l].input_bytes / thr[n, m] + lat[n, m] / 1000.0) * s[n][m][l - 1]
        for l in ls[1:]
        for n in ns
        for m in ns
        if m != n
    )
    entry = pulp.lpSum(
        (8 * layers[0].input_bytes / thr[inp, n] + lat[inp, n] / 1000.0) * x[n][0] for n in ns if n != inp
    )
    prob += compute + hops + entry
    for n in ns:
        prob += pulp.lpSum(layers[l].storage_bytes * x[n][l] for l in ls) <= nodes[n].storage_bytes
    for n in ns:
        prob += pulp.lpSum(layers[l].memory_bytes * x[n][l] for l in ls) <= nodes[n].memory_bytes
    for l in ls:
        prob += pulp.lpSum(x[n][l] for n in ns) == 1
    for n in ns:  # A,B,A is forbidden (A,B,B,A is not)
        for l in range(1, L - 1):
            prob += x[n][l - 1] + x[n][l + 1] - 1 <= x[n][l]
    tiers = range(max(nd.tier for nd in nodes) + 1)
    for t in tiers:  # never back to a lower tier
        here = [n for n in ns if nodes[n].tier == t]
        later = [n for n in ns if nodes[n].tier >= t]
        for l in ls[:-1]:
            prob += pulp.lpSum(x[n][l] for n in here) <= pulp.lpSum(x[n][l + 1] for n in later)
    for n in ns:
        for m in ns:
            if m != n:
                prob += s[n][m][L - 1] == 0
    for n in ns:
        for l in ls:
            prob += s[n][n][l] == 0
    for n in ns:
        for m in ns:
            if m == n:
                continue
            for l in ls[:-1]:
                prob += x[n][l] >= s[n][m][l]
                prob += x[m][l + 1] >= s[n][m][l]
                prob += x[n][l] + x[m][l + 1] - 1 <= s[n][m][l]
    return prob, x


def solve_ilp(problem: PlacementProblem, time_limit: float | None = None, msg: bool = False) -> IlpResult:
    """Build and solve ADDNN's ILP with CBC (single thread, default options, optional time limit in seconds)."""
    import pulp

    t0 = time.perf_counter()
    prob, x = build(problem)
    t1 = time.perf_counter()
    with warnings.catch_warnings():  # PuLP 3 deprecates the bundled CBC that ADDNN used (PuLP's default solver)
        warnings.simplefilter("ignore", DeprecationWarning)
        solver = pulp.PULP_CBC_CMD(msg=msg, timeLimit=time_limit)
    prob.solve(solver)
    N, L = len(problem.nodes), len(problem.layers)
    columns, rows = prob.numVariables(), prob.numConstraints()
    placement: tuple[int, ...] | None = None
    if prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        placement = tuple(max(range(N), key=lambda n: x[n][l].value() or 0.0) for l in range(L))
        if violation(problem, placement, "ilp") is not None:  # should not happen; never report it as optimal
            raise RuntimeError(f"CBC returned an infeasible placement {placement}: {violation(problem, placement)}")
    seconds = time.perf_counter() - t0
    if prob.sol_status == pulp.LpSolutionOptimal and placement is not None:
        return IlpResult("optimal", latency(problem, placement), placement, seconds, t1 - t0, columns, rows)
    if prob.status == pulp.LpStatusInfeasible:
        return IlpResult("infeasible", None, None, seconds, t1 - t0, columns, rows)
    return IlpResult(
        "timeout",
        None,
        None,
        seconds,
        t1 - t0,
        columns,
        rows,
        latency(problem, placement) if placement is not None else None,
    )
