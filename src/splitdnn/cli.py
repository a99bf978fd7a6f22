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

# --- planner: plan, profile ------------------------------------------------------------------------------------

# --- agent: agent, run, netem ----------------------------------------------------------------------------------

# --- operator ----------------------------------------------------------------------------------------------------

# --- experiment --------------------------------------------------------------------------------------------------


def main() -> None:
    app()


if __name__ == "__main__":
    main()
