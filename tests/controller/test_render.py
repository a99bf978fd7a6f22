"""Rendering is pure: spec + plan → manifests. These tests pin the pod contract with the agent."""

import copy
import json

import pytest

from splitdnn.controller import plan as plan_mod
from splitdnn.controller import render
from splitdnn.controller import status as status_mod
from splitdnn.graph import GraphSummary
from splitdnn.spec import from_resource, load_file

LAYERS = ("conv2d", "max_pooling2d", "conv2d_1", "flatten", "dense", "dense_1")
SUMMARY = GraphSummary(
    model="cnn14",
    layers=LAYERS,
    params=(10, 0, 20, 0, 30, 5),
    flops=(100, 10, 200, 0, 60, 6),
    boundary_bytes={"conv2d": 4000, "max_pooling2d": 1000, "conv2d_1": 800, "flatten": 800, "dense": 64},
    boundary_tensors={"conv2d": ["conv2d"], "flatten": ["flatten"]},
    input_bytes=3000,
)


@pytest.fixture
def si():
    return load_file("examples/cnn14.yaml")[0]


@pytest.fixture
def plan(si):
    return plan_mod.build_plan(si, SUMMARY)


def objs_by(objs):
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def test_render_all_names_and_order(si, plan):
    objs = render.render_all(si, plan, image="img:1")
    split = render.split_id(si, ["conv2d", "flatten"])
    assert plan["splitId"] == split and len(split) == 8
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("ConfigMap", "cnn14-plan"),
        ("Service", "cnn14-device"),
        ("Deployment", "cnn14-device"),
        ("Service", "cnn14-edge"),
        ("Service", f"cnn14-edge-{split}"),
        ("Deployment", "cnn14-edge"),
        ("Service", "cnn14-cloud"),
        ("Service", f"cnn14-cloud-{split}"),
        ("Deployment", "cnn14-cloud"),
    ]
    assert all(o["metadata"]["namespace"] == "default" for o in objs)
    cm = objs[0]
    assert json.loads(cm["data"]["plan.json"]) == plan


def test_render_is_deterministic_and_pure(si, plan):
    before = copy.deepcopy(si.spec)
    a = render.render_all(si, plan, image="img:1")
    b = render.render_all(si, plan, image="img:1")
    assert a == b
    assert si.spec == before


