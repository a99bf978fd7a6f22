"""Planner unit tests: cost model by hand, constraints, errors, strategies/plugins, CLI contract."""

from __future__ import annotations

import json
import textwrap

import pytest

from harness.cli import run_cli
from splitdnn.planner import Infeasible, Problem, ProblemError, plan, strategies

ISSUE_EXAMPLE = {
    "tiers": ["device", "edge", "cloud"],
    "input_bytes": 3136,
    "blocks": [{"name": "conv2d", "time": {"device": 0.012, "edge": 0.004, "cloud": 0.001}, "out_bytes": 86528}],
    "links": [{"from": "device", "to": "edge", "latency": 0.005, "bandwidth": 1250000.0}],
    "constraints": {
        "pin": {"conv2d": "device"},
        "forbid": {"dense": ["device"]},
        "use": ["edge"],
        "skip": [],
        "max_upload_bytes": {"device": 1000000},
        "max_time": {"device": 1.0},
        "max_time_share": {"edge": 0.3},
    },
}


def three_blocks(**constraints):
    return Problem.from_json(
        {
            "tiers": ["device", "edge", "cloud"],
            "input_bytes": 1000,
            "blocks": [
                {"name": "a", "time": {"device": 0.010, "edge": 0.004, "cloud": 0.001}, "out_bytes": 4000},
                {"name": "b", "time": {"device": 0.020, "edge": 0.008, "cloud": 0.002}, "out_bytes": 500},
                {"name": "c", "time": {"device": 0.005, "edge": 0.002, "cloud": 0.001}, "out_bytes": 10},
            ],
            "links": [
                {"from": "device", "to": "edge", "latency": 0.001, "bandwidth": 100000.0},
                {"from": "edge", "to": "cloud", "latency": 0.010, "bandwidth": 1000000.0},
                {"from": "device", "to": "cloud", "latency": 0.050, "bandwidth": 50000.0},
            ],
            "constraints": constraints,
        }
    )


def find(plans, cuts):
    return next(p for p in plans if p.ends == cuts)


def test_cost_model_by_hand():
    plans = plan(three_blocks(), "latency", top=10, fps=50)
    # device runs a, edge runs b..c: 10ms + (1ms + 4000/100000 s) + 8ms + 2ms
    p = find(plans, (1, 3, 3))
    assert p.assignment == {"device": ("a", "a"), "edge": ("b", "c"), "cloud": None}
    assert p.latency == pytest.approx(0.010 + 0.001 + 0.040 + 0.010)
    assert p.bottleneck == pytest.approx(0.040)  # the transfer is the slowest stage
    assert p.bytes == 4000
    assert p.drop_rate == pytest.approx(1 - (1 / 0.040) / 50)  # 25 fps served of 50 offered
    # device unused: the input is shipped from the device (where frames originate) to the cloud
    q = find(plans, (0, 0, 3))
    assert q.latency == pytest.approx(0.050 + 1000 / 50000 + 0.004)
    assert q.bytes == 1000 and q.assignment["device"] is None
    assert q.drop_rate == 0.0


def test_evaluate_a_given_split():
    from splitdnn.planner import evaluate_plan

    pr = three_blocks()
    best = plan(pr, "throughput", top=3, fps=30)
    for p in best:
        again = evaluate_plan(pr, p.assignment, fps=30)
        assert (again.ends, again.latency, again.bottleneck, again.bytes, again.drop_rate) == (
            p.ends,
            p.latency,
            p.bottleneck,
            p.bytes,
            p.drop_rate,
        )
    assert evaluate_plan(pr, (1, 3, 3)).latency == pytest.approx(0.061)
    with pytest.raises(ValueError, match="does not continue"):
        evaluate_plan(pr, {"device": ("b", "c"), "edge": None, "cloud": None})
    data = pr.to_json()
    data["links"] = data["links"][:1]
    with pytest.raises(ValueError, match="no link"):
        evaluate_plan(Problem.from_json(data), (0, 0, 3))


