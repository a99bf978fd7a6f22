"""The switch-over time of a re-split (splitdnn.controller.reconcile.switched_over, through `refresh`), without Kopf
or a cluster: the real CNN14 model and renderer, the feedback loop's status as feedback_pass.run writes it, the tier
Deployments as the API returns them during and after the roll. The operator records the figure in
splitdnn_resplit_switchover_seconds and posts it as a SwitchedOver Event (handlers.py); tests/test_dashboard.py
scrapes that metric with a real Prometheus, tests/controlplane/test_operator_feedback.py checks the Event."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from splitdnn.controller import reconcile as core
from splitdnn.controller.status import EventReason, Phase, stamp

ROOT = Path(__file__).resolve().parents[2]
START = ["conv2d", "flatten"]
NEW = ["max_pooling2d", "dense"]
DECIDED = 1_000_000.0
ON = {"enabled": True, "prometheusUrl": "http://p:9090"}


def body(status: dict) -> dict:
    r = yaml.safe_load((ROOT / "examples" / "cnn14.yaml").read_text())
    r["metadata"].update(name="cnn14", namespace="ns", generation=1, uid="u-1")
    r["spec"].update(splitPoints=START, adaptation=ON)
    r["status"] = status
    return r


def deployments(objs: list[dict], ready: bool, rolled: bool = True) -> dict:
    """The tier Deployments as read back: `rolled` False = the template changed and the controller has not
    observed it yet (generation 2, observedGeneration 1), as right after the re-split's apply."""
    out = {}
    for o in objs:
        if o["kind"] != "Deployment":
            continue
        d = copy.deepcopy(o)
        d["metadata"]["generation"] = 2
        n = 1 if ready else 0
        d["status"] = {
            "observedGeneration": 2 if rolled else 1,
            "replicas": 1,
            "updatedReplicas": 1 if rolled else 0,
            "readyReplicas": n,
            "availableReplicas": n,
        }
        out[d["metadata"]["name"]] = d
    return out


def running_on(points: list[str]) -> dict:
    """A Running status on `points`, then the loop's re-split to NEW (as feedback_pass.run patches it)."""
    first = core.prepare(core.desired(body({})), "create", {})
    st = core.settle(core.desired(body({})), first, deployments(first.apply, True)).status
    assert st is not None and st["phase"] == Phase.RUNNING and st["splitPoints"] == points
    adapted = {"splitPoints": NEW, "specSplitPoints": START, "time": stamp(DECIDED)}
    return {**st, "adapted": adapted, "resplits": [{"time": stamp(DECIDED), "from": START, "to": NEW}]}


def resplit_applied() -> tuple[dict, list[dict]]:
    """The status the re-split's reconcile writes right after its apply (the Deployments still report the old
    template: not serving yet), and the objects it applied."""
    st = running_on(START)
    d = core.desired(body(st))
    rolled = core.prepare(d, "resplit", {})
    assert rolled.plan is not None and rolled.plan["splitPoints"] == NEW
    settled = core.settle(d, rolled, deployments(rolled.apply, ready=True, rolled=False))
    assert settled.status is not None and settled.status["phase"] == Phase.DEGRADED
    assert "adapted" not in settled.status  # the reconcile never times the switch-over (see reconcile.refresh)
    return {**st, **settled.status}, rolled.apply


def owner(status: dict) -> dict:
    return {**body(status), "apiVersion": "splitdnn.io/v1alpha1"}


def test_switchover_is_the_decision_to_every_tier_of_the_new_split_ready_counted_once():
    st, applied = resplit_applied()
    # a first pod of the new split comes up: not every tier ready, no figure
    deps = deployments(applied, ready=True)
    deps["cnn14-edge"]["status"].update(readyReplicas=0, availableReplicas=0)
    r = core.refresh(owner(st), deps, now=DECIDED + 4)
    assert r is not None and r.status is not None and r.status["phase"] != Phase.RUNNING
    assert r.switchover_seconds is None and "adapted" not in r.status
    # the last one: every tier ready on the new split → 12.5 s after the decision
    r = core.refresh(owner({**st, **r.status}), deployments(applied, ready=True), now=DECIDED + 12.5)
    assert r is not None and r.status is not None and r.status["phase"] == Phase.RUNNING
    assert r.switchover_seconds == 12.5
    adapted = r.status["adapted"]
    assert adapted["switchoverSeconds"] == 12.5 and adapted["servingTime"] == stamp(DECIDED + 12.5)
    assert adapted["splitPoints"] == NEW and adapted["time"] == stamp(DECIDED)
    switched = [e for e in r.events if e.reason == EventReason.SWITCHED_OVER]
    assert [e.message for e in switched] == ["split max_pooling2d,dense serving 12.5s after the re-split decision"]
    # later child events find the figure in the status: nothing to write, not counted again
    assert core.refresh(owner({**st, **r.status}), deployments(applied, ready=True), now=DECIDED + 60) is None


def test_a_timer_pass_that_saw_the_new_split_ready_first_leaves_the_figure_to_the_child_event():
    st, applied = resplit_applied()
    # the resync timer's reconcile read the Deployments ready before the child event came: Running, no figure
    d = core.desired(body(st))
    timer = core.settle(d, core.prepare(d, "timer", {}), deployments(applied, ready=True))
    assert timer.status is not None and timer.status["phase"] == Phase.RUNNING and "adapted" not in timer.status
    # the child event's refresh still times it, although readiness did not change
    r = core.refresh(owner({**st, **timer.status}), deployments(applied, ready=True), now=DECIDED + 7)
    assert r is not None and r.switchover_seconds == 7.0 and reasons(r.events) == ["SwitchedOver"]


def test_no_switchover_without_a_resplit():
    first = core.prepare(core.desired(body({})), "create", {})
    st = core.settle(core.desired(body({})), first, deployments(first.apply, True)).status
    assert st is not None
    deps = deployments(first.apply, True)
    deps["cnn14-cloud"]["spec"]["replicas"] = 0
    r = core.refresh(owner(st), deps, now=DECIDED)
    assert r is not None and r.switchover_seconds is None and EventReason.SWITCHED_OVER not in reasons(r.events)
    # the figure never goes negative (a decision stamp a little ahead of this clock)
    adapted = {"splitPoints": NEW, "time": stamp(DECIDED)}
    assert core.switched_over({"adapted": adapted}, {"phase": "Running", "splitPoints": NEW}, DECIDED - 3)[0] == 0.0


def reasons(events: list) -> list[str]:
    return [str(e.reason) for e in events]
