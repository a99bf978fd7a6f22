"""The `splitdnn` command line. Each command is a thin shell over the pure core; heavy imports (TensorFlow)
happen inside the commands so `splitdnn --help` stays fast."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Split a DNN across device/edge/cloud tiers, deploy it, keep the split good.")


def fail(message: str, code: int = 2) -> None:
    """One-line error on stderr, non-zero exit: what users see for bad input."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


# --- foundation: inspect, slice -------------------------------------------------------------------------------

MODEL_HELP = "cnn14, keras.applications.<Name> (weights=None), or a path to a .keras file"
INPUT_SHAPE_HELP = "input shape without batch for keras.applications models, e.g. 224,224,3"


def _parse_shape(text: Optional[str]):
    if not text:
        return None
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        fail(f"bad --input-shape {text!r}: expected integers separated by commas, like 224,224,3")


def _load_graph(model_spec: str, input_shape: Optional[str]):
    from splitdnn.graph import build_graph
    from splitdnn.models import ModelSourceError, load_model

    try:
        model = load_model(model_spec, _parse_shape(input_shape))
        return model, build_graph(model)
    except (ModelSourceError, ValueError) as exc:
        fail(str(exc))


@app.command()
def inspect(
    model: str = typer.Argument(..., help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    input_shape: Optional[str] = typer.Option(None, help=INPUT_SHAPE_HELP),
):
    """Show a model's layers (shape, params, FLOPs, bytes) and every cut with the tensors that cross it."""
    _, graph = _load_graph(model, input_shape)
    if as_json:
        typer.echo(json.dumps(graph.to_json()))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{graph.model_name}: {graph.params_total:,} parameters, input {graph.input_bytes:,} B")
    for column in ("#", "layer", "class", "output shape", "params", "MFLOPs", "out bytes", "cut after: crossing"):
        table.add_column(column, justify="right" if column in ("#", "params", "MFLOPs", "out bytes") else "left")
    cuts = {c.index: c for c in graph.cuts}
    for i, layer in enumerate(graph.layers):
        cut = cuts.get(i)
        crossing = "" if cut is None else (
            f"{cut.bytes:,} B" + ("" if cut.single_tensor else f" ({len(cut.tensors)} tensors)"))
        table.add_row(str(i), layer.name, layer.cls, str(layer.output_shape), f"{layer.params:,}",
                      f"{layer.flops / 1e6:.2f}", f"{layer.output_bytes:,}", crossing)
    Console().print(table)


@app.command("slice")
def slice_(
    model: str = typer.Argument(..., help=MODEL_HELP),
    at: str = typer.Option(..., "--at", help="split points: layer names L1[,L2...], in layer order"),
    out: str = typer.Option(..., "--out", help="output directory (slices.json + one SavedModel per slice)"),
    input_shape: Optional[str] = typer.Option(None, help=INPUT_SHAPE_HELP),
    verify: bool = typer.Option(True, help="check the slices' composition equals the model on a random frame"),
):
    """Cut MODEL after the given layers and export each slice as a TF Serving SavedModel."""
    from splitdnn.slicer import CutError, export_slices, resolve_cuts, verify_slices

    points = [p for p in at.split(",") if p.strip()]
    if not points:
        fail("--at needs at least one layer name")
    keras_model, graph = _load_graph(model, input_shape)
    try:
        cuts = resolve_cuts(graph, points)
    except CutError as exc:
        fail(str(exc))
    manifest = export_slices(keras_model, graph, cuts, out, progress=lambda line: typer.echo(line, err=True))
    if verify:
        diff = verify_slices(keras_model, graph, out)
        typer.echo(f"verified: max abs diff {diff:.2e} between the chained slices and the full model", err=True)
        if diff > 1e-5:
            fail(f"slices do not compose to the model: max abs diff {diff:.2e} > 1e-5")
    typer.echo(f"wrote {len(manifest['slices'])} slices to {out}")

# --- planner: plan, profile ------------------------------------------------------------------------------------


def _print_plans(problem, plans, search_seconds: float, as_json: bool, fps: Optional[float]) -> None:
    if as_json:
        out = []
        for p in plans:
            d = {"assignment": {t: (list(r) if r else None) for t, r in p.assignment.items()},
                 "latency": p.latency, "bottleneck": p.bottleneck, "bytes": p.bytes}
            if fps is not None:
                d["drop_rate"] = p.drop_rate
            out.append(d)
        typer.echo(json.dumps({"plans": out, "search_seconds": search_seconds}))
        return
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"{len(plans)} best plan(s)  (search {search_seconds * 1e3:.2f} ms)")
    table.add_column("#", justify="right")
    table.add_column("latency", justify="right")
    table.add_column("bottleneck", justify="right")
    if fps is not None:
        table.add_column(f"drop @ {fps:g} fps", justify="right")
    table.add_column("bytes", justify="right")
    for t in problem.tiers:
        table.add_column(t)
    for k, p in enumerate(plans, 1):
        row = [str(k), f"{p.latency * 1e3:.3f} ms", f"{p.bottleneck * 1e3:.3f} ms"]
        if fps is not None:
            row.append(f"{p.drop_rate * 100:.1f}%")
        row.append(f"{p.bytes:,}")
        for t in problem.tiers:
            r = p.assignment[t]
            row.append("-" if r is None else (r[0] if r[0] == r[1] else f"{r[0]} .. {r[1]}"))
        table.add_row(*row)
    Console().print(table)