def test_recalibrate_to_measurements():
    from splitdnn.planner import evaluate_plan, recalibrate

    pr = three_blocks()
    split = (1, 3, 3)  # device: a, edge: b..c
    new = recalibrate(
        pr,
        split,
        compute_seconds={"device": 0.030, "edge": 0.005},
        link_rtt_seconds={"device": 0.010},
        link_bandwidth={"device": 50_000.0, "edge": 1.0},
    )
    now = evaluate_plan(new, split)
    assert now.compute["device"] == pytest.approx(0.030) and now.compute["edge"] == pytest.approx(0.005)
    assert new.links[("device", "edge")].latency == pytest.approx(0.005)
    assert new.links[("device", "edge")].bandwidth == 50_000.0
    assert new.links[("edge", "cloud")].bandwidth == 1_000_000.0  # not a hop of this split: unchanged
    assert now.latency == pytest.approx(0.030 + 0.005 + 4000 / 50_000 + 0.005)
    # one split observed: the device's extra 20 ms is its fixed call cost, its block times stay the profile's
    assert [b.time["device"] for b in new.blocks] == pytest.approx([b.time["device"] for b in pr.blocks])
    assert new.call_seconds["device"] == pytest.approx(0.020)
    assert pr.blocks[0].time["device"] == 0.010 and not pr.call_seconds  # the original is untouched


def test_ranking_and_tie_breaks_are_deterministic():
    p = Problem.from_json(
        {
            "tiers": ["x", "y"],
            "input_bytes": 0,
            "blocks": [
                {"name": "a", "time": {"x": 0.001, "y": 0.001}, "out_bytes": 0},
                {"name": "b", "time": {"x": 0.001, "y": 0.001}, "out_bytes": 0},
            ],
            "links": [{"from": "x", "to": "y", "latency": 0.0, "bandwidth": 1.0}],
        }
    )
    plans = plan(p, "latency", top=5)
    assert [x.ends for x in plans] == [(0, 2), (1, 2), (2, 2)]  # equal latency and bytes: cut order
    assert len({x.latency for x in plans}) == 1


def test_objectives_differ():
    pr = three_blocks()
    lat = plan(pr, "latency")[0]
    thr = plan(pr, "throughput")[0]
    byt = plan(pr, "bytes")[0]
    assert byt.bytes == 0 and byt.assignment["device"] == ("a", "c")
    assert thr.bottleneck <= lat.bottleneck and lat.latency <= thr.latency
    everything = plan(pr, "latency", top=100)
    assert thr.bottleneck == min(p.bottleneck for p in everything)
    assert lat.latency == min(p.latency for p in everything)
    assert len(everything) == 10  # C(3+2, 2) plans, all connected here


def test_constraints_each_bite():
    base = plan(three_blocks(), "latency")[0]
    assert base.assignment["device"] is None  # cloud-only wins without constraints
    assert plan(three_blocks(pin={"a": "device"}))[0].assignment["device"][0] == "a"
    assert plan(three_blocks(forbid={"a": ["cloud"], "b": ["cloud"]}))[0].assignment["cloud"] in (None, ("c", "c"))
    assert plan(three_blocks(use=["edge"]))[0].assignment["edge"] is not None
    assert plan(three_blocks(skip=["cloud"]))[0].assignment["cloud"] is None
    assert all(p.upload["device"] <= 500 for p in plan(three_blocks(max_upload_bytes={"device": 500}), top=10))
    assert all(p.compute["device"] <= 0.012 for p in plan(three_blocks(max_time={"device": 0.012}), top=10))
    for p in plan(three_blocks(max_time_share={"device": 0.5}), top=10):
        assert p.compute["device"] <= 0.5 * p.latency + 1e-12


