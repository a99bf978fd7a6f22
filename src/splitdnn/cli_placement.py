"""`splitdnn place` and `splitdnn experiment addnn`: layer-to-node placement under ADDNN's model (docs/placement.md).
Thin shells over splitdnn.planner.placement and splitdnn.addnn; imported at the end of splitdnn.cli, which registers
them on its app."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from splitdnn.cli import app, experiment_app, fail


@app.command("place")
def place_cmd(
    problem_file: str = typer.Option(
        ..., "--problem", help="Placement problem JSON (nodes, layers, links; docs/placement.md)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    contiguity: str | None = typer.Option(
        None,
        help="ilp (ADDNN's ILP: A,B,B,A allowed, A,B,A not) or strict (one run per node, ADDNN's GA); "
        "default: the file's, else ilp.",
    ),
) -> None:
    """Place each layer of a chain on one of many nodes (ADDNN's model): the exact minimum expected latency."""
    from splitdnn.planner.placement import NoPlacement, PlacementError, PlacementProblem, runs_of, solve

    try:
        problem = PlacementProblem.load(problem_file)
        t0 = time.perf_counter()
        sol = solve(problem, contiguity)
        dt = time.perf_counter() - t0
    except NoPlacement as exc:
        fail(str(exc), code=1)
    except (PlacementError, OSError) as exc:
        fail(str(exc))
    if as_json:
        out = {
            "latency": sol.latency,
            "placement": sol.names(problem),
            "search_seconds": dt,
            "proven": sol.proven,
            "contiguity": contiguity or problem.contiguity,
        }
        typer.echo(json.dumps(out))
        return
    tiers = problem.tiers or ()
    typer.echo(
        f"latency {sol.latency:.6f} s ({'optimal' if sol.proven else 'best found, not proven optimal'}, "
        f"search {dt * 1e3:.2f} ms, {len(problem.layers)} layers on {len(problem.nodes)} nodes)"
    )
    for n, i, j in runs_of(sol.placement):
        node = problem.nodes[n]
        tier = tiers[node.tier] if node.tier < len(tiers) else f"tier {node.tier}"
        first, last = problem.layers[i].name, problem.layers[j].name
        typer.echo(f"  {node.name} ({tier}): layers {first}" + (f" .. {last}" if j > i else ""))


@experiment_app.command("addnn")
def experiment_addnn(
    out: str = typer.Option("out/addnn", "--out", help="results.json, results.md and problems/*.json go here"),
    anchors: str | None = typer.Option(
        None,
        help="ADDNN anchor directory (results.json, instances_links.json); default: $SPLITDNN_ADDNN_DATA, else "
        "shared/anchors/addnn beside the checkout",
    ),
    ilp_time_limit: float = typer.Option(60.0, help="CBC time limit per instance in seconds; a timeout is null"),
    ilp_max_nodes: int = typer.Option(
        27, help="run the ILP only on instances with at most this many nodes (ADDNN's CBC timed out at 63 and 125)"
    ),
    repeats: int = typer.Option(5, help="timed solve() calls per instance for ours (the median is reported)"),
) -> None:
    """Exact placement vs ADDNN's ILP (PuLP + CBC, run here) and ADDNN's recorded ILP and GA, per instance."""
    from splitdnn import addnn

    if ilp_time_limit <= 0 or repeats < 1 or ilp_max_nodes < 0:
        fail("--ilp-time-limit > 0, --repeats >= 1 and --ilp-max-nodes >= 0 are required")
    directory = Path(anchors) if anchors else addnn.default_anchor_dir()
    try:
        instances = addnn.load_anchors(directory)
    except (OSError, ValueError, KeyError) as exc:
        fail(f"ADDNN anchors at {directory}: {exc}")
    if any(a.nodes <= ilp_max_nodes for a in instances):
        try:
            import pulp  # noqa: F401
        except ImportError:
            fail("the ILP side needs PuLP: pip install 'splitdnn[test]' (or --ilp-max-nodes 0)")
    result = addnn.run_experiment(instances, ilp_time_limit, ilp_max_nodes, repeats, say=addnn.say_stderr)
    addnn.write(result, instances, Path(out))
    typer.echo(addnn.markdown(result))
    addnn.say_stderr(f"wrote {out}/results.json, {out}/results.md, {out}/problems/*.json")
