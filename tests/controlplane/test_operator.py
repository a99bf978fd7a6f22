"""The operator against the real control plane (Go-built kube-apiserver, controller-manager with its garbage
collector, scheduler; kwok nodes per tier). The operator runs as `splitdnn operator` in a subprocess, the way a
user runs it, with admin credentials here (tests/controlplane/test_helm.py runs it as the chart's ServiceAccount).
Each test creates the SplitInferences it uses, under names of its own, and deletes them (the `made` fixture):
the tests pass in any order.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from harness.fixtures import OperatorProcess, kubectl, wait_for

pytestmark = pytest.mark.controlplane

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cnn14.yaml"
TIERS = ("device", "edge", "cloud")
TIMEOUT = 180  # the operator imports TensorFlow and builds the model once (slow on a busy 2-core machine)


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


def deploy(kc, ns, name, operator, made, points=None):
    """Apply the example as `name` and wait until it runs."""
    made.append(name)
    apply(kc, ns, example(name, points))
    return wait_phase(kc, ns, name, "Running", operator)


def test_example_deploys_three_tiers_on_their_nodes(crd, ns, operator, controlplane, made):
    kc = crd
    made.append("cnn14")
    kubectl(kc, "apply", "-n", ns, "-f", str(EXAMPLE))
    si = wait_phase(kc, ns, "cnn14", "Running", operator)
    st = si["status"]
    assert st["splitPoints"] == ["conv2d", "flatten"] and st["split"] == "conv2d,flatten"
    assert st["readyTiers"] == "3/3"
    assert st["observedGeneration"] == si["metadata"]["generation"]
    assert [t["name"] for t in st["tiers"]] == list(TIERS) and all(t["ready"] for t in st["tiers"])
    assert {c["type"]: c["status"] for c in st["conditions"]} == {
        "Valid": "True",
        "Ready": "True",
        "ModelReady": "True",
    }
    assert st["model"]["digest"] and st["model"]["bytes"] > 0  # the model Job's build (kwok runs no tier pod)
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


def test_edit_split_points_rolls_the_tiers(crd, ns, operator, kube_api, made):
    import threading

    from kubernetes import client, watch

    kc = crd
    deploy(kc, ns, "roll", operator, made)
    before = children(kc, ns, "roll")["deployments"]
    apps = client.AppsV1Api(kube_api)
    rv = apps.list_namespaced_deployment(ns, label_selector="splitdnn.io/splitinference=roll").metadata.resource_version
    seen, w = [], watch.Watch()

    def record():  # every status the Deployments go through during the rollout
        try:
            for ev in w.stream(
                apps.list_namespaced_deployment,
                ns,
                label_selector="splitdnn.io/splitinference=roll",
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
        "roll",
        "-n",
        ns,
        "--type",
        "merge",
        "-p",
        json.dumps({"spec": {"splitPoints": ["max_pooling2d", "dense"]}}),
    )
    gen = get_si(kc, ns, "roll")["metadata"]["generation"]
    si = wait_phase(kc, ns, "roll", "Running", operator, generation=gen)
    w.stop()
    t.join(timeout=10)
    # no downtime: every tier kept an available replica through its rollout (maxUnavailable 0)
    rolled = {name for name, g, _ in seen if g > before[name]["metadata"]["generation"]}
    assert rolled == {f"roll-{t}" for t in TIERS}, seen
    assert min(avail for _, _, avail in seen) >= 1, seen
    assert si["status"]["splitPoints"] == ["max_pooling2d", "dense"]
    after = children(kc, ns, "roll")["deployments"]
    for t in TIERS:
        d = after[f"roll-{t}"]
        assert d["metadata"]["generation"] > before[f"roll-{t}"]["metadata"]["generation"]
        fetch = d["spec"]["template"]["spec"]["initContainers"][0]["command"]
        assert fetch[fetch.index("--at") + 1] == "max_pooling2d,dense"
        assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        assert d["status"]["updatedReplicas"] == d["status"]["readyReplicas"] == 1
    assert any(r == "SplitChanged" for r, _ in events_for(kc, ns, "roll"))
    # the new split's Services came with it; the old split's go once none of its pods is left
    old_split = before["roll-device"]["spec"]["template"]["metadata"]["labels"]["splitdnn.io/split"]
    new_split = si["status"]["plan"]["splitId"]
    assert new_split != old_split
    want = {f"roll-{t}" for t in TIERS} | {f"roll-{t}-{new_split}" for t in TIERS[1:]}
    wait_for(
        lambda: set(children(kc, ns, "roll")["services"]) == want,
        timeout=TIMEOUT,
        interval=1,
        what=f"services {sorted(want)}",
    )
    assert any(r == "SplitRetired" and old_split in m for r, m in events_for(kc, ns, "roll"))


def test_deleted_child_comes_back(crd, ns, operator, made):
    kc = crd
    deploy(kc, ns, "drift", operator, made)
    old_uid = children(kc, ns, "drift")["deployments"]["drift-edge"]["metadata"]["uid"]
    kubectl(kc, "delete", "deployment", "drift-edge", "-n", ns, "--wait=false")
    kubectl(kc, "delete", "service", "drift-cloud", "-n", ns, "--wait=false")

    def repaired():
        kids = children(kc, ns, "drift")
        d = kids["deployments"].get("drift-edge")
        return d and d["metadata"]["uid"] != old_uid and "drift-cloud" in kids["services"]

    wait_for(repaired, timeout=60, what="re-created Deployment and Service")
    wait_phase(kc, ns, "drift", "Running", operator)
    # an edited child is put back too (server-side apply owns the fields the operator renders)
    kubectl(kc, "scale", "deployment", "drift-device", "-n", ns, "--replicas", "0")
    wait_for(
        lambda: children(kc, ns, "drift")["deployments"]["drift-device"]["spec"]["replicas"] == 1,
        timeout=60,
        what="replicas restored",
    )
    wait_phase(kc, ns, "drift", "Running", operator)
    assert any(r == "DriftRepaired" for r, _ in events_for(kc, ns, "drift"))


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
def test_cross_field_problems_fail_with_a_named_condition(crd, ns, operator, made, name, mutate, needle):
    kc = crd
    r = example(name)
    mutate(r)
    made.append(name)
    apply(kc, ns, r)
    si = wait_phase(kc, ns, name, "Failed", operator)
    valid = next(c for c in si["status"]["conditions"] if c["type"] == "Valid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
    assert needle in valid["message"], valid["message"]
    assert needle in si["status"]["message"]
    assert any(r == "InvalidSpec" and needle in m for r, m in events_for(kc, ns, name))
    assert children(kc, ns, name)["deployments"] == {}
    assert operator.alive()


def test_fixed_spec_recovers(crd, ns, operator, made):
    kc = crd
    name = "fixme"
    made.append(name)
    apply(kc, ns, example(name, ["conv2d", "no_such_layer"]))
    wait_phase(kc, ns, name, "Failed", operator)
    assert children(kc, ns, name)["deployments"] == {}
    apply(kc, ns, example(name))
    si = wait_phase(kc, ns, name, "Running", operator)
    assert next(c for c in si["status"]["conditions"] if c["type"] == "Valid")["status"] == "True"
    assert len(children(kc, ns, name)["deployments"]) == 3


def test_operator_killed_mid_reconcile_makes_no_duplicates(crd, own_ns, tmp_path):
    """The operator holds its reconcile after the first child is applied (a fault-injection point,
    SPLITDNN_FAULT_PAUSE_AT) and is SIGKILLed there; a fresh operator finishes the job without duplicates and
    without replacing what was already there."""
    kc, ns, name = crd, own_ns, "crashy"
    paused = OperatorProcess(
        kc, ns, tmp_path / "paused.log", extra_env={"SPLITDNN_FAULT_PAUSE_AT": "after-first-apply"}
    ).start()
    try:
        apply(kc, ns, example(name))
        wait_for(
            lambda: "fault injection: paused at after-first-apply" in paused.log() or not paused.alive(),
            timeout=TIMEOUT,
            interval=0.2,
            what="the operator paused mid-reconcile",
        )
        assert paused.alive(), paused.log()[-4000:]
        partial = children(kc, ns, name)
        assert sum(len(objs) for objs in partial.values()) == 1, partial  # one child applied, the rest not yet
        paused.kill()
    finally:
        paused.stop()
    operator = OperatorProcess(kc, ns, tmp_path / "operator.log").start()
    try:
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
    finally:
        operator.stop()


def test_delete_garbage_collects_children(crd, ns, operator, made):
    kc = crd
    deploy(kc, ns, "gc", operator, made)
    kubectl(kc, "delete", "si", "gc", "-n", ns, "--wait=false")
    wait_for(lambda: not any(children(kc, ns, "gc").values()), timeout=90, what="children garbage-collected")

    def pods_left():
        return json.loads(
            kubectl(kc, "get", "pods", "-n", ns, "-l", "splitdnn.io/splitinference=gc", "-o", "json").stdout
        )["items"]

    deadline = time.monotonic() + 60
    while pods_left() and time.monotonic() < deadline:
        time.sleep(1)
    assert pods_left() == []


def test_status_follows_child_deployments_without_the_timer(crd, own_ns, tmp_path):
    """With the resync timer far away, readiness still reaches the status (Deployment events)."""
    kc, ns = crd, own_ns
    op = OperatorProcess(kc, ns, tmp_path / "operator.log", resync=600).start()
    try:
        apply(kc, ns, example("ev"))
        wait_phase(kc, ns, "ev", "Running", op, timeout=120)
        kubectl(kc, "scale", "deployment", "ev-edge", "-n", ns, "--replicas", "0")  # someone breaks a tier
        si = wait_phase(kc, ns, "ev", "Degraded", op, timeout=60)
        assert "edge" in si["status"]["message"]
        assert any(r == "Degraded" for r, _ in events_for(kc, ns, "ev"))
    finally:
        op.stop()