def test_time_share_of_latency_or_of_compute():
    # device runs a (10 ms), edge runs b..c (10 ms), hop 41 ms: device share 10/61 of latency, 10/20 of compute
    of_latency = [p.ends for p in plan(three_blocks(max_time_share={"device": 0.3}), top=10)]
    of_compute = [
        p.ends for p in plan(three_blocks(max_time_share={"device": 0.3}, max_time_share_of="compute"), top=10)
    ]
    assert (1, 3, 3) in of_latency and (1, 3, 3) not in of_compute
    for p in plan(three_blocks(max_time_share={"device": 0.3}, max_time_share_of="compute"), top=10):
        assert p.compute["device"] <= 0.3 * sum(p.compute.values()) + 1e-12
    with pytest.raises(ProblemError, match="'latency' or 'compute'"):
        three_blocks(max_time_share_of="frames")


def test_skipping_a_tier_needs_a_link_for_that_pair():
    data = three_blocks().to_json()
    data["links"] = [l for l in data["links"] if (l["from"], l["to"]) != ("device", "cloud")]
    plans = plan(Problem.from_json(data), "latency", top=100)
    for p in plans:  # no plan may hop device -> cloud directly (or ship the input there)
        used = [t for t in ("device", "edge", "cloud") if p.assignment[t]]
        assert used != ["device", "cloud"] and used[0] != "cloud"


def test_layer_references():
    data = three_blocks().to_json()
    for k, b in enumerate(data["blocks"]):
        b["layers"] = [3 * k, 3 * k + 2]
    data["constraints"] = {"pin": {"layer:4": "device"}}
    p = plan(Problem.from_json(data))[0]
    assert p.assignment["device"][1] in ("b", "c")
    data["constraints"] = {"pin": {"layer:99": "device"}}
    with pytest.raises(ProblemError, match="no block contains layer 99"):
        Problem.from_json(data)


def test_infeasible_is_a_clear_error():
    with pytest.raises(Infeasible, match="without any one of: pin, skip"):
        plan(three_blocks(pin={"a": "device"}, skip=["device"]))
    with pytest.raises(Infeasible, match="no plan"):
        plan(three_blocks(max_time={"device": 0.0, "edge": 0.0, "cloud": 0.0}))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["links"].append({"from": "cloud", "to": "device", "latency": 0, "bandwidth": 1}), "forward"),
        (lambda d: d["blocks"][0]["time"].pop("edge"), "missing \\['edge'\\]"),
        (lambda d: d["constraints"].update(pin={"nope": "device"}), "unknown block 'nope'"),
        (lambda d: d["constraints"].update(use=["moon"], forbid={}), "unknown tier 'moon'"),
        (lambda d: d["constraints"].update(max_time_share={"edge": 1.5}), "share"),
        (lambda d: d["constraints"].update(maxtime={}), "unknown key"),
        (lambda d: d["links"][0].update(bandwidth=0), "bandwidth"),
        (lambda d: d["blocks"].append(dict(d["blocks"][0])), "duplicate block"),
    ],
)
def test_problem_errors_say_what_is_wrong(mutate, message):
    d = json.loads(json.dumps(ISSUE_EXAMPLE))
    mutate(d)
    with pytest.raises(ProblemError, match=message):
        Problem.from_json(d)


def test_issue_example_loads_forbid_of_unknown_block_is_a_warning():
    p = Problem.from_json(ISSUE_EXAMPLE)
    assert p.constraints.forbid == {} and any("unknown block 'dense'" in w for w in p.warnings)
    with pytest.raises(Infeasible, match="without any one of: use$"):
        plan(p)  # pinned to the device, edge required (and its share cap rules out edge-only)


def test_crd_spelling_of_constraints():
    d = three_blocks().to_json()
    d["constraints"] = {"maxUploadBytes": {"device": 10}, "maxTime": {"edge": "5ms"}, "maxTimeShare": {"cloud": 0.5}}
    c = Problem.from_json(d).constraints
    assert (c.max_upload_bytes, c.max_time, c.max_time_share) == ({"device": 10}, {"edge": 0.005}, {"cloud": 0.5})


def test_units_in_links_and_caps():
    d = three_blocks().to_json()
    d["links"][0].update(latency="1ms", bandwidth="800kbit")
    d["constraints"] = {"max_time": {"device": "12ms"}, "max_time_share": {"edge": "50%"}}
    p = Problem.from_json(d)
    assert p.links[("device", "edge")].bandwidth == 100000.0
    assert p.constraints.max_time["device"] == pytest.approx(0.012)