@app.command("plan")
def plan_cmd(
    model: Optional[str] = typer.Argument(None, help="Model (cnn14, a .keras path, keras.applications.Name); "
                                                     "with --profile/--estimate instead of --problem."),
    problem_file: Optional[str] = typer.Option(None, "--problem", help="Problem JSON (tiers, blocks, links, "
                                                                         "constraints)."),
    objective: str = typer.Option("latency", help="latency | throughput | bytes"),
    top: int = typer.Option(1, help="How many distinct plans, best first."),
    fps: Optional[float] = typer.Option(None, help="Offered frame rate: adds the predicted drop rate."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write a PNG of per-block times/bytes with the cuts."),
    strategy: str = typer.Option("dp", help="Planner strategy (entry-point group splitdnn.strategies)."),
    profile: list[str] = typer.Option([], "--profile", help="Tier profile JSON from `splitdnn profile` "
                                                            "(repeat, in tier order)."),
    estimate: list[str] = typer.Option([], "--estimate", help="TIER=SPEED: estimate a tier from FLOPs; SPEED in "
                                                              "FLOP/s (2e10, 20gflops) or xF (F times a profiled "
                                                              "tier's time, e.g. cloud=x0.1)."),
    link: list[str] = typer.Option([], "--link", help="FROM,TO,LATENCY,RATE e.g. device,edge,5ms,4mbit "
                                                      "(repeat; model mode)."),
    constraints: Optional[str] = typer.Option(None, "--constraints", help="JSON file with a constraints object "
                                                                          "(model mode; overrides the problem's)."),
    multi_tensor: bool = typer.Option(False, "--multi-tensor", help="Blocks between every cut, not only "
                                                                    "single-tensor cuts (model mode)."),
    save_problem: Optional[str] = typer.Option(None, "--save-problem", help="Write the assembled problem JSON."),
) -> None:
    """Rank split plans for a problem file, or for a model plus per-tier profiles."""
    from splitdnn.planner import Infeasible, ProblemError, Problem, plan_timed
    try:
        if problem_file and model:
            fail("give either MODEL (with --profile/--estimate) or --problem FILE, not both")
        if problem_file:
            problem = Problem.load(problem_file)
        elif model:
            from splitdnn.planner.profile import problem_from_profiles
            problem = problem_from_profiles(model, profile, estimate, link, multi_tensor=multi_tensor)
        else:
            fail("nothing to plan: give --problem FILE.json, or MODEL with --profile/--estimate")
        if constraints:
            with open(constraints) as fh:
                c = json.load(fh)
            data = problem.to_json()
            data["constraints"] = c.get("constraints", c)
            problem = Problem.from_json(data, constraints)
        for warning in problem.warnings:
            typer.echo(f"warning: {warning}", err=True)
        if save_problem:
            with open(save_problem, "w") as fh:
                json.dump(problem.to_json(), fh, indent=1)
        plans, dt = plan_timed(problem, objective=objective, top=top, fps=fps, strategy=strategy)
    except KeyError as exc:           # unknown strategy: the message is the first argument
        fail(str(exc.args[0]) if exc.args else str(exc))
    except (ProblemError, ValueError, OSError) as exc:
        fail(str(exc))
    except Infeasible as exc:
        fail(str(exc), code=1)
    _print_plans(problem, plans, dt, as_json, fps)
    if plot:
        from splitdnn.planner.plot import plot_plan
        plot_plan(problem, plans[0], plot, title=f"best plan by {objective}: latency {plans[0].latency * 1e3:.1f} ms,"
                  f" bottleneck {plans[0].bottleneck * 1e3:.1f} ms, {plans[0].bytes / 1e3:.1f} kB/frame")
        if not as_json:
            typer.echo(f"plot written to {plot}")


@app.command("profile")
def profile_cmd(
    model: str = typer.Argument(..., help="Model: cnn14, a .keras path, or keras.applications.Name."),
    tier: str = typer.Option(..., "--tier", help="Name of the tier this machine stands for (device, edge, ...)."),
    out: str = typer.Option(..., "--out", help="Profile JSON to write."),
    warmup: int = typer.Option(3, help="Untimed calls per block before timing."),
    repeats: int = typer.Option(10, help="Timed calls per block (the median is kept)."),
    multi_tensor: bool = typer.Option(False, "--multi-tensor", help="Blocks between every cut, not only "
                                                                    "single-tensor cuts."),
) -> None:
    """Measure per-block compute time of MODEL on this machine (warm-up, repeats, median)."""
    from splitdnn.planner.profile import profile_model
    try:
        doc = profile_model(model, tier, warmup=warmup, repeats=repeats, multi_tensor=multi_tensor)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    with open(out, "w") as fh:
        json.dump(doc, fh, indent=1)
    total = sum(b["time"] for b in doc["blocks"])
    typer.echo(f"{len(doc['blocks'])} blocks, {total * 1e3:.2f} ms total on {tier} "
               f"(call overhead {doc['overhead_s'] * 1e3:.3f} ms subtracted) -> {out}")


# --- agent: agent, run, netem ----------------------------------------------------------------------------------

# --- operator ----------------------------------------------------------------------------------------------------


@app.command("operator")
def operator_(
    namespace: list[str] = typer.Option([], "--namespace", "-n", help="watch this namespace (repeatable)"),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="watch every namespace (default)"),
    liveness: Optional[str] = typer.Option("http://0.0.0.0:8080/healthz", "--liveness",
                                           help="liveness endpoint URL; empty to disable"),
    metrics_port: int = typer.Option(0, "--metrics-port", help="serve Prometheus metrics on this port (0: off)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Run the SplitInference operator (Kopf) against KUBECONFIG or the in-cluster API."""
    from splitdnn.controller.run import run

    if namespace and all_namespaces:
        fail("--namespace and --all-namespaces are exclusive")
    run(namespaces=namespace, all_namespaces=all_namespaces, liveness=liveness or None, verbose=verbose,
        metrics_port=metrics_port)


# --- experiment --------------------------------------------------------------------------------------------------


def main() -> None:
    app()


if __name__ == "__main__":
    main()
