"""Model Jobs on the control plane of tests/harness: kwok's nodes run no containers, so this runs them.

The operators the tests start get a real artifact store (`splitdnn artifacts serve` on loopback) and put their model
Jobs on a node selector no kwok node has; the Jobs' pods stay Pending and this runner executes each Job's container
command here instead (the same `splitdnn artifacts build …`, real TensorFlow, against the same store). The operator
learns the outcome where it always does: from the store. One runner per test session, Jobs one at a time.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import controlplane as cp

NODE_SELECTOR = {"splitdnn.io/test-model-jobs": "harness"}  # no kwok node has it
_started: dict[str, ModelJobRunner] = {}
_lock = threading.Lock()


class ModelJobRunner:
    def __init__(self, kubeconfig: str):
        self.kubeconfig = kubeconfig
        self.root = Path(tempfile.mkdtemp(prefix="splitdnn-artifacts-"))
        self.log = open(self.root / "runner.log", "a")
        self.port = _free_port()
        self.store = subprocess.Popen(
            [sys.executable, "-m", "splitdnn", "artifacts", "serve", "--root", str(self.root / "store")]
            + ["--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        atexit.register(self.store.terminate)  # (it outlived pytest before: found after a session's runs)
        self.url = f"http://127.0.0.1:{self.port}"
        self.done: set[str] = set()
        self.ran: list[dict] = []  # {name, namespace, command, returncode, seconds}
        threading.Thread(target=self._loop, daemon=True, name="model-jobs").start()

    def env(self) -> dict[str, str]:
        """What an operator needs to use this store and this runner."""
        return {"SPLITDNN_ARTIFACTS_URL": self.url, "SPLITDNN_MODEL_JOB_NODE_SELECTOR": json.dumps(NODE_SELECTOR)}

    def _loop(self) -> None:
        while self.store.poll() is None:
            try:
                self._once()
            except Exception as exc:  # noqa: BLE001 - an API hiccup: next round
                print(f"model-job runner: {exc}", file=self.log, flush=True)
            time.sleep(0.5)

    def _once(self) -> None:
        p = cp.kubectl(
            self.kubeconfig,
            "get",
            "jobs",
            "-A",
            "-l",
            "app.kubernetes.io/component=model-job",
            "-o",
            "json",
            check=False,
        )
        if p.returncode != 0:
            return
        for job in json.loads(p.stdout)["items"]:
            uid = job["metadata"]["uid"]
            if uid in self.done:
                continue
            self.done.add(uid)
            (container,) = job["spec"]["template"]["spec"]["containers"]
            self._run(job["metadata"], container)

    def _run(self, meta: dict, container: dict) -> None:
        still = cp.kubectl(self.kubeconfig, "get", "job", meta["name"], "-n", meta["namespace"], check=False)
        if still.returncode != 0:  # its test is over (namespace or owner deleted): no TensorFlow for nobody
            return
        command = list(container["command"])
        assert command[0] == "splitdnn", command
        report = self.root / f"{meta['uid']}.report"
        command = [sys.executable, "-m", "splitdnn", *command[1:]]
        command = [str(report) if c == "/dev/termination-log" else c for c in command]
        try:
            given = self._environment(meta["namespace"], container.get("env") or [])
        except LookupError as exc:  # a missing Secret: the kubelet would not start the pod (the operator sees that
            print(f"model Job {meta['name']}: not started: {exc}", file=self.log, flush=True)  # in kind, not here)
            return
        env = dict(os.environ, **given)
        env.pop("HOME", None)
        started = time.monotonic()
        print(f"model Job {meta['namespace']}/{meta['name']}: {' '.join(command[3:])}", file=self.log, flush=True)
        done = subprocess.run(command, env=env, stdout=self.log, stderr=subprocess.STDOUT, timeout=900)
        self.ran.append(
            {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "command": command[3:],
                "returncode": done.returncode,
                "seconds": round(time.monotonic() - started, 1),
            }
        )

    def _environment(self, namespace: str, entries: list[dict]) -> dict[str, str]:
        """The container's environment as the kubelet gives it: values, and Secret keys (`secretKeyRef`, optional
        ones skipped when absent); LookupError for a Secret or a required key that is not there."""
        import base64

        env, secrets = {}, {}
        for e in entries:
            if "value" in e:
                env[e["name"]] = e["value"]
                continue
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if not ref:
                continue
            if ref["name"] not in secrets:
                p = cp.kubectl(
                    self.kubeconfig, "get", "secret", ref["name"], "-n", namespace, "-o", "json", check=False
                )
                secrets[ref["name"]] = json.loads(p.stdout).get("data") or {} if p.returncode == 0 else None
            data = secrets[ref["name"]]
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                raise LookupError(f"secret {ref['name']!r} or its key {ref['key']!r} not found")
            env[e["name"]] = base64.b64decode(data[ref["key"]]).decode()
        return env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def runner(kubeconfig: str) -> ModelJobRunner:
    """The session's runner for this control plane (started on first use)."""
    with _lock:
        if kubeconfig not in _started:
            _started[kubeconfig] = ModelJobRunner(kubeconfig)
        return _started[kubeconfig]
