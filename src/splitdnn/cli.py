"""The `splitdnn` command line. Each command is a thin shell over the pure core; heavy imports (TensorFlow)
happen inside the commands so `splitdnn --help` stays fast."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import typer

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Split a DNN across device/edge/cloud tiers, deploy it, keep the split good.",
)


def fail(message: str, code: int = 2) -> None:
    """One-line error on stderr, non-zero exit: what users see for bad input."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


# --- foundation: inspect, slice -------------------------------------------------------------------------------

MODEL_HELP = (
    "cnn14, keras.applications.<Name> (weights=None), or a .keras file: a path, https://…, http://…, "
    "s3://BUCKET/KEY (credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; endpoint from S3_ENDPOINT)"
)
INPUT_SHAPE_HELP = "input shape without batch for keras.applications models, e.g. 224,224,3"
SHA256_HELP = "refuse the model file unless its sha256 is this (64 hex digits)"
MAX_MODEL_BYTES_HELP = "refuse a model file larger than this (bytes, or 512Mi, 2Gi, ...); default 1Gi"


def _max_bytes(text: str | None) -> int | None:
    if text is None:
        return None
    from splitdnn.storage import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        fail(f"--max-model-bytes: {exc}")
    return None


def _points(at: str | None) -> list[str] | None:
    """`--at L1,L2`: the layer names; None when not given."""
    return None if at is None else [p.strip() for p in at.split(",") if p.strip()]


def _parse_shape(text: str | None):
    if not text:
        return None
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        fail(f"bad --input-shape {text!r}: expected integers separated by commas, like 224,224,3")


def _load_graph(
    model_spec: str,
    input_shape: str | None,
    sha256: str | None = None,
    max_bytes: str | None = None,
    report: str | None = None,
):
    """(Keras model, its graph, the model file fetched or None); bad input exits 2 (and, with `report`, writes its
    reason there: see `slice --report`)."""
    from splitdnn.graph import build_graph
    from splitdnn.models import ModelSourceError, load_source

    limit = _max_bytes(max_bytes)
    try:
        model, fetched = load_source(
            model_spec, _parse_shape(input_shape), sha256=sha256, max_bytes=limit, say=lambda m: typer.echo(m, err=True)
        )
        return model, build_graph(model), fetched
    except (ModelSourceError, ValueError) as exc:
        _fail_reported(report, getattr(exc, "reason", "InvalidModel"), str(exc))


def _write_report(path: str | None, doc: dict) -> None:
    """`slice --report`: one short JSON line (a pod's termination message holds 4 KiB)."""
    if path:
        Path(path).write_text(json.dumps(doc, separators=(",", ":"))[:4000] + "\n")


def _fail_reported(report: str | None, reason: str, message: str) -> None:
    """`fail`, after writing the reason word and the message to `slice --report`'s file (when given)."""
    _write_report(report, {"error": {"reason": reason, "message": message}})
    fail(message)


def _shape(shape) -> str:
    """(None, 26, 26, 32) → 26×26×32 (no batch dimension); several outputs separated by commas."""
    if shape and isinstance(shape[0], (list, tuple)):
        return ", ".join(_shape(s) for s in shape)
    dims = list(shape or [])[1:] if shape and shape[0] is None else list(shape or [])
    return "×".join(str(d) for d in dims) or "scalar"


