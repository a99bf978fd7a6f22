"""Entry point behind `splitdnn operator`: read the settings once, register the handlers, run Kopf."""

from __future__ import annotations

import asyncio
import sys


def run(
    namespaces: list[str] | None = None,
    all_namespaces: bool = False,
    liveness: str | None = None,
    verbose: bool = False,
    metrics_port: int = 0,
) -> None:
    import kopf

    from splitdnn.controller import handlers, render
    from splitdnn.controller.settings import Settings

    try:
        settings = Settings.from_env()
        render.max_model_bytes()  # checked once here: a bad chart value must not fail every reconcile
    except ValueError as exc:  # a bad environment variable: one line, exit 2 (like the CLI's other input errors)
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    registry = kopf.OperatorRegistry()
    handlers.register(registry, settings)
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL)  # sets up logging once (no duplicate lines)
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    clusterwide = all_namespaces or not namespaces
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=clusterwide,
            namespaces=[] if clusterwide or not namespaces else list(namespaces),
            standalone=True,  # one replica (Deployment strategy Recreate): no peering objects needed
            liveness_endpoint=liveness,
        )
    )
