"""The operator's reconcile decisions (splitdnn.controller.reconcile) without Kopf or a cluster: the real CNN14
model, the real renderer; the cluster's answers (children, Deployments, profiling Jobs) are given as the API
would return them. tests/controlplane/test_operator.py runs the same code in the operator against a real API."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from splitdnn.controller import reconcile as core
from splitdnn.controller.profiling import PROFILED, RUNNING, Profiling
from splitdnn.controller.settings import Settings
from splitdnn.controller.status import Condition, EventReason, Phase, Reason

ROOT = Path(__file__).resolve().parents[2]
TIERS = ("device", "edge", "cloud")


def body(name="cnn14", generation=1, status=None, **spec_changes):
    r = yaml.safe_load((ROOT / "examples" / "cnn14.yaml").read_text())
    r["metadata"].update(name=name, namespace="ns", generation=generation, uid="u-1")
    r["spec"].update(spec_changes)
    if status is not None:
        r["status"] = status
    return r


def reasons(events):
    return [str(e.reason) for e in events]


def ready_deployment(obj, ready=True):
    """A rendered Deployment as the API returns it once its pod is (or is not) ready."""
    d = copy.deepcopy(obj)
    d["metadata"]["generation"] = 1
    n = 1 if ready else 0
    d["status"] = {
        "observedGeneration": 1,
        "replicas": 1,
        "updatedReplicas": 1,
        "readyReplicas": n,
        "availableReplicas": n,
    }
    return d


def as_existing(objs):
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def deployments_of(objs, ready=True):
    return {o["metadata"]["name"]: ready_deployment(o, ready) for o in objs if o["kind"] == "Deployment"}


def deploy(b, cause="create", existing=None):
    """One full pass the way the shell runs it, with every child applied and every Deployment `ready`."""
    d = core.desired(b)
    prepared = core.prepare(d, cause, existing or {})
    return d, prepared


def test_a_new_resource_renders_every_child_and_is_pending_until_they_exist():
    d, out = deploy(body())
    assert out.result == "ok" and not d.problems and not d.wants_profiling
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in out.apply)
    split = out.plan["splitId"]
    assert kinds == sorted(
        [("ConfigMap", "cnn14-plan")]
        + [("Deployment", f"cnn14-{t}") for t in TIERS]
        + [("Service", f"cnn14-{t}") for t in TIERS]
        + [("Service", f"cnn14-{t}-{split}") for t in TIERS[1:]]
    )
    assert out.events == []  # nothing to say before the apply
    (deployed,) = out.applied_events
    assert deployed.reason == EventReason.DEPLOYED and not deployed.warning
    assert deployed.message == "created 3 tiers (device, edge, cloud) split at conv2d,flatten"
    # read back right after the apply: no Deployment has a pod yet
    settled = core.settle(d, out, {})
    st = settled.status
    assert st["phase"] == "Pending" and type(st["phase"]) is str  # plain strings in the status, not Enum members
    assert st["readyTiers"] == "0/3" and st["splitPoints"] == ["conv2d", "flatten"]
    assert {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]} == {
        "Valid": ("True", "SpecValid"),
        "Ready": ("False", "TiersNotReady"),
    }
    assert st["plan"]["predicted"]["bytesPerFrame"] > 0
    (event,) = core.status_events({}, st)
    assert (event.reason, event.warning) == ("Pending", False)


def test_running_once_every_tier_is_ready_and_a_second_pass_changes_nothing():
    d, out = deploy(body())
    st = core.settle(d, out, deployments_of(out.apply)).status
    assert st["phase"] == Phase.RUNNING and st["message"] == "all 3 tiers ready" and st["readyTiers"] == "3/3"
    assert [core.Event("Running", "all 3 tiers ready")] == core.status_events({"phase": "Deploying"}, st)
    # the timer's next pass over the same cluster: no Events, no status change
    d2, again = deploy(body(status=st), cause="timer", existing=as_existing(out.apply))
    assert again.events == [] and again.applied_events == []
    assert again.apply == out.apply  # the same objects (server-side apply makes re-applying a no-op)
    st2 = core.settle(d2, again, deployments_of(again.apply)).status
    assert core.status_events(st, st2) == []
    from splitdnn.controller.status import status_changed

    assert not status_changed(st, st2)


def test_a_deleted_child_is_drift_only_on_the_timer_and_a_new_split_is_not_drift():
    d, out = deploy(body())
    st = core.settle(d, out, deployments_of(out.apply)).status
    existing = as_existing(out.apply)
    del existing[("Deployment", "cnn14-edge")]
    _, timer = deploy(body(status=st), cause="timer", existing=existing)
    (drift,) = timer.applied_events
    assert drift.reason == EventReason.DRIFT_REPAIRED and drift.warning
    assert drift.message == "re-created Deployment/cnn14-edge"
    # the user edits splitPoints: new per-split Services are missing, which is a roll, not drift
    _, edit = deploy(
        body(generation=2, status=st, splitPoints=["max_pooling2d", "dense"]), "update", as_existing(out.apply)
    )
    assert reasons(edit.applied_events) == ["SplitChanged"]
    assert edit.applied_events[0].message == "rolling tiers from conv2d,flatten to max_pooling2d,dense"
    old = core.old_splits(as_existing(out.apply + edit.apply), edit.plan["splitId"])
    assert old == {out.plan["splitId"]: [f"cnn14-cloud-{out.plan['splitId']}", f"cnn14-edge-{out.plan['splitId']}"]}
    retired = core.retired_event(*next(iter(old.items())))
    assert retired.reason == EventReason.SPLIT_RETIRED and out.plan["splitId"] in retired.message


def test_a_rolling_edit_is_deploying_then_a_broken_tier_makes_it_degraded():
    d, out = deploy(body())
    st = core.settle(d, out, deployments_of(out.apply)).status
    d2, edit = deploy(body(generation=2, status=st, splitPoints=["max_pooling2d", "dense"]), "update")
    rolling = core.settle(d2, edit, deployments_of(edit.apply, ready=False)).status
    assert rolling["phase"] == "Deploying" and rolling["observedGeneration"] == 2
    # same generation, a tier goes away: Degraded with a warning
    deps = deployments_of(out.apply)
    deps["cnn14-edge"] = ready_deployment(deps["cnn14-edge"], ready=False)
    broken = core.settle(core.desired(body(status=st)), out, deps).status
    assert broken["phase"] == "Degraded" and broken["message"] == "tiers not ready: edge"
    (event,) = core.status_events(st, broken)
    assert (event.reason, event.warning) == ("Degraded", True)


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"splitPoints": ["conv2d", "no_such_layer"]}, "split point 'no_such_layer' is not a layer"),
        ({"splitPoints": ["conv2d"]}, "1 split points for 3 tiers"),
        ({"model": {"kerasApplication": "NoSuchNet"}}, "unknown model"),  # (known without TensorFlow)
    ],
)
def test_an_invalid_spec_is_failed_with_one_event_naming_the_problem(changes, needle):
    d, out = deploy(body(**changes))
    assert out.result == "failed" and out.apply == [] and out.applied_events == []
    st = out.status
    assert st["phase"] == Phase.FAILED and needle in st["message"]
    valid = next(c for c in st["conditions"] if c["type"] == Condition.VALID)
    assert (valid["status"], valid["reason"]) == ("False", Reason.INVALID_SPEC) and needle in valid["message"]
    (event,) = out.events
    assert event.reason == EventReason.INVALID_SPEC and event.warning and needle in event.message
    assert core.status_events({}, st) == []  # the InvalidSpec Event says it; no "Failed" Event besides
    # the next pass over the same spec: no second Event
    _, again = deploy(body(status=st, **changes), cause="timer")
    assert again.events == [] and again.result == "failed"


def test_a_model_that_cannot_be_built_is_failed_with_its_reason_and_one_event():
    """The model (the model Job's work in the operator; built in process here) fails: ModelReady False with the
    reason, one ModelFailed Event, nothing applied, and a Deployment's change does not refresh it to Running."""
    gone = core.ModelState(key="k", failure=("NotFound", "https://h.example/m.keras: HTTP 404 Not Found"))
    out = core.prepare(core.desired(body(), lambda si: gone), "create", existing={})
    assert out.result == "failed" and out.apply == []
    st = out.status
    assert st["phase"] == Phase.FAILED and "HTTP 404" in st["message"]
    ready = next(c for c in st["conditions"] if c["type"] == Condition.MODEL_READY)
    assert (ready["status"], ready["reason"]) == ("False", "NotFound")
    # while the Job builds: Pending, nothing applied, ModelReady Unknown
    building = core.ModelState(key="k", building="model Job splitdnn-model-x is building the graph")
    wait = core.prepare(core.desired(body(), lambda si: building), "create", existing={})
    assert wait.result == "building" and wait.apply == [] and wait.status["phase"] == Phase.PENDING
    # a spec problem is named before the model's state
    bad = core.prepare(core.desired(body(splitPoints=["conv2d"]), lambda si: building), "create", existing={})
    assert bad.status["phase"] == Phase.FAILED and "1 split points for 3 tiers" in bad.status["message"]
    (event,) = core.status_events({}, st)
    assert event.reason == EventReason.MODEL_FAILED and event.warning
    assert core.status_events(st, dict(st)) == []
    assert core.refresh({**body(status=st), "metadata": {"name": "cnn", "generation": 1}}, {}) is None


def test_a_spec_the_parser_refuses_is_failed_too():
    b = body()
    b["spec"]["tiers"][0]["netem"] = {"delay": "5 parsecs"}
    d, out = deploy(b)
    assert d.si is None and d.summary is None  # not parsed: no model loaded, nothing rendered
    assert out.apply == [] and "spec.tiers.0.netem.delay: '5 parsecs'" in out.status["message"]
    dup = body()
    dup["spec"]["tiers"][2]["name"] = "edge"  # parsed, but the cross-field check refuses it
    _, out = deploy(dup)
    assert out.apply == [] and "duplicate tier names: edge" in out.status["message"]


def test_the_api_refusing_a_child_fails_the_resource():
    d = core.desired(body())
    out = core.refused(d, "Unprocessable Entity", '{"message": "spec.template: Invalid value"}')
    assert out.result == "failed" and "API refused a child object: Unprocessable Entity" in out.status["message"]


def test_the_loops_split_is_deployed_until_the_user_changes_the_spec():
    adapted = {"splitPoints": ["max_pooling2d", "dense"], "specSplitPoints": ["conv2d", "flatten"]}
    on = {"enabled": True, "prometheusUrl": "http://p:9090"}
    _, first = deploy(body(adaptation=on))
    status = {"adapted": adapted, "splitPoints": ["conv2d", "flatten"]}
    _, out = deploy(body(adaptation=on, status=status), "resplit", as_existing(first.apply))
    assert out.plan["splitPoints"] == ["max_pooling2d", "dense"]
    assert reasons(out.applied_events) == ["SplitChanged"]
    _, edited = deploy(body(adaptation=on, splitPoints=["conv2d", "dense"], status={"adapted": adapted}), "update")
    assert edited.plan["splitPoints"] == ["conv2d", "dense"]


def auto_body(status=None):
    b = body(status=status)
    b["spec"].pop("splitPoints")
    b["spec"]["planner"]["mode"] = "auto"
    return b


def test_auto_mode_plans_from_estimates_while_profiling_jobs_run():
    d = core.desired(auto_body())
    assert d.wants_profiling
    prof = Profiling(state={t: f"{RUNNING} (Job cnn14-profile-{t})" for t in TIERS}, notes=["created Job x"])
    out = core.prepare(d, "create", {}, prof)
    assert reasons(out.events) == ["Profiling"]
    assert out.plan["predicted"]["source"] == "FLOPs estimates" and len(out.plan["splitPoints"]) == 2
    assert core.settle(d, out, {}).status["profiling"] == prof.state
    # the profiling sync failed altogether: still planned, on estimates, nothing to say
    fallback = core.prepare(core.desired(auto_body()), "create", {}, None)
    assert fallback.events == [] and fallback.plan["splitPoints"] == out.plan["splitPoints"]


def test_a_tier_left_on_estimates_is_one_event_not_one_per_pass():
    why = "Job cnn14-profile-edge succeeded but printed no profile: FLOPs estimates"
    prof = Profiling(state={"device": PROFILED, "edge": why, "cloud": PROFILED})
    first = core.prepare(core.desired(auto_body()), "create", {}, prof)
    (event,) = first.events
    assert (event.reason, event.warning, event.message) == ("ProfilingFailed", True, f"edge: {why}")
    again = core.prepare(core.desired(auto_body(status={"profiling": prof.state})), "timer", {}, prof)
    assert again.events == []


def test_refresh_from_a_child_event():
    d, out = deploy(body())
    st = core.settle(d, out, deployments_of(out.apply)).status
    obj = {**body(status=st), "apiVersion": "splitdnn.io/v1alpha1"}
    assert core.refresh(obj, deployments_of(out.apply)) is None  # nothing changed
    deps = deployments_of(out.apply)
    deps["cnn14-cloud"]["spec"]["replicas"] = 0  # someone scaled a tier to 0
    r = core.refresh(obj, deps)
    assert r.status["phase"] == "Degraded" and reasons(r.events) == ["Degraded"] and r.events[0].warning
    # a spec change not reconciled yet, or a Failed resource: the change handler owns the status
    assert core.refresh({**obj, "metadata": {**obj["metadata"], "generation": 2}}, deps) is None
    assert core.refresh({**obj, "status": {**st, "phase": "Failed"}}, deps) is None


def slicer_said(plan, message=None, exit_code=0, waiting=None, tiers=TIERS, **state):
    """`kube.slicer_reports` as the API gives it: every tier's pod of the plan's split, its slicer's state."""
    if waiting:
        one = {"waiting": waiting[0], "waitingMessage": waiting[1]}
    else:
        one = {"message": message, "exitCode": exit_code, **state}
    return {(plan["splitId"], t): dict(one) for t in tiers}


OK_REPORT = (
    '{"slices":[{"name":"slice0","tflite":"slice0/model.tflite"},{"name":"slice1","tflite_error":"Flex op Erfinv"},'
    '{"name":"slice2","tflite":"slice2/model.tflite"}],"model":{"sha256":"' + "ab" * 32 + '","bytes":2722}}'
)


def test_the_slicers_reports_give_runtimes_and_the_model_digest():
    d, out = deploy(body())
    st = core.settle(d, out, deployments_of(out.apply), slicer_said(out.plan, OK_REPORT)).status
    assert st["phase"] == Phase.RUNNING and st["model"] == {"digest": "ab" * 32, "bytes": 2722}
    assert [t["runtime"] for t in st["tiers"]] == ["litert", "tensorflow", "litert"]
    assert "Flex op Erfinv" in st["tiers"][1]["runtimeNote"] and "runtimeNote" not in st["tiers"][0]
    ready = {c["type"]: c for c in st["conditions"]}[Condition.MODEL_READY]
    assert (ready["status"], ready["reason"]) == ("True", Reason.MODEL_SLICED) and "ab" * 32 in ready["message"]
    # a report of another split says nothing about this one; what was said stands
    other = {("other-split", t): v for (_, t), v in slicer_said(out.plan, OK_REPORT).items()}
    d2, again = deploy(body(status=st), cause="timer", existing=as_existing(out.apply))
    st2 = core.settle(d2, again, deployments_of(again.apply), other).status
    assert st2["model"] == st["model"] and st2["tiers"] == st["tiers"]


@pytest.mark.parametrize(
    "said,reason,needle",
    [
        (
            {
                "message": '{"error":{"reason":"DigestMismatch","message":"https://m/x.keras: sha256 is 12, the pin '
                'says 34"}}',
                "exit_code": 2,
            },
            "DigestMismatch",
            "the pin says",
        ),
        ({"message": "loading\nKilled", "exit_code": 137, "reason": "OOMKilled"}, "OOMKilled", "exit code 137: Killed"),
        (
            {"waiting": ("CreateContainerConfigError", 'secret "creds" not found')},
            "SecretNotFound",
            'secret "creds" not found',
        ),
    ],
)
def test_a_slicer_that_fails_makes_the_resource_failed_with_one_event_until_it_recovers(said, reason, needle):
    d, out = deploy(body())
    deps = deployments_of(out.apply, ready=False)
    failed = core.settle(d, out, deps, slicer_said(out.plan, **said)).status
    assert failed["phase"] == Phase.FAILED and needle in failed["message"] and "tier device" in failed["message"]
    cond = {c["type"]: c for c in failed["conditions"]}
    assert cond[Condition.MODEL_READY]["status"] == "False" and cond[Condition.MODEL_READY]["reason"] == reason
    assert cond[Condition.VALID]["status"] == "True"  # the spec is fine; the model is not
    (event,) = core.status_events({"phase": "Deploying"}, failed)
    assert event.reason == EventReason.MODEL_FAILED and event.warning and needle in event.message
    assert core.status_events(failed, copy.deepcopy(failed)) == []  # one Event, not one per pass
    # the pods' slicers succeed later (a server back, a Secret created): a child event brings it back
    obj = {**body(status=failed), "apiVersion": "splitdnn.io/v1alpha1"}
    back = core.refresh(obj, deployments_of(out.apply), reports=slicer_said(out.plan, OK_REPORT))
    assert back.status["phase"] == Phase.RUNNING and reasons(back.events) == ["Running"]
    assert {c["type"]: c["status"] for c in back.status["conditions"]}[Condition.MODEL_READY] == "True"


def test_epoch_of_status_stamps():
    assert core.epoch("1970-01-01T00:01:00Z") == 60.0
    assert core.epoch(None) is None and core.epoch("yesterday") is None


def test_settings_are_read_once_from_the_environment():
    s = Settings.from_env(
        {
            "SPLITDNN_RESYNC_SECONDS": "2.5",
            "SPLITDNN_ADAPT_TICK_SECONDS": "1",
            "SPLITDNN_PROMQL_NAMESPACE": "true",
            "SPLITDNN_PROFILE_WAIT_SECONDS": "30",
            "POD_NAME": "op-0",
            "SPLITDNN_FAULT_PAUSE_AT": core.AFTER_FIRST_APPLY,
        }
    )
    assert s == Settings(2.5, 1.0, True, 30.0, "op-0", core.AFTER_FIRST_APPLY)
    assert Settings.from_env({}) == Settings()
    with pytest.raises(ValueError, match="SPLITDNN_RESYNC_SECONDS='soon' is not a number"):
        Settings.from_env({"SPLITDNN_RESYNC_SECONDS": "soon"})
    with pytest.raises(ValueError, match="must be > 0"):
        Settings.from_env({"SPLITDNN_ADAPT_TICK_SECONDS": "0"})
    with pytest.raises(ValueError, match="SPLITDNN_FAULT_PAUSE_AT='nowhere'"):
        Settings.from_env({"SPLITDNN_FAULT_PAUSE_AT": "nowhere"})


def test_register_binds_the_handlers_to_the_settings():
    import kopf

    from splitdnn.controller import handlers

    registry = kopf.OperatorRegistry()
    handlers.register(registry, Settings(resync_seconds=7.0, adapt_tick_seconds=3.0))
    spawning = registry._spawning.get_all_handlers()
    timers = {h.id: h.interval for h in spawning if hasattr(h, "interval")}
    assert timers == {"resync": 7.0, "adapt": 3.0}
    assert {h.id for h in registry._changing.get_all_handlers()} == {"on_change", "on_change/spec"}
    assert {h.id for h in registry._indexing.get_all_handlers()} == {"tier_deployments"}
    assert {h.id for h in registry._watching.get_all_handlers()} == {"on_child_deployment"}
    activities = {h.id for h in registry._activities.get_all_handlers()}
    assert {"login", "configure"} <= activities  # a registry of our own must bring the login


def test_a_new_model_file_rolls_the_tiers_and_its_digest_reaches_the_status():
    """The same spec, a model whose file the Job found changed (a new digest: a new pin, a new URI): the tiers'
    pod templates change (they roll to slices of the new file); the digest is in the plan and the status."""
    summary = core.in_process(core.parse(body())).summary

    def with_digest(digest):
        model = core.ModelState(key="k", summary=summary, digest=digest, bytes=1000)
        d = core.desired(body(), lambda si: model)
        out = core.prepare(d, "create", existing={})
        templates = {o["metadata"]["name"]: o["spec"]["template"] for o in out.apply if o["kind"] == "Deployment"}
        return d, out, templates

    d, out, a = with_digest("a" * 64)
    _, _, b = with_digest("b" * 64)
    assert set(a) == set(b) and all(a[n] != b[n] for n in a)
    assert out.plan["modelDigest"] == "a" * 64
    settled = core.settle(d, out, deployments_of(out.apply)).status
    assert settled["model"] == {"digest": "a" * 64, "bytes": 1000}
    ready = next(c for c in settled["conditions"] if c["type"] == Condition.MODEL_READY)
    assert (ready["status"], ready["reason"]) == ("True", "ModelBuilt")