@app.command()
def inspect(
    model: str = typer.Argument(..., help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    input_shape: str | None = typer.Option(None, help=INPUT_SHAPE_HELP),
    sha256: str | None = typer.Option(None, "--sha256", help=SHA256_HELP),
    max_model_bytes: str | None = typer.Option(None, "--max-model-bytes", help=MAX_MODEL_BYTES_HELP),
):
    """Show a model's layers (shape, params, FLOPs, bytes) and every boundary with the tensors that cross it."""
    _, graph, _ = _load_graph(model, input_shape, sha256, max_model_bytes)
    if as_json:
        typer.echo(json.dumps(graph.to_json()))
        return
    from rich.console import Console

    from splitdnn.tables import Column, fit_table

    console = Console()
    cuts = {c.index: c for c in graph.boundaries}
    layers = list(enumerate(graph.layers))

    def crossing(i: int) -> str:
        cut = cuts.get(i)
        if cut is None:
            return ""
        return f"{cut.bytes:,}" + ("" if cut.single_tensor else f" ({len(cut.tensors)})")

    # most important first: a narrow terminal loses the last columns, never a row to wrapping
    columns: list[Column] = [
        ("#", "right", [str(i) for i, _ in layers]),
        ("layer", "left", [layer.name for _, layer in layers]),
        ("output", "left", [_shape(layer.output_shape) for _, layer in layers]),
        ("bytes after", "right", [crossing(i) for i, _ in layers]),
        ("MFLOPs", "right", [f"{layer.flops / 1e6:.2f}" for _, layer in layers]),
        ("params", "right", [f"{layer.params:,}" for _, layer in layers]),
        ("class", "left", [layer.cls for _, layer in layers]),
        ("out bytes", "right", [f"{layer.output_bytes:,}" for _, layer in layers]),
    ]
    title = f"{graph.model_name}: {graph.params_total:,} parameters, input {graph.input_bytes:,} B"
    table, hidden = fit_table(title, columns, console.width, keep=3)
    console.print(table)
    notes = ["bytes after: crossing the boundary after the layer, one frame; (n): n tensors"]
    if hidden:
        notes.append(f"not shown at {console.width} columns: {', '.join(hidden)} (--json has every field)")
    for note in notes:
        console.print(note, highlight=False)


@app.command("slice")
def slice_(
    model: str = typer.Argument(..., help=MODEL_HELP),
    at: str = typer.Option(..., "--at", help="split points: layer names L1[,L2...], in layer order"),
    out: str = typer.Option(..., "--out", help="output directory (slices.json + one SavedModel per slice)"),
    input_shape: str | None = typer.Option(None, help=INPUT_SHAPE_HELP),
    verify: bool = typer.Option(True, help="check the slices' composition equals the model on a random frame"),
    sha256: str | None = typer.Option(None, "--sha256", help=SHA256_HELP),
    max_model_bytes: str | None = typer.Option(None, "--max-model-bytes", help=MAX_MODEL_BYTES_HELP),
    tflite: bool = typer.Option(True, help="also write each slice as a float32 .tflite for LiteRT (checked)"),
    quantize: str | None = typer.Option(None, help="also write quantized .tflite slices: fp16 or int8"),
    calibration: str | None = typer.Option(
        None, help="directory of images to calibrate int8 on and compare with float (default: synthetic frames)"
    ),
    frames: int = typer.Option(100, help="--quantize: frames to calibrate on, and as many held-out to compare"),
    keras: bool = typer.Option(False, help="also write each slice as a flat .keras chain (for cooperative tiers)"),
    report: str | None = typer.Option(
        None,
        help="also write one short JSON line to this file: which slices have a .tflite (or why not) and the model "
        "file's sha256, or the error's reason and message (a pod's /dev/termination-log: the operator reads it)",
    ),
):
    """Cut MODEL after the given layers and export each slice as a TF Serving SavedModel (and a .tflite)."""
    from splitdnn.slicer import CutError, export_slices, resolve_cuts, verify_slices

    points = _points(at) or []
    if not points:
        fail("--at needs at least one layer name")
    if quantize not in (None, "fp16", "int8"):
        fail(f"--quantize must be fp16 or int8, got {quantize!r}")
    if quantize and not tflite:
        fail("--quantize writes .tflite slices: drop --no-tflite")
    if frames < 1:
        fail(f"--frames must be at least 1, got {frames}")
    if calibration and not Path(calibration).is_dir():
        fail(f"--calibration {calibration!r} is not a directory")
    keras_model, graph, fetched = _load_graph(model, input_shape, sha256, max_model_bytes, report)
    try:
        cuts = resolve_cuts(graph, points)
    except CutError as exc:
        _fail_reported(report, "InvalidSplitPoint", str(exc))
    try:
        manifest = export_slices(
            keras_model,
            graph,
            cuts,
            out,
            progress=lambda line: typer.echo(line, err=True),
            tflite=tflite,
            quantize=quantize,
            calibration=calibration,
            frames=frames,
            keras=keras,
        )
    except ValueError as exc:  # e.g. a calibration directory without images, or images for a non-image model
        _fail_reported(report, "SliceFailed", str(exc))
    if verify:
        diff = verify_slices(keras_model, graph, out)
        typer.echo(f"verified: max abs diff {diff:.2e} between the chained slices and the full model", err=True)
        if diff > 1e-5:
            message = f"slices do not compose to the model: max abs diff {diff:.2e} > 1e-5"
            _fail_reported(report, "SliceMismatch", message)
        if tflite:
            from splitdnn.tflite import FLOAT_TOL, verify_tflite

            diff, fallback = verify_tflite(keras_model, graph, out)
            note = f" ({', '.join(fallback)} ran the SavedModel: no .tflite)" if fallback else ""
            typer.echo(
                f"verified: max abs diff {diff:.2e} between the chained .tflite slices and the full model{note}",
                err=True,
            )
            if diff > FLOAT_TOL:
                message = f".tflite slices do not compose to the model: max abs diff {diff:.2e} > {FLOAT_TOL}"
                _fail_reported(report, "SliceMismatch", message)
    if report:
        from splitdnn.slicer import conversion_report

        model_file = {"model": {"sha256": fetched.sha256, "bytes": fetched.size}} if fetched else {}
        _write_report(report, {**conversion_report(manifest), **model_file})
    typer.echo(f"wrote {len(manifest['slices'])} slices to {out}")


# --- planner: plan, profile ------------------------------------------------------------------------------------


def _print_plans(problem, plans, search_seconds: float, as_json: bool, fps: float | None) -> None:
    if as_json:
        typer.echo(json.dumps({"plans": [p.to_json() for p in plans], "search_seconds": search_seconds}))
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
    model: str | None = typer.Argument(
        None,
        help="Model (cnn14, a .keras path, keras.applications.Name); with --profile/--estimate instead of --problem.",
    ),
    problem_file: str | None = typer.Option(
        None, "--problem", help="Problem JSON (tiers, blocks, links, constraints)."
    ),
    objective: str = typer.Option("latency", help="latency | throughput | bytes"),
    top: int = typer.Option(1, help="How many distinct plans, best first."),
    fps: float | None = typer.Option(None, help="Offered frame rate: adds the predicted drop rate."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    plot: str | None = typer.Option(None, "--plot", help="Write a PNG of per-block times/bytes with the cuts."),
    strategy: str = typer.Option("dp", help="Planner strategy (entry-point group splitdnn.strategies)."),
    profile: list[str] = typer.Option(
        [], "--profile", help="Tier profile JSON from `splitdnn profile` (repeat, in tier order)."
    ),
    estimate: list[str] = typer.Option(
        [],
        "--estimate",
        help="TIER=SPEED: estimate a tier from FLOPs; SPEED in "
        "FLOP/s (2e10, 20gflops) or xF (F times a profiled "
        "tier's time, e.g. cloud=x0.1).",
    ),
    link: list[str] = typer.Option(
        [], "--link", help="FROM,TO,LATENCY,RATE e.g. device,edge,5ms,4mbit (repeat; model mode)."
    ),
    constraints: str | None = typer.Option(
        None, "--constraints", help="JSON file with a constraints object (model mode; overrides the problem's)."
    ),
    multi_tensor: bool = typer.Option(
        False, "--multi-tensor", help="Blocks between every cut, not only single-tensor cuts (model mode)."
    ),
    save_problem: str | None = typer.Option(None, "--save-problem", help="Write the assembled problem JSON."),
) -> None:
    """Rank split plans for a problem file, or for a model plus per-tier profiles."""
    from splitdnn.planner import Infeasible, Problem, ProblemError, plan_timed

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
    except KeyError as exc:  # unknown strategy: the message is the first argument
        fail(str(exc.args[0]) if exc.args else str(exc))
    except (ProblemError, ValueError, OSError) as exc:
        fail(str(exc))
    except Infeasible as exc:
        fail(str(exc), code=1)
    _print_plans(problem, plans, dt, as_json, fps)
    if plot:
        from splitdnn.planner.plot import plot_plan

        plot_plan(
            problem,
            plans[0],
            plot,
            title=f"best plan by {objective}: latency {plans[0].latency * 1e3:.1f} ms,"
            f" bottleneck {plans[0].bottleneck * 1e3:.1f} ms, {plans[0].bytes / 1e3:.1f} kB/frame",
        )
        if not as_json:
            typer.echo(f"plot written to {plot}")


@app.command("profile")
def profile_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    tier: str = typer.Option(..., "--tier", help="Name of the tier this machine stands for (device, edge, ...)."),
    out: str = typer.Option(..., "--out", help="Profile JSON to write."),
    warmup: int = typer.Option(3, help="Untimed calls per block before timing."),
    repeats: int = typer.Option(10, help="Timed calls per block (the median is kept)."),
    multi_tensor: bool = typer.Option(
        False, "--multi-tensor", help="Blocks between every cut, not only single-tensor cuts."
    ),
    runtime: str = typer.Option(
        "tensorflow", help="the runtime the tier serves with (the agent's --runtime): tensorflow, litert or auto"
    ),
) -> None:
    """Measure per-block compute time and the fixed per-call cost of MODEL on this machine, served the way an
    agent serves a slice (its runtime, Stage thread; warm-up, repeats, median)."""
    from splitdnn.agent.runtime import RUNTIME_CHOICES
    from splitdnn.planner.profile import profile_model

    if runtime not in RUNTIME_CHOICES:
        fail(f"--runtime {runtime!r}: expected one of {', '.join(RUNTIME_CHOICES)}")
    try:
        doc = profile_model(model, tier, warmup=warmup, repeats=repeats, multi_tensor=multi_tensor, runtime=runtime)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    with open(out, "w") as fh:
        json.dump(doc, fh, indent=1)
    total = sum(b["time"] for b in doc["blocks"])
    typer.echo(
        f"{len(doc['blocks'])} blocks, {total * 1e3:.2f} ms total on {tier} "
        f"+ a fixed call cost of {doc['call_seconds'] * 1e3:.3f} ms per served call ({doc['runtime']}) -> {out}"
    )


