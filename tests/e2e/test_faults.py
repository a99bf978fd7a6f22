"""Faults on real pods (kind, issue #18 item 3): what happens when processes die and tenants share a cluster.

1. SIGKILL of the middle tier's agent (the process, from the node, as an OOM kill or a crash would end it) while
   frames flow: the kubelet restarts the container, the chain serves again within 30 s, and the source's summary
   accounts for every frame it offered (offered = completed + dropped + late + failed).
2. Two SplitInferences with the same name in two namespaces, running at once: each has its own pods, Services,
   frames and status; re-splitting one — with the operator pod deleted in the middle of that re-split — finishes
   after the operator's restart and leaves the other untouched (same pods, frames still flowing, nothing failed);
   deleting one leaves the other Running.

The tiers run on LiteRT (`tiers[].runtime: litert`): the model Job writes checked `.tflite` slices once, each pod
fetches its own, and an agent starts in about a second, so the recovery time measures Kubernetes and the chain, not
TensorFlow's import.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml
from kindutil import (
    OPERATOR_NAMESPACE,
    ROOT,
    TIER_LABEL,
    install_splitdnn,
    kubectl_json,
    metric_sum,
    metrics_of,
    node_tiers,
    print_cluster_state,
    sh,
    source_summary,
    tiers_available,
    timed,
    uninstall_splitdnn,
    wait_for,
)

pytestmark = [pytest.mark.kind_e2e, pytest.mark.slow]

TIERS = ("device", "edge", "cloud")
OUTCOMES = ("completed", "dropped", "late", "failed")
OTHER_NS = "twin-b"


@pytest.fixture(scope="module")
def splitdnn(kind_cluster):
    install_splitdnn(kind_cluster)
    yield kind_cluster
    uninstall_splitdnn(kind_cluster)


def resource(name: str, namespace: str, frames: int, points=("conv2d", "flatten")) -> str:
    si = yaml.safe_load((ROOT / "examples" / "cnn14.yaml").read_text())
    si["metadata"] = {"name": name, "namespace": namespace}
    si["spec"]["splitPoints"] = list(points)
    si["spec"]["workload"].update({"fps": 5, "frames": frames, "deadline": "5s"})
    for tier in si["spec"]["tiers"]:
        tier["runtime"] = "litert"
        tier["netem"] = {"delay": "5ms"}
        tier["overheadRatio"] = 0
    return yaml.safe_dump(si)


def pods(cluster, name: str, namespace: str, tier: str) -> list[dict]:
    """The tier's pods that are not terminating."""
    items = kubectl_json(
        cluster, "get", "pods", "-n", namespace, "-l", f"splitdnn.io/splitinference={name},{TIER_LABEL}={tier}"
    )["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def available(cluster, name: str, namespace: str) -> None:
    tiers_available(cluster, name, namespace, TIERS, timeout="600s")


def counts(cluster, pod: str, namespace: str) -> dict[str, float]:
    text = metrics_of(cluster, pod, namespace=namespace)
    return {o: metric_sum(text, "splitdnn_frames_total", outcome=o) for o in OUTCOMES}


def restarts(pod: dict) -> int:
    return sum(c.get("restartCount", 0) for c in pod["status"].get("containerStatuses", []))


def agent_pid(node: str, si: str, tier: str) -> str:
    """The host PID of a tier's agent process on its kind node (the node sees its pods' processes)."""
    pids = sh("docker", "exec", node, "pgrep", "-f", f"si {si} --tier {tier} ").stdout.split()
    assert len(pids) == 1, pids
    return pids[0]


def test_sigkill_of_the_middle_tier_under_load(splitdnn):
    cluster, ns, name, total = splitdnn, "default", "faults", 400
    cluster.kubectl("apply", "-f", "-", input=resource(name, ns, total))
    try:
        with timed("faults: tiers Available (LiteRT)"):
            available(cluster, name, ns)
        (device,) = pods(cluster, name, ns, "device")
        (edge,) = pods(cluster, name, ns, "edge")
        dev = device["metadata"]["name"]
        wait_for("frames completed", lambda: counts(cluster, dev, ns)["completed"] >= 10, timeout=300)
        node = edge["spec"]["nodeName"]
        pid = agent_pid(node, name, "edge")
        before = counts(cluster, dev, ns)
        killed = time.monotonic()
        sh("docker", "exec", node, "kill", "-9", pid)
        # recovered: frames complete again, through the restarted edge container
        wait_for(
            "the edge container restarted",
            lambda: restarts(pods(cluster, name, ns, "edge")[0]) >= 1,
            timeout=120,
            interval=0.5,
        )
        wait_for(
            "frames completing again",
            lambda: counts(cluster, dev, ns)["completed"] > before["completed"],
            timeout=120,
            interval=0.5,
        )
        recovery = time.monotonic() - killed
        after = counts(cluster, dev, ns)
        print(
            f"SIGKILL of the edge agent (pid {pid} on {node}): frames complete again after {recovery:.1f} s; "
            f"device counts before {before}, just after {after}"
        )
        summary = wait_for(
            "the source's summary",
            lambda: source_summary(cluster.kubectl("logs", dev, "-n", ns, "-c", "agent")),
            timeout=300,
        )
        print(f"source summary: {summary}")
        assert summary["offered"] == total, summary
        assert summary["offered"] == sum(summary[o] for o in OUTCOMES), summary
        assert summary["completed"] > before["completed"], summary
        assert recovery <= 30, f"the chain served again only {recovery:.1f} s after the kill"
        assert restarts(pods(cluster, name, ns, "device")[0]) == 0
        assert restarts(pods(cluster, name, ns, "cloud")[0]) == 0
    except BaseException:
        print_cluster_state(cluster)
        raise
    finally:
        cluster.kubectl("delete", "si", name, "-n", ns, "--ignore-not-found", "--wait=false")


def test_same_name_in_two_namespaces_and_an_operator_restart_mid_resplit(splitdnn):
    cluster, name = splitdnn, "twin"
    cluster.kubectl("create", "namespace", OTHER_NS)
    try:
        for ns in ("default", OTHER_NS):
            cluster.kubectl("apply", "-f", "-", input=resource(name, ns, 0))
        with timed("twins: both Available"):
            for ns in ("default", OTHER_NS):
                available(cluster, name, ns)
        a = {t: pods(cluster, name, "default", t)[0] for t in TIERS}
        b_device = pods(cluster, name, OTHER_NS, "device")[0]["metadata"]["name"]
        a_device = a["device"]["metadata"]["name"]
        for ns, dev in (("default", a_device), (OTHER_NS, b_device)):
            wait_for(f"frames in {ns}", lambda ns=ns, dev=dev: counts(cluster, dev, ns)["completed"] >= 5, timeout=300)
        # each namespace's Services point at its own pods: the twins' chains never cross
        for ns in ("default", OTHER_NS):
            eps = kubectl_json(cluster, "get", "endpoints", f"{name}-edge", "-n", ns)
            ips = {a["ip"] for s in eps.get("subsets", []) for a in s.get("addresses", [])}
            assert ips == {pods(cluster, name, ns, "edge")[0]["status"]["podIP"]}, (ns, ips)
        split_a = kubectl_json(cluster, "get", "si", name, "-n", "default")["status"]["split"]

        # re-split the second twin, and kill the operator while its tiers roll
        operator = kubectl_json(
            cluster, "get", "pods", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/component=operator"
        )["items"]
        (op_pod,) = [p["metadata"]["name"] for p in operator if not p["metadata"].get("deletionTimestamp")]
        before_a = counts(cluster, a_device, "default")

        def template_splits() -> set[str]:
            deps = kubectl_json(
                cluster, "get", "deployments", "-n", OTHER_NS, "-l", f"splitdnn.io/splitinference={name}"
            )
            return {d["spec"]["template"]["metadata"]["labels"]["splitdnn.io/split"] for d in deps["items"]}

        (old_b,) = template_splits()
        cluster.kubectl(
            "patch",
            "si",
            name,
            "-n",
            OTHER_NS,
            "--type",
            "merge",
            "-p",
            json.dumps({"spec": {"splitPoints": ["max_pooling2d", "dense"]}}),
        )
        wait_for(
            "the operator rolling the second twin to its new split",
            lambda: template_splits() - {old_b},
            timeout=120,
            interval=0.2,
        )
        cluster.kubectl("delete", "pod", op_pod, "-n", OPERATOR_NAMESPACE, "--grace-period=0", "--force")
        with timed("twins: re-split finished after the operator restart"):

            def finished():
                st = kubectl_json(cluster, "get", "si", name, "-n", OTHER_NS).get("status") or {}
                return st.get("splitPoints") == ["max_pooling2d", "dense"] and st.get("phase") == "Running" and st

            st = wait_for("the second twin Running on max_pooling2d,dense", finished, timeout=600)
            available(cluster, name, OTHER_NS)
        new_ops = [
            p
            for p in kubectl_json(
                cluster, "get", "pods", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/component=operator"
            )["items"]
            if not p["metadata"].get("deletionTimestamp")
        ]
        assert [p["metadata"]["name"] for p in new_ops] != [op_pod], "the operator pod was not replaced"
        (b_dev_new,) = [p["metadata"]["name"] for p in pods(cluster, name, OTHER_NS, "device")]
        wait_for(
            "frames on the second twin's new split",
            lambda: counts(cluster, b_dev_new, OTHER_NS)["completed"] >= 3,
            timeout=300,
        )
        text = metrics_of(cluster, pods(cluster, name, OTHER_NS, "edge")[0]["metadata"]["name"], namespace=OTHER_NS)
        assert metric_sum(text, "splitdnn_slice_info", cut="dense") == 1

        # the first twin: same split, same pods, never restarted, frames still flowing, none failed
        st_a = kubectl_json(cluster, "get", "si", name, "-n", "default")["status"]
        assert st_a["split"] == split_a and st_a["phase"] == "Running", st_a
        for t in TIERS:
            (now,) = pods(cluster, name, "default", t)
            assert now["metadata"]["uid"] == a[t]["metadata"]["uid"] and restarts(now) == 0, t
        after_a = counts(cluster, a_device, "default")
        print(
            f"twin in default during the other's re-split and the operator restart: {before_a} -> {after_a}; "
            f"other twin now {st['split']}"
        )
        assert after_a["completed"] > before_a["completed"] and after_a["failed"] == before_a["failed"], after_a

        # deleting one twin leaves the other running
        cluster.kubectl("delete", "si", name, "-n", OTHER_NS, "--timeout=180s")
        wait_for(
            "the second twin's children gone",
            lambda: (
                not cluster.kubectl(
                    "get",
                    "deployments,pods,services",
                    "-n",
                    OTHER_NS,
                    "-l",
                    f"splitdnn.io/splitinference={name}",
                    "-o",
                    "name",
                ).split()
            ),
            timeout=300,
        )
        mid = counts(cluster, a_device, "default")["completed"]
        wait_for(
            "the first twin still completing frames",
            lambda: counts(cluster, a_device, "default")["completed"] > mid,
            timeout=60,
        )
        assert kubectl_json(cluster, "get", "si", name, "-n", "default")["status"]["phase"] == "Running"
        assert set(node_tiers(cluster).values()) >= set(TIERS)
    except BaseException:
        print_cluster_state(cluster, ("default", OTHER_NS))
        raise
    finally:
        cluster.kubectl("delete", "si", name, "-n", "default", "--ignore-not-found", "--wait=false")
        cluster.kubectl("delete", "namespace", OTHER_NS, "--ignore-not-found", "--wait=false")
