"""The harness is a real control plane: the scheduler binds a Deployment's pod to the kwok node of the tier its
nodeSelector asks for, and kwok drives the pod to Running so the Deployment gets a ready replica."""

import pytest

from harness.fixtures import wait_for

pytestmark = pytest.mark.controlplane


def test_api_is_real(kube_api):
    from kubernetes import client

    from harness import controlplane as cp

    versions = dict(line.split("=", 1) for line in (cp.BIN / "versions.env").read_text().split())
    v = client.VersionApi(kube_api).get_code()
    assert v.git_version == versions["K8S_VERSION"], v.git_version  # the binary we built, not some other API
    nodes = client.CoreV1Api(kube_api).list_node(label_selector="splitdnn.io/tier").items
    assert sorted(n.metadata.labels["splitdnn.io/tier"] for n in nodes) == ["cloud", "device", "edge"]
    # RBAC is enforced: an unprivileged ServiceAccount may not list nodes.
    review = client.AuthorizationV1Api(kube_api).create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user="system:serviceaccount:default:default",
                resource_attributes=client.V1ResourceAttributes(verb="list", resource="nodes"),
            )
        )
    )
    assert review.status.allowed is False


def test_deployment_scheduled_on_edge_and_running(kube_api, namespace, controlplane):
    from kubernetes import client

    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    labels = {"app": "smoke"}
    dep = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="smoke"),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    node_selector={"splitdnn.io/tier": "edge"},
                    init_containers=[client.V1Container(name="init", image="busybox:1.36", command=["true"])],
                    containers=[client.V1Container(name="main", image="busybox:1.36", command=["sleep", "infinity"])],
                ),
            ),
        ),
    )
    apps.create_namespaced_deployment(namespace, dep)

    def running_pod():
        pods = core.list_namespaced_pod(namespace, label_selector="app=smoke").items
        return next((p for p in pods if p.status.phase == "Running"), None)

    pod = wait_for(running_pod, timeout=90, what="smoke pod Running")
    assert pod.spec.node_name == controlplane["nodes"]["edge"]
    wait_for(
        lambda: (apps.read_namespaced_deployment("smoke", namespace).status.ready_replicas or 0) == 1,
        timeout=60,
        what="1 ready replica",
    )