# --- agent: agent, run, netem ----------------------------------------------------------------------------------


@app.command()
def agent(
    slices: str = typer.Option(..., "--slices", help="directory with slices.json (from `splitdnn slice`)"),
    slice_name: str = typer.Option(..., "--slice", help="which slice this tier runs, e.g. slice0"),
    port: int = typer.Option(8500, help="gRPC port (TF Serving PredictionService)"),
    next_: str | None = typer.Option(None, "--next", help="HOST:PORT of the next tier; none for the last tier"),
    metrics_port: int | None = typer.Option(None, help="Prometheus /metrics port"),
    rest_port: int | None = typer.Option(None, help="TF Serving REST API port (/v1/models/...; 8501 in pods)"),
    si: str = typer.Option("local", help="SplitInference name (metric label)"),
    tier: str | None = typer.Option(None, help="tier name (metric label); default: the slice name"),
    overhead_ratio: float = typer.Option(0.0, help="after computing t seconds, wait ratio·t more"),
    max_message_bytes: int = typer.Option(4194304, help="larger messages to the next tier are chunked"),
    max_request_bytes: int = typer.Option(
        67108864,
        help="largest request this tier accepts (a gRPC message, a chunk stream's total, a REST body, the tensors "
        "its shapes claim): larger ones are refused before they are decoded (RESOURCE_EXHAUSTED, HTTP 413)",
    ),
    runtime: str = typer.Option(
        "tensorflow",
        help="slice runtime: tensorflow (the slice's SavedModel), litert (its checked .tflite, no TensorFlow) or "
        "auto (litert where the slice has a .tflite, else tensorflow: a tier without tiers[].runtime)",
    ),
    threads: int | None = typer.Option(None, help="compute threads of the runtime (default: TF's own; LiteRT 1)"),
    devices: int = typer.Option(
        1, help="> 1: a cooperative group of this many device workers computes the slice (CoopAI; TensorFlow)"
    ),
    coop: str = typer.Option("mls", help="how a cooperative group splits the slice: mls, sls or off"),
    coop_devices: str | None = typer.Option(
        None,
        help="the group's devices as HOST:PORT,… (`splitdnn coop-device`s, one per --devices; key in "
        "SPLITDNN_COOP_KEY); default: start them as processes of this agent",
    ),
    delay: str | None = typer.Option(None, help="in-process emulation of the outgoing link: delay, e.g. 250ms"),
    jitter: str | None = typer.Option(None, help="… jitter, e.g. 10ms"),
    loss: str | None = typer.Option(None, help="… loss, e.g. 1%"),
    rate: str | None = typer.Option(None, help="… rate, e.g. 4mbit (bits/s; kbps/mbps are bytes/s)"),
    netem_report: str | None = typer.Option(
        None, help="report of `splitdnn netem apply`: emulate only what tc did not apply (no file: emulate all)"
    ),
    source: str | None = typer.Option(None, help="frame source on the first tier: synthetic or an image DIR"),
    fps: float = typer.Option(5.0, help="source frames per second"),
    frames: int = typer.Option(0, help="source frames (0 = endless)"),
    deadline: str = typer.Option("1s", help="per-frame deadline"),
    max_inflight: int = typer.Option(
        8,
        help="frames in the pipeline at once: the source drops more; every tier sizes its gRPC threads for it "
        "(give all tiers the source's value)",
    ),
    seed: int = typer.Option(0, help="seed of synthetic frames and of the link emulation"),
    warmup: int = typer.Option(0, help="source: send this many frames one at a time first, not counted"),
    queue_size: int = typer.Option(16, help="frames waiting for this stage before RESOURCE_EXHAUSTED"),
    timeout: str = typer.Option("30s", help="a frame with no result after this long fails"),
    drain_quiet: str = typer.Option(
        "1s",
        help="on SIGTERM keep serving until no request has been in progress for this long (the previous "
        "tier may still send while its replacement starts)",
    ),
    drain_timeout: str = typer.Option("30s", help="… but stop after this long in any case"),
    summary: str | None = typer.Option(None, help="write the source's outcome counts here (JSON) when done"),
    host: str = typer.Option("0.0.0.0", help="address to listen on"),
    log_level: str = typer.Option("INFO", help="logging level"),
):
    """Serve one tier's slice (TF Serving Predict API), forward to the next tier, export metrics."""
    import logging

    from splitdnn.units import parse_duration

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from splitdnn.agent.netem import load_report
    from splitdnn.agent.runtime import COOP_METHODS, RUNTIME_CHOICES
    from splitdnn.agent.server import AgentConfig, emulation_plan, env_settings, serve

    try:
        report = load_report(netem_report)
        link, tc_applied, _ = emulation_plan({"delay": delay, "jitter": jitter, "loss": loss, "rate": rate}, report)
        config = AgentConfig(
            slices=slices,
            slice=slice_name,
            port=port,
            next=next_,
            metrics_port=metrics_port,
            rest_port=rest_port,
            si=si,
            tier=tier or slice_name,
            overhead_ratio=overhead_ratio,
            max_message_bytes=max_message_bytes,
            max_request_bytes=max_request_bytes,
            runtime=runtime,
            threads=threads,
            devices=devices,
            coop=coop,
            coop_devices=coop_device_addresses(coop_devices, devices),
            link=link,
            tc_applied=tc_applied,
            host=host,
            queue_size=queue_size,
            timeout=parse_duration(timeout),
            seed=seed,
            source=source,
            fps=fps,
            frames=frames,
            deadline=parse_duration(deadline),
            max_inflight=max_inflight,
            warmup=warmup,
            summary=summary,
            drain_quiet=parse_duration(drain_quiet),
            drain_timeout=parse_duration(drain_timeout),
            **env_settings(),
        )
        if (
            overhead_ratio < 0
            or max_message_bytes < 1
            or not 1024 <= max_request_bytes <= 2**31 - 1
            or fps <= 0
            or max_inflight < 1
            or frames < 0
            or warmup < 0
            or (threads is not None and threads < 1)
            or not 1 <= devices <= 64
        ):
            raise ValueError(
                "--overhead-ratio ≥ 0, --max-message-bytes ≥ 1, 1024 ≤ --max-request-bytes ≤ 2147483647, "
                "--fps > 0, --max-inflight ≥ 1, --frames ≥ 0, --warmup ≥ 0, --threads ≥ 1, 1 ≤ --devices ≤ 64 "
                "are required"
            )
        if runtime not in RUNTIME_CHOICES:
            raise ValueError(f"--runtime {runtime!r}: expected one of {', '.join(RUNTIME_CHOICES)}")
        if coop not in COOP_METHODS:
            raise ValueError(f"--coop {coop!r}: expected one of {', '.join(COOP_METHODS)}")
        if source and source != "synthetic":
            from pathlib import Path

            if not Path(source).is_dir():
                raise ValueError(f"--source {source!r}: expected 'synthetic' or an image directory")
    except (ValueError, OSError) as exc:
        fail(str(exc))
    try:
        code = serve(config)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))
    raise typer.Exit(code)


