"""The `splitdnn agent` command line of one tier: what the operator's pods run (`controller.render`) and what
`splitdnn run` starts (`agent.local`). One function builds it, from the typed spec, so a SplitInference means the
same agents in a cluster and on this machine; only where the slices are, the ports, the next tier's address and
the launcher differ.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from splitdnn.spec import Tier, Workload

# The flags a SplitInference decides (the same in `splitdnn render` and `splitdnn run --dry-run`).
WORKLOAD_FLAGS = ("--fps", "--frames", "--deadline", "--max-inflight")
TIER_FLAGS = (
    "--overhead-ratio",
    "--max-message-bytes",
    "--max-request-bytes",
    "--runtime",
    "--threads",
    "--devices",
    "--coop",
)
LINK_FLAGS = ("--delay", "--jitter", "--loss", "--rate")
LINK_KEYS = tuple(f[2:] for f in LINK_FLAGS)  # the netem fields the agent emulates in-process (not `limit`)


def local_program() -> list[str]:
    """`splitdnn` as this interpreter runs it (installed or not)."""
    return [sys.executable, "-m", "splitdnn"]


def number(value: Any) -> str:
    """Numbers as the CLI expects them: 10.0 → '10', 0.5 → '0.5'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def agent_argv(
    *,
    slices: str,
    slice_name: str,
    port: int,
    metrics_port: int,
    tier: str,
    si: str,
    rest_port: int | None = None,
    next_addr: str | None = None,
    tier_spec: Tier | None = None,
    workload: Workload | None = None,
    source: bool = False,
    frames: int | None = None,
    summary: str | None = None,
    program: Sequence[str] | None = None,
    link: bool = True,
    netem_report: str | None = None,
    drain: tuple[float, float] | None = None,
    extra: Sequence[str] = (),
    coop: str = "mls",
) -> list[str]:
    """One tier's `splitdnn agent` argv.

    `tier_spec`: the tier's overhead, message size and link (its defaults when None). `workload`: every tier gets
    `--max-inflight` (a frame holds a gRPC thread on each tier until its result is back, see the agent's
    worker_count); the tier with `source` also gets the frame source's flags, `frames` overriding
    `workload.frames`. Without `workload` the agent's own defaults apply (the data-plane tests pass flags in
    `extra`). `link`: emulate the tier's netem in-process (the agent subtracts what `netem_report` says tc did).
    `rest_port`: serve TF Serving's REST API there (pods: 8501; local runs need none).
    `drain`: (quiet, timeout) seconds of draining on SIGTERM (pods roll; local runs stop at once).
    """
    spec = tier_spec or Tier(name=tier)
    argv = [
        *(local_program() if program is None else program),
        "agent",
        "--slices",
        slices,
        "--slice",
        slice_name,
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        *(["--rest-port", str(rest_port)] if rest_port else []),
        "--si",
        si,
        "--tier",
        tier,
        "--overhead-ratio",
        number(spec.overhead_ratio),
        "--max-message-bytes",
        str(spec.max_message_bytes),
        "--max-request-bytes",
        str(spec.max_request_bytes),
        "--runtime",
        spec.runtime or "auto",
        *(["--threads", str(spec.threads)] if spec.threads is not None else []),
        *(["--devices", str(spec.devices), "--coop", coop] if spec.devices > 1 else []),
    ]
    if netem_report:
        argv += ["--netem-report", netem_report]
    if workload is not None:
        argv += ["--max-inflight", str(workload.max_in_flight)]
    if drain is not None:
        argv += ["--drain-quiet", f"{drain[0]:g}s", "--drain-timeout", f"{drain[1]:g}s"]
    if next_addr:
        argv += ["--next", next_addr]
    if source and workload is not None:
        argv += [
            "--source",
            workload.source,
            "--fps",
            number(workload.fps),
            "--frames",
            str(workload.frames if frames is None else frames),
            "--deadline",
            workload.deadline,
            "--warmup",
            str(workload.warmup_frames),
        ]
        if workload.seed:  # (0 is the agent's default too)
            argv += ["--seed", str(workload.seed)]
        if summary:
            argv += ["--summary", summary]
    if link:
        for key in LINK_KEYS:
            value = getattr(spec.netem, key)
            if value is not None:
                argv += [f"--{key}", str(value)]
    return argv + list(extra)


def flag_values(argv: Sequence[str], flags: Sequence[str]) -> dict[str, str]:
    """{flag: value} of the given flags in an argv (for comparing two command lines)."""
    return {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a in flags}
