"""`splitdnn run FILE.yaml`: a SplitInference on this machine, no cluster.

Slices the model, starts one `splitdnn agent` process per tier (loopback and in-process link emulation; with
`--netns`, one network namespace per tier joined by veth pairs and real `tc` through `splitdnn netem apply`, the
same command the pods' init container runs), runs the workload from the first tier's frame source, shows
progress on stderr, and returns the summary. Agents die with this process (PR_SET_PDEATHSIG) and are stopped in
every exit path, so nothing is left behind. The agents' command lines come from `agent.command.agent_argv`, the
function the operator's pods use too; `dry_run` returns them without starting anything.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitdnn.agent.command import agent_argv
from splitdnn.agent.metrics import scrape, value
from splitdnn.agent.source import OUTCOMES
from splitdnn.spec import SplitInference, Tier, Workload

__all__ = ["agent_argv", "run_local", "dry_run", "start_agents", "stop_all", "wait_ready", "AgentProcess"]

RUN_DIR_PLACEHOLDER = "<run-dir>"  # in `--dry-run` output: the temporary directory a real run creates


class LocalRunError(RuntimeError):
    """Something that stops a local run (an agent that does not start, a spec it cannot run)."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class AgentProcess:
    tier: str
    argv: list
    log: Path
    metrics_url: str
    grpc_addr: str
    proc: subprocess.Popen | None = None

    def start(self, env: dict | None = None) -> AgentProcess:
        env = dict(env or os.environ)
        # the agents import the same splitdnn as this process, installed or not
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent,
                start_new_session=True,
            )
        return self

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(line for line in lines[-n:])

    def exit_code(self) -> int | None:
        """The agent's exit code once it has exited; None while it runs (or before it starts)."""
        return None if self.proc is None else self.proc.poll()

    def check_running(self) -> None:
        code = self.exit_code()
        if code is not None:
            raise LocalRunError(f"agent {self.tier} exited with {code}:\n{self.log_tail()}")

    def ready(self) -> bool:
        self.check_running()
        try:
            scrape(self.metrics_url, timeout=1)
            return True
        except OSError:
            return False

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def wait_ready(agents: list[AgentProcess], timeout: float = 180.0, stop: threading.Event | None = None) -> None:
    """Until every agent serves /metrics (or `stop` is set)."""
    stop = stop or threading.Event()
    end = time.monotonic() + timeout
    pending = list(agents)
    while pending and not stop.is_set():
        pending = [a for a in pending if not a.ready()]
        if pending and time.monotonic() > end:
            raise LocalRunError(f"agents not ready after {timeout:.0f} s: {', '.join(a.tier for a in pending)}")
        if pending:
            stop.wait(0.3)


