"""The Helm chart: lints, renders what the values say, installs on the real control plane, and the operator
running with the chart's ServiceAccount token (real RBAC, not admin) does its whole job."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from harness import controlplane as cp
from harness.fixtures import OperatorProcess, kubectl, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "splitdnn"
HELM = cp.BIN / "helm"
RELEASE, RELEASE_NS = "splitdnn", "splitdnn-system"


def helm(*args, kubeconfig=None, check=True):
    if not os.access(HELM, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"{HELM} missing: run scripts/build-k8s.sh")
        pytest.skip(f"{HELM} missing: run scripts/build-k8s.sh")
    cmd = [str(HELM), *args] + (["--kubeconfig", kubeconfig] if kubeconfig else [])
    p = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(
            os.environ,
            HELM_CACHE_HOME=str(cp.CACHE / "helm-home" / "cache"),
            HELM_CONFIG_HOME=str(cp.CACHE / "helm-home" / "config"),
            HELM_DATA_HOME=str(cp.CACHE / "helm-home" / "data"),
        ),
    )
    if check and p.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: {p.stdout}\n{p.stderr}")
    return p


def render(*sets, api_versions=()):
    args = ["template", RELEASE, str(CHART), "-n", RELEASE_NS]
    for s in sets:
        args += ["--set", s]
    for a in api_versions:
        args += ["--api-versions", a]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def test_chart_crd_is_the_crd():
    assert (CHART / "files" / "splitinference.yaml").read_text() == (ROOT / "crds" / "splitinference.yaml").read_text()


def test_helm_lint():
    p = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in p.stdout


def operator_deployment(docs):
    (dep,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == RELEASE]
    return dep


def test_render_defaults():
    docs = render()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("CustomResourceDefinition", "splitinferences.splitdnn.io") in kinds
    assert ("ClusterRole", "splitdnn") in kinds and ("ServiceAccount", "splitdnn") in kinds
    crd = next(d for d in docs if d["kind"] == "CustomResourceDefinition")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["spec"] == yaml.safe_load((ROOT / "crds" / "splitinference.yaml").read_text())["spec"]
    dep = operator_deployment(docs)
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SPLITDNN_ARTIFACTS_URL"] == "http://splitdnn-artifacts.splitdnn-system.svc:8080"
    # the artifact store: the operator image (no TensorFlow), an emptyDir unless a claim is named
    store = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "splitdnn-artifacts")
    (c,) = store["spec"]["template"]["spec"]["containers"]
    assert c["image"] == operator_deployment(docs)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert c["args"][:4] == ["artifacts", "serve", "--root", "/data"]
    data = next(v for v in store["spec"]["template"]["spec"]["volumes"] if v["name"] == "data")
    assert data == {"name": "data", "emptyDir": {}}
    claimed = render("artifacts.persistence.existingClaim=models", "modelJob.nodeSelector.big=yes")
    store = next(d for d in claimed if d["kind"] == "Deployment" and d["metadata"]["name"] == "splitdnn-artifacts")
    data = next(v for v in store["spec"]["template"]["spec"]["volumes"] if v["name"] == "data")
    assert data == {"name": "data", "persistentVolumeClaim": {"claimName": "models"}}
    env = {
        e["name"]: e.get("value")
        for e in operator_deployment(claimed)["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert json.loads(env["SPLITDNN_MODEL_JOB_NODE_SELECTOR"]) == {"big": "yes"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "splitdnn"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert "--all-namespaces" in c["args"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["SPLITDNN_AGENT_IMAGE"] == "splitdnn/agent:0.1.0"
    assert not any(d["kind"] == "ServiceMonitor" for d in docs)
    assert ("ClusterRole", "splitdnn-crds") in kinds
    rules = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "splitdnn")["rules"]
    verbs = {v for r in rules for v in r["verbs"]}
    assert "*" not in verbs
    # the only deletions: the device group of a tier that stopped being cooperative, an earlier split's Services, a
    # failed model Job (everything else goes with its owner)
    assert [r["resources"] for r in rules if "delete" in r["verbs"]] == [["statefulsets"], ["services"], ["jobs"]]
    # Secrets: only created (a cooperative group's key), never read, listed or changed
    assert [r["verbs"] for r in rules if "secrets" in r["resources"]] == [["create"]]
    assert not any("*" in r["resources"] for r in rules)


def test_render_values():
    docs = render(
        "watchNamespaces={a,b}",
        "rbac.create=true",
        "serviceAccount.create=false",
        "serviceAccount.name=op",
        "crds.install=false",
        "image.repository=r/op",
        "image.tag=9",
        "nodeSelector.kubernetes\\.io/arch=arm64",
        "tolerations[0].operator=Exists",
        "metrics.serviceMonitor.enabled=true",
    )
    kinds = [(d["kind"], d["metadata"].get("namespace")) for d in docs]
    assert ("Role", "a") in kinds and ("Role", "b") in kinds and ("RoleBinding", "b") in kinds
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole"]
    assert [d["metadata"]["name"] for d in cluster_roles] == ["splitdnn-crds"]  # read-only CRD discovery only
    assert cluster_roles[0]["rules"] == [
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]}
    ]
    assert not any(k in ("ServiceAccount", "CustomResourceDefinition", "ServiceMonitor") for k, _ in kinds)
    dep = operator_deployment(docs)
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "op"
    assert pod["containers"][0]["image"] == "r/op:9"
    assert pod["containers"][0]["args"][:2] == ["--namespace=a", "--namespace=b"]
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "arm64"} and pod["tolerations"] == [{"operator": "Exists"}]
    with_sm = render("metrics.serviceMonitor.enabled=true", api_versions=["monitoring.coreos.com/v1/ServiceMonitor"])
    assert any(d["kind"] == "ServiceMonitor" for d in with_sm)


def sa_kubeconfig(admin_kc: str, namespace: str, sa: str, path: Path) -> str:
    token = kubectl(admin_kc, "create", "token", sa, "-n", namespace, "--duration", "2h").stdout.strip()
    admin = yaml.safe_load(Path(admin_kc).read_text())
    ctx = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == ctx["cluster"])["cluster"]
    if "certificate-authority" in cluster and "certificate-authority-data" not in cluster:
        cluster = {
            "server": cluster["server"],
            "certificate-authority-data": base64.b64encode(
                Path(cluster["certificate-authority"]).read_bytes()
            ).decode(),
        }
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "sa",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": sa, "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "c", "user": sa, "namespace": namespace}}],
            }
        )
    )
    return str(path)


@pytest.mark.controlplane
def test_helm_install_and_operator_as_the_chart_serviceaccount(controlplane, tmp_path):
    kc = controlplane["kubeconfig"]
    # A CRD applied earlier in the session (tests/controlplane/test_operator.py) is adopted by the release.
    if kubectl(kc, "get", "crd", "splitinferences.splitdnn.io", check=False).returncode == 0:
        kubectl(kc, "label", "--overwrite", "crd", "splitinferences.splitdnn.io", "app.kubernetes.io/managed-by=Helm")
        kubectl(
            kc,
            "annotate",
            "--overwrite",
            "crd",
            "splitinferences.splitdnn.io",
            f"meta.helm.sh/release-name={RELEASE}",
            f"meta.helm.sh/release-namespace={RELEASE_NS}",
        )
    helm(
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "-n",
        RELEASE_NS,
        "--create-namespace",
        "--wait",
        "--timeout",
        "3m",
        kubeconfig=kc,
    )
    try:
        kubectl(kc, "wait", "--for", "condition=Established", "crd/splitinferences.splitdnn.io", "--timeout", "60s")
        dep = json.loads(kubectl(kc, "get", "deployment", "splitdnn", "-n", RELEASE_NS, "-o", "json").stdout)
        assert dep["status"].get("readyReplicas") == 1  # (a kwok pod: the container does not really run)
        who = f"system:serviceaccount:{RELEASE_NS}:splitdnn"
        can = lambda *a: kubectl(kc, "auth", "can-i", *a, "--as", who, check=False).stdout.strip()  # noqa: E731
        assert can("patch", "deployments", "-n", "default") == "yes"
        assert can("delete", "deployments", "-n", "default") == "no"
        assert can("get", "secrets", "-n", "default") == "no"
        assert can("create", "pods", "-n", "default") == "no"
        assert can("delete", "jobs", "-n", "default") == "yes"  # a failed model Job is replaced

        ns = f"sa-{uuid.uuid4().hex[:6]}"
        kubectl(kc, "create", "namespace", ns)
        wait_for(lambda: kubectl(kc, "get", "sa", "default", "-n", ns, check=False).returncode == 0, timeout=30)
        sa_kc = sa_kubeconfig(kc, RELEASE_NS, "splitdnn", tmp_path / "sa.kubeconfig")
        op = OperatorProcess(sa_kc, None, tmp_path / "operator.log", runner_kubeconfig=kc).start()
        try:
            kubectl(kc, "apply", "-n", ns, "-f", str(ROOT / "examples" / "cnn14.yaml"))

            def phase(name):
                p = kubectl(kc, "get", "si", name, "-n", ns, "-o", "jsonpath={.status.phase}", check=False)
                assert op.alive(), op.log()[-4000:]
                return p.stdout

            wait_for(lambda: phase("cnn14") == "Running", timeout=180, interval=1, what="Running as the SA")
            kubectl(
                kc,
                "patch",
                "si",
                "cnn14",
                "-n",
                ns,
                "--type",
                "merge",
                "-p",
                json.dumps({"spec": {"splitPoints": ["max_pooling2d", "dense"]}}),
            )
            wait_for(
                lambda: (
                    kubectl(
                        kc,
                        "get",
                        "deployment",
                        "cnn14-edge",
                        "-n",
                        ns,
                        "-o",
                        "jsonpath={.spec.template.spec.initContainers[0].command[8]}",
                    ).stdout
                    == "max_pooling2d,dense"
                ),
                timeout=60,
                what="edited split points applied",
            )
            wait_for(lambda: phase("cnn14") == "Running", timeout=120, interval=1, what="Running after the edit")
            kubectl(kc, "delete", "deployment", "cnn14-cloud", "-n", ns, "--wait=false")
            wait_for(
                lambda: (
                    kubectl(kc, "get", "deployment", "cnn14-cloud", "-n", ns, check=False).returncode == 0
                    and phase("cnn14") == "Running"
                ),
                timeout=90,
                interval=1,
                what="drift repaired as the SA",
            )
            bad = yaml.safe_load((ROOT / "examples" / "cnn14.yaml").read_text())
            bad["metadata"]["name"] = "bad"
            bad["spec"]["splitPoints"] = ["conv2d", "nope"]
            kubectl(kc, "apply", "-n", ns, "-f", "-", input=yaml.safe_dump(bad))
            wait_for(lambda: phase("bad") == "Failed", timeout=90, interval=1, what="Failed as the SA")
            events = kubectl(kc, "get", "events", "-n", ns, "-o", "json").stdout
            assert "InvalidSpec" in events and "Deployed" in events
            # (a bare "403" also matches log timestamps like 23:47:49,403: that failed CI once). Lines about an
            # object in another namespace are not this test's: the operator watches every namespace and would
            # also meet what an earlier test left (the other tests delete their namespaces and wait for it).
            forbidden = [
                line
                for line in op.log().splitlines()
                if ("Forbidden" in line or re.search(r"(?<![,.\d])403(?!\d)", line))
                and not re.search(r"\[(?!" + re.escape(ns) + r"/)[a-z0-9-]+/[a-z0-9.-]+\]", line)
            ]
            assert not forbidden, "\n".join(forbidden[:20])
            kubectl(kc, "delete", "si", "cnn14", "bad", "-n", ns, "--wait=false")
            wait_for(
                lambda: kubectl(kc, "get", "deployments", "-n", ns, "-o", "name").stdout.strip() == "",
                timeout=90,
                what="children garbage-collected",
            )
        finally:
            op.stop()
            print(op.log()[-5000:])
            kubectl(kc, "delete", "namespace", ns, "--wait=false", check=False)
        # upgrade: the CRD is a template, so it is re-applied with the release (and still kept)
        helm(
            "upgrade",
            RELEASE,
            str(CHART),
            "-n",
            RELEASE_NS,
            "--set",
            "resyncSeconds=5",
            "--wait",
            "--timeout",
            "3m",
            kubeconfig=kc,
        )
        env = json.loads(
            kubectl(
                kc,
                "get",
                "deployment",
                "splitdnn",
                "-n",
                RELEASE_NS,
                "-o",
                "jsonpath={.spec.template.spec.containers[0].env}",
            ).stdout
        )
        assert {"name": "SPLITDNN_RESYNC_SECONDS", "value": "5"} in env
        crd = json.loads(kubectl(kc, "get", "crd", "splitinferences.splitdnn.io", "-o", "json").stdout)
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    finally:
        helm("uninstall", RELEASE, "-n", RELEASE_NS, kubeconfig=kc, check=False)
    # the CRD outlives the release (helm.sh/resource-policy: keep)
    assert kubectl(kc, "get", "crd", "splitinferences.splitdnn.io", check=False).returncode == 0


def test_max_model_bytes_reaches_the_operator():
    def env(*sets):
        dep = operator_deployment(render(*sets))
        return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert "SPLITDNN_MAX_MODEL_BYTES" not in env()
    assert env("agent.maxModelBytes=2Gi")["SPLITDNN_MAX_MODEL_BYTES"] == "2Gi"


def test_prometheus_of_the_release_only_when_enabled():
    assert not any(d["metadata"]["name"].endswith("-prometheus") for d in render())
    docs = render("prometheus.enabled=true", "watchNamespaces={a}")
    objs = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    name = f"{RELEASE}-prometheus"
    kinds = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Service")
    for kind in kinds:
        assert (kind, name) in objs, kind
    # pod discovery only
    assert objs[("ClusterRole", name)]["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    (job,) = yaml.safe_load(objs[("ConfigMap", name)]["data"]["prometheus.yml"])["scrape_configs"]
    assert job["honor_labels"] is True
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["a", RELEASE_NS]}}]
    keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    assert keep == [
        {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "regex": "true", "action": "keep"}
    ]
    pod = objs[("Deployment", name)]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == name and pod["containers"][0]["image"] == "splitdnn/prometheus:0.1.0"
    assert all(objs[(k, name)]["metadata"]["labels"]["app.kubernetes.io/component"] == "prometheus" for k in kinds)
    # a scrape configuration that changes (here: the watched namespaces) restarts the server

    def checksum(*sets):
        dep = next(
            d
            for d in render("prometheus.enabled=true", *sets)
            if (d["kind"], d["metadata"]["name"]) == ("Deployment", name)
        )
        return dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum("watchNamespaces={a}") != checksum("watchNamespaces={b}")
    # the operator is scraped by its annotations, and matches the agents' series on the namespace label
    operator = objs[("Deployment", RELEASE)]["spec"]["template"]
    assert operator["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    env = {e["name"]: e.get("value") for e in operator["spec"]["containers"][0]["env"]}
    assert env["SPLITDNN_PROMQL_NAMESPACE"] == "1"
    assert "SPLITDNN_PROMQL_NAMESPACE" not in {
        e["name"]
        for d in render()
        if d["kind"] == "Deployment"
        for e in d["spec"]["template"]["spec"]["containers"][0].get("env", [])
    }


def test_link_probe_daemonset_only_when_enabled():
    assert not any(d["metadata"]["name"].endswith("-probe") for d in render())
    docs = render("linkProbe.enabled=true", "linkProbe.budget=0.02")
    objs = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    name = f"{RELEASE}-probe"
    svc, ds = objs[("Service", name)], objs[("DaemonSet", name)]
    assert svc["spec"]["clusterIP"] == "None"  # one A record per probe: how they find each other
    pod = ds["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9101"
    assert pod["spec"]["hostNetwork"] is True and pod["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet"
    (c,) = pod["spec"]["containers"]
    assert c["image"] == "splitdnn/agent:0.1.0" and c["command"] == ["splitdnn", "probe"]
    assert f"--peers-dns={name}.{RELEASE_NS}.svc:9200" in c["args"] and "--budget=0.02" in c["args"]
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [{"matchExpressions": [{"key": "splitdnn.io/tier", "operator": "Exists"}]}]
