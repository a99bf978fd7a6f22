"""The operator against the real control plane (Go-built kube-apiserver, controller-manager with its garbage
collector, scheduler; kwok nodes per tier). The operator runs as `splitdnn operator` in a subprocess, the way a
user runs it, with admin credentials here (tests/controlplane/test_helm.py runs it as the chart's ServiceAccount).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import yaml

from harness.fixtures import OperatorProcess, kubectl, wait_for

pytestmark = pytest.mark.controlplane

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cnn14.yaml"
TIERS = ("device", "edge", "cloud")
TIMEOUT = 180  # the operator imports TensorFlow and builds the model once (slow on a busy 2-core machine)


@pytest.fixture(scope="session")
def crd(controlplane):
    kc = controlplane["kubeconfig"]
    kubectl(kc, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds" / "splitinference.yaml"))
    kubectl(kc, "wait", "--for", "condition=Established", "crd/splitinferences.splitdnn.io", "--timeout", "60s")
    return kc


@pytest.fixture(scope="module")
def ns(crd, kube_api):
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    name = f"op-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(
        lambda: any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items),
        timeout=30,
        what="default ServiceAccount",
    )
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module")
def operator(crd, ns, tmp_path_factory):
    op = OperatorProcess(crd, ns, tmp_path_factory.mktemp("operator") / "operator.log").start()
    yield op
    op.stop()
    print(op.log()[-5000:])


def get_si(kc, ns, name):
    p = kubectl(kc, "get", "si", name, "-n", ns, "-o", "json", check=False)
    return json.loads(p.stdout) if p.returncode == 0 else None


def children(kc, ns, name):
    out = {}
    for kind in ("deployments", "services", "configmaps"):
        items = json.loads(
            kubectl(kc, "get", kind, "-n", ns, "-l", f"splitdnn.io/splitinference={name}", "-o", "json").stdout
        )["items"]
        out[kind] = {i["metadata"]["name"]: i for i in items}
    return out


def wait_phase(kc, ns, name, phase, operator, timeout=TIMEOUT, generation=None):
    def check():
        assert operator.alive(), "operator died:\n" + operator.log()[-4000:]
        si = get_si(kc, ns, name)
        st = (si or {}).get("status") or {}
        if st.get("phase") != phase:
            return None
        if generation is not None and st.get("observedGeneration") != generation:
            return None
        return si

    try:
        return wait_for(check, timeout=timeout, interval=1, what=f"{name} phase {phase}")
    except AssertionError:
        si = get_si(kc, ns, name)
        raise AssertionError(
            f"{name} never reached {phase}: status={json.dumps((si or {}).get('status'))[:2000]}"
            f"\noperator log:\n{operator.log()[-4000:]}"
        ) from None


def events_for(kc, ns, name):
    items = json.loads(
        kubectl(
            kc,
            "get",
            "events",
            "-n",
            ns,
            "-o",
            "json",
            "--field-selector",
            f"involvedObject.name={name},involvedObject.kind=SplitInference",
        ).stdout
    )["items"]
    return [(e.get("reason"), e.get("message", "")) for e in items]


def example(name="cnn14", points=None):
    r = yaml.safe_load(EXAMPLE.read_text())
    r["metadata"]["name"] = name
    if points is not None:
        r["spec"]["splitPoints"] = points
    return r


def apply(kc, ns, resource, check=True):
    return kubectl(kc, "apply", "-n", ns, "-f", "-", input=yaml.safe_dump(resource), check=check)


def test_example_deploys_three_tiers_on_their_nodes(crd, ns, operator, controlplane):
    kc = crd
    kubectl(kc, "apply", "-n", ns, "-f", str(EXAMPLE))
    si = wait_phase(kc, ns, "cnn14", "Running", operator)
    st = si["status"]
    assert st["splitPoints"] == ["conv2d", "flatten"] and st["split"] == "conv2d,flatten"
    assert st["readyTiers"] == "3/3"
    assert st["observedGeneration"] == si["metadata"]["generation"]
    assert [t["name"] for t in st["tiers"]] == list(TIERS) and all(t["ready"] for t in st["tiers"])
    assert {c["type"]: c["status"] for c in st["conditions"]} == {"Valid": "True", "Ready": "True"}
    assert st["plan"]["predicted"]["bytesPerFrame"] > 0

    kids = children(kc, ns, "cnn14")
    assert set(kids["deployments"]) == {f"cnn14-{t}" for t in TIERS}
    split = st["plan"]["splitId"]
    assert set(kids["services"]) == {f"cnn14-{t}" for t in TIERS} | {f"cnn14-{t}-{split}" for t in TIERS[1:]}
    assert set(kids["configmaps"]) == {"cnn14-plan"}
    uid = si["metadata"]["uid"]
    for kind in kids.values():
        for obj in kind.values():
            (ref,) = obj["metadata"]["ownerReferences"]
            assert ref["uid"] == uid and ref["controller"] is True and ref["kind"] == "SplitInference"
    pods = json.loads(
        kubectl(kc, "get", "pods", "-n", ns, "-l", "splitdnn.io/splitinference=cnn14", "-o", "json").stdout
    )["items"]
    placed = {p["metadata"]["labels"]["splitdnn.io/tier"]: (p["spec"]["nodeName"], p["status"]["phase"]) for p in pods}
    assert placed == {t: (controlplane["nodes"][t], "Running") for t in TIERS}

    reasons = [r for r, _ in events_for(kc, ns, "cnn14")]
    assert "Deployed" in reasons and "Running" in reasons

    table = kubectl(kc, "get", "si", "-n", ns).stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:4] == ["NAME", "PHASE", "READY", "SPLIT"], header
    assert row.split()[:4] == ["cnn14", "Running", "3/3", "conv2d,flatten"], row


def test_edit_split_points_rolls_the_tiers(crd, ns, operator, kube_api):
    import threading

    from kubernetes import client, watch

    kc = crd
    before = children(kc, ns, "cnn14")["deployments"]
    apps = client.AppsV1Api(kube_api)
    rv = apps.list_namespaced_deployment(
        ns, label_selector="splitdnn.io/splitinference=cnn14"
    ).metadata.resource_version
    seen, w = [], watch.Watch()

    def record():  # every status the Deployments go through during the rollout
        try:
            for ev in w.stream(
                apps.list_namespaced_deployment,
                ns,
                label_selector="splitdnn.io/splitinference=cnn14",
                resource_version=rv,
                timeout_seconds=120,
            ):
                d = ev["object"]
                seen.append((d.metadata.name, d.metadata.generation, d.status.available_replicas or 0))
        except Exception:  # noqa: BLE001 - the stream is cut by w.stop() once the rollout is done
            pass

    t = threading.Thread(target=record, daemon=True)
    t.start()
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
    gen = get_si(kc, ns, "cnn14")["metadata"]["generation"]
    si = wait_phase(kc, ns, "cnn14", "Running", operator, generation=gen)
    w.stop()
    t.join(timeout=10)
    # no downtime: every tier kept an available replica through its rollout (maxUnavailable 0)
    rolled = {name for name, g, _ in seen if g > before[name]["metadata"]["generation"]}
    assert rolled == {f"cnn14-{t}" for t in TIERS}, seen
    assert min(avail for _, _, avail in seen) >= 1, seen
    assert si["status"]["splitPoints"] == ["max_pooling2d", "dense"]
    after = children(kc, ns, "cnn14")["deployments"]
    for t in TIERS:
        d = after[f"cnn14-{t}"]
        assert d["metadata"]["generation"] > before[f"cnn14-{t}"]["metadata"]["generation"]
        slicer = d["spec"]["template"]["spec"]["initContainers"][0]
        assert slicer["command"][4] == "max_pooling2d,dense"
        assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        assert d["status"]["updatedReplicas"] == d["status"]["readyReplicas"] == 1
    assert any(r == "SplitChanged" for r, _ in events_for(kc, ns, "cnn14"))
    # the new split's Services came with it; the old split's go once none of its pods is left
    old_split = before["cnn14-device"]["spec"]["template"]["metadata"]["labels"]["splitdnn.io/split"]
    new_split = si["status"]["plan"]["splitId"]
    assert new_split != old_split
    want = {f"cnn14-{t}" for t in TIERS} | {f"cnn14-{t}-{new_split}" for t in TIERS[1:]}
    wait_for(
        lambda: set(children(kc, ns, "cnn14")["services"]) == want,
        timeout=TIMEOUT,
        interval=1,
        what=f"services {sorted(want)}",
    )
    assert any(r == "SplitRetired" and old_split in m for r, m in events_for(kc, ns, "cnn14"))


def test_deleted_child_comes_back(crd, ns, operator):
    kc = crd
    old_uid = children(kc, ns, "cnn14")["deployments"]["cnn14-edge"]["metadata"]["uid"]
    kubectl(kc, "delete", "deployment", "cnn14-edge", "-n", ns, "--wait=false")
    kubectl(kc, "delete", "service", "cnn14-cloud", "-n", ns, "--wait=false")

    def repaired():
        kids = children(kc, ns, "cnn14")
        d = kids["deployments"].get("cnn14-edge")
        return d and d["metadata"]["uid"] != old_uid and "cnn14-cloud" in kids["services"]

    wait_for(repaired, timeout=60, what="re-created Deployment and Service")
    wait_phase(kc, ns, "cnn14", "Running", operator)
    # an edited child is put back too (server-side apply owns the fields the operator renders)
    kubectl(kc, "scale", "deployment", "cnn14-device", "-n", ns, "--replicas", "0")
    wait_for(
        lambda: children(kc, ns, "cnn14")["deployments"]["cnn14-device"]["spec"]["replicas"] == 1,
        timeout=60,
        what="replicas restored",
    )
    wait_phase(kc, ns, "cnn14", "Running", operator)
    assert any(r == "DriftRepaired" for r, _ in events_for(kc, ns, "cnn14"))


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda r: r["spec"]["tiers"][0].update(name="Device"), "spec.tiers[0].name"),
        (lambda r: r["spec"].update(model={"builtin": "vgg"}), "spec.model.builtin"),
        (lambda r: r["spec"]["tiers"][0].update(netem={"delay": "5 parsecs"}), "spec.tiers[0].netem.delay"),
        (lambda r: r["spec"].pop("tiers"), "spec.tiers"),
    ],
)
def test_schema_rejects_malformed_specs_at_the_api(crd, ns, mutate, needle):
    r = example("bad-schema")
    mutate(r)
    p = apply(crd, ns, r, check=False)
    assert p.returncode != 0
    assert "Invalid value" in p.stderr or "Required value" in p.stderr or "Unsupported value" in p.stderr, p.stderr
    assert needle in p.stderr, p.stderr


@pytest.mark.parametrize(
    "name, mutate, needle",
    [
        (
            "bad-layer",
            lambda r: r["spec"].update(splitPoints=["conv2d", "no_such_layer"]),
            "split point 'no_such_layer' is not a layer",
        ),
        ("bad-count", lambda r: r["spec"].update(splitPoints=["conv2d"]), "1 split points for 3 tiers"),
        ("bad-dup", lambda r: r["spec"]["tiers"][2].update(name="edge"), "duplicate tier names: edge"),
        ("bad-model", lambda r: r["spec"].update(model={"kerasApplication": "NoSuchNet"}), "unknown model"),
    ],
)
def test_cross_field_problems_fail_with_a_named_condition(crd, ns, operator, name, mutate, needle):
    kc = crd
    r = example(name)
    mutate(r)
    apply(kc, ns, r)
    si = wait_phase(kc, ns, name, "Failed", operator)
    valid = next(c for c in si["status"]["conditions"] if c["type"] == "Valid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
    assert needle in valid["message"], valid["message"]
    assert needle in si["status"]["message"]
    assert any(r == "InvalidSpec" and needle in m for r, m in events_for(kc, ns, name))
    assert children(kc, ns, name)["deployments"] == {}
    assert operator.alive()


def test_fixed_spec_recovers(crd, ns, operator):
    kc = crd
    name = "bad-layer"
    assert get_si(kc, ns, name)["status"]["phase"] == "Failed"
    apply(kc, ns, example(name))
    si = wait_phase(kc, ns, name, "Running", operator)
    assert next(c for c in si["status"]["conditions"] if c["type"] == "Valid")["status"] == "True"
    assert len(children(kc, ns, name)["deployments"]) == 3
    for bad in ("bad-count", "bad-dup", "bad-model", name):
        kubectl(kc, "delete", "si", bad, "-n", ns, "--wait=false")


def test_operator_killed_mid_reconcile_makes_no_duplicates(crd, ns, operator):
    kc = crd
    name = "crashy"
    apply(kc, ns, example(name))
    # kill as soon as the first child appears (mid-reconcile), then restart
    wait_for(lambda: any(children(kc, ns, name).values()), timeout=TIMEOUT, interval=0.2, what="a first child")
    operator.kill()
    partial = children(kc, ns, name)
    operator.start()
    si = wait_phase(kc, ns, name, "Running", operator)
    kids = children(kc, ns, name)
    split = si["status"]["plan"]["splitId"]
    assert set(kids["deployments"]) == {f"{name}-{t}" for t in TIERS}
    assert set(kids["services"]) == {f"{name}-{t}" for t in TIERS} | {f"{name}-{t}-{split}" for t in TIERS[1:]}
    assert set(kids["configmaps"]) == {f"{name}-plan"}
    for kind, objs in partial.items():  # what existed before the crash was kept, not replaced
        for n, o in objs.items():
            assert kids[kind][n]["metadata"]["uid"] == o["metadata"]["uid"]
    pods = json.loads(
        kubectl(kc, "get", "pods", "-n", ns, "-l", f"splitdnn.io/splitinference={name}", "-o", "json").stdout
    )["items"]
    assert len([p for p in pods if not p["metadata"].get("deletionTimestamp")]) == 3


def test_delete_garbage_collects_children(crd, ns, operator):
    kc = crd
    for name in ("cnn14", "crashy"):
        kubectl(kc, "delete", "si", name, "-n", ns, "--wait=false")
    wait_for(
        lambda: not any(any(children(kc, ns, n).values()) for n in ("cnn14", "crashy")),
        timeout=90,
        what="children garbage-collected",
    )
    left = json.loads(
        kubectl(kc, "get", "pods", "-n", ns, "-l", "splitdnn.io/splitinference in (cnn14,crashy)", "-o", "json").stdout
    )["items"]
    deadline = time.monotonic() + 60
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = json.loads(
            kubectl(
                kc, "get", "pods", "-n", ns, "-l", "splitdnn.io/splitinference in (cnn14,crashy)", "-o", "json"
            ).stdout
        )["items"]
    assert left == []


def test_status_follows_child_deployments_without_the_timer(crd, kube_api, tmp_path):
    """With the resync timer far away, readiness still reaches the status (Deployment events)."""
    from kubernetes import client

    kc = crd
    core = client.CoreV1Api(kube_api)
    ns = f"ev-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    op = OperatorProcess(kc, ns, tmp_path / "operator.log", resync=600).start()
    try:
        wait_for(
            lambda: any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(ns).items),
            timeout=30,
            what="default ServiceAccount",
        )
        apply(kc, ns, example("ev"))
        wait_phase(kc, ns, "ev", "Running", op, timeout=120)
        kubectl(kc, "scale", "deployment", "ev-edge", "-n", ns, "--replicas", "0")  # someone breaks a tier
        si = wait_phase(kc, ns, "ev", "Degraded", op, timeout=60)
        assert "edge" in si["status"]["message"]
        assert any(r == "Degraded" for r, _ in events_for(kc, ns, "ev"))
    finally:
        op.stop()
        core.delete_namespace(ns)
