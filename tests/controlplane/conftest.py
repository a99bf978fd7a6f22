"""Fixtures of the operator tests. Every test creates the SplitInferences it uses and removes them; a namespace
is deleted and waited for, so an operator started later with --all-namespaces (tests/controlplane/test_helm.py)
never finds another test's resources."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from harness.fixtures import kubectl, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def crd(controlplane):
    kc = controlplane["kubeconfig"]
    kubectl(kc, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / "splitinference.yaml"))
    kubectl(kc, "wait", "--for", "condition=Established", "crd/splitinferences.splitdnn.io", "--timeout", "60s")
    return kc


def create_namespace(kube_api, prefix: str) -> str:
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # the ServiceAccount admission plugin refuses pods until the namespace's default SA exists
    wait_for(
        lambda: any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items),
        timeout=30,
        what="default ServiceAccount",
    )
    return name


def delete_namespace(kube_api, name: str, timeout: float = 180) -> None:
    """Delete the namespace and wait until it is gone (its SplitInferences, children and pods with it).

    Kopf puts a finalizer on each SplitInference (its timers need one); the operator that would release them has
    usually stopped by now (module fixtures end before the namespace's), so they are released here."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core, co = client.CoreV1Api(kube_api), client.CustomObjectsApi(kube_api)
    group, version, plural = "splitdnn.io", "v1alpha1", "splitinferences"
    for si in co.list_namespaced_custom_object(group, version, name, plural)["items"]:
        n = si["metadata"]["name"]
        try:
            co.delete_namespaced_custom_object(group, version, name, plural, n)
            co.patch_namespaced_custom_object(
                group,
                version,
                name,
                plural,
                n,
                {"metadata": {"finalizers": None}},
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
    try:
        core.delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            core.read_namespace(name)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(1)
    raise AssertionError(f"namespace {name} still there {timeout:g} s after its deletion")


@pytest.fixture(scope="module")
def ns(crd, kube_api):
    """The module's namespace (its operator watches it)."""
    name = create_namespace(kube_api, "op")
    yield name
    delete_namespace(kube_api, name)


@pytest.fixture
def made(crd, ns):
    """Names of the SplitInferences a test creates in the module's namespace; deleted after the test."""
    names: list[str] = []
    yield names
    for name in names:
        kubectl(crd, "delete", "si", name, "-n", ns, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def own_ns(crd, kube_api):
    """A namespace for one test that runs an operator of its own."""
    name = create_namespace(kube_api, "own")
    yield name
    delete_namespace(kube_api, name)