def test_strategy_registry_and_entry_point_plugin(tmp_path, monkeypatch):
    assert {"dp", "labels", "brute"} <= set(strategies.available())
    with pytest.raises(KeyError, match="unknown planner strategy 'nope'"):
        strategies.get("nope")
    # a real installed distribution exposing a strategy through the entry-point group
    (tmp_path / "myplug.py").write_text(
        textwrap.dedent("""
        class DeviceOnly:
            def solve(self, compiled, objective, top):
                return [(compiled.n,) * compiled.T]
    """)
    )
    dist = tmp_path / "myplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[splitdnn.strategies]\ndevice-only = myplug:DeviceOnly\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    strategies._entry_points.cache_clear()
    try:
        assert "device-only" in strategies.available()
        p = plan(three_blocks(), "latency", strategy="device-only")[0]
        assert p.assignment == {"device": ("a", "c"), "edge": None, "cloud": None}
    finally:
        strategies._entry_points.cache_clear()


def test_strategies_agree_on_a_fixed_problem():
    pr = three_blocks(max_time_share={"cloud": 0.5})
    for obj in ("latency", "throughput", "bytes"):
        ref = [p.ends for p in plan(pr, obj, top=6, strategy="brute")]
        assert [p.ends for p in plan(pr, obj, top=6, strategy="dp")] == ref
        assert [p.ends for p in plan(pr, obj, top=6, strategy="labels")] == ref


# ---- CLI ---------------------------------------------------------------------------------------------------------