@app.command()
def run(
    file: str = typer.Argument(..., help="a SplitInference YAML file (its first SplitInference is run)"),
    frames: int | None = typer.Option(None, help="override workload.frames (0 = until Ctrl-C)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON summary object on stdout"),
    netns: bool = typer.Option(False, "--netns", help="one network namespace per tier, real tc on veths (root)"),
    out: str | None = typer.Option(None, help="keep the slices here (default: a temporary directory)"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="print each tier's `splitdnn agent` command line and start nothing"
    ),
    max_model_bytes: str | None = typer.Option(None, "--max-model-bytes", help=MAX_MODEL_BYTES_HELP),
):
    """Run a SplitInference on this machine: slice, start one agent per tier, run the workload, summarize."""
    import shlex

    from rich.console import Console

    from splitdnn.agent.local import LocalRunError, run_local, summary_table
    from splitdnn.agent.local import dry_run as local_dry_run
    from splitdnn.spec import SpecError, load_file

    try:
        si = load_file(file)[0]
    except SpecError as exc:
        fail(str(exc))
    if dry_run:
        try:
            tiers = local_dry_run(si, frames=frames, netns=netns, out=out)
        except (LocalRunError, SpecError) as exc:
            fail(str(exc))
        if as_json:
            typer.echo(json.dumps({"tiers": tiers}))
        else:
            for t in tiers:
                typer.echo(f"# {t['name']}\n{shlex.join(t['argv'])}")
        return
    limit = _max_bytes(max_model_bytes)
    try:
        summary = run_local(si, frames=frames, netns=netns, out=out, quiet=False, max_model_bytes=limit)
    except (LocalRunError, SpecError) as exc:
        fail(str(exc))
    console = Console(stderr=as_json)
    console.print(summary_table(summary, console.width))
    if as_json:
        typer.echo(json.dumps(summary))
    if summary.get("interrupted"):
        raise typer.Exit(130)