def test_deployment_pod_contract(si, plan):
    d = objs_by(render.render_all(si, plan, image="img:1"))[("Deployment", "cnn14-device")]
    pod = d["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"splitdnn.io/tier": "device"}
    assert d["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    slicer, netem = pod["initContainers"]
    assert slicer["name"] == "fetch-slice"  # its own slice from the artifact store: no TensorFlow in a tier pod
    assert slicer["command"] == [
        *("splitdnn", "artifacts", "fetch", "--store", "http://splitdnn-artifacts:8080"),
        *("--model-key", render.model_key(si), "--at", "conv2d,flatten", "--slice", "0", "--out", "/models"),
        *("--wait", "900", "--report", "/dev/termination-log"),  # the operator reads the tiers' runtimes from it
    ]
    assert {"name": "models", "mountPath": "/models"} in slicer["volumeMounts"]
    assert "env" not in slicer or not any("secretKeyRef" in str(e) for e in slicer["env"])  # the Job's, not here
    assert netem["name"] == "netem"
    assert netem["command"] == [
        "splitdnn",
        "netem",
        "apply",
        "--dev",
        "eth0",
        "--delay",
        "5ms",
        "--report",
        "/run/splitdnn/netem.json",
    ]
    assert {"name": "run", "mountPath": "/run/splitdnn"} in netem["volumeMounts"]
    (agent,) = pod["containers"]
    assert agent["name"] == "agent" and agent["image"] == "img:1"
    assert agent["command"] == [
        "splitdnn",
        "agent",
        "--slices",
        "/models",
        "--slice",
        "slice0",
        "--port",
        "8500",
        "--metrics-port",
        "9100",
        "--rest-port",
        "8501",
        "--si",
        "cnn14",
        "--tier",
        "device",
        "--overhead-ratio",
        "10",
        "--max-message-bytes",
        "500000",
        "--max-request-bytes",
        "67108864",
        "--runtime",
        "auto",  # no tiers[].runtime: litert where the slice converted
        "--netem-report",
        "/run/splitdnn/netem.json",
        "--max-inflight",
        "8",
        "--drain-quiet",
        "2s",
        "--drain-timeout",
        "90s",
        "--next",
        f"cnn14-edge-{plan['splitId']}:8500",
        "--source",
        "synthetic",
        "--fps",
        "5",
        "--frames",
        "50",
        "--deadline",
        "2s",
        "--warmup",
        "0",
        "--delay",
        "5ms",
    ]
    # Ready only while the chain behind answers (gRPC health checking); the pod outlives its agent's drain
    assert agent["readinessProbe"]["grpc"] == {"port": 8500}
    assert pod["terminationGracePeriodSeconds"] > render.DRAIN_TIMEOUT_SECONDS
    assert d["spec"]["template"]["metadata"]["labels"]["splitdnn.io/split"] == plan["splitId"]
    assert agent["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": 9100}
    assert agent["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    assert {p["containerPort"] for p in agent["ports"]} == {8500, 8501, 9100}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in vols["models"] and "emptyDir" in vols["run"]
    assert vols["plan"]["configMap"]["name"] == "cnn14-plan"


def test_only_netem_has_a_capability_and_agent_is_locked_down(si, plan):
    for d in [o for o in render.render_all(si, plan, image="i") if o["kind"] == "Deployment"]:
        pod = d["spec"]["template"]["spec"]
        for c in pod["initContainers"] + pod["containers"]:
            caps = c["securityContext"]["capabilities"]
            assert caps["drop"] == ["ALL"]
            if c["name"] == "netem":
                assert caps["add"] == ["NET_ADMIN"]
            else:
                assert "add" not in caps
                assert c["securityContext"]["runAsNonRoot"] is True
                assert c["securityContext"]["readOnlyRootFilesystem"] is True
                assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"].get("privileged") is not True


def test_middle_and_last_tier_commands(si, plan):
    objs = objs_by(render.render_all(si, plan, image="i"))
    edge = objs[("Deployment", "cnn14-edge")]["spec"]["template"]["spec"]["containers"][0]["command"]
    cloud = objs[("Deployment", "cnn14-cloud")]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert edge[edge.index("--slice") + 1] == "slice1"
    assert edge[edge.index("--next") + 1] == f"cnn14-cloud-{plan['splitId']}:8500"
    assert "--source" not in edge and "--fps" not in edge
    assert cloud[cloud.index("--slice") + 1] == "slice2"
    assert "--next" not in cloud
    assert cloud[cloud.index("--overhead-ratio") + 1] == "1"
    assert cloud[-2:] == ["--delay", "252.5ms"]


def test_all_netem_fields(si, plan):
    si.tiers[1]["netem"] = {"delay": "10ms", "jitter": "1ms", "loss": "0.5%", "rate": "4mbit", "limit": 100}
    objs = objs_by(render.render_all(si, plan, image="i"))
    pod = objs[("Deployment", "cnn14-edge")]["spec"]["template"]["spec"]
    assert pod["initContainers"][1]["command"] == [
        "splitdnn",
        "netem",
        "apply",
        "--dev",
        "eth0",
        "--delay",
        "10ms",
        "--jitter",
        "1ms",
        "--loss",
        "0.5%",
        "--rate",
        "4mbit",
        "--limit",
        "100",
        "--report",
        "/run/splitdnn/netem.json",
    ]
    agent = pod["containers"][0]["command"]
    assert agent[-8:] == ["--delay", "10ms", "--jitter", "1ms", "--loss", "0.5%", "--rate", "4mbit"]
    assert "--limit" not in agent


def test_model_sources():
    base: dict = {
        "apiVersion": "splitdnn.io/v1alpha1",
        "kind": "SplitInference",
        "metadata": {"name": "m"},
        "spec": {"splitPoints": ["a"], "tiers": [{"name": "x"}, {"name": "y"}]},
    }
    r = copy.deepcopy(base)
    r["spec"]["model"] = {"kerasApplication": "MobileNetV2", "inputShape": [96, 96, 3]}
    assert render.build_command(from_resource(r), ["a"], "http://s:8080") == [
        *("splitdnn", "artifacts", "build", "keras.applications.MobileNetV2", "--store", "http://s:8080"),
        *("--report", "/dev/termination-log", "--at", "a", "--input-shape", "96,96,3"),
    ]
    r = copy.deepcopy(base)
    r["spec"]["model"] = {"storageUri": "/data/m.keras"}
    assert render.build_command(from_resource(r), None, "http://s:8080")[3] == "/data/m.keras"
    pin = "ab" * 32
    r["spec"]["model"] = {"storageUri": "https://models.example/m.keras", "sha256": pin}
    pinned = from_resource(r)
    assert render.build_command(pinned, ["a"], "http://s:8080")[3:] == [
        *("https://models.example/m.keras", "--store", "http://s:8080", "--report", "/dev/termination-log"),
        *("--at", "a", "--sha256", pin),
    ]
    job = render.render_model_job(
        pinned, ["a"], "img:1", "http://s:8080", node_selector={"kubernetes.io/arch": "amd64"}
    )
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    assert job["metadata"]["name"] == render.model_job_name(render.model_key(pinned), ["a"], False)
    unpinned = copy.deepcopy(r)
    del unpinned["spec"]["model"]["sha256"]
    assert render.model_key(pinned) != render.model_key(from_resource(unpinned))  # another pin: another build
    # a new pin is new content: other slices, another split id
    r["spec"]["model"]["sha256"] = "cd" * 32
    assert render.split_id(pinned, ["a"]) != render.split_id(from_resource(r), ["a"])


def test_a_claim_or_a_secret_scopes_the_model_key_and_the_job_builds_under_that_key():
    """Two namespaces' pvc://models/m.keras are two files; a model read with a Secret is that Secret's (a wrong key
    must fail, not reuse another Secret's graph): their keys differ. A public URL is one key everywhere. The key the
    model Job's command builds under is the key the operator reads."""
    from splitdnn import artifacts

    def spec(namespace: str, model: dict):
        doc = {
            "apiVersion": "splitdnn.io/v1alpha1",
            "kind": "SplitInference",
            "metadata": {"name": "m", "namespace": namespace},
            "spec": {"model": model, "splitPoints": ["a"], "tiers": [{"name": "d"}, {"name": "c"}]},
        }
        return from_resource(doc)

    pvc, s3, web = {"storageUri": "pvc://models/m.keras"}, "s3://b/m.keras", {"storageUri": "https://x.example/m.keras"}
    assert render.model_key(spec("a", pvc)) != render.model_key(spec("b", pvc))
    assert render.model_key(spec("a", web)) == render.model_key(spec("b", web))
    keys = {
        render.model_key(spec(ns, {"storageUri": s3, "secretName": name}))
        for ns, name in (("a", "right"), ("a", "wrong"), ("b", "right"))
    }
    assert len(keys) == 3
    assert render.model_key(spec("a", {"storageUri": s3})) not in keys
    for model in (pvc, web, {"storageUri": s3, "secretName": "right"}, {"builtin": "cnn14"}):
        one = spec("a", model)
        cmd = render.build_command(one, ["a"], "http://s:8080")
        scope = cmd[cmd.index("--scope") + 1] if "--scope" in cmd else None
        key = artifacts.model_key(one.model_source, one.input_shape, one.typed.model.sha256, scope)
        assert key == render.model_key(one), (model, cmd)


def test_service(si, plan):
    svc = objs_by(render.render_all(si, plan, image="i"))[("Service", "cnn14-edge")]
    assert {(p["name"], p["port"]) for p in svc["spec"]["ports"]} == {("grpc", 8500), ("http", 8501), ("metrics", 9100)}
    assert svc["spec"]["selector"] == {"splitdnn.io/splitinference": "cnn14", "splitdnn.io/tier": "edge"}
    dep = objs_by(render.render_all(si, plan, image="i"))[("Deployment", "cnn14-edge")]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in svc["spec"]["selector"].items())
    assert dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]


def test_new_split_points_change_pod_template(si, plan):
    a = objs_by(render.render_all(si, plan, image="i"))[("Deployment", "cnn14-edge")]
    si.spec["splitPoints"] = ["max_pooling2d", "dense"]
    plan2 = plan_mod.build_plan(si, SUMMARY)
    b = objs_by(render.render_all(si, plan2, image="i"))[("Deployment", "cnn14-edge")]
    assert a["spec"]["template"] != b["spec"]["template"]
    assert b["spec"]["template"]["spec"]["initContainers"][0]["command"][8] == "max_pooling2d,dense"
    assert a["spec"]["selector"] == b["spec"]["selector"]  # selectors are immutable


def test_each_split_has_its_own_services_so_generations_never_mix(si, plan):
    """After a re-split the Deployments roll one by one; a tier calls its next tier through the Service of its own
    split, which selects only pods of that split, so an old device never sends to a new edge (or vice versa)."""
    old = objs_by(render.render_all(si, plan, image="i"))
    si.spec["splitPoints"] = ["max_pooling2d", "dense"]
    plan2 = plan_mod.build_plan(si, SUMMARY)
    new = objs_by(render.render_all(si, plan2, image="i"))
    a, b = plan["splitId"], plan2["splitId"]
    assert a != b
    for split, objs in ((a, old), (b, new)):
        svc = objs[("Service", f"cnn14-edge-{split}")]
        assert svc["spec"]["selector"] == {
            "splitdnn.io/splitinference": "cnn14",
            "splitdnn.io/tier": "edge",
            "splitdnn.io/split": split,
        }
        assert svc["metadata"]["labels"]["splitdnn.io/split"] == split
        device = objs[("Deployment", "cnn14-device")]["spec"]["template"]
        assert device["metadata"]["labels"]["splitdnn.io/split"] == split
        cmd = device["spec"]["containers"][0]["command"]
        assert cmd[cmd.index("--next") + 1] == f"cnn14-edge-{split}:8500"
        edge_pod = objs[("Deployment", "cnn14-edge")]["spec"]["template"]["metadata"]["labels"]
        assert all(edge_pod.get(k) == v for k, v in svc["spec"]["selector"].items())
    # a change that keeps the split (here the links) keeps the split id: old and new pods serve each other
    si.tiers[1]["netem"] = {"delay": "1ms"}
    assert plan_mod.build_plan(si, SUMMARY)["splitId"] == b
    # the stable entry Service still selects every pod of the tier, whatever its split
    assert "splitdnn.io/split" not in new[("Service", "cnn14-edge")]["spec"]["selector"]


def test_probe_timeouts_cover_the_tiers_egress_delay(si, plan):
    objs = objs_by(render.render_all(si, plan, image="i"))
    for name, want in (("cnn14-device", 2), ("cnn14-cloud", 2)):  # 5 ms, 252.5 ms: 2 × delay + 1 s, at least 2
        agent = objs[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]
        assert agent["readinessProbe"]["timeoutSeconds"] == agent["livenessProbe"]["timeoutSeconds"] == want
    si.tiers[2]["netem"] = {"delay": "1007.5ms", "jitter": "10ms"}  # Cho 2021 Type 3's result link
    assert render.probe_timeout_seconds(si.tiers[2]) == 4


def test_drain_quiet_covers_a_few_frame_periods(si):
    si.workload["fps"] = 5
    assert render.drain_quiet_seconds(si) == 2.0
    si.workload["fps"] = 0.5
    assert render.drain_quiet_seconds(si) == 6.0


def test_agent_image_from_env():
    assert render.agent_image({"SPLITDNN_AGENT_IMAGE": "reg/a:9"}) == "reg/a:9"
    assert render.agent_image({}).startswith("splitdnn/agent:")


def test_plan_figures(si, plan):
    assert plan["splitPoints"] == ["conv2d", "flatten"]
    assert [(t["name"], t["firstLayer"], t["lastLayer"], t["layers"]) for t in plan["tiers"]] == [
        ("device", "conv2d", "conv2d", 1),
        ("edge", "max_pooling2d", "flatten", 3),
        ("cloud", "dense", "dense_1", 2),
    ]
    assert [l["bytes"] for l in plan["links"]] == [4000, 800]
    assert plan["predicted"]["bytesPerFrame"] == 4800
    assert plan["predicted"]["bottleneckTier"] == "edge"
    assert plan["tiers"][0]["next"] == f"cnn14-edge-{plan['splitId']}" and "next" not in plan["tiers"][2]

    def no_nulls(v):
        return v is not None and all(
            no_nulls(x) for x in (v.values() if isinstance(v, dict) else v if isinstance(v, list) else [])
        )

    assert no_nulls(plan)


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda s: s["spec"].update(splitPoints=["conv2d", "nope"]), "'nope' is not a layer"),
        (lambda s: s["spec"].update(splitPoints=["conv2d"]), "1 split points for 3 tiers"),
        (lambda s: s["spec"]["tiers"][1].update(name="device"), "duplicate tier names: device"),
        (lambda s: s["metadata"].update(name="x" * 60), "longer than 63"),
    ],
)
def test_problems_name_the_problem(mutate, needle):
    import yaml

    r = yaml.safe_load(open("examples/cnn14.yaml"))
    mutate(r)
    found = plan_mod.problems(from_resource(r), SUMMARY)
    assert any(needle in p for p in found), found