def write(tmp_path, data, name="problem.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_cli_plan_json_contract(tmp_path):
    f = write(tmp_path, three_blocks().to_json())
    out = json.loads(run_cli("plan", "--problem", f, "--objective", "throughput", "--top", "3", "--json").stdout)
    assert set(out) == {"plans", "search_seconds"} and isinstance(out["search_seconds"], float)
    assert len(out["plans"]) == 3
    for p in out["plans"]:
        assert {"assignment", "latency", "bottleneck", "bytes"} <= set(p)
        assert set(p["assignment"]) == {"device", "edge", "cloud"}
        assert all(v is None or (isinstance(v, list) and len(v) == 2) for v in p["assignment"].values())
    bns = [p["bottleneck"] for p in out["plans"]]
    assert bns == sorted(bns)
    ref = plan(three_blocks(), "throughput", top=3)
    assert [p["latency"] for p in out["plans"]] == pytest.approx([p.latency for p in ref])


def test_cli_issue_example_and_fps_and_plot(tmp_path):
    f = write(tmp_path, ISSUE_EXAMPLE)
    # a single block pinned to the device while the edge must be used: infeasible, exit 1 with the reason
    r = run_cli("plan", "--problem", f, "--objective", "latency", "--json", check=False)
    assert r.returncode == 1 and "error: no plan satisfies the constraints" in r.stderr and not r.stdout.strip()
    assert "warning: " in r.stderr and "'dense'" in r.stderr
    d = json.loads(json.dumps(ISSUE_EXAMPLE))
    d["constraints"]["use"] = []
    f2 = write(tmp_path, d, "ok.json")
    png = tmp_path / "plan.png"
    out = json.loads(
        run_cli("plan", "--problem", f2, "--objective", "latency", "--fps", "100", "--json", "--plot", png).stdout
    )
    assert out["plans"][0]["assignment"] == {"device": ["conv2d", "conv2d"], "edge": None, "cloud": None}
    assert out["plans"][0]["drop_rate"] == pytest.approx(1 - (1 / 0.012) / 100)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cli_bad_input(tmp_path):
    r = run_cli("plan", "--problem", tmp_path / "missing.json", check=False)
    assert r.returncode == 2 and "cannot read problem file" in r.stderr
    f = write(tmp_path, {"tiers": ["a"], "blocks": []})
    r = run_cli("plan", "--problem", f, check=False)
    assert r.returncode == 2 and "'blocks' must be a non-empty list" in r.stderr
    f = write(tmp_path, three_blocks().to_json())
    r = run_cli("plan", "--problem", f, "--objective", "speed", check=False)
    assert r.returncode == 2 and "unknown objective" in r.stderr


def test_cli_human_output(tmp_path):
    f = write(tmp_path, three_blocks().to_json())
    r = run_cli("plan", "--problem", f, "--top", "2")
    assert "2 best plan(s)" in r.stdout and "latency" in r.stdout


def fake_profile(path, tier, scale, multi=False):
    blocks = [
        {
            "name": n,
            "layers": [k, k],
            "time": scale * (k + 1) * 1e-3,
            "median_s": 0,
            "samples_s": [],
            "out_bytes": b,
            "flops": 1_000_000 * (k + 1),
        }
        for k, (n, b) in enumerate([("conv", 40_000), ("pool", 10_000), ("dense", 40)])
    ]
    path.write_text(
        json.dumps(
            {
                "format": "splitdnn.profile/1",
                "model": "cnn14",
                "tier": tier,
                "multi_tensor": multi,
                "input_bytes": 3136,
                "blocks": blocks,
            }
        )
    )
    return path


def test_plan_model_from_profiles_estimates_links_constraints(tmp_path):
    dev = fake_profile(tmp_path / "dev.json", "device", 10)
    edge = fake_profile(tmp_path / "edge.json", "edge", 2)
    cons = tmp_path / "c.json"
    cons.write_text(json.dumps({"use": ["cloud"], "pin": {"layer:0": "device"}}))
    saved = tmp_path / "problem.json"
    out = json.loads(
        run_cli(
            "plan",
            "cnn14",
            "--profile",
            dev,
            "--profile",
            edge,
            "--estimate",
            "cloud=1gflops",
            "--link",
            "device,edge,2ms,8mbit",
            "--link",
            "edge,cloud,10ms,100mbit",
            "--constraints",
            cons,
            "--save-problem",
            saved,
            "--top",
            "3",
            "--json",
        ).stdout
    )
    p = Problem.load(saved)
    assert p.tiers == ["device", "edge", "cloud"] and p.input_bytes == 3136
    assert [b.time["cloud"] for b in p.blocks] == pytest.approx([1e-3, 2e-3, 3e-3])  # FLOPs / speed
    assert p.links[("device", "edge")].bandwidth == 1e6
    ref = plan(p, "latency", top=3)
    assert [q["latency"] for q in out["plans"]] == pytest.approx([q.latency for q in ref])
    for q in out["plans"]:
        assert q["assignment"]["device"][0] == "conv" and q["assignment"]["cloud"] is not None
    r = run_cli(
        "plan",
        "cnn14",
        "--profile",
        dev,
        "--profile",
        fake_profile(tmp_path / "e2.json", "device", 1),
        "--link",
        "device,edge,2ms,8mbit",
        check=False,
    )
    assert r.returncode == 2 and "two profiles for tier 'device'" in r.stderr
    r = run_cli("plan", "cnn14", "--profile", fake_profile(tmp_path / "m.json", "device", 1, multi=True), check=False)
    assert r.returncode == 2 and "--multi-tensor" in r.stderr


def test_problem_from_profile_documents(tmp_path):
    from splitdnn.planner.profile import problem_from_profiles

    dev = json.loads(fake_profile(tmp_path / "d.json", "device", 10).read_text())
    edge = json.loads(fake_profile(tmp_path / "e.json", "edge", 1).read_text())
    p = problem_from_profiles("cnn14", [dev, edge], links=["device,edge,1ms,80mbit"], constraints={"use": ["edge"]})
    assert p.tiers == ["device", "edge"] and p.constraints.use == ["edge"]
    assert plan(p)[0].assignment["edge"] is not None
    with pytest.raises(ProblemError, match="not a splitdnn profile"):
        problem_from_profiles("cnn14", [{"blocks": []}])