@app.command()
def render(
    file: str = typer.Argument(..., help="a SplitInference YAML file (every SplitInference in it is rendered)"),
    namespace: str | None = typer.Option(
        None, "--namespace", "-n", help="namespace of the objects (default: the resource's, else default)"
    ),
    split_points: str | None = typer.Option(
        None, "--split-points", help="deploy these split points a,b instead of spec.splitPoints (as after a re-split)"
    ),
):
    """Print the Kubernetes objects the operator applies for FILE, as multi-document YAML (what `helm template`
    is to Helm): pipe it to `kubectl diff -f -` or `kubectl apply -f -`."""
    import yaml

    from splitdnn.controller.reconcile import RenderError, offline
    from splitdnn.spec import SpecError, load_file

    points = None
    if split_points is not None:
        points = [p.strip() for p in split_points.split(",") if p.strip()]
        if not points:
            fail("--split-points needs layer names separated by commas, like conv2d,flatten")
    try:
        items = load_file(file)
        objs = []
        for si in items:
            if namespace:
                si.namespace = namespace
            objs += offline(si, points)
    except (SpecError, RenderError) as exc:
        fail(str(exc))

    class Dumper(yaml.SafeDumper):  # multi-line strings (the plan JSON) as literal blocks, as a person writes them
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    typer.echo(yaml.dump_all(objs, Dumper=Dumper, sort_keys=False, explicit_start=True), nl=False)


netem_app = typer.Typer(no_args_is_help=True, help="Shape an interface's egress with tc (the agent's init container).")
app.add_typer(netem_app, name="netem")


@netem_app.command("apply")
def netem_apply(
    dev: str = typer.Option(..., "--dev", help="network interface, e.g. eth0"),
    delay: str | None = typer.Option(None, help="e.g. 250ms"),
    jitter: str | None = typer.Option(None, help="e.g. 10ms (needs --delay)"),
    loss: str | None = typer.Option(None, help="e.g. 1%"),
    rate: str | None = typer.Option(None, help="e.g. 4mbit (bits/s); kbps/mbps are bytes/s"),
    limit: int | None = typer.Option(None, help="netem queue limit in packets"),
    report: str | None = typer.Option(None, help="write what was applied and what was not here (JSON)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the tc commands for a kernel with everything"),
):
    """Apply delay/jitter/loss/rate/limit with tc; what the kernel cannot do is reported, not fatal."""
    from splitdnn.agent import netem

    params = netem.NetemParams(delay, jitter, loss, rate, limit)
    try:
        if dry_run:
            commands, _, _ = netem.plan(dev, params, dict.fromkeys(netem.QDISCS, True))
            for argv in commands:
                typer.echo(" ".join(argv))
            return
        result = netem.apply(dev, params, report=report)
    except netem.NetemError as exc:
        fail(str(exc))
    for argv in result["commands"]:
        typer.echo("ran: " + " ".join(argv))
    kernel = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in result["kernel"].items())
    applied = ", ".join(f"{k} {v}" for k, v in result["applied"].items()) or "nothing"
    typer.echo(f"{dev}: applied {applied}" + (f" (kernel: {kernel})" if kernel else ""))
    if result["not_applied"]:
        typer.echo(
            f"{dev}: NOT applied (the agent emulates these in-process): "
            + ", ".join(f"{k} {v}" for k, v in result["not_applied"].items())
        )
    for error in result["errors"]:
        typer.echo(f"warning: {error}", err=True)


@netem_app.command("clear")
def netem_clear(dev: str = typer.Option(..., "--dev", help="network interface, e.g. eth0")):
    """Remove the shaping from an interface (its root qdisc)."""
    from splitdnn.agent import netem

    try:
        removed = netem.clear(dev)
    except netem.NetemError as exc:
        fail(str(exc))
    typer.echo(f"{dev}: {'cleared' if removed else 'nothing to clear'}")


def exit_on_sigterm() -> None:
    """Exit 0 on SIGTERM. In a pod a server is PID 1, for which SIGTERM has no default action: a deleted artifact
    store kept answering behind its successor's Service until the kubelet killed it 30 s later (found in kind: a
    new operator read a model graph from the old store, then from the new one, and rolled every tier)."""

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)


def coop_device_addresses(text: str | None, devices: int) -> list[tuple[str, int]] | None:
    """--coop-devices HOST:PORT,… → addresses, one per device (checked against --devices)."""
    if text is None:
        return None
    from splitdnn.coop_run import COOP_PORT, parse_address

    addresses = [parse_address(a if ":" in a else f"{a}:{COOP_PORT}") for a in text.split(",") if a.strip()]
    if len(addresses) != devices or devices < 2:
        raise ValueError(f"--coop-devices names {len(addresses)} devices, --devices is {devices} (both ≥ 2, equal)")
    return addresses


