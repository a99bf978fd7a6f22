"""The operator's feedback timer against the real control plane and a real Prometheus server.

A small exporter (prometheus-client) publishes the agents' metric names for SplitInference `loop` as a throttled
device → edge link would: half the frames lost, 100 kB/s measured on that link. Prometheus (Debian's binary)
scrapes it. The operator (`splitdnn operator`, a subprocess):
1. with `prometheusUrl` pointing at nothing: condition MetricsAvailable=False, one MetricsUnavailable Event, the
   split and the phase unchanged, the operator alive;
2. pointed at the real server: status.measured and status.frameDropRate from the PromQL, one re-split (Event
   Resplit, status.resplits entry {time, from, to, reason}, status.splitPoints and the Deployments' slicer
   argument changed), a SwitchedOver Event with the switch-over time once the new split's tiers are ready, and no
   second re-split within the cooldown.
"""

from __future__ import annotations

import json
import time

import pytest
from test_operator import apply, children, events_for, example, get_si, wait_phase

from harness.fixtures import OperatorProcess, kubectl, wait_for

pytestmark = [pytest.mark.controlplane, pytest.mark.closed_loop]

START = ["conv2d_1", "flatten"]


@pytest.fixture(scope="module")
def exporter():
    from harness.prometheus import start_exporter

    proc, target = start_exporter("""
        rtt.labels("loop", "device").set(0.02)
        rtt.labels("loop", "edge").set(0.002)
        bw.labels("loop", "device").set(100000.0)
        while True:
            for outcome, n in (("completed", 1), ("dropped", 1)):
                frames.labels("loop", "device", outcome).inc(n)
            for tier, seconds in (("device", 0.02), ("edge", 0.02), ("cloud", 0.005)):
                stage.labels("loop", tier).observe(seconds)
            time.sleep(0.25)
    """)
    yield target
    proc.kill()
    proc.wait(10)


def spec(url: str) -> dict:
    r = example("loop", START)
    r["spec"]["workload"]["fps"] = 4
    r["spec"]["adaptation"] = {
        "enabled": True,
        "prometheusUrl": url,
        "interval": "2s",
        "maxFrameDropRate": 0.1,
        "cooldown": "30s",
        "margin": 0.2,
    }
    return r


def condition(si, ctype):
    return next((c for c in (si.get("status") or {}).get("conditions", []) if c["type"] == ctype), None)


@pytest.fixture(scope="module")
def op(crd, ns, tmp_path_factory):
    proc = OperatorProcess(
        crd, ns, tmp_path_factory.mktemp("operator") / "operator.log", extra_env={"SPLITDNN_ADAPT_TICK_SECONDS": "1"}
    ).start()
    yield proc
    proc.stop()
    print(proc.log()[-4000:])