def test_valid_example_has_no_problems(si):
    assert plan_mod.problems(si, SUMMARY) == []


def _dep(gen=1, observed=1, replicas=1, ready=1, updated=1, available=1, total=1):
    return {
        "metadata": {"generation": gen},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "availableReplicas": available,
            "replicas": total,
        },
    }


def test_status_phases(si, plan):
    names = ["cnn14-device", "cnn14-edge", "cnn14-cloud"]
    s0 = status_mod.running_status(si, plan, {}, {}, 1)
    assert s0["phase"] == "Pending"
    s1 = status_mod.running_status(si, plan, {n: _dep(ready=0, available=0) for n in names}, s0, 1)
    assert s1["phase"] == "Deploying" and s1["readyTiers"] == "0/3"
    s2 = status_mod.running_status(si, plan, {n: _dep() for n in names}, s1, 1)
    assert s2["phase"] == "Running" and s2["readyTiers"] == "3/3" and s2["split"] == "conv2d,flatten"
    assert {c["type"]: c["status"] for c in s2["conditions"]} == {"Valid": "True", "Ready": "True"}
    deps = {n: _dep() for n in names}
    deps["cnn14-edge"] = _dep(ready=0, available=0)
    s3 = status_mod.running_status(si, plan, deps, s2, 1)
    assert s3["phase"] == "Degraded" and "edge" in s3["message"]
    # a spec change (new generation) rolling out is Deploying, not Degraded
    deps["cnn14-edge"] = _dep(gen=2, observed=2, updated=1, total=2)
    s4 = status_mod.running_status(si, plan, deps, s2, 2)
    assert s4["phase"] == "Deploying"
    assert s4["tiers"][1] == {
        "name": "edge",
        "slice": "slice1",
        "deployment": "cnn14-edge",
        "ready": False,
        "replicas": 1,
        "readyReplicas": 1,
    }


