"""pytest fixtures for the real control plane (tests/harness/controlplane.py).

`controlplane` (session scope) brings it up once per session and yields a dict with `kubeconfig`, `nodes`, `name`.
It is torn down at the end unless SPLITDNN_KEEP_CONTROLPLANE=1 (then the next session reuses it in seconds).
Set SPLITDNN_KUBECONFIG to point the tests at an already running cluster instead (e.g. one started by hand).
Without the Go-built binaries (scripts/build-k8s.sh) the tests are skipped locally and fail under CI=true.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from harness import controlplane as cp


def _binaries_present() -> bool:
    return all(os.access(cp.BIN / n, os.X_OK) for n in cp.REQUIRED)


@pytest.fixture(scope="session")
def controlplane():
    preset = os.environ.get("SPLITDNN_KUBECONFIG")
    if preset:
        yield {"kubeconfig": preset, "nodes": {t: cp.node_name(t) for t in cp.TIERS}, "name": "external"}
        return
    if not _binaries_present():
        msg = f"control plane binaries missing in {cp.BIN}: run scripts/build-k8s.sh"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    keep = os.environ.get("SPLITDNN_KEEP_CONTROLPLANE") == "1"
    # A kept cluster has a fixed kubeconfig (the next session reuses it); otherwise one per session, so two
    # concurrent test sessions on the machine never share (or tear down) each other's control plane.
    kubeconfig = str(cp.CACHE / "controlplane" / ("kept" if keep else f"session-{os.getpid()}") / "kubeconfig")
    info = cp.up(kubeconfig, build=False)
    info["kubeconfig"] = kubeconfig
    try:
        yield info
    finally:
        if not keep:
            cp.down(kubeconfig)
            import shutil

            shutil.rmtree(Path(kubeconfig).parent, ignore_errors=True)


@pytest.fixture(scope="session")
def kube_api(controlplane):
    """A kubernetes.client.ApiClient bound to the control plane."""
    from kubernetes import config

    return config.new_client_from_config(config_file=controlplane["kubeconfig"])


@pytest.fixture
def namespace(kube_api):
    """A fresh namespace per test, deleted afterwards (without waiting for its finalization)."""
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # The ServiceAccount admission plugin refuses pods until the namespace's default SA exists.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items):
            break
        time.sleep(0.2)
    yield name
    core.delete_namespace(name)


def wait_for(predicate, timeout: float = 60, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def kubectl(kubeconfig: str, *args: str, input: str | None = None, check: bool = True):
    """Our Go-built kubectl against the control plane; returns the CompletedProcess."""
    return cp.kubectl(kubeconfig, *args, input=input, check=check)


# the start of a script for a process that cannot import TensorFlow or Keras (as in the operator's image and
# a tier's fetch: neither has them)
BLOCK_TENSORFLOW = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'):
            raise ImportError('no TensorFlow here (blocked ' + name + ')')
sys.meta_path.insert(0, Block())
"""
# `splitdnn ARGS` in such a process
WITHOUT_TENSORFLOW = (
    BLOCK_TENSORFLOW
    + """
from splitdnn.cli import main
sys.argv = ['splitdnn'] + sys.argv[1:]
main()
"""
)


class OperatorProcess:
    """`splitdnn operator` as a subprocess (the way a user runs it; TensorFlow blocked, as in its image), logs in a
    file."""

    def __init__(
        self,
        kubeconfig: str,
        namespace: str | None,
        log_path: Path,
        resync: float = 2.0,
        extra_env=None,
        runner_kubeconfig: str | None = None,
    ):
        """`runner_kubeconfig`: an admin kubeconfig for the model-Job runner when `kubeconfig` is a restricted one."""
        self.kubeconfig, self.namespace, self.log_path = kubeconfig, namespace, Path(log_path)
        self.resync, self.extra_env, self.proc = resync, dict(extra_env or {}), None
        self.runner_kubeconfig = runner_kubeconfig

    def start(self):
        import subprocess
        import sys

        from harness.model_jobs import runner

        env = dict(
            os.environ,
            KUBECONFIG=self.kubeconfig,
            SPLITDNN_RESYNC_SECONDS=str(self.resync),
            SPLITDNN_AGENT_IMAGE="splitdnn/agent:test",
            # a real artifact store, and the model Jobs run by the harness (kwok nodes run no containers)
            **runner(self.runner_kubeconfig or self.kubeconfig).env(),
            **self.extra_env,
        )
        env.pop("SPLITDNN_KUBECONFIG", None)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                WITHOUT_TENSORFLOW,  # as in the operator's image, which has none
                "operator",
                "--liveness",
                "",
                *(["--namespace", self.namespace] if self.namespace else ["--all-namespaces"]),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(Path(__file__).resolve().parents[2]),
        )
        return self

    def kill(self):
        """SIGKILL: no cleanup at all, as when a node dies."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except Exception:  # noqa: BLE001
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