@app.command("coop-device")
def coop_device_cmd(
    listen: str = typer.Option(
        "0.0.0.0:8600", help="HOST:PORT to serve coordinators on (their key: SPLITDNN_COOP_KEY, required)"
    ),
    threads: int = typer.Option(1, help="TensorFlow threads for the parts this device computes"),
    log_level: str = typer.Option("INFO", help="logging level"),
):
    """One device of a cooperative group (CoopAI): computes the parts of each block its coordinator (a tier's
    agent with --coop-devices) sends, for every coordinator holding the group's key. It holds no slice of its own:
    each coordinator sends its slice when it connects."""
    import logging

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from splitdnn.coop_run import group_key, parse_address, serve

    try:
        address = parse_address(listen)
        key = group_key()
        if threads < 1:
            raise ValueError(f"--threads must be ≥ 1, got {threads}")
    except ValueError as exc:
        fail(str(exc))
    exit_on_sigterm()

    def ready(bound) -> None:
        logging.getLogger("splitdnn.coop").info("device serving coordinators on %s:%s", *bound)

    try:
        serve(address, key, threads, ready=ready)
    except OSError as exc:
        fail(f"cannot listen on {listen}: {exc}")


@app.command("probe")
def probe_cmd(
    name: str = typer.Option(..., "--name", help="this node's name (the `from` label), e.g. the Kubernetes node"),
    listen: str = typer.Option("0.0.0.0:9200", "--listen", help="HOST:PORT answering the peers (UDP and TCP)"),
    peer: list[str] = typer.Option([], "--peer", help="NAME=HOST:PORT of another node's probe (repeatable)"),
    peers_dns: str | None = typer.Option(
        None, "--peers-dns", help="HOST:PORT whose A records are the other probes (a headless Service), every 30 s"
    ),
    budget: float = typer.Option(0.01, "--budget", help="share of a link's measured capacity probing may use"),
    probe_seconds: float = typer.Option(0.2, "--probe-seconds", help="how long one bandwidth probe fills a link"),
    rtt_interval: float = typer.Option(1.0, "--rtt-interval", help="seconds between RTT echoes per peer"),
    metrics_port: int = typer.Option(9101, "--metrics-port", help="serve the link matrix for Prometheus here"),
):
    """Measure RTT and bandwidth to every peer at a bounded cost; export splitdnn_node_link_* (docs/placement.md)."""
    from splitdnn import probe

    try:
        peers = [probe.Peer.parse(p) for p in peer]
        limits = probe.Budget(budget, probe_seconds, rtt_interval)
        host, colon, port = listen.rpartition(":")
        if not (colon and port.isdigit()):
            raise ValueError(f"--listen {listen!r}: expected HOST:PORT")
    except ValueError as exc:
        fail(str(exc))
    if not peers and not peers_dns:
        fail("no --peer and no --peers-dns: nothing to probe")
    if peers_dns and not peers_dns.rpartition(":")[2].isdigit():
        fail(f"--peers-dns {peers_dns!r}: expected HOST:PORT")
    exit_on_sigterm()
    try:
        probe.serve(name, listen, peers, limits, metrics_port, peers_dns=peers_dns)
    except OSError as exc:
        fail(f"cannot listen on {listen} or serve metrics on :{metrics_port}: {exc}")


# --- artifacts: the store, the model Job, the tiers' fetch ------------------------------------------------------

artifacts_app = typer.Typer(
    no_args_is_help=True,
    help="The artifact store: graphs and slices built once by TensorFlow, fetched by every tier (docs/operator.md).",
)
app.add_typer(artifacts_app, name="artifacts")
STORE_HELP = "the artifact store's URL (http://HOST:PORT; the chart's splitdnn-artifacts Service)"


@artifacts_app.command("serve")
def artifacts_serve(
    root: str = typer.Option(..., help="directory holding blobs/ and refs/ (a PVC keeps them across restarts)"),
    host: str = typer.Option("0.0.0.0", help="address to listen on"),
    port: int = typer.Option(8080, help="HTTP port"),
    max_blob_bytes: str = typer.Option("4Gi", help="refuse an upload larger than this (a model file or a slice)"),
    verbose: bool = typer.Option(False, help="log every request"),
):
    """Serve the artifact store (no TensorFlow): GET/HEAD/PUT /blobs/sha256/HEX and /refs/{models,slices}/KEY.json."""
    from splitdnn.artifacts import ArtifactServer
    from splitdnn.storage import parse_bytes

    try:
        limit = parse_bytes(max_blob_bytes)
    except ValueError as exc:
        fail(f"--max-blob-bytes: {exc}")
    server = ArtifactServer(Path(root), (host, port), limit, verbose)
    typer.echo(f"artifact store {root} on http://{host}:{server.server_address[1]}: {server.stats()}", err=True)
    exit_on_sigterm()  # (a PUT cut short never becomes a blob: uploads are checked, then renamed into place)
    try:
        server.serve_forever()
    finally:
        server.server_close()