def test_scaled_down_tier_is_not_ready(si, plan):
    names = ["cnn14-device", "cnn14-edge", "cnn14-cloud"]
    deps = {n: _dep() for n in names}
    deps["cnn14-edge"] = _dep(replicas=0, ready=0, updated=0, available=0, total=0)
    running = status_mod.running_status(si, plan, {n: _dep() for n in names}, {}, 1)
    s = status_mod.running_status(si, plan, deps, running, 1)
    assert s["phase"] == "Degraded" and s["readyTiers"] == "2/3"


def test_failed_status_and_transition_times():
    s = status_mod.failed_status({}, 3, ["split point 'x' is not a layer of model 'cnn14'"])
    assert s["phase"] == "Failed" and s["observedGeneration"] == 3
    valid = next(c for c in s["conditions"] if c["type"] == "Valid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec" and "'x'" in valid["message"]
    again = status_mod.failed_status(s, 3, ["split point 'x' is not a layer of model 'cnn14'"])
    assert not status_mod.status_changed(s, again)
    assert again["conditions"][0]["lastTransitionTime"] == valid["lastTransitionTime"]


def test_max_model_bytes_goes_to_a_storage_uri_model_job_only(si, plan):
    import yaml

    resource = yaml.safe_load(open("examples/cnn14.yaml"))
    resource["spec"]["model"] = {"storageUri": "https://m.example/x.keras"}
    own = from_resource(resource)
    assert render.max_model_bytes({}) is None
    assert render.max_model_bytes({"SPLITDNN_MAX_MODEL_BYTES": "2Gi"}) == "2Gi"
    with pytest.raises(ValueError, match="SPLITDNN_MAX_MODEL_BYTES: bad size '2 pies'"):
        render.max_model_bytes({"SPLITDNN_MAX_MODEL_BYTES": "2 pies"})
    builds = {name: render.build_command(s, None, "http://s", "2Gi") for name, s in (("builtin", si), ("own", own))}
    assert "--max-model-bytes" not in builds["builtin"]
    assert builds["own"][-2:] == ["--max-model-bytes", "2Gi"]


def test_a_cooperative_tier_is_a_coordinator_and_a_group_of_device_pods_one_per_node():
    from splitdnn.agent.command import flag_values
    from splitdnn.controller import reconcile

    coop = load_file("examples/coop-cnn14.yaml")[0]
    coop.spec["splitPoints"] = ["conv2d", "flatten"]  # layers of SUMMARY
    coop_plan = plan_mod.build_plan(coop, SUMMARY)
    objs = render.render_all(coop, coop_plan, image="img:1")
    names = [(o["kind"], o["metadata"]["name"]) for o in objs]
    device = names.index(("Deployment", "coop-cnn14-device"))
    # the devices' Service and StatefulSet come before the coordinator that connects to them
    assert names[device - 2 : device] == [
        ("Service", "coop-cnn14-device-devices"),
        ("StatefulSet", "coop-cnn14-device-devices"),
    ]
    assert sum(kind == "StatefulSet" for kind, _ in names) == 1  # edge and cloud are single devices
    by = objs_by(objs)
    sts, svc = by[("StatefulSet", "coop-cnn14-device-devices")], by[("Service", "coop-cnn14-device-devices")]
    pod = sts["spec"]["template"]["spec"]
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert (
        svc["spec"]["selector"]
        == sts["spec"]["selector"]["matchLabels"]
        == {
            render.LABEL_SI: "coop-cnn14",
            render.LABEL_COOP_GROUP: "device",
        }
    )
    # device pods are not the tier's agent: the tier Service must not select them
    labels = sts["spec"]["template"]["metadata"]["labels"]
    tier_selector = by[("Service", "coop-cnn14-device")]["spec"]["selector"]
    assert not all(labels.get(k) == v for k, v in tier_selector.items())
    (rule,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert rule == {"labelSelector": {"matchLabels": svc["spec"]["selector"]}, "topologyKey": "kubernetes.io/hostname"}
    assert pod["nodeSelector"] == {"splitdnn.io/tier": "device"}
    (container,) = pod["containers"]
    assert container["command"][:4] == ["splitdnn", "coop-device", "--listen", "0.0.0.0:8600"]
    key_ref = {"secretKeyRef": {"name": "coop-cnn14-coop", "key": "key"}}
    assert {"name": "SPLITDNN_COOP_KEY", "valueFrom": key_ref} in container["env"]
    assert container["securityContext"]["readOnlyRootFilesystem"] and "initContainers" not in pod
    # the coordinator: the tier's agent, with the devices' stable names and the same key
    coordinator = by[("Deployment", "coop-cnn14-device")]["spec"]["template"]["spec"]["containers"][0]
    addresses = [f"coop-cnn14-device-devices-{d}.coop-cnn14-device-devices:8600" for d in range(3)]
    assert flag_values(coordinator["command"], ["--devices", "--coop-devices"]) == {
        "--devices": "3",
        "--coop-devices": ",".join(addresses),
    }
    assert {"name": "SPLITDNN_COOP_KEY", "valueFrom": key_ref} in coordinator["env"]
    secret = render.coop_key_secret(coop)
    assert secret is not None and secret["metadata"]["name"] == "coop-cnn14-coop" and "data" not in secret

    # planner.coop off: one device computes the slice, no group, no key; the group left over is deleted
    off = copy.deepcopy(coop)
    off.spec["planner"]["coop"] = "off"
    off_objs = render.render_all(off, plan_mod.build_plan(off, SUMMARY), image="img:1")
    assert not any(o["kind"] == "StatefulSet" for o in off_objs) and render.coop_key_secret(off) is None
    existing = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    rolling = copy.deepcopy(by[("Deployment", "coop-cnn14-device")])
    rolling["metadata"]["generation"] = 2
    rolling["status"] = {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1}  # the old coordinator is left
    rolled = copy.deepcopy(rolling)
    rolled["status"] = {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}
    assert reconcile.stale_coop_groups(existing, off_objs, {"coop-cnn14-device": rolling}) == {}
    assert reconcile.stale_coop_groups(existing, off_objs, {"coop-cnn14-device": rolled}) == {
        "device": [("Service", "coop-cnn14-device-devices"), ("StatefulSet", "coop-cnn14-device-devices")]
    }
    assert reconcile.stale_coop_groups(existing, objs, {"coop-cnn14-device": rolled}) == {}
