"""The closed loop for real (issue #5): a real Prometheus server scrapes real agents in network namespaces; the
loop step the operator's timer runs (`splitdnn.feedback.step`) reads it, re-plans with the measured figures and
decides; a local actuator re-splits by starting the new slices beside the old ones (surge) and draining the old.

Scenario: CNN14 on device → edge → cloud, cut after conv2d_1 (147,456 B per frame on the device → edge link: fine
on a fast link). Then real `tc tbf` throttles the device's veth to 2 mbit (250 kB/s: 0.59 s per frame at 4 fps);
frames pile up, the drop rate rises over the SLO; the loop re-plans with the measured bandwidth and moves the cut
later (a small tensor on the slow link); the drop rate falls below the SLO. The assertions are on the sequence
of loop steps, never on wall-clock numbers.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from splitdnn.agent import netns
from splitdnn.agent.local import stop_all, wait_ready

NETNS_OK, NETNS_WHY = netns.available()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.closed_loop,
    pytest.mark.skipif(not NETNS_OK, reason=f"closed loop needs namespaces: {NETNS_WHY}"),
]

FPS = 4
SLO = 0.10
INTERVAL = 4.0
START = ["conv2d_1", "flatten"]
THROTTLE = "2mbit"
SPEC = {
    "apiVersion": "splitdnn.io/v1alpha1",
    "kind": "SplitInference",
    "metadata": {"name": "loop"},
    "spec": {
        "model": {"builtin": "cnn14"},
        "splitPoints": START,
        "tiers": [{"name": n, "overheadRatio": 0, "maxMessageBytes": 500000} for n in ("device", "edge", "cloud")],
        "workload": {"fps": FPS, "frames": 0, "deadline": "2s", "maxInFlight": 4, "source": "synthetic"},
        "planner": {"mode": "fixed", "objective": "throughput"},
        "adaptation": {
            "enabled": True,
            "prometheusUrl": "http://unused",
            "interval": f"{INTERVAL:g}s",
            "maxFrameDropRate": SLO,
            "cooldown": "40s",
            "margin": 0.2,
        },
    },
}


def free_octet() -> int:
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    for octet in range(230, 250):
        if f"10.77.{octet}." not in used:
            return octet
    raise RuntimeError("no free 10.77.x.0/24 for the namespace chain")


class LocalActuator:
    """Deploys a split as one agent per tier in the chain's namespaces; generation g listens on 8500+g/9100+g, so
    a re-split brings the new generation up beside the old one (surge), then stops the old first tier (its
    source admits no more frames and drains the ones in flight through the old tiers), then the old tiers."""

    def __init__(self, chain, tmp: Path, model, graph):
        self.chain, self.tmp, self.model, self.graph = chain, tmp, model, graph
        self.generation = -1
        self.agents: list = []
        self.points: list = []
        self.summaries: list[Path] = []
        self.log: list[str] = []

    def metrics_targets(self, generations: int = 2) -> list[str]:
        return [f"{self.chain.mgmt_addr(k)}:{9100 + g}" for g in range(generations) for k in range(3)]

    def _start(self, points: list) -> list:
        from splitdnn.agent.local import start_agents
        from splitdnn.slicer import export_slices, resolve_cuts

        g = self.generation + 1
        slices = self.tmp / f"slices-{g}"
        export_slices(self.model, self.graph, resolve_cuts(self.graph, points), slices)
        summary = self.tmp / f"source-{g}.json"
        source = [
            "--source",
            "synthetic",
            "--fps",
            str(FPS),
            "--frames",
            "0",
            "--deadline",
            "2s",
            "--max-inflight",
            "4",
            "--seed",
            str(g),
            "--summary",
            str(summary),
        ]
        logdir = self.tmp / f"gen{g}"
        logdir.mkdir()
        agents = start_agents(
            str(slices),
            logdir,
            SPEC["spec"]["tiers"],
            "loop",
            self.chain,
            extra={0: source},
            ports=(8500 + g, 9100 + g),
        )
        try:
            wait_ready(agents, timeout=300)
        except BaseException:
            stop_all(agents)
            raise
        self.generation = g
        self.summaries.append(summary)
        return agents

    def deploy(self, points: list) -> None:
        self.agents, self.points = self._start(points), list(points)
        self.log.append(f"deployed {','.join(points)} (generation {self.generation})")

    def resplit(self, points: list) -> None:
        from splitdnn.agent.metrics import scrape

        old = self.agents
        new = self._start(points)
        self.log.append(f"surge: generation {self.generation} ({','.join(points)}) ready beside the old one")
        end = time.monotonic() + 120  # the new source is running (it waits for its next tier) before the old stops
        while time.monotonic() < end:
            samples = scrape(new[0].metrics_url)
            if sum(v for (n, _), v in samples.items() if n == "splitdnn_frames_total") > 0:
                break
            time.sleep(0.3)
        self.stop(old)
        self.agents, self.points = new, list(points)
        self.log.append("old generation drained and stopped")

    @staticmethod
    def stop(agents: list) -> None:
        agents[0].stop(grace=60)  # the first tier drains its source through the tiers behind it
        stop_all(agents[1:])

    def close(self) -> None:
        if self.agents:
            self.stop(self.agents)
            self.agents = []


def throttle(chain, rate: str) -> None:
    from splitdnn.agent.netem import tbf_args

    dev, ns = chain.egress_dev(0), chain.ns(0)
    subprocess.run(
        ["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", *tbf_args(rate)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def test_throttled_link_drives_a_resplit_and_the_drop_rate_recovers(tmp_path, cnn14_model, cnn14_graph):
    from harness.prometheus import PrometheusServer, prometheus_binary
    from splitdnn import feedback
    from splitdnn.adapt import Policy
    from splitdnn.controller.plan import model_summary
    from splitdnn.planner import deploy
    from splitdnn.prom import Prometheus
    from splitdnn.spec import from_resource

    if prometheus_binary() is None:
        pytest.skip("prometheus binary not installed (scripts/install.sh installs Debian's package)")
    si = from_resource(json.loads(json.dumps(SPEC)))
    policy = Policy.from_spec(si.spec["adaptation"])
    problem = deploy.problem_for(si, model_summary("cnn14"))
    chain = netns.Chain(3, octet=free_octet(), prefix="sdlp", dev_prefix="lp").create()
    actuator = LocalActuator(chain, tmp_path, cnn14_model, cnn14_graph)
    steps: list[dict] = []
    try:
        with PrometheusServer(actuator.metrics_targets()) as server:
            prom = Prometheus(server.url)
            actuator.deploy(START)
            # the deployment counts as a change: its warm-up is not judged (cooldown), as the operator does
            phase, last_change, settled = "fast", time.time(), 0
            calibration = None  # status.calibration: the fit carried from step to step, as the operator does
            for i in range(80):  # bounded: ~5 minutes of 4 s intervals at most
                time.sleep(INTERVAL)
                s = feedback.step(
                    si,
                    actuator.points,
                    problem,
                    prom,
                    now=time.time(),
                    last_change=last_change,
                    policy=policy,
                    calibration=calibration,
                )
                calibration = s.calibration or calibration
                m = s.measurements
                row = {
                    "i": i,
                    "phase": phase,
                    "split": ",".join(actuator.points),
                    "error": s.error,
                    "drop_rate": m.drop_rate if m else None,
                    "bandwidth": (m.link_bandwidth_bytes_per_second.get("device") if m else None),
                    "resplit": s.resplit,
                    "reason": s.decision.reason if s.decision else s.error,
                }
                steps.append(row)
                print(json.dumps(row), flush=True)
                assert s.error is None, s.error
                if phase == "fast" and m.drop_rate is not None:
                    settled += 1
                    # a full window of frames on the fast link, and the deployment's cooldown over
                    if settled >= 3 and time.time() - last_change >= policy.cooldown_seconds:
                        throttle(chain, THROTTLE)
                        phase = "throttled"
                        actuator.log.append(f"step {i}: throttled the device's veth to {THROTTLE}")
                        continue
                if s.resplit:
                    actuator.log.append(
                        f"step {i}: re-split {','.join(s.current_points)} -> "
                        f"{','.join(s.best_points)}: {s.decision.reason}"
                    )
                    actuator.resplit(s.best_points)
                    last_change, phase, after = time.time(), "resplit", 0
                    continue
                if phase == "resplit":
                    after += 1
                    # the window has only new-generation frames after window/interval steps
                    if after > policy.interval_seconds and m.drop_rate is not None and m.drop_rate < SLO:
                        break
            actuator.close()
    finally:
        actuator.close()
        chain.destroy()
        print("\n".join(actuator.log))

    fast = [r for r in steps if r["phase"] == "fast" and r["drop_rate"] is not None]
    throttled = [r for r in steps if r["phase"] == "throttled"]
    after = [r for r in steps if r["phase"] == "resplit"]
    # 1. on the fast link, once warmed up (the last window before the throttle): within the SLO; no re-split
    assert fast and fast[-1]["drop_rate"] <= SLO and not any(r["resplit"] for r in fast), fast
    # 2. throttled: the drop rate rises over the SLO and the loop re-splits within two intervals of that
    over = [k for k, r in enumerate(throttled) if r["drop_rate"] is not None and r["drop_rate"] > SLO]
    assert over, throttled
    assert throttled[-1]["resplit"] and len(throttled) - 1 - over[0] <= 1, throttled
    new_points = actuator.points
    assert new_points != START
    cut_bytes = {c.after: c.bytes for c in cnn14_graph.boundaries}
    assert cut_bytes[new_points[0]] < cut_bytes[START[0]]  # a smaller tensor on the throttled link
    # 3. after the re-split: one re-split only (cooldown, no flapping), and the drop rate falls below the SLO
    assert after and not any(r["resplit"] for r in after)
    assert after[-1]["drop_rate"] < SLO, after
    # 4. every frame accounted for across the change: offered = completed + dropped + late + failed, per
    #    generation and summed, each frame the sources emitted has an outcome, none in flight, none failed
    gens = [json.loads(p.read_text()) for p in actuator.summaries]
    assert len(gens) == 2
    for g in gens:
        assert g["offered"] == g["completed"] + g["dropped"] + g["late"] + g["failed"] == g["emitted"], g
        assert g["inflight"] == 0 and g["failed"] == 0, g
    assert gens[1]["drop_rate"] < SLO, gens[1]  # the new split's own count agrees with Prometheus
    total = {k: sum(g[k] for g in gens) for k in ("offered", "completed", "dropped", "late", "failed")}
    assert total["offered"] == total["completed"] + total["dropped"] + total["late"] + total["failed"]
    print(json.dumps({"generations": gens, "total": total}))