@artifacts_app.command("build")
def artifacts_build(
    model: str = typer.Argument(..., help=MODEL_HELP),
    store: str = typer.Option(..., help=STORE_HELP),
    at: str | None = typer.Option(
        None, "--at", help="also build the slices of this split (L1[,L2...]; '' = the whole model as one slice)"
    ),
    input_shape: str | None = typer.Option(None, help=INPUT_SHAPE_HELP),
    sha256: str | None = typer.Option(None, "--sha256", help=SHA256_HELP),
    max_model_bytes: str | None = typer.Option(None, "--max-model-bytes", help=MAX_MODEL_BYTES_HELP),
    keras: bool = typer.Option(False, help="also write each slice as a flat .keras chain (for cooperative tiers)"),
    report: str | None = typer.Option(None, help="write one short JSON line here (the model Job's termination log)"),
    scope: str | None = typer.Option(
        None, help="whose model this is, part of its key (the operator passes NAMESPACE/pvc or NAMESPACE/secret/NAME)"
    ),
):
    """The model Job: fetch MODEL, store its file, digest and graph, and (with --at) its slices. TensorFlow runs
    only for what the store does not have yet."""
    from splitdnn import artifacts

    try:
        doc = artifacts.build(
            artifacts.Store(store),
            model,
            _parse_shape(input_shape),
            sha256,
            _max_bytes(max_model_bytes),
            _points(at),
            keras,
            say=lambda m: typer.echo(m, err=True),
            scope=scope,
        )
    except (artifacts.ArtifactError, ValueError) as exc:  # (ModelSourceError, CutError: ValueErrors)
        _fail_reported(report, **artifacts.failure(exc))
    _write_report(report, doc)
    built = ", ".join(doc["built"]) or "nothing: the store had it all"
    typer.echo(f"model key {doc['key']} (sha256:{doc['model']['sha256'][:12]}): built {built}")


@artifacts_app.command("fetch")
def artifacts_fetch(
    store: str = typer.Option(..., help=STORE_HELP),
    model_key: str = typer.Option(..., "--model-key", help="the model's key (`artifacts build` prints it)"),
    at: str = typer.Option(..., "--at", help="the split: L1[,L2...] ('' = one slice)"),
    index: int = typer.Option(..., "--slice", help="which slice of the split to fetch (0 = the first tier's)"),
    out: str = typer.Option(..., help="directory to write slices.json and slice<N>/ into"),
    keras: bool = typer.Option(False, help="the slices built with --keras"),
    wait: float = typer.Option(0.0, help="seconds to wait for a model Job still building the slices"),
    report: str | None = typer.Option(None, help="write one short JSON line here (the init container's log)"),
):
    """A tier's init container: fetch one slice, check its digest, unpack it. No TensorFlow."""
    from splitdnn import artifacts

    points = _points(at) or []
    if not 0 <= index <= len(points):
        fail(f"--slice {index}: a split at {len(points)} point(s) has slices 0..{len(points)}")
    try:
        doc = artifacts.fetch(
            artifacts.Store(store), model_key, points, index, Path(out), keras, wait, lambda m: typer.echo(m, err=True)
        )
    except artifacts.ArtifactError as exc:
        _fail_reported(report, exc.reason, str(exc))
    except ValueError as exc:
        _fail_reported(report, "InvalidSplitPoint", str(exc))
    _write_report(report, doc)


# --- operator ----------------------------------------------------------------------------------------------------


