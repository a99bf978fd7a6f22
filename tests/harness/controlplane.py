#!/usr/bin/env python3
"""A real Kubernetes control plane for tests, built from the Go module proxy (scripts/build-k8s.sh).

    python tests/harness/controlplane.py up   --kubeconfig FILE [--name NAME] [--timeout S]
    python tests/harness/controlplane.py down --kubeconfig FILE
    python tests/harness/controlplane.py status --kubeconfig FILE

`up` starts etcd + kube-apiserver (RBAC + admission on, TLS) + kube-controller-manager + kube-scheduler + the kwok
controller as local processes (kwokctl's `binary` runtime, every binary from the local cache: nothing is downloaded),
registers three kwok fake nodes labelled `splitdnn.io/tier=device|edge|cloud`, and returns once the API is healthy,
the nodes are Ready and the `default` ServiceAccount exists. kwok's default stages make pods bound to those nodes
reach Running/Ready, so Deployments get ready replicas. No container runtime is involved: containers never run.

Stdlib only, so it runs under any Python 3.8+. Importable too: `up(kubeconfig)`, `down(kubeconfig)`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SPLITDNN_CACHE", str(Path.home() / ".cache" / "splitdnn")))
BIN = CACHE / "bin"
KWOK_WORKDIR = CACHE / "kwok"
TIERS = ("device", "edge", "cloud")
TIER_LABEL = "splitdnn.io/tier"
DEFAULT_NAME = None  # derived from the kubeconfig path, so clusters of different kubeconfigs never collide
REQUIRED = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "etcd", "kwok", "kwokctl")


class ControlPlaneError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"controlplane: {msg}", file=sys.stderr, flush=True)


def bin_path(name: str) -> str:
    return str(BIN / name)


def ensure_binaries(build: bool = True) -> None:
    missing = [n for n in REQUIRED if not os.access(BIN / n, os.X_OK)]
    if not missing:
        return
    if not build:
        raise ControlPlaneError(f"missing binaries {missing} in {BIN}: run scripts/build-k8s.sh")
    log(f"missing {missing}: running scripts/build-k8s.sh (a cold build takes a while)")
    subprocess.run(["bash", str(REPO / "scripts" / "build-k8s.sh")], check=True)
    missing = [n for n in REQUIRED if not os.access(BIN / n, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"build-k8s.sh did not produce {missing}")


def env() -> dict:
    e = dict(os.environ)
    # Our kubectl first: kwokctl looks kubectl up on PATH.
    e["PATH"] = f"{BIN}:{e.get('PATH', '')}"
    e["KWOK_WORKDIR"] = str(KWOK_WORKDIR)
    e["KWOK_KUBECTL_BINARY"] = bin_path("kubectl")
    return e


def state_file(kubeconfig: str) -> Path:
    return Path(kubeconfig + ".controlplane.json")


def kubectl(
    kubeconfig: str, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess:
    cmd = [bin_path("kubectl"), "--kubeconfig", kubeconfig, *args]
    p = subprocess.run(cmd, input=input, capture_output=True, text=True, env=env(), timeout=timeout)
    if check and p.returncode != 0:
        raise ControlPlaneError(f"{' '.join(cmd[3:])}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def node_manifest(tier: str, name: str) -> dict:
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "type": "kwok",
                TIER_LABEL: tier,
            },
        },
        "spec": {},
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
                "containerRuntimeVersion": "kwok",
                "osImage": "kwok",
                "kernelVersion": "kwok",
                "bootID": "",
                "machineID": "",
                "systemUUID": "",
            },
            "phase": "Running",
        },
    }


def cluster_name(kubeconfig: str, name: str | None = None) -> str:
    if name:
        return name
    import hashlib

    return "splitdnn-" + hashlib.sha1(str(Path(kubeconfig).resolve()).encode()).hexdigest()[:8]


def node_name(tier: str) -> str:
    return f"kwok-{tier}"


def _wait(what: str, deadline: float, probe, interval: float = 0.5):
    last = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - report the last failure on timeout
            last = e
        time.sleep(interval)
    raise ControlPlaneError(f"timed out waiting for {what}" + (f": {last}" if last else ""))


def is_up(kubeconfig: str) -> bool:
    if not Path(kubeconfig).exists():
        return False
    try:
        p = kubectl(kubeconfig, "get", "--raw", "/readyz", check=False, timeout=10)
    except (subprocess.TimeoutExpired, FileNotFoundError):
        return False
    return p.returncode == 0 and p.stdout.strip() == "ok"


def up(kubeconfig: str, name: str | None = DEFAULT_NAME, timeout: float = 180, build: bool = True) -> dict:
    """Start the control plane (or reuse a healthy one on that kubeconfig) and return its description."""
    t0 = time.monotonic()
    kubeconfig = str(Path(kubeconfig).resolve())
    name = cluster_name(kubeconfig, name)
    ensure_binaries(build=build)
    st = state_file(kubeconfig)
    if st.exists() and is_up(kubeconfig):
        log(f"reusing running control plane {json.loads(st.read_text())['name']}")
    else:
        if st.exists():  # a stale one: clean it up first
            down(kubeconfig)
        Path(kubeconfig).parent.mkdir(parents=True, exist_ok=True)
        # kwokctl keeps a cluster's config and PKI in its workdir: remove leftovers of a crashed run.
        subprocess.run(
            [bin_path("kwokctl"), "delete", "cluster", "--name", name, "--kubeconfig", kubeconfig],
            env=env(),
            capture_output=True,
            text=True,
        )
        cmd = [
            bin_path("kwokctl"),
            "create",
            "cluster",
            "--name",
            name,
            "--runtime",
            "binary",
            "--kubeconfig",
            kubeconfig,
            "--secure-port=true",
            "--kube-authorization=true",
            "--kube-admission=true",
            "--kube-apiserver-binary",
            bin_path("kube-apiserver"),
            "--kube-controller-manager-binary",
            bin_path("kube-controller-manager"),
            "--kube-scheduler-binary",
            bin_path("kube-scheduler"),
            "--kwok-controller-binary",
            bin_path("kwok"),
            "--etcd-binary",
            bin_path("etcd"),
            "--quiet-pull",
            "--wait",
            f"{int(timeout)}s",
        ]
        log("starting: " + " ".join(cmd[1:4]) + " ...")
        p = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout + 60)
        if p.returncode != 0:
            raise ControlPlaneError(f"kwokctl create cluster failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        st.write_text(
            json.dumps(
                {
                    "name": name,
                    "workdir": str(KWOK_WORKDIR / "clusters" / name),
                    "kubeconfig": kubeconfig,
                    "bin": str(BIN),
                },
                indent=2,
            )
        )
    deadline = time.monotonic() + timeout
    _wait("kube-apiserver /readyz", deadline, lambda: is_up(kubeconfig))
    nodes = {"apiVersion": "v1", "kind": "List", "items": [node_manifest(t, node_name(t)) for t in TIERS]}
    kubectl(kubeconfig, "apply", "-f", "-", input=json.dumps(nodes))

    def nodes_ready():
        out = kubectl(kubeconfig, "get", "nodes", "-l", TIER_LABEL, "-o", "json").stdout
        items = json.loads(out)["items"]
        ready = {
            n["metadata"]["labels"][TIER_LABEL]
            for n in items
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
        }
        return ready == set(TIERS)

    _wait("three kwok nodes Ready", deadline, nodes_ready)
    _wait(
        "ServiceAccount default/default",
        deadline,
        lambda: kubectl(kubeconfig, "get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
    )
    info = json.loads(state_file(kubeconfig).read_text())
    info["nodes"] = {t: node_name(t) for t in TIERS}
    info["ready_seconds"] = round(time.monotonic() - t0, 1)
    log(f"ready in {info['ready_seconds']}s (kubeconfig {kubeconfig})")
    return info


def down(kubeconfig: str) -> None:
    kubeconfig = str(Path(kubeconfig).resolve())
    st = state_file(kubeconfig)
    name = cluster_name(kubeconfig)
    if st.exists():
        name = json.loads(st.read_text()).get("name", name)
    if os.access(BIN / "kwokctl", os.X_OK):
        p = subprocess.run(
            [bin_path("kwokctl"), "delete", "cluster", "--name", name, "--kubeconfig", kubeconfig],
            env=env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if p.returncode != 0:
            log(f"kwokctl delete cluster: {p.stderr.strip()}")
    workdir = KWOK_WORKDIR / "clusters" / name
    if workdir.exists():
        shutil.rmtree(workdir, ignore_errors=True)
    st.unlink(missing_ok=True)
    log(f"stopped {name}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up", "down", "status"])
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--name", default=DEFAULT_NAME)
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--no-build", action="store_true", help="fail instead of running scripts/build-k8s.sh")
    a = ap.parse_args(argv)
    try:
        if a.command == "up":
            print(json.dumps(up(a.kubeconfig, a.name, a.timeout, build=not a.no_build), indent=2))
        elif a.command == "down":
            down(a.kubeconfig)
        else:
            ok = is_up(a.kubeconfig)
            print("up" if ok else "down")
            return 0 if ok else 1
    except ControlPlaneError as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