def test_auto_mode_deploys_the_planned_split_with_predictions(crd, ns, op, made):
    kc = crd
    made.append("auto")
    r = example("auto")
    r["spec"].pop("splitPoints")
    r["spec"]["planner"]["mode"] = "auto"
    r["spec"]["tiers"][0]["netem"] = {"delay": "5ms", "rate": "1mbit"}
    apply(kc, ns, r)
    si = wait_phase(kc, ns, "auto", "Running", op)
    st = si["status"]
    assert len(st["splitPoints"]) == 2 and st["splitPoints"] != ["conv2d", "flatten"]
    pred = st["plan"]["predicted"]
    assert pred["source"] == "FLOPs estimates" and pred["objective"] == "throughput"
    assert pred["latencySeconds"] > 0 and pred["bottleneckSeconds"] > 0 and "dropRate" in pred and pred["bottleneckAt"]
    deps = children(kc, ns, "auto")["deployments"]
    assert all(
        d["spec"]["template"]["spec"]["initContainers"][0]["command"][8] == ",".join(st["splitPoints"])
        for d in deps.values()
    )
    # a profiling Job per tier on that tier's nodes
    jobs = {
        j["metadata"]["name"]: j for j in json.loads(kubectl(kc, "get", "jobs", "-n", ns, "-o", "json").stdout)["items"]
    }
    for t in ("device", "edge", "cloud"):
        pod = jobs[f"auto-profile-{t}"]["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"splitdnn.io/tier": t}
    assert "Profiling" in [r for r, _ in events_for(kc, ns, "auto")]
    # profiles in the ConfigMap (as finished Jobs leave them, or made by hand) replace the estimates: a device
    # that is very slow after conv2d makes the planner cut right after it
    from splitdnn.controller.plan import model_summary
    from splitdnn.planner.blocks import blocks_of

    blocks = blocks_of(model_summary("cnn14"))

    def profile(tier, slow_after_first):
        return json.dumps(
            {
                "format": "splitdnn.profile/1",
                "model": "cnn14",
                "tier": tier,
                "blocks": [
                    {"name": b["name"], "time": 10.0 if slow_after_first and k else 1e-4} for k, b in enumerate(blocks)
                ],
            }
        )

    # kwok completes Job pods without running them: each Job succeeds and prints nothing. The tiers stay on the
    # estimates, status.profiling says why, and each says it in one Event (not one per reconcile)
    si = wait_for(
        lambda: (
            (s := get_si(kc, ns, "auto"))
            and len([v for v in (s["status"].get("profiling") or {}).values() if "printed no profile" in v]) == 3
            and s
        ),
        timeout=120,
        what="status.profiling: the three Jobs printed no profile",
    )
    assert si["status"]["plan"]["predicted"]["source"] == "FLOPs estimates"
    time.sleep(op.resync)
    failed = [m for r, m in events_for(kc, ns, "auto") if r == "ProfilingFailed"]
    assert {m.split(":")[0] for m in failed} == {"cloud", "device", "edge"}, failed
    time.sleep(4 * op.resync)  # four more reconciles, no more Events
    assert len([r for r, _ in events_for(kc, ns, "auto") if r == "ProfilingFailed"]) == len(failed)
    kubectl(
        kc,
        "create",
        "configmap",
        "auto-profiles",
        "-n",
        ns,
        *[f"--from-literal={t}.json={profile(t, t == 'device')}" for t in ("device", "edge", "cloud")],
    )
    si = wait_for(
        lambda: (s := get_si(kc, ns, "auto"))["status"]["plan"]["predicted"].get("source") == "profiles" and s,
        timeout=60,
        what="planned with the profiles",
    )
    assert si["status"]["splitPoints"][0] == "conv2d"


def test_feedback_timer_measures_and_resplits_once(crd, ns, exporter, op):
    from harness.prometheus import PrometheusServer, free_port, prometheus_binary

    if prometheus_binary() is None:
        pytest.skip("prometheus binary not installed (scripts/install.sh installs Debian's package)")
    kc = crd
    try:
        with PrometheusServer([exporter]) as server:
            # 1. Prometheus unreachable: condition + one Event, the split stays, no crash
            apply(kc, ns, spec(f"http://127.0.0.1:{free_port()}"))
            wait_phase(kc, ns, "loop", "Running", op)
            si = wait_for(
                lambda: (
                    (s := get_si(kc, ns, "loop"))
                    and (c := condition(s, "MetricsAvailable"))
                    and c["status"] == "False"
                    and s
                ),
                timeout=120,
                what="MetricsAvailable=False",
            )
            assert "unreachable" in condition(si, "MetricsAvailable")["message"]
            time.sleep(6)  # several more intervals: still one Event, still the same split
            si = get_si(kc, ns, "loop")
            assert si["status"]["splitPoints"] == START and si["status"]["phase"] == "Running"
            assert not si["status"].get("resplits")
            ready_since = next(c for c in si["status"]["conditions"] if c["type"] == "Ready")["lastTransitionTime"]
            warnings = [m for r, m in events_for(kc, ns, "loop") if r == "MetricsUnavailable"]
            assert len(warnings) == 1 and "keeping split conv2d_1,flatten" in warnings[0], warnings
            assert op.alive()

            # 2. the real server: measured figures, one re-split, the tiers rolled to it
            server.wait_for('sum(splitdnn_frames_total{si="loop"})', lambda v: v > 0, timeout=60)
            apply(kc, ns, spec(server.url))
            # (not within the cooldown of the tiers becoming ready: a fresh deployment's warm-up is not judged)
            si = wait_for(
                lambda: (s := get_si(kc, ns, "loop")) and s["status"].get("resplits") and s,
                timeout=180,
                what="a re-split",
            )
            from splitdnn.controller.reconcile import epoch as _epoch

            assert _epoch(si["status"]["resplits"][0]["time"]) - _epoch(ready_since) >= 30 - 1
            st = si["status"]
            (entry,) = st["resplits"]
            assert entry["from"] == START and entry["to"] != START and entry["to"] == st["adapted"]["splitPoints"]
            assert "> SLO 0.100" in entry["reason"] and entry["time"].endswith("Z")
            assert entry["figures"]["best"]["bottleneckSeconds"] < entry["figures"]["current"]["bottleneckSeconds"]
            assert entry["figures"]["measured"]["linkBandwidthBytesPerSecond"] == {"device": 100000.0}
            assert st["frameDropRate"] == pytest.approx(0.5, abs=0.1)
            assert st["measured"]["dropRate"] == pytest.approx(0.5, abs=0.1)
            assert set(st["measured"]["computeSeconds"]) == {"device", "edge", "cloud"}
            assert condition(si, "MetricsAvailable")["status"] == "True"
            new = entry["to"]
            wait_for(
                lambda: get_si(kc, ns, "loop")["status"].get("splitPoints") == new,
                timeout=60,
                what="status.splitPoints = the new split",
            )
            wait_phase(kc, ns, "loop", "Running", op)

            def rolled():
                deps = children(kc, ns, "loop")["deployments"]
                return all(
                    d["spec"]["template"]["spec"]["initContainers"][0]["command"][8] == ",".join(new)
                    for d in deps.values()
                )

            wait_for(rolled, timeout=60, what="Deployments rendered with the new split")
            # every tier of the new split ready (kwok's pods): the switch-over time, once, as an Event and in status
            switched = wait_for(
                lambda: [m for r, m in events_for(kc, ns, "loop") if r == "SwitchedOver"],
                timeout=60,
                what="a SwitchedOver Event",
            )
            adapted = get_si(kc, ns, "loop")["status"]["adapted"]
            assert switched == [
                f"split {','.join(new)} serving {adapted['switchoverSeconds']:g}s after the re-split decision"
            ]
            assert 0 <= adapted["switchoverSeconds"] <= 120 and adapted["time"] == entry["time"]
            reasons = [r for r, _ in events_for(kc, ns, "loop")]
            assert reasons.count("Resplit") == 1 and "SplitChanged" in reasons and "MetricsAvailable" in reasons
            # the drop rate stays over the SLO, but the cooldown holds: no flapping
            time.sleep(8)
            si = get_si(kc, ns, "loop")
            assert len(si["status"]["resplits"]) == 1 and si["status"]["splitPoints"] == new
            assert "cooldown" in si["status"]["measured"]["decision"]
            assert [r for r, _ in events_for(kc, ns, "loop")].count("SwitchedOver") == 1  # counted once
            # the spec still says what the user wrote; the loop's choice lives in status
            assert si["spec"]["splitPoints"] == START
            assert op.alive()
    finally:
        kubectl(kc, "delete", "si", "loop", "-n", ns, "--wait=false", check=False)


def test_operator_killed_mid_resplit_finishes_it_and_the_cooldown_holds(crd, own_ns, tmp_path):
    """The feedback timer decides a re-split and the operator is SIGKILLed after the first tier is rolled to it
    (fault-injection point resplit-after-first-tier: before Kopf would write the decision to status). A fresh
    operator must finish that re-split — every tier on the chosen split, one Resplit in status — and not decide
    another within the cooldown, nor roll the tier it already moved back and forth."""
    from harness.prometheus import PrometheusServer, prometheus_binary, start_exporter
    from splitdnn.controller.reconcile import RESPLIT_AFTER_FIRST_TIER, epoch

    if prometheus_binary() is None:
        pytest.skip("prometheus binary not installed (scripts/install.sh installs Debian's package)")
    kc, ns, name = crd, own_ns, "crashloop"
    proc, target = start_exporter(
        """
        rtt.labels("crashloop", "device").set(0.02)
        bw.labels("crashloop", "device").set(100000.0)
        while True:
            for outcome in ("completed", "dropped"):
                frames.labels("crashloop", "device", outcome).inc(1)
            for tier, seconds in (("device", 0.02), ("edge", 0.02), ("cloud", 0.005)):
                stage.labels("crashloop", tier).observe(seconds)
            time.sleep(0.25)
        """
    )
    env = {"SPLITDNN_ADAPT_TICK_SECONDS": "1"}
    paused = OperatorProcess(
        kc, ns, tmp_path / "paused.log", extra_env={**env, "SPLITDNN_FAULT_PAUSE_AT": RESPLIT_AFTER_FIRST_TIER}
    )
    operator = OperatorProcess(kc, ns, tmp_path / "operator.log", extra_env=env)
    try:
        with PrometheusServer([target]) as server:
            server.wait_for('sum(splitdnn_frames_total{si="crashloop"})', lambda v: v > 0, timeout=60)
            resource = spec(server.url)
            resource["metadata"]["name"] = name
            resource["spec"]["adaptation"]["cooldown"] = "20s"
            paused.start()
            apply(kc, ns, resource)
            wait_for(
                lambda: f"fault injection: paused at {RESPLIT_AFTER_FIRST_TIER}" in paused.log() or not paused.alive(),
                timeout=240,
                interval=0.2,
                what="the operator paused in the middle of a re-split",
            )
            assert paused.alive(), paused.log()[-4000:]
            deps = children(kc, ns, name)["deployments"]
            cuts = {n: d["spec"]["template"]["spec"]["initContainers"][0]["command"][8] for n, d in deps.items()}
            moved = [n for n, c in cuts.items() if c != ",".join(START)]
            assert len(moved) == 1, cuts  # one tier rolled to the new split, the others not yet
            new = cuts[moved[0]]
            generation = deps[moved[0]]["metadata"]["generation"]
            paused.kill()
            print(f"killed mid-resplit: {moved[0]} on {new}, the others on {','.join(START)}")

            operator.start()

            def finished():
                st = get_si(kc, ns, name).get("status") or {}
                kids = children(kc, ns, name)["deployments"]
                done = all(
                    d["spec"]["template"]["spec"]["initContainers"][0]["command"][8] == new for d in kids.values()
                )
                return done and ",".join(st.get("splitPoints") or []) == new and st

            st = wait_for(finished, timeout=120, what=f"every tier on {new} and status.splitPoints = it")
            assert ",".join(st["resplits"][0]["to"]) == new, st["resplits"]
            # the tier moved before the kill was not rolled back and forth: its template changed no more
            assert children(kc, ns, name)["deployments"][moved[0]]["metadata"]["generation"] == generation
            # the drop rate stays over the SLO, so the loop re-splits again, but never within the cooldown of the
            # last re-split: the restarted operator knows when that was
            time.sleep(25)
            entries = get_si(kc, ns, name)["status"]["resplits"]
            stamps = [epoch(e["time"]) for e in entries]
            print("re-splits:", [(e["time"], ",".join(e["to"])) for e in entries])
            assert all(b - a >= 20 - 1 for a, b in zip(stamps, stamps[1:])), entries
            assert [r for r, _ in events_for(kc, ns, name)].count("Resplit") == len(entries)
            assert operator.alive(), operator.log()[-4000:]
    finally:
        kubectl(kc, "delete", "si", name, "-n", ns, "--wait=false", check=False)
        paused.stop()
        operator.stop()
        proc.kill()
        proc.wait(10)
        print(operator.log()[-3000:])
