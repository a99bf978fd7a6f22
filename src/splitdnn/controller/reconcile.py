"""The reconcile decisions, without Kopf and without an API client: the shell (handlers.py) reads the cluster, calls
these functions and carries out what they return — objects to apply, a status to write, Events to post.

One reconcile serves create, spec update, resume, the drift-repair timer and a re-split of the feedback loop:
`desired` (parse, load the model, validate) → the shell runs the profiling Jobs when `wants_profiling` →
`prepare` (plan, render; the Events of this pass) → the shell applies → the shell retires old splits'
Services (`old_splits`) → `settle` (status from the Deployments as they are after the apply).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from splitdnn.controller import plan as plan_mod
from splitdnn.controller import render
from splitdnn.controller import status as status_mod
from splitdnn.controller.status import EventReason, Phase
from splitdnn.graph import GraphSummary
from splitdnn.planner import deploy
from splitdnn.spec import GROUP, KIND, VERSION, SpecError, SplitInference, from_resource

# Named points where a test can hold the reconcile (Settings.pause_at) and kill the operator there.
AFTER_FIRST_APPLY = "after-first-apply"  # one child applied, the others not yet
# a re-split the feedback timer decided: its first tier's Deployment applied, the others not yet
RESPLIT_AFTER_FIRST_TIER = "resplit-after-first-tier"
PAUSE_POINTS = (AFTER_FIRST_APPLY, RESPLIT_AFTER_FIRST_TIER)


@dataclass(frozen=True)
class Event:
    reason: str  # an EventReason or a Phase
    message: str
    warning: bool = False


@dataclass(frozen=True)
class ModelState:
    """What is known of the model a spec names: its graph (from the artifact store, or built here by `in_process`),
    or why not yet (`building`: the model Job is at it) or never (`failure`: reason, message)."""

    key: str | None = None
    summary: GraphSummary | None = None
    digest: str | None = None
    bytes: int | None = None
    building: str | None = None
    failure: tuple[str, str] | None = None


ModelLookup = Callable[[SplitInference], ModelState]


def in_process(si: SplitInference) -> ModelState:
    """The model's graph built in this process with TensorFlow: `splitdnn render` and the core's tests. The
    operator uses the artifact store instead (`controller.model_job`)."""
    shape = tuple(si.input_shape) if si.input_shape else None
    try:
        return ModelState(summary=plan_mod.model_summary(si.model_source, shape), key=render.model_key(si))
    except plan_mod.ModelUnavailable:
        return ModelState(key=render.model_key(si))
    except Exception as exc:  # noqa: BLE001 - ModelSourceError, ValueError from Keras builders: the model is wrong
        msg = str(exc) if str(exc).startswith("unknown model") else f"cannot load model {si.model_source!r}: {exc}"
        return ModelState(failure=(getattr(exc, "reason", "InvalidModel"), msg), key=render.model_key(si))


@dataclass
class Desired:
    """What the resource asks for: its parsed spec (with the loop's split, see `effective_spec`) and model."""

    name: str
    namespace: str
    generation: int
    previous: dict  # the status as read
    si: SplitInference | None = None
    summary: GraphSummary | None = None
    problems: list[str] = field(default_factory=list)
    model: ModelState = field(default_factory=ModelState)

    @property
    def wants_profiling(self) -> bool:
        """planner.mode auto without split points: the planner chooses, from per-tier profiles where there are."""
        return bool(not self.problems and self.si is not None and self.summary is not None and self.si.planner_chooses)


@dataclass
class Outcome:
    """What one pass decided. `apply`: children to server-side apply, in order; `events`: post now;
    `applied_events`: post once `apply` went through; `status`: the new status (written when it differs from
    the previous one, see `status_events`); `result` for the reconcile counter."""

    apply: list[dict] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    applied_events: list[Event] = field(default_factory=list)
    status: dict | None = None
    result: str = "ok"
    plan: dict | None = None
    profiling: dict | None = None  # status.profiling (tier -> state)
    switchover_seconds: float | None = None  # the loop's new split just started serving (see `switched_over`)

    @property
    def phase(self) -> str | None:
        return (self.status or {}).get("phase")


def effective_spec(spec: dict, status: dict) -> dict:
    """The spec with the split the feedback loop chose (`status.adapted`), as long as adaptation is on and the
    user has not changed `splitPoints` since (a new spec split wins, and the loop starts from it)."""
    adapted = (status or {}).get("adapted") or {}
    if (
        (spec.get("adaptation") or {}).get("enabled")
        and adapted.get("splitPoints")
        and list(adapted.get("specSplitPoints") or []) == list(spec.get("splitPoints") or [])
    ):
        spec = dict(spec)
        spec["splitPoints"] = list(adapted["splitPoints"])
    return spec


def with_status(body: dict, status: dict) -> dict:
    """`body` as it will be once `status` is written (a re-split reconciles with the split it just chose)."""
    return {**body, "status": status}


def epoch(stamp: Any) -> float | None:
    """Seconds since the epoch of a status time stamp (`2026-01-01T00:00:00Z`); None when there is none."""
    if not stamp:
        return None
    try:
        return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except (TypeError, ValueError):
        return None


def parse(body: dict) -> SplitInference:
    """The SplitInference of a resource body, with the loop's split; raises SpecError."""
    meta = body["metadata"]
    previous = dict(body.get("status") or {})
    return from_resource(
        {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "metadata": {"name": meta["name"], "namespace": meta.get("namespace", "default")},
            "spec": effective_spec(dict(body.get("spec") or {}), previous),
        }
    )


def desired(body: dict, lookup: ModelLookup = in_process) -> Desired:
    """Parse and validate; `lookup` gives the model's graph (the operator's reads the artifact store)."""
    meta = body["metadata"]
    d = Desired(
        name=meta["name"],
        namespace=meta.get("namespace", "default"),
        generation=meta.get("generation", 0),
        previous=dict(body.get("status") or {}),
    )
    try:
        d.si = parse(body)
    except SpecError as exc:
        d.problems = [str(exc)]
        return d
    # before the shell lists children by a label holding the name (a name too long for a label value is a 400);
    # and what the spec says wrong without the model's layers: no model Job for a spec that cannot deploy anyway
    d.problems = plan_mod.problems(d.si, None, need_model=False)
    if not d.problems:
        d.model = lookup(d.si)
        d.summary = d.model.summary
    return d


def failed(d: Desired, problems: list[str]) -> Outcome:
    """The resource is Failed: a condition and (once per distinct problem) an Event name the problem; its
    children are left as they are."""
    new = status_mod.failed_status(d.previous, d.generation, problems)
    events = []
    if (
        d.previous.get("phase") != Phase.FAILED
        or d.previous.get("message") != new["message"]
        or d.previous.get("observedGeneration") != d.generation
    ):
        events.append(Event(EventReason.INVALID_SPEC, new["message"][:1000], warning=True))
    return Outcome(events=events, status=new, result="failed")


def profiling_events(profiling: Any, previous: dict) -> list[Event]:
    """One Event per profiling action, and one when a tier is left on estimates (not one per pass)."""
    events = [Event(EventReason.PROFILING, note) for note in profiling.notes]
    for tier, why in profiling.on_estimates.items():
        if why != (previous.get("profiling") or {}).get(tier):
            events.append(Event(EventReason.PROFILING_FAILED, f"{tier}: {why}", warning=True))
    return events


def prepare(
    d: Desired,
    cause: str,
    existing: dict,
    profiling: Any = None,
    stored_profiles: dict | None = None,
) -> Outcome:
    """Plan and render. `existing`: the children as listed before applying ((kind, name) → object);
    `profiling`: profiling.Profiling of this pass when `d.wants_profiling` (None: its sync failed, estimates);
    `stored_profiles`: per-tier profiles from the ConfigMap (for the predicted figures of a fixed split)."""
    if d.problems or d.si is None:
        return failed(d, d.problems)
    if d.model.failure is not None or d.model.building is not None:  # no plan without the graph: nothing applied
        new = status_mod.model_status(d.previous, d.generation, d.model.building, d.model.failure)
        return Outcome(status=new, result="failed" if d.model.failure else "building")
    si, summary = d.si, d.summary
    events: list[Event] = []
    estimate = None
    problems: list[str] = []
    if d.wants_profiling and summary is not None:
        from splitdnn.planner import Infeasible

        profiles: dict = {}
        if profiling is not None:
            events += profiling_events(profiling, d.previous)
            # all profiles at once: one roll from the estimates' split, not one per arriving profile
            profiles = {} if profiling.waiting else profiling.profiles
        try:  # the planner chooses; the feedback loop's later choices come through effective_spec
            points, estimate = deploy.choose(si, summary, profiles)
            si.spec["splitPoints"] = points
        except Infeasible as exc:
            problems.append(f"planner.mode auto: {exc}")
    problems += plan_mod.problems(si, summary)
    if problems:
        out = failed(d, problems)
        out.events = events + out.events
        return out

    plan = plan_mod.build_plan(si, summary)
    if d.model.digest:  # a new model file is a new plan: the tiers roll to it
        plan["modelDigest"] = d.model.digest
    if summary:
        try:
            plan["predicted"].update(
                estimate or deploy.predicted(si, summary, plan["splitPoints"], stored_profiles or {})
            )
        except ValueError as exc:  # a multi-tensor cut the planner's blocks do not have: no estimate
            plan["predicted"]["estimateError"] = str(exc)
    objs = render.render_all(si, plan)
    missing = [
        f"{o['kind']}/{o['metadata']['name']}" for o in objs if (o["kind"], o["metadata"]["name"]) not in existing
    ]
    old_points = d.previous.get("splitPoints")
    points = plan["splitPoints"]
    applied: list[Event] = []
    # (a new split brings new per-split Services, so some children are always missing then: not drift)
    split_changed = old_points is not None and old_points != points
    if cause == "timer" and missing and len(missing) < len(objs) and not split_changed:
        applied.append(Event(EventReason.DRIFT_REPAIRED, f"re-created {', '.join(missing)}", warning=True))
    elif missing and len(missing) == len(objs):
        applied.append(
            Event(
                EventReason.DEPLOYED,
                f"created {len(si.tiers)} tiers ({', '.join(si.tier_names)}) split at {','.join(points) or '-'}",
            )
        )
    if split_changed and len(missing) < len(objs):
        applied.append(
            Event(
                EventReason.SPLIT_CHANGED,
                f"rolling tiers from {','.join(old_points or []) or '-'} to {','.join(points)}",
            )
        )
    return Outcome(
        apply=objs,
        events=events,
        applied_events=applied,
        plan=plan,
        profiling=profiling.state if profiling is not None else None,
    )


def refused(d: Desired, reason: str, body: str) -> Outcome:
    """The API refused a rendered child (400/422): the spec made it invalid."""
    return failed(d, [f"API refused a child object: {reason}: {(body or '')[:300]}"])


def old_splits(existing: dict, current: str) -> dict[str, list[str]]:
    """{split id: its per-split Service names} for the splits other than `current` (the shell deletes a split's
    Services once no pod of it is left: terminating pods still drain frames through them)."""
    old: dict[str, list[str]] = {}
    for (kind, n), o in existing.items():
        split = (o["metadata"].get("labels") or {}).get(render.LABEL_SPLIT)
        if kind == "Service" and split and split != current:
            old.setdefault(split, []).append(n)
    return {split: sorted(names) for split, names in sorted(old.items())}


def stale_coop_groups(existing: dict, applied: list[dict], deployments: dict) -> dict[str, list[tuple[str, str]]]:
    """{tier: [(kind, name)]} of the device StatefulSets and their Services that exist but were not rendered this
    pass (the tier's devices went to 1, or planner.coop to off), for tiers whose Deployment (`deployments`: name →
    object as read after the apply) has rolled out: the old coordinator still uses its devices until then."""
    rendered = {(o["kind"], o["metadata"]["name"]) for o in applied}
    stale: dict[str, list[tuple[str, str]]] = {}
    for key, o in sorted(existing.items()):
        tier = (o["metadata"].get("labels") or {}).get(render.LABEL_COOP_GROUP)
        if key[0] not in ("StatefulSet", "Service") or tier is None or key in rendered:
            continue
        si_name = o["metadata"]["labels"].get(render.LABEL_SI, "")
        if status_mod.deployment_ready(deployments.get(render.object_name(si_name, tier)))["updated"]:
            stale.setdefault(tier, []).append(key)
    return stale


def retired_event(split: str, names: list[str]) -> Event:
    return Event(EventReason.SPLIT_RETIRED, f"split {split} has no pods left: deleted {', '.join(names)}")


def settle(d: Desired, prepared: Outcome, deployments: dict, reports: dict | None = None) -> Outcome:
    """The status after the apply: `deployments` are the tier Deployments as read back (name → object), `reports`
    the tier pods' slicer reports (`status.running_status`)."""
    assert d.si is not None and prepared.plan is not None
    new = status_mod.running_status(d.si, prepared.plan, deployments, d.previous, d.generation, reports)
    if "modelJob" in d.previous:
        new["modelJob"] = None  # (merge patch: null deletes the key)
    if d.model.digest:
        new.setdefault("model", {"digest": d.model.digest, "bytes": d.model.bytes})
        status_mod.model_built(new, d.previous, d.model.digest)
    if prepared.profiling:
        new["profiling"] = prepared.profiling
    return Outcome(status=new, plan=prepared.plan, profiling=prepared.profiling)


def switched_over(previous: dict, new: dict, now: float) -> tuple[float | None, list[Event]]:
    """The switch-over time of the feedback loop's last re-split: from its decision (`status.adapted.time`) to the
    first status that sees every tier of the new split ready (phase Running: each Deployment rolled, no pod of the
    old template left, all replicas ready and available). Counted once: `new["adapted"]` gets `switchoverSeconds`
    and `servingTime`, and a later pass finds them. Returns (seconds or None, the SwitchedOver Event).
    Status stamps have whole seconds, so the figure is up to 1 s high."""
    adapted = previous.get("adapted") or {}
    decided = epoch(adapted.get("time"))
    if (
        decided is None
        or "switchoverSeconds" in adapted
        or new.get("phase") != Phase.RUNNING
        or list(new.get("splitPoints") or []) != list(adapted.get("splitPoints") or [])
    ):
        return None, []
    seconds = round(max(0.0, now - decided), 3)
    new["adapted"] = {**adapted, "switchoverSeconds": seconds, "servingTime": status_mod.stamp(now)}
    points = ",".join(new.get("splitPoints") or [])
    return seconds, [
        Event(EventReason.SWITCHED_OVER, f"split {points} serving {seconds:g}s after the re-split decision")
    ]


def status_events(previous: dict, new: dict) -> list[Event]:
    """One Event per phase change (a warning for Degraded; Failed has its InvalidSpec Event, or ModelFailed once per
    distinct slicer failure)."""
    phase = new.get("phase")
    if phase == Phase.FAILED and status_mod.model_failed(new):
        changed = not status_mod.model_failed(previous) or previous.get("message") != new.get("message")
        return [Event(EventReason.MODEL_FAILED, new.get("message", ""), warning=True)] if changed else []
    if phase == previous.get("phase") or not status_mod.status_changed(previous, new):
        return []
    if phase in (Phase.RUNNING, Phase.DEPLOYING, Phase.PENDING):
        return [Event(str(phase), new.get("message", ""))]
    if phase == Phase.DEGRADED:
        return [Event(str(phase), new.get("message", ""), warning=True)]
    return []


def refresh(obj: dict, deployments: dict, now: float | None = None, reports: dict | None = None) -> Outcome | None:
    """A tier's Deployment changed: the owner's status with readiness recomputed from the plan already in its
    status, or None when the change handler or the timer own the status (Failed, or a spec change not
    reconciled yet) or nothing changed. `now` (seconds since the epoch; default: the clock) times the switch-over
    of a re-split (`switched_over`). Only this path computes it: the shell writes this status on the condition
    that the owner has not changed since it was read, so two passes never both count one switch-over (a timer's
    reconcile works on a body that may predate the last write). The last Deployment change of a roll always comes
    here, with the Deployments as that change left them."""
    meta = obj["metadata"]
    previous = dict(obj.get("status") or {})
    generation = meta.get("generation", 0)
    plan = previous.get("plan")
    if (
        previous.get("phase") is None
        or (previous.get("phase") == Phase.FAILED and not status_mod.model_failed(previous))  # the spec's problem
        or not plan
        or previous.get("modelJob")  # the model Job's status: the next reconcile pass owns it
        or previous.get("observedGeneration") != generation
    ):
        return None
    try:
        si = from_resource(
            {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "metadata": {"name": meta["name"], "namespace": meta.get("namespace", "default")},
                "spec": obj.get("spec") or {},
            }
        )
    except SpecError:
        return None
    new = status_mod.running_status(si, plan, deployments, previous, generation, reports)
    seconds, switched = switched_over(previous, new, time.time() if now is None else now)
    if not status_mod.status_changed(previous, new):
        return None
    return Outcome(status=new, events=status_events(previous, new) + switched, switchover_seconds=seconds)


class RenderError(ValueError):
    """A spec the operator would put in phase Failed; the message names the problems."""


def offline(si: SplitInference, split_points: list[str] | None = None) -> list[dict]:
    """`splitdnn render`: the children a create reconcile applies for `si`, through the same `desired` and
    `prepare`, with no cluster: no profiles (planner.mode auto plans from FLOPs estimates, as the operator does
    before any profile arrives) and no existing children. `split_points` stands for a split the operator would
    deploy instead of spec.splitPoints (the feedback loop's). Owner references need the live resource's uid and
    are left out; the resource's labels are copied as kopf.adopt does."""
    import kopf

    spec = dict(si.spec)
    if split_points is not None:
        spec["splitPoints"] = list(split_points)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": si.name, "namespace": si.namespace, "generation": 1},
        "spec": spec,
    }
    out = prepare(desired(body), "create", existing={})
    if out.phase == Phase.FAILED:
        raise RenderError((out.status or {}).get("message", "invalid SplitInference"))
    kopf.label(out.apply, labels=si.labels)
    return out.apply
