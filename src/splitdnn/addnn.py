"""`splitdnn experiment addnn`: our exact placement vs ADDNN's ILP (run here, PuLP + CBC) and vs the ILP and GA
times and latencies ADDNN recorded (../shared/anchors/addnn), on the same instances. See docs/placement.md."""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from splitdnn.planner.placement import PlacementProblem, Solution, from_addnn, solve


def default_anchor_dir() -> Path:
    """$SPLITDNN_ADDNN_DATA, else shared/anchors/addnn beside the checkout (../shared, where CI puts it) or beside
    one of its parents (a git worktree one level deeper)."""
    env = os.environ.get("SPLITDNN_ADDNN_DATA")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    for parent in repo.parents:
        if (parent / "shared" / "anchors" / "addnn" / "results.json").exists():
            return parent / "shared" / "anchors" / "addnn"
    return repo.parent / "shared" / "anchors" / "addnn"


@dataclass(frozen=True)
class Anchor:
    id: str
    problem: PlacementProblem
    summary: dict  # the anchor's results.json "summary" entry: its ILP and GA outcomes

    @property
    def nodes(self) -> int:
        return len(self.problem.nodes)

    @property
    def ilp_latency(self) -> float | None:
        """ADDNN's proven optimum, None where its ILP timed out."""
        return self.summary.get("opt_latency_s") if self.summary.get("opt_status") == "ok" else None

    @property
    def ga(self) -> list[dict]:
        return [g for g in self.summary.get("ga_runs", []) if g.get("status") == "ok"]


def load_anchors(directory: Path | str) -> list[Anchor]:
    """Every instance in results.json (+ instances_links.json), in the anchor's order."""
    directory = Path(directory)
    results = json.loads((directory / "results.json").read_text())
    links = json.loads((directory / "instances_links.json").read_text())
    summary = {s["instance"]: s for s in results["summary"]}
    return [
        Anchor(
            inst["id"],
            from_addnn(inst, results["layer_profiles"][inst["model"]], links[inst["id"]]),
            summary.get(inst["id"], {}),
        )
        for inst in results["instances"]
    ]


def same(a: float | None, b: float | None) -> bool | None:
    """Equal latencies up to float summation order (relative 1e-9); None when either is missing."""
    return None if a is None or b is None else math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def time_ours(problem: PlacementProblem, repeats: int) -> tuple[float, Solution]:
    """Median wall time of solve() over `repeats` calls after one untimed call (arrays built inside each call)."""
    solution = solve(problem)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        solve(problem)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), solution


def run_experiment(
    anchors: list[Anchor],
    ilp_time_limit: float,
    ilp_max_nodes: int,
    repeats: int = 5,
    say: Callable[[str], None] = lambda line: None,
) -> dict:
    from splitdnn.planner.addnn_ilp import solve_ilp

    runs = []
    for a in anchors:
        seconds, sol = time_ours(a.problem, repeats)
        strict = solve(a.problem, "strict")
        say(f"{a.id}: ours {sol.latency:.6f} s in {seconds * 1e3:.2f} ms ({sol.method})")
        ilp = None
        if a.nodes <= ilp_max_nodes:
            say(f"{a.id}: ADDNN's ILP with CBC, limit {ilp_time_limit:g} s ...")
            ilp = solve_ilp(a.problem, time_limit=ilp_time_limit)
            say(
                f"{a.id}: ILP {ilp.status} in {ilp.seconds:.2f} s"
                + (f", latency {ilp.latency:.6f}" if ilp.latency is not None else "")
            )
        ga = a.ga
        ga_best = min((g["latency_s"] for g in ga), default=None)
        ga_worst = max((g["latency_s"] for g in ga), default=None)
        runs.append(
            {
                "instance": a.id,
                "nodes": a.nodes,
                "layers": len(a.problem.layers),
                "ours_latency": sol.latency,
                "ours_seconds": seconds,
                "ours_method": sol.method,
                "ours_placement": sol.names(a.problem),
                "ours_strict_latency": strict.latency,
                "ilp_latency": ilp.latency if ilp else None,
                "ilp_seconds": ilp.seconds if ilp and ilp.latency is not None else None,
                "ilp_status": ilp.status if ilp else "not run",
                "ilp_wall_seconds": ilp.seconds if ilp else None,
                "ilp_columns": ilp.columns if ilp else None,
                "ilp_rows": ilp.rows if ilp else None,
                "ilp_incumbent": ilp.incumbent if ilp else None,
                "equal_to_ilp": same(sol.latency, ilp.latency if ilp else None),
                "anchor_ilp_latency": a.ilp_latency,
                "anchor_ilp_seconds": a.summary.get("opt_wall_s"),
                "anchor_ilp_status": a.summary.get("opt_status"),
                "equal_to_anchor_ilp": same(sol.latency, a.ilp_latency),
                "anchor_ga": [{"seed": g["seed"], "seconds": g["wall_s"], "latency": g["latency_s"]} for g in ga],
                "ga_best_latency": ga_best,
                "ga_worst_latency": ga_worst,
                "not_worse_than_ga": None if ga_best is None else bool(sol.latency <= ga_best * (1 + 1e-9)),
            }
        )
    return {
        "runs": runs,
        "ilp_time_limit_s": ilp_time_limit,
        "ilp_max_nodes": ilp_max_nodes,
        "ours_seconds": f"median of {repeats} solve() calls after one untimed call",
        "ilp_seconds": "wall: PuLP model build + CBC (single thread, default options) + reading the solution; "
        "null unless proven optimal within the limit",
        "summary": summarize(runs),
    }


