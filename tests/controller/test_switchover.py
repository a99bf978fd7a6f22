"""The switch-over time of a re-split (splitdnn.controller.reconcile.switched_over), without Kopf or a cluster: the
real CNN14 model and renderer, the feedback loop's status as feedback_pass.run writes it, the tier Deployments as the
API returns them during and after the roll. The operator records the figure in splitdnn_resplit_switchover_seconds
and posts it as a SwitchedOver Event (handlers.py); tests/test_dashboard.py scrapes that metric with a real
Prometheus."""

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
    st = core.settle(core.desired(body({})), first, deployments(first.apply, True), now=DECIDED - 600).status
    assert st["phase"] == Phase.RUNNING and st["splitPoints"] == points
    adapted = {"splitPoints": NEW, "specSplitPoints": START, "time": stamp(DECIDED)}
    return {**st, "adapted": adapted, "resplits": [{"time": stamp(DECIDED), "from": START, "to": NEW}]}


def test_switchover_is_the_decision_to_every_tier_of_the_new_split_ready_counted_once():
    st = running_on(START)
    d = core.desired(body(st))
    rolled = core.prepare(d, "resplit", {})
    assert rolled.plan["splitPoints"] == NEW
    # right after the apply: the Deployments still report the old template → not serving yet, no figure
    settled = core.settle(d, rolled, deployments(rolled.apply, ready=True, rolled=False), now=DECIDED + 1)
    assert settled.status["phase"] == Phase.DEGRADED and settled.switchover_seconds is None
    assert "adapted" not in settled.status and settled.events == []
    # the new pods come up: a child event refreshes the status; every tier ready on the new split → 12.5 s
    obj = {**body({**st, **settled.status}), "apiVersion": "splitdnn.io/v1alpha1"}
    r = core.refresh(obj, deployments(rolled.apply, ready=True), now=DECIDED + 12.5)
    assert r is not None and r.status["phase"] == Phase.RUNNING
    assert r.switchover_seconds == 12.5
    assert r.status["adapted"]["switchoverSeconds"] == 12.5 and r.status["adapted"]["servingTime"] == stamp(
        DECIDED + 12.5
    )
    assert r.status["adapted"]["splitPoints"] == NEW and r.status["adapted"]["time"] == stamp(DECIDED)
    switched = [e for e in r.events if e.reason == EventReason.SWITCHED_OVER]
    assert (
        len(switched) == 1
        and switched[0].message == "split max_pooling2d,dense serving 12.5s after the re-split decision"
    )
    # later passes (the resync timer) find the figure in the status: not counted again
    later = {**st, **r.status}
    d2 = core.desired(body(later))
    again = core.settle(d2, core.prepare(d2, "timer", {}), deployments(rolled.apply, ready=True), now=DECIDED + 60)
    assert again.switchover_seconds is None and again.events == []


def test_no_switchover_without_a_resplit_or_while_a_tier_is_not_ready():
    # a deployment the loop never re-split: Running, nothing to time
    first = core.prepare(core.desired(body({})), "create", {})
    plain = core.settle(core.desired(body({})), first, deployments(first.apply, True), now=DECIDED)
    assert plain.status["phase"] == Phase.RUNNING and plain.switchover_seconds is None
    # re-split decided, new template rolled out but one tier's pod not ready: not serving yet
    st = running_on(START)
    d = core.desired(body(st))
    rolled = core.prepare(d, "resplit", {})
    deps = deployments(rolled.apply, ready=True)
    deps["cnn14-edge"]["status"].update(readyReplicas=0, availableReplicas=0)
    half = core.settle(d, rolled, deps, now=DECIDED + 5)
    assert half.status["phase"] != Phase.RUNNING and half.switchover_seconds is None
    # the figure never goes negative (a decision stamp a little ahead of this clock)
    assert core.switched_over(st, {"phase": "Running", "splitPoints": NEW}, DECIDED - 3)[0] == 0.0
