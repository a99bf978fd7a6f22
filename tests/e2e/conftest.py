"""Fixtures for the kind end-to-end tests (marker `kind_e2e`).

Everything is built offline and cached (scripts/build-base-image.sh, scripts/build-kind-node.sh,
scripts/build-images.sh): a warm run only checks the caches. The cluster is created with pytest-kind's KindCluster,
given the locally built `kind`, `kubectl` and node image. Environment:
  SPLITDNN_KIND_KEEP=1      keep the cluster after the session (re-used by the next run,
                            like pytest-kind's --keep-cluster)
  SPLITDNN_KIND_CLUSTER     cluster name (default splitdnn-e2e)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kindutil import ROOT, TIMINGS, sh, timed  # noqa: E402

CLUSTER = os.environ.get("SPLITDNN_KIND_CLUSTER", "splitdnn-e2e")
KEEP = os.environ.get("SPLITDNN_KIND_KEEP") == "1"


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("kind e2e timing breakdown")
        for what, secs in TIMINGS:
            terminalreporter.write_line(f"  {what:<44} {secs:7.1f} s")
        terminalreporter.write_line(f"  {'total':<44} {sum(s for _, s in TIMINGS):7.1f} s")


@pytest.fixture(scope="session")
def kind_tools():
    """docker running + base image + kind node image + kind/kubectl/helm binaries (all cached)."""
    if os.geteuid() != 0:
        pytest.skip("kind e2e needs root (it installs and starts Docker)")
    with timed("docker up (scripts/docker-up.sh)"):
        sh("bash", "scripts/docker-up.sh", timeout=900)
    with timed("base image (scripts/build-base-image.sh)"):
        sh("bash", "scripts/build-base-image.sh", timeout=1800)
    with timed("kind node image + tools (build-kind-node.sh)"):
        sh("bash", "scripts/build-kind-node.sh", timeout=4800)
    with timed("host inotify limits (kind-host-limits.sh)"):
        sh("bash", "scripts/kind-host-limits.sh", timeout=60)
    bin_dir = Path(sh("bash", "scripts/build-kind-node.sh", "--print-bin-dir").stdout.strip())
    image = sh("bash", "scripts/build-kind-node.sh", "--print-image").stdout.strip()
    return SimpleNamespace(
        bin=bin_dir, kind=bin_dir / "kind", kubectl=bin_dir / "kubectl", helm=bin_dir / "helm", image=image
    )


@pytest.fixture(scope="session")
def kind_cluster(kind_tools):
    from pytest_kind import KindCluster

    cluster = KindCluster(CLUSTER, image=kind_tools.image, kind_path=kind_tools.kind, kubectl_path=kind_tools.kubectl)
    existing = sh(kind_tools.kind, "get", "clusters").stdout.split()
    if CLUSTER in existing and not KEEP:
        with timed("kind delete stale cluster"):
            cluster.delete()
    with timed("kind create cluster (1 control plane + 3 workers)"):
        cluster.create(ROOT / "tests" / "e2e" / "kind-config.yaml")
    with timed("all nodes Ready"):
        cluster.kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=300s")
    cluster.tools = kind_tools
    yield cluster
    if KEEP:
        print(f"\nkind cluster {CLUSTER} kept (kubeconfig {cluster.kubeconfig_path})")
        return
    with timed("kind delete cluster"):
        cluster.delete()
