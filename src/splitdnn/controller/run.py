"""Entry point behind `splitdnn operator`."""

from __future__ import annotations

import asyncio


def run(
    namespaces: list[str] | None = None,
    all_namespaces: bool = False,
    liveness: str | None = None,
    verbose: bool = False,
    metrics_port: int = 0,
) -> None:
    import kopf

    from splitdnn.controller import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL)  # sets up logging once (no duplicate lines)
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    clusterwide = all_namespaces or not namespaces
    asyncio.run(
        kopf.operator(
            clusterwide=clusterwide,
            namespaces=[] if clusterwide else list(namespaces),
            standalone=True,  # one replica (Deployment strategy Recreate): no peering objects needed
            liveness_endpoint=liveness,
        )
    )