def summarize(runs: list[dict]) -> dict:
    here = [r for r in runs if r["equal_to_ilp"] is not None]
    anchor = [r for r in runs if r["equal_to_anchor_ilp"] is not None]
    ga = [r for r in runs if r["not_worse_than_ga"] is not None]
    return {
        "equal_to_ilp_here": f"{sum(r['equal_to_ilp'] for r in here)} of {len(here)}",
        "equal_to_anchor_ilp": f"{sum(r['equal_to_anchor_ilp'] for r in anchor)} of {len(anchor)}",
        "not_worse_than_ga": f"{sum(r['not_worse_than_ga'] for r in ga)} of {len(ga)}",
        "max_ours_seconds": max(r["ours_seconds"] for r in runs),
    }


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def markdown(result: dict) -> str:
    """One row per instance: ours, the ILP run here, the anchor's ILP and GA, equality and the GA comparison."""
    head = [
        "instance",
        "N",
        "L",
        "ours ms",
        "ours latency s",
        "ILP here s",
        "ILP here latency",
        "= here",
        "ADDNN ILP s",
        "ADDNN ILP latency",
        "= ADDNN",
        "ADDNN GA s (seeds)",
        "GA latency best/worst",
        "ours vs GA best",
        "ILP here / ours",
        "ADDNN ILP / ours",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["runs"]:
        ilp_here = r["ilp_seconds"]
        if ilp_here is None:
            ilp_here_txt = {"timeout": f"> {result['ilp_time_limit_s']:g} (timeout)", "not run": "not run"}.get(
                r["ilp_status"], r["ilp_status"]
            )
        else:
            ilp_here_txt = f"{ilp_here:.2f}"
        anchor_s = r["anchor_ilp_seconds"]
        anchor_txt = f"{anchor_s:.2f}" if r["anchor_ilp_status"] == "ok" else "> 300 (timeout)"
        ga = r["anchor_ga"]
        ga_s = "/".join(f"{g['seconds']:.2f}" for g in ga) or "-"
        ga_lat = "-" if not ga else f"{r['ga_best_latency']:.5f}/{r['ga_worst_latency']:.5f}"
        vs_ga = (
            "-" if r["ga_best_latency"] is None else f"{(r['ours_latency'] / r['ga_best_latency'] - 1) * 100:+.2f} %"
        )
        mark = {True: "yes", False: "NO", None: "-"}
        lines.append(
            "| "
            + " | ".join(
                [
                    r["instance"],
                    str(r["nodes"]),
                    str(r["layers"]),
                    f"{r['ours_seconds'] * 1e3:.2f}",
                    f"{r['ours_latency']:.5f}",
                    ilp_here_txt,
                    _f(r["ilp_latency"], ".5f"),
                    mark[r["equal_to_ilp"]],
                    anchor_txt,
                    _f(r["anchor_ilp_latency"], ".5f"),
                    mark[r["equal_to_anchor_ilp"]],
                    ga_s,
                    ga_lat,
                    vs_ga,
                    "-" if r["ilp_seconds"] is None else f"{r['ilp_seconds'] / r['ours_seconds']:,.0f}x",
                    "-" if r["anchor_ilp_status"] != "ok" else f"{anchor_s / r['ours_seconds']:,.0f}x",
                ]
            )
            + " |"
        )
    s = result["summary"]
    lines.append("")
    lines.append(
        f"Equal to the ILP run here: {s['equal_to_ilp_here']}; to ADDNN's recorded ILP optimum: "
        f"{s['equal_to_anchor_ilp']}; not worse than ADDNN's best GA run: {s['not_worse_than_ga']}. "
        f"ILP time limit here {result['ilp_time_limit_s']:g} s (instances with at most "
        f"{result['ilp_max_nodes']} nodes); ADDNN's was 300 s. Slowest solve of ours: "
        f"{s['max_ours_seconds'] * 1e3:.2f} ms."
    )
    return "\n".join(lines)


def write(result: dict, anchors: list[Anchor], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(markdown(result) + "\n")
    problems = out / "problems"
    problems.mkdir(exist_ok=True)
    for a in anchors:  # each instance in our problem format, for `splitdnn place --problem`
        (problems / f"{a.id}.json").write_text(json.dumps(a.problem.to_json()))


def say_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