@contextmanager
def interrupt_event():
    """Ctrl-C (SIGINT) sets the yielded Event instead of raising KeyboardInterrupt wherever the main thread is:
    an exception raised inside a library's locked section (rich's live display, urllib) can leave a lock held and
    the clean-up that follows waiting on it forever. Outside the main thread it is a plain Event."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def stop_all(agents: list[AgentProcess]) -> None:
    for a in agents:
        if a.proc is not None and a.proc.poll() is None:
            a.proc.send_signal(signal.SIGTERM)
    for a in agents:
        a.stop()


@dataclass
class Progress:
    """Live progress on stderr (rich), fed from the agents' own metrics."""

    total: int | None
    quiet: bool = False
    _progress: Any = None
    _task: Any = None
    started: float = field(default_factory=time.monotonic)

    def __enter__(self):
        if not self.quiet:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._progress = RichProgress(
                TextColumn("frames"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("", total=self.total)
        return self

    def update(self, done: int, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, description=text)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)


def tier_stats(agent: AgentProcess, samples: dict) -> dict:
    count = value(samples, "splitdnn_stage_compute_seconds_count")
    transfers = value(samples, "splitdnn_link_transfer_seconds_count")
    rtt = [v for (n, _), v in samples.items() if n == "splitdnn_link_rtt_seconds"]
    bandwidth = [v for (n, _), v in samples.items() if n == "splitdnn_link_bandwidth_bytes_per_second"]
    paths = sorted(dict(lab)["path"] for (n, lab), v in samples.items() if n == "splitdnn_link_emulation_info" and v)
    info = next((dict(lab) for (n, lab), v in samples.items() if n == "splitdnn_slice_info"), {})
    runtime = next((dict(lab) for (n, lab), v in samples.items() if n == "splitdnn_runtime_info" and v), {})
    return {
        "name": agent.tier,
        "slice": info.get("slice"),
        "runtime": runtime.get("runtime"),
        "devices": int(runtime.get("devices") or 1),
        "frames": int(count),
        "stage_seconds_mean": value(samples, "splitdnn_stage_compute_seconds_sum") / count if count else None,
        "link_bytes": int(value(samples, "splitdnn_link_bytes_total")),
        "link_transfer_seconds_mean": (
            value(samples, "splitdnn_link_transfer_seconds_sum") / transfers if transfers else None
        ),
        "link_rtt_seconds": rtt[0] if rtt else None,
        "link_bandwidth_bytes_per_second": bandwidth[0] if bandwidth else None,
        "link_emulation": "+".join(paths) or "none",
    }


def outcomes_of(samples: dict) -> dict:
    counts = {o: int(value(samples, "splitdnn_frames_total", outcome=o)) for o in OUTCOMES}
    offered = sum(counts.values())
    lost = counts["dropped"] + counts["late"] + counts["failed"]
    return {"offered": offered, **counts, "drop_rate": lost / offered if offered else 0.0}


def _split_points(si: SplitInference) -> list[str]:
    """The spec's split points, or why it cannot run here."""
    from splitdnn.spec import cross_field_problems

    problems = cross_field_problems(si)
    if problems:
        raise LocalRunError("; ".join(problems))
    points = si.typed.split_points
    if len(points) != len(si.tiers) - 1:
        raise LocalRunError("splitdnn run needs spec.splitPoints (one fewer than tiers)")
    return points


def dry_run(si: SplitInference, frames: int | None = None, netns: bool = False, out: str | None = None) -> list[dict]:
    """`splitdnn run --dry-run`: each tier's agent command line, as `run_local` would start it, starting nothing.
    Paths inside the run's temporary directory show as <run-dir>; loopback ports are free ports chosen now."""
    _split_points(si)
    spec = si.typed
    chain = None
    reports = {}
    if netns:
        from splitdnn.agent.netns import Chain

        chain = Chain(len(spec.tiers))
        reports = {k: f"{RUN_DIR_PLACEHOLDER}/netem-{t.name}.json" for k, t in enumerate(spec.tiers)}
    agents = agent_processes(
        out or f"{RUN_DIR_PLACEHOLDER}/slices",
        Path(RUN_DIR_PLACEHOLDER),
        spec.tiers,
        si.name,
        chain,
        workload=spec.workload,
        frames=frames,
        summary=f"{RUN_DIR_PLACEHOLDER}/source.json",
        netem_reports=reports,
    )
    return [{"name": a.tier, "argv": a.argv} for a in agents]


def run_local(
    si: SplitInference,
    frames: int | None = None,
    netns: bool = False,
    out: str | None = None,
    quiet: bool = False,
    slices: str | None = None,
    chain=None,
    say=None,
    max_model_bytes: int | None = None,
) -> dict:
    """Run a SplitInference (from `splitdnn.spec`) locally; returns the summary (see README "splitdnn run").

    For callers that run many times (the experiment): `slices` = a directory of slices already exported at the
    spec's split points (no slicing), `chain` = a namespace chain already created (the caller destroys it),
    `say` = where progress lines go (instead of stderr; no progress bar). `max_model_bytes` limits a model file
    (default `splitdnn.storage.DEFAULT_MAX_BYTES`)."""
    points = _split_points(si)
    total = si.typed.workload.frames if frames is None else frames
    if netns and chain is None:
        from splitdnn.agent.netns import available

        ok, why = available()
        if not ok:
            raise LocalRunError(f"--netns {why}")
    bar = not quiet and say is None
    if say is None:
        say = (lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    own_chain = netns and chain is None

    with tempfile.TemporaryDirectory(prefix="splitdnn-run-") as tmp:
        if slices is None:
            slices = out or str(Path(tmp) / "slices")
            say(f"slicing {si.model_source} at {', '.join(points)} → {slices}")
            _slice(si, points, slices, max_model_bytes, say)
        agents: list[AgentProcess] = []
        summary_file = Path(tmp) / "source.json"
        try:
            if own_chain:
                from splitdnn.agent.netns import Chain

                chain = Chain(len(si.tiers)).create()
            agents = _start_agents(si, slices, tmp, total, summary_file, chain, say)
            started = time.monotonic()
            with interrupt_event() as stop:
                say("waiting for the agents (each loads TensorFlow and its slice)…")
                wait_ready(agents, stop=stop)
                if not stop.is_set():
                    say(f"agents ready: {', '.join(a.tier for a in agents)}; running {total or 'endless'} frames")
                started = time.monotonic()
                with Progress(total or None, not bar) as progress:
                    while not summary_file.exists() and not stop.is_set():
                        for a in agents:
                            a.check_running()
                        _show(progress, agents)
                        stop.wait(0.5)
                    _show(progress, agents)
            interrupted = stop.is_set() and not summary_file.exists()
            if interrupted:
                say("interrupted: stopping the agents")
            elapsed = time.monotonic() - started
            samples = [_scrape_or_empty(a) for a in agents]
            result = outcomes_of(samples[0])
            if summary_file.exists():
                source = json.loads(summary_file.read_text())
                result = {k: source[k] for k in ("offered", *OUTCOMES, "drop_rate")}
                result["latency_mean_seconds"] = source.get("latency_mean")
                result["source_seconds"] = source.get("seconds")
                if source.get("last_error"):
                    result["last_error"] = source["last_error"]
            result["seconds"] = round(elapsed, 3)
            result["link_emulation"] = "tc via netns" if chain is not None else "inprocess"
            result["tiers"] = [tier_stats(a, s) for a, s in zip(agents, samples)]
            result["interrupted"] = interrupted
        finally:
            stop_all(agents)
            if own_chain and chain is not None:
                chain.destroy()
        return result


def _scrape_or_empty(agent: AgentProcess) -> dict:
    try:
        return scrape(agent.metrics_url)
    except OSError:  # interrupted before this agent was up
        return {}


def _slice(si, points, directory, max_model_bytes: int | None = None, say=None) -> None:
    from splitdnn.graph import build_graph
    from splitdnn.models import ModelSourceError, load_model
    from splitdnn.slicer import CutError, export_slices, resolve_cuts

    try:
        model = load_model(
            si.model_source, si.input_shape, sha256=si.typed.model.sha256, max_bytes=max_model_bytes, say=say
        )
    except ModelSourceError as exc:
        raise LocalRunError(str(exc)) from None
    graph = build_graph(model)
    try:
        cuts = resolve_cuts(graph, points)
    except CutError as exc:
        raise LocalRunError(str(exc)) from None
    export_slices(model, graph, cuts, directory, keras=si.typed.cooperative)


def agent_processes(
    slices: str,
    logdir: Path,
    tiers: list[Tier],
    si: str,
    chain=None,
    *,
    workload: Workload | None = None,
    frames: int | None = None,
    summary: str | None = None,
    extra: dict | None = None,
    netem_reports: dict | None = None,
    ports: tuple | None = None,
    coop: str = "mls",
) -> list[AgentProcess]:
    """One `splitdnn agent` per tier (not started), on loopback or in `chain`'s namespaces, with the command line
    of `agent_argv` (the one the operator's pods run). `workload` (frames overriding its `frames`, the source
    writing `summary`) as in a SplitInference; `extra[k]` and `netem_reports[k]` add flags to tier k. In namespaces
    every tier listens on `ports` = (gRPC, metrics), default (8500, 9100); a second set of agents beside the first
    (a re-split's surge) takes other ports."""
    extra, netem_reports = extra or {}, netem_reports or {}
    n = len(tiers)
    if chain is None:
        addrs = [(free_port(), free_port()) for _ in range(n)]
    else:
        addrs = [(int(ports[0]), int(ports[1])) if ports else (8500, 9100)] * n
    agents = []
    for k, tier in enumerate(tiers):
        port, metrics_port = addrs[k]
        host = "127.0.0.1" if chain is None else chain.mgmt_addr(k)
        next_addr = None
        if k < n - 1:
            next_host = "127.0.0.1" if chain is None else chain.next_addr(k)
            next_addr = f"{next_host}:{addrs[k + 1][0]}"
        argv = agent_argv(
            slices=slices,
            slice_name=f"slice{k}",
            port=port,
            metrics_port=metrics_port,
            tier=tier.name,
            si=si,
            next_addr=next_addr,
            tier_spec=tier,
            workload=workload,
            source=k == 0,
            frames=frames,
            summary=summary,
            netem_report=netem_reports.get(k),
            extra=tuple(extra.get(k, ())),
            coop=coop,
        )
        if chain is not None:
            argv = chain.exec_prefix(k) + argv
        agents.append(
            AgentProcess(
                tier.name,
                argv,
                Path(logdir) / f"{tier.name}.log",
                f"http://{host}:{metrics_port}/metrics",
                f"{host}:{port}",
            )
        )
    return agents


def launch(agents: list[AgentProcess]) -> list[AgentProcess]:
    """Start the agents last tier first (so each tier's next is up first); all stopped if one fails to start.
    Does not wait for readiness."""
    started: list[AgentProcess] = []
    try:
        for agent in reversed(agents):
            started.append(agent.start())
    except BaseException:
        stop_all(started)
        raise
    return agents


def start_agents(
    slices: str,
    logdir: Path,
    tier_specs: list[dict],
    si: str,
    chain=None,
    extra: dict | None = None,
    netem_reports: dict | None = None,
    ports: tuple | None = None,
) -> list[AgentProcess]:
    """`agent_processes` for SplitInference tier dicts and no workload (flags in `extra`), started."""
    tiers = [Tier.from_dict(t) for t in tier_specs]
    return launch(
        agent_processes(slices, logdir, tiers, si, chain, extra=extra, netem_reports=netem_reports, ports=ports)
    )


def _start_agents(si, slices: str, tmp: str, total: int, summary_file: Path, chain, say) -> list[AgentProcess]:
    spec = si.typed
    reports = {}
    if chain is not None:  # what the init containers do: tc on each tier's outgoing interface, with a report
        for k, tier in enumerate(si.tiers):
            reports[k] = str(Path(tmp) / f"netem-{tier['name']}.json")
            result = apply_netem(chain, k, tier.get("netem", {}), reports[k])
            say(
                f"{tier['name']}: tc applied {result['applied'] or 'nothing'}; "
                f"in-process: {result['not_applied'] or 'nothing'}"
            )
    agents = agent_processes(
        slices,
        Path(tmp),
        spec.tiers,
        si.name,
        chain,
        workload=spec.workload,
        frames=total,
        summary=str(summary_file),
        netem_reports=reports,
        coop=spec.planner.coop,
    )
    return launch(agents)


def apply_netem(chain, k: int, netem: dict, report: str) -> dict:
    """`splitdnn netem apply` in tier k's namespace on its outgoing interface: what the init container runs."""
    argv = chain.exec_prefix(k) + [
        sys.executable,
        "-m",
        "splitdnn",
        "netem",
        "apply",
        "--dev",
        chain.egress_dev(k),
        "--report",
        report,
    ]
    for key in ("delay", "jitter", "loss", "rate", "limit"):
        if netem.get(key) not in (None, ""):
            argv += [f"--{key}", str(netem[key])]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise LocalRunError(f"netem apply for tier {k} failed: {proc.stderr.strip()}")
    return json.loads(Path(report).read_text())


def _show(progress: Progress, agents: list[AgentProcess]) -> None:
    try:
        samples = [scrape(a.metrics_url, timeout=1) for a in agents]
    except OSError:
        return
    o = outcomes_of(samples[0])
    stages = []
    for a, s in zip(agents, samples):
        count = value(s, "splitdnn_stage_compute_seconds_count")
        mean = value(s, "splitdnn_stage_compute_seconds_sum") / count * 1e3 if count else 0.0
        stages.append(f"{a.tier} {mean:.1f}ms")
    progress.update(o["offered"], f"drop {o['drop_rate'] * 100:.1f}%  stage: {' | '.join(stages)}")


def _runtime_label(tier: dict) -> str:
    """`tensorflow`, `litert`, or `coop ×3` for a cooperative tier of 3 device workers."""
    if tier.get("runtime") == "coop":
        return f"coop ×{tier.get('devices')}"
    return tier.get("runtime") or ""


def summary_table(result: dict, width: int = 80):
    """The run's summary for a terminal `width` columns wide: the frame counts, then a row per tier (its stage) and
    a row per link (what the tier sent on its outgoing link; the last tier's carries the results back). A row is
    one line and names are never cut: columns that do not fit are left out, and a last line says which."""
    from rich.console import Group, RenderableType
    from rich.text import Text

    from splitdnn.tables import fit_table

    def ms(v):
        return "—" if v is None else f"{v * 1e3:.1f}"

    tiers = result["tiers"]
    names = [t["name"] for t in tiers]
    targets = names[1:] + ["results"]
    bandwidth = [t["link_bandwidth_bytes_per_second"] for t in tiers]
    stages, hidden_stages = fit_table(
        None,
        [
            ("tier", "left", names),
            ("slice", "left", [t["slice"] or "" for t in tiers]),
            ("frames", "right", [str(t["frames"]) for t in tiers]),
            ("stage ms", "right", [ms(t["stage_seconds_mean"]) for t in tiers]),
            ("runtime", "left", [_runtime_label(t) for t in tiers]),
        ],
        width,
    )
    links, hidden_links = fit_table(
        None,
        [
            ("link", "left", [f"{a} → {b}" for a, b in zip(names, targets)]),
            ("sent bytes", "right", [f"{t['link_bytes']:,}" for t in tiers]),
            ("transfer ms", "right", [ms(t["link_transfer_seconds_mean"]) for t in tiers]),
            ("rtt ms", "right", [ms(t["link_rtt_seconds"]) for t in tiers]),
            ("Mbit/s", "right", ["—" if b is None else f"{b * 8 / 1e6:.2f}" for b in bandwidth]),
            ("emulation", "left", [t["link_emulation"] for t in tiers]),
        ],
        width,
    )
    parts: list[RenderableType] = [
        Text(
            f"{result['offered']} frames in {result['seconds']:.1f} s, drop rate {result['drop_rate'] * 100:.1f}%\n"
            f"{result['completed']} completed, {result['dropped']} dropped, {result['late']} late, "
            f"{result['failed']} failed"
        ),
        Text(""),
        stages,
        Text(""),
        links,
    ]
    hidden = hidden_stages + hidden_links
    if hidden:
        parts.append(Text(f"not shown at {width} columns: {', '.join(hidden)} (--json has every field)"))
    return Group(*parts)