@app.command("operator")
def operator_(
    namespace: list[str] = typer.Option([], "--namespace", "-n", help="watch this namespace (repeatable)"),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="watch every namespace (default)"),
    liveness: str | None = typer.Option(
        "http://0.0.0.0:8080/healthz", "--liveness", help="liveness endpoint URL; empty to disable"
    ),
    metrics_port: int = typer.Option(0, "--metrics-port", help="serve Prometheus metrics on this port (0: off)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Run the SplitInference operator (Kopf) against KUBECONFIG or the in-cluster API."""
    from splitdnn.controller.run import run

    if namespace and all_namespaces:
        fail("--namespace and --all-namespaces are exclusive")
    run(
        namespaces=namespace,
        all_namespaces=all_namespaces,
        liveness=liveness or None,
        verbose=verbose,
        metrics_port=metrics_port,
    )


# --- experiment --------------------------------------------------------------------------------------------------

experiment_app = typer.Typer(no_args_is_help=True, help="Reproduce published experiments with real agents.")
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("cho2021")
def experiment_cho2021(
    config: str = typer.Option("all", "--config", help="1, 2, 3 or all (Cho 2021, Table 2)"),
    frames: int = typer.Option(50, help="frames per run (the paper: 50)"),
    fps: float = typer.Option(20.0, help="source frame rate (see docs/experiment.md for the choice)"),
    out: str = typer.Option("out/cho2021", help="results.json, results.md and configN.png go here"),
    repeats: int = typer.Option(1, help="runs per (config, split pair); results report the median, min and max"),
    pairs: str | None = typer.Option(None, help="subset of the 8 pairs, 1-based in the paper's order: 1,5"),
    seed: int = typer.Option(0, help="seed of the synthetic frames (repeat r uses seed + r)"),
    slack: float = typer.Option(0.1, help="deadline = the ring's propagation delay + this many seconds"),
    warmup: int = typer.Option(3, help="frames sent one at a time before each run's counted frames"),
    no_planner: bool = typer.Option(False, "--no-planner", help="skip the planner's split"),
    no_replan: bool = typer.Option(
        False,
        "--no-replan",
        help="run the planner's split from the profiles only (default: re-planned, as the operator's loop does, from "
        "the cost model calibrated on the fixed pairs' measured stage times before the planner's first run)",
    ),
    loopback: bool = typer.Option(False, "--loopback", help="loopback even when network namespaces work"),
    runtime: str = typer.Option(
        "tensorflow",
        "--runtime",
        help="what every tier serves with and the planner's profile measures: tensorflow (the paper's setup) or "
        "litert (its converted .tflite slices; ~20× cheaper stages: choose an --fps that stresses them)",
    ),
):
    """Cho 2021's CNN14 experiment: 8 split pairs × configurations, plus the planner's split, on real agents."""
    from pathlib import Path

    from splitdnn import experiment as exp

    try:
        configs = sorted(exp.CONFIGS) if config == "all" else [int(c) for c in config.split(",")]
        if any(c not in exp.CONFIGS for c in configs):
            raise ValueError
    except ValueError:
        fail(f"--config {config!r}: expected 1, 2, 3 or all")
    try:
        chosen = [int(p) for p in pairs.split(",")] if pairs else None
    except ValueError:
        chosen = [0]
    if chosen is not None and any(not 1 <= p <= len(exp.PAIRS) for p in chosen):
        fail(f"--pairs {pairs!r}: expected numbers 1..{len(exp.PAIRS)} separated by commas")
    if frames < 1 or fps <= 0 or repeats < 1 or slack < 0 or warmup < 0:
        fail("--frames ≥ 1, --fps > 0, --repeats ≥ 1, --slack ≥ 0 and --warmup ≥ 0 are required")
    if runtime not in exp.RUNTIMES:
        fail(f"--runtime {runtime!r}: expected {' or '.join(exp.RUNTIMES)}")
    workload = exp.Workload(frames=frames, fps=fps, seed=seed, deadline_slack=slack, warmup=warmup)
    exp.say_stderr(
        f"cho2021: configs {configs}, {frames} frames at {fps:g} fps, {repeats} repeat(s), {runtime} → {out}"
    )
    try:
        result = exp.run_experiment(
            configs,
            workload,
            Path(out),
            repeats=repeats,
            pairs=chosen,
            planner=not no_planner,
            netns=False if loopback else None,
            say=exp.say_stderr,
            replan=not no_replan,
            runtime=runtime,
        )
    except RuntimeError as exc:  # LocalRunError and friends: an agent that does not start
        fail(str(exc), 1)
    typer.echo(exp.markdown(result))
    typer.echo(exp.error_summary(result))
    exp.say_stderr(
        f"wrote {out}/results.json, {out}/results.md, "
        + ", ".join(f"{out}/config{c}.png" for c in configs)
        + f" ({result['wall_seconds']:.0f} s)"
    )


@experiment_app.command("coopai")
def experiment_coopai(
    out: str = typer.Option("out/coopai", help="results.json, results.md and coopai.png go here"),
):
    """CoopAI (Yang et al.): MLS vs layer-by-layer SLS with the paper's RP4 parameters, beside its Fig. 8/9 figures."""
    from pathlib import Path

    from splitdnn import coop_experiment as coopai
    from splitdnn.experiment import say_stderr

    target = Path(out)
    if target.exists() and not target.is_dir():
        fail(f"--out {out!r} exists and is not a directory")
    result = coopai.run_experiment(target, say=say_stderr)
    typer.echo(coopai.markdown(result))
    say_stderr(f"wrote {out}/results.json, {out}/results.md, {out}/coopai.png ({result['wall_seconds']:.1f} s)")


@experiment_app.command("splits")
def experiment_splits(
    model: str = typer.Option(..., "--model", help="a keras.applications model: MobileNetV2 (random weights)"),
    input_shape: str = typer.Option("64,64,3", "--input-shape", help="reduced input, without the batch: 64,64,3"),
    sample: int = typer.Option(6, help="split pairs to run, a seeded sample (0 = all single-tensor pairs)"),
    frames: int = typer.Option(30, help="frames per run"),
    fps: float = typer.Option(10.0, help="source frame rate"),
    repeats: int = typer.Option(1, help="runs per pair (medians reported)"),
    seed: int = typer.Option(0, help="seed of the pair sample and the synthetic frames"),
    runtime: str = typer.Option(
        "tensorflow", "--runtime", help="what the tiers serve with and the profile times: tensorflow or litert"
    ),
    out: str = typer.Option("out/splits", help="results.json and results.md go here"),
):
    """Cost model vs measurement on a keras.applications model split over three local tiers."""
    from pathlib import Path

    from splitdnn import experiment as exp
    from splitdnn.experiment_splits import run_splits

    runtime = {"tf": "tensorflow"}.get(runtime, runtime)  # (tf: its name before litert came)
    if runtime not in ("tensorflow", "litert"):
        fail(f"--runtime {runtime!r}: expected tensorflow or litert")
    app_name = model.removeprefix("keras.applications.")
    try:
        shape = [int(d) for d in input_shape.split(",")]
    except ValueError:
        shape = []
    if not shape or any(d < 1 for d in shape):
        fail(f"--input-shape {input_shape!r}: expected positive integers separated by commas, like 64,64,3")
    if frames < 1 or fps <= 0 or repeats < 1 or sample < 0:
        fail("--frames ≥ 1, --fps > 0, --repeats ≥ 1 and --sample ≥ 0 are required")
    try:
        result = run_splits(
            app_name,
            shape,
            exp.Workload(frames=frames, fps=fps, seed=seed),
            Path(out),
            sample=sample or None,
            repeats=repeats,
            runtime=runtime,
            say=exp.say_stderr,
        )
    except ValueError as exc:  # unknown model, an input the model does not accept
        fail(str(exc))
    except RuntimeError as exc:
        fail(str(exc), 1)
    from splitdnn.experiment_splits import markdown

    typer.echo(markdown(result))
    typer.echo(exp.error_summary(result))


def main() -> None:
    app()


# `splitdnn place` and `splitdnn experiment addnn` (ADDNN-style node placement) register themselves on import
from splitdnn import cli_placement  # noqa: E402, F401

if __name__ == "__main__":
    main()
