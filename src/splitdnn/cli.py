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
