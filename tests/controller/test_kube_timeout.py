"""The operator's Kubernetes client never waits forever: an API server that accepts a connection and then says
nothing (what a silently dead connection looks like) ends the call with a timeout instead of holding a kopf worker
thread, and the object's timer with it, for good."""

from __future__ import annotations

import socket
import threading

import pytest


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


def _client(host: str):
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = host
    cfg.retries = 0  # one attempt, so the test waits one timeout
    return client.ApiClient(cfg)


def _call(fn, wait: float = 20) -> tuple[bool, BaseException | None]:
    """(finished within `wait` s, the exception it raised)."""
    out = {}

    def run():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            out["exc"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(wait)
    return not t.is_alive(), out.get("exc")


def test_calls_time_out_on_a_silent_server(silent_server):
    import urllib3
    from kubernetes import client

    from splitdnn.controller.kube import Kube, with_default_timeout

    api = with_default_timeout(_client(silent_server), (1.0, 1.0))
    k = Kube(api)
    for what, fn in (
        ("typed", lambda: client.CoreV1Api(api).list_namespace()),
        ("has_pods", lambda: k.has_pods("default", "a=b")),
    ):
        done, exc = _call(fn)
        assert done, f"{what}: still waiting after 20 s"
        assert isinstance(exc, urllib3.exceptions.HTTPError), (what, exc)


def test_without_the_default_the_call_would_hang(silent_server):
    """The control: the same call on a plain client is still waiting when the test gives up (so the test above
    measures the default, not some other timeout)."""
    from kubernetes import client

    api = _client(silent_server)
    done, exc = _call(lambda: client.CoreV1Api(api).list_namespace(), wait=3)
    assert not done, exc


def test_a_call_s_own_timeout_wins(silent_server):
    import urllib3
    from kubernetes import client

    from splitdnn.controller.kube import with_default_timeout

    api = with_default_timeout(_client(silent_server), (600.0, 600.0))
    done, exc = _call(lambda: client.CoreV1Api(api).list_namespace(_request_timeout=1))
    assert done and isinstance(exc, urllib3.exceptions.HTTPError), exc
