"""`splitdnn experiment cho2021` (issue #6): the pure core (configs, link mapping, SplitInference per run, writers)
and a smoke run of the real command (one config, few frames) checking the results.json contract and the files.
The full experiment is a benchmark (docs/experiment.md), not a test."""

import json
import math

import pytest

from harness.cli import run_cli
from splitdnn import experiment as exp
from splitdnn.spec import cross_field_problems, from_resource

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_configs_follow_table_2_and_the_link_mapping():
    for c in (1, 2, 3):
        assert exp.CONFIGS[c].overhead == (10, 5, 1)
    assert [exp.CONFIGS[c].max_bytes for c in (1, 2, 3)] == [500_000, 50_000, 500_000]
    assert exp.CONFIGS[1].latency_ms == exp.CONFIGS[2].latency_ms == (2.5, 2.5, 250.0)
    assert exp.CONFIGS[3].latency_ms == (2.5, 2.5, 1000.0)
    # out-delay of the sender + in-delay of the receiver; the result goes back through the edge (in and out)
    assert exp.CONFIGS[1].link_delays_ms() == (5.0, 252.5, 257.5)
    assert exp.CONFIGS[3].link_delays_ms() == (5.0, 1002.5, 1007.5)
    # every packet of a frame's ring crosses dev out, edge in, edge out, cloud in, cloud out, edge in/out, dev in
    assert exp.CONFIGS[1].ring_seconds() == pytest.approx(0.515)


def test_pairs_and_labels_are_the_papers(cnn14_graph):
    classes = {l.name: l.cls for l in cnn14_graph.layers}
    labels = [exp.split_label(d, e, classes) for d, e in exp.fixed_splits()]
    assert labels == list(exp.PAPER[1]) == list(exp.PAPER[2]) == list(exp.PAPER[3])
    names = [l.name for l in cnn14_graph.layers]
    # the paper's 1-based layer numbers (Table 1) are our 0-based indices + 1
    for number, name in exp.LAYERS.items():
        assert names.index(name) + 1 == number


def test_split_inference_is_a_valid_resource_with_the_config(cnn14_graph):
    w = exp.Workload(frames=50, fps=40.0, seed=3)
    for config in exp.CONFIGS.values():
        res = exp.split_inference(config, "max_pooling2d", "conv2d_4", w)
        si = from_resource(res)
        assert cross_field_problems(si, [l.name for l in cnn14_graph.layers]) == []
        assert si.spec["splitPoints"] == ["max_pooling2d", "conv2d_4"]
        assert [t["overheadRatio"] for t in si.tiers] == [10, 5, 1]
        assert {t["maxMessageBytes"] for t in si.tiers} == {config.max_bytes}
        assert [t["netem"]["delay"] for t in si.tiers] == [f"{d:g}ms" for d in config.link_delays_ms()]
        assert si.workload["seed"] == 3 and si.workload["frames"] == 50
        assert si.workload["warmupFrames"] == exp.WARMUP_FRAMES
        assert si.deadline_seconds == pytest.approx(config.ring_seconds() + w.deadline_slack)
        assert si.workload["maxInFlight"] >= w.fps * si.deadline_seconds


def _profile():
    return {
        "format": "splitdnn.profile/1",
        "model": "cnn14",
        "tier": "local",
        "multi_tensor": False,
        "input_bytes": 3136,
        "blocks": [
            {"name": n, "time": 1e-3, "out_bytes": b}
            for n, b in (
                ("conv2d", 86528),
                ("conv2d_1", 147456),
                ("max_pooling2d", 36864),
                ("batch_normalization", 36864),
                ("conv2d_2", 51200),
                ("conv2d_3", 32768),
                ("max_pooling2d_1", 8192),
                ("batch_normalization_1", 8192),
                ("conv2d_4", 4096),
                ("max_pooling2d_2", 1024),
                ("flatten", 1024),
                ("batch_normalization_2", 1024),
                ("dense", 2048),
                ("dense_1", 40),
            )
        ],
    }


def test_planner_problem_scales_compute_by_overhead_and_models_chunks():
    profile = _profile()
    profile["call_seconds"] = 2e-3
    problem = exp.planner_problem(exp.CONFIGS[2], profile, chunk_seconds=1e-4, bandwidth=5e8)
    assert problem.blocks[0].time == pytest.approx({"device": 11e-3, "edge": 6e-3, "cloud": 2e-3})
    # the fixed call cost is charged per tier, × (1 + overheadRatio) like the blocks
    assert problem.call_seconds == pytest.approx({"device": 22e-3, "edge": 12e-3, "cloud": 4e-3})
    link = problem.links[("edge", "cloud")]
    assert link.latency == pytest.approx(0.2525)
    assert (link.bandwidth, link.message_seconds, link.max_message_bytes) == (5e8, 1e-4, 50_000)
    assert problem.constraints.use == ["device", "edge", "cloud"]
    # the prediction for one pair: stages, bottleneck, and the latency including the result's way back
    pred = exp.predict(problem, ["conv2d", "conv2d_4"], exp.CONFIGS[2].link_delays_ms()[-1] / 1e3)
    assert pred["stage_seconds"]["device"] == pytest.approx(22e-3 + 11e-3)
    assert pred["stage_seconds"]["edge"] == pytest.approx(12e-3 + 8 * 6e-3)
    assert pred["bottleneck_seconds"] == pytest.approx(12e-3 + 8 * 6e-3)
    hops = 0.005 + 86528 / 5e8 + 2 * 1e-4 + 0.2525 + 4096 / 5e8 + 1e-4
    back = 0.2575 + 40 / 5e8 + 1e-4
    assert pred["latency_seconds"] == pytest.approx(sum(pred["stage_seconds"].values()) + hops + back, abs=2e-6)
    rec = exp.planner_split(exp.CONFIGS[2], profile, fps=40.0)
    # every tier used, in order, and the prediction covers the 8 fixed pairs
    names = [b.name for b in problem.blocks]
    assert names.index(rec["device_after"]) < names.index(rec["edge_after"]) < len(names) - 1
    assert len(rec["predicted"]) >= 8


def _fake_result():
    runs = []
    for c in (1, 3):
        for (d, e), label in zip(exp.fixed_splits(), exp.PAPER[c]):
            reps = [{"time_s": 1.5 + r / 10, "drop_rate": 0.1 * r} for r in range(3)]
            runs.append(
                {
                    "config": c,
                    "split": label,
                    "device_after": d,
                    "edge_after": e,
                    "frames": 50,
                    "fps": 40.0,
                    **exp.summarize(reps),
                    "planner": False,
                }
            )
        runs.append(
            {
                "config": c,
                "split": "Conv2D - Conv2D",
                "device_after": "conv2d",
                "edge_after": "conv2d_1",
                "frames": 50,
                "fps": 40.0,
                **exp.summarize([{"time_s": 1.6, "drop_rate": 0.0}]),
                "planner": True,
            }
        )
    return {
        "link_emulation": "loopback",
        "workload": {"frames": 50, "fps": 40.0, "repeats": 3},
        "configs": {
            c: {
                "overhead": (10, 5, 1),
                "latency_ms": exp.CONFIGS[c].latency_ms,
                "max_bytes": 1,
                "link_delays_ms": exp.CONFIGS[c].link_delays_ms(),
            }
            for c in (1, 3)
        },
        "runs": runs,
    }


def test_measured_medians_and_the_prediction_error_contract(tmp_path):
    reps = [
        {"time_s": 1.0, "drop_rate": 0.0, "latency_mean_seconds": x, "stage_seconds_mean": {"device": d, "edge": 0.01}}
        for x, d in ((0.5, 0.020), (0.7, 0.030), (0.6, 0.025))
    ]
    s = exp.summarize(reps)
    assert s["measured"] == {"stage_seconds": {"device": 0.025, "edge": 0.01}, "latency_seconds": 0.6}
    runs = [
        {**s, "predicted": {"stage_seconds": {"device": 0.020, "edge": 0.011}, "bottleneck_seconds": 0.02,
                            "latency_seconds": 0.54}},
        {**s, "predicted": {"stage_seconds": {"device": 0.025, "edge": 0.010}, "bottleneck_seconds": 0.025,
                            "latency_seconds": 0.6}},
    ]  # fmt: skip
    err = exp.prediction_error(runs)
    # stage errors 0.2, 0.1, 0, 0 -> median 0.05, p90 0.17; latency errors 0.1, 0 -> median 0.05, p90 0.09
    assert err == pytest.approx({"stage_median": 0.05, "stage_p90": 0.17, "latency_median": 0.05, "latency_p90": 0.09})
    assert exp.prediction_error([s]) is None  # nothing predicted (--no-planner)
    assert exp.prediction_error(runs, "calibrated") is None
    result = {**_fake_result(), "prediction_error": err}
    assert "stage time median 5.0 %, p90 17.0 %" in exp.error_summary(result)
    exp.write_outputs(result, tmp_path)
    assert "end-to-end latency median 5.0 %" in (tmp_path / "results.md").read_text()


def test_summarize_one_repeat_plots_without_negative_whiskers(tmp_path):
    s = exp.summarize([{"time_s": 2.123456789, "drop_rate": 0.1}])
    assert s["time_s"] == s["time_s_min"] == s["time_s_max"] == 2.1235
    result = _fake_result()
    result["runs"][0].update(s)
    assert exp.plot_config(result, 1, tmp_path / "c.png").read_bytes()[:8] == PNG_MAGIC


def test_writers_markdown_and_plots(tmp_path):
    result = _fake_result()
    files = exp.write_outputs(result, tmp_path)
    assert [f.name for f in files] == ["results.json", "results.md", "config1.png", "config3.png"]
    md = (tmp_path / "results.md").read_text()
    assert "| Split point | Time (s) | Frame drop | Paper time (s) | Paper frame drop |" in md  # + stage times
    assert (
        "| MaxPooling2D - Flatten | 1.6000 [1.5000–1.7000] | 0.10 [0.00–0.20] | 49.5615 | 0.20 | — / — / — | — |" in md
    )
    assert "planner: conv2d / conv2d_1" in md and "not worse" in md
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert json.loads((tmp_path / "results.json").read_text())["runs"][0]["time_s"] == 1.6


def test_stream_costs_arithmetic():
    """The cost model's link terms from timings: median difference / (chunks - 1), clamped at 0 (a loaded machine
    can make 10 messages look cheaper than 1); bandwidth = bytes / (one-message median - message cost)."""
    costs = exp.stream_costs([0.011, 0.010, 0.030], [0.009, 0.018, 0.0], total_bytes=1_000_000, chunks=10)
    assert costs["message_seconds"] == pytest.approx(0.001)
    assert costs["bandwidth"] == pytest.approx(1_000_000 / 0.010)
    assert exp.stream_costs([0.01], [-0.5], 1000, 10)["message_seconds"] == 0.0


def test_chunk_cost_is_measured_on_a_real_grpc_stream():
    """A real loopback gRPC stream answers and yields finite costs. How large they are depends on the machine's
    load (two shared cores can make the difference of medians anything): that figure is in
    benchmarks/bench_stream.py, not asserted here."""
    costs = exp.measure_stream(total_bytes=200_000, chunks=10, repeats=3)
    assert math.isfinite(costs["message_seconds"]) and costs["message_seconds"] >= 0.0
    assert math.isfinite(costs["bandwidth"]) and costs["bandwidth"] > 0.0


def test_bad_options_exit_2():
    for args in (["--config", "4"], ["--pairs", "9"], ["--fps", "0"], ["--warmup", "-1"], ["--runtime", "onnx"]):
        proc = run_cli("experiment", "cho2021", *args, check=False, timeout=60)
        assert proc.returncode == 2 and "error:" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_smoke_one_config_every_pair_and_the_planner(tmp_path):
    """The real command: config 1, 3 frames per run, the first and last pair (`--pairs 1,8`; each run starts three
    agents, ~10-20 s here) and the planner's split; results.json contract and files."""
    frames = 3
    proc = run_cli(
        "experiment",
        "cho2021",
        "--config",
        "1",
        "--frames",
        frames,
        "--fps",
        "20",
        "--pairs",
        "1,8",
        "--out",
        tmp_path,
        timeout=900,
    )
    doc = json.loads((tmp_path / "results.json").read_text())
    runs = doc["runs"]
    fixed = [r for r in runs if not r["planner"]]
    assert [r["split"] for r in fixed] == [list(exp.PAPER[1])[0], list(exp.PAPER[1])[7]]
    assert [(r["device_after"], r["edge_after"]) for r in fixed] == [exp.fixed_splits()[0], exp.fixed_splits()[7]]
    assert sum(r["planner"] for r in runs) == 1
    # the planner's run is the split re-planned from the two fixed pairs' measured stage times (the loop's fit)
    # and, as the loop measures each new split it deploys, every split it tried on the way (at most MAX_EXPLORE)
    again = doc["planner"]["1"]["replanned"]
    planned = next(r for r in runs if r["planner"])
    assert again["observed_runs"] == 2 + len(again["explored"]) and len(again["explored"]) <= exp.MAX_EXPLORE
    assert (planned["device_after"], planned["edge_after"]) == (again["device_after"], again["edge_after"])
    assert all(0 <= x["drop_rate"] <= 1 and x["stage_seconds_mean"] for x in again["explored"])
    assert doc["workload"]["warmup_frames"] == exp.WARMUP_FRAMES
    # measured (clamped at 0 on a loaded machine), not the 1-ms default; sizes are in benchmarks/bench_stream.py
    assert doc["planner"]["1"]["chunk_seconds"] >= 0.0 and doc["planner"]["1"]["chunk_seconds"] != exp.CHUNK_SECONDS
    assert doc["planner"]["1"]["call_seconds"] > 0.0  # the profile's served call cost
    err = doc["prediction_error"]
    assert set(err) == {"stage_median", "stage_p90", "latency_median", "latency_p90"}
    assert all(isinstance(v, float) and v >= 0 for v in err.values())
    assert "prediction error" in proc.stdout
    assert set(doc["calibrated_error"]) == set(err)
    assert all(set(r["calibrated"]) == set(r["predicted"]) for r in runs)
    for r in runs:
        assert r["config"] == 1 and r["frames"] == frames and r["fps"] == 20.0
        assert isinstance(r["time_s"], float) and r["time_s"] > 0 and 0.0 <= r["drop_rate"] <= 1.0
        assert set(r["predicted"]) == {"stage_seconds", "bottleneck_seconds", "latency_seconds"}
        assert set(r["predicted"]["stage_seconds"]) == set(r["measured"]["stage_seconds"]) == set(exp.TIERS)
        assert r["predicted"]["bottleneck_seconds"] == max(r["predicted"]["stage_seconds"].values())
        assert r["measured"]["latency_seconds"] > 0.5  # the ring alone is 515 ms
        for rep in r["repeats"]:
            assert rep["offered"] == frames == rep["completed"] + rep["dropped"] + rep["late"] + rep["failed"]
    md = (tmp_path / "results.md").read_text()
    assert md.count("\n| ") >= 5 and "Conv2D - BatchNormalization" in md
    assert (tmp_path / "config1.png").read_bytes()[:8] == PNG_MAGIC
    assert doc["link_emulation"] in ("netns", "loopback")
    assert "network namespaces" in proc.stderr  # says which (and why, when unavailable)
    assert "| Split point | Time (s) | Frame drop |" in proc.stdout


@pytest.mark.slow
def test_cho2021_on_litert_serves_every_tier_from_its_tflite_slice(tmp_path):
    """`--runtime litert`: every tier of a run says it computed with LiteRT, and the results say which runtime."""
    proc = run_cli(
        *("experiment", "cho2021", "--config", "1", "--pairs", "1", "--frames", "3", "--fps", "20"),
        *("--no-planner", "--runtime", "litert", "--out", tmp_path),
        timeout=600,
    )
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["runtime"] == "litert", proc.stderr[-2000:]
    ((sample,),) = [r["repeats"] for r in doc["runs"]]
    assert sample["completed"] > 0 and sample["runtimes"] == dict.fromkeys(exp.TIERS, "litert"), sample
    assert "runtime: litert" in (tmp_path / "results.md").read_text()
    assert (
        exp.split_inference(exp.CONFIGS[1], "conv2d", "flatten", exp.Workload())["spec"]["tiers"][0]["runtime"]
        == "tensorflow"
    )  # the paper's setup unless asked


def test_splits_pairs_sample_and_resource():
    from splitdnn.experiment_splits import resource, split_pairs

    points = ["a", "b", "c", "d", "e"]
    every = split_pairs(points, None)
    assert len(every) == 10 and all(points.index(d) < points.index(e) for d, e in every)
    sample = split_pairs(points, 4, seed=1)
    assert len(sample) == 4 and set(sample) <= set(every) and sample == split_pairs(points, 4, seed=1)
    assert split_pairs(points, 50) == every
    si = from_resource(resource("MobileNetV2", [32, 32, 3], ["block_1_project_BN", "block_5_add"], exp.Workload()))
    assert si.model_source == "keras.applications.MobileNetV2" and si.spec["model"]["inputShape"] == [32, 32, 3]
    assert si.tier_names == list(exp.TIERS) and si.spec["splitPoints"] == ["block_1_project_BN", "block_5_add"]


@pytest.mark.slow
def test_splits_on_litert_profile_and_serve_with_litert(tmp_path):
    """`--runtime litert`: the profile times LiteRT blocks and every tier serves its .tflite slice; the results say
    so and carry a prediction and a measurement per run."""
    proc = run_cli(
        *("experiment", "splits", "--model", "MobileNetV2", "--input-shape", "32,32,3", "--sample", "1"),
        *("--frames", "6", "--fps", "10", "--runtime", "litert", "--out", tmp_path),
        timeout=900,
    )
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["runtime"] == "litert" and len(result["runs"]) == 1, proc.stderr[-2000:]
    (run,) = result["runs"]
    assert set(run["predicted"]["stage_seconds"]) == set(run["measured"]["stage_seconds"]) == set(exp.TIERS)
    (sample,) = run["repeats"]
    assert sample["completed"] > 0 and sample["runtimes"] == dict.fromkeys(exp.TIERS, "litert"), sample
    assert "three local tiers on litert" in (tmp_path / "results.md").read_text()


def test_splits_bad_options_exit_2():
    for args in (["--runtime", "onnx"], ["--input-shape", "32,x"], ["--fps", "0"]):
        proc = run_cli("experiment", "splits", "--model", "MobileNetV2", *args, check=False, timeout=60)
        assert proc.returncode == 2 and "error:" in proc.stderr, proc.stderr


def test_cross_calibration_predicts_each_run_from_the_others():
    """Served stages of a known form (call 5 ms + 3 × the profile, per tier): fitted on the other pairs, the
    online calibration predicts every pair's stages exactly, where the profile alone is far off."""
    problem = exp.planner_problem(exp.CONFIGS[1], _profile(), bandwidth=1e9)
    runs = []
    for d, e in exp.fixed_splits():
        truth = exp.predict(problem, [d, e], 0.2575)["stage_seconds"]
        cp = exp.predict(problem, [d, e], 0.2575)
        served = {t: 0.005 + 3 * v for t, v in truth.items()}
        runs.append({"device_after": d, "edge_after": e, "predicted": cp,
                     "measured": {"stage_seconds": served, "latency_seconds": None}})  # fmt: skip
    exp.cross_calibrate(problem, runs, 0.2575)
    for r in runs:
        assert r["calibrated"]["stage_seconds"] == pytest.approx(r["measured"]["stage_seconds"], rel=1e-3)
    assert exp.prediction_error(runs, "calibrated")["stage_p90"] < 0.01 < exp.prediction_error(runs)["stage_median"]


def test_the_loop_replan_measures_a_new_choice_and_plans_again():
    """loop_replan with a fake `run` whose stage times follow a known line: a first choice outside what was
    measured is run, its measurement joins the fit, and the loop stops at a split it has measured."""
    from splitdnn.planner.deploy import split_of

    problem = exp.planner_problem(exp.CONFIGS[1], _profile(), 0.0, None, 1e9)
    runs_made = []

    def truth(d: str, e: str) -> dict:  # the device's real cost: 4 ms per profiled ms, plus 1 ms per call
        ends = split_of(problem, [d, e])
        base = {t: 0.0 for t in problem.tiers}
        prev = 0
        for t, end in zip(problem.tiers, ends):
            base[t] = sum(b.time[t] for b in problem.blocks[prev:end])
            prev = max(prev, end)
        stages = {t: 0.001 + 4 * v for t, v in base.items()}
        return {"stage_seconds_mean": stages, "drop_rate": 0.0}

    def run(d: str, e: str) -> tuple[str, dict]:
        runs_made.append((d, e))
        return f"{d}/{e}", truth(d, e)

    fixed = {pair: [truth(*pair)] for pair in exp.fixed_splits()[:2]}
    out = exp.loop_replan(problem, fixed, 60.0, run)
    assert [(x["device_after"], x["edge_after"]) for x in out["explored"]] == runs_made
    assert 1 <= len(runs_made) <= exp.MAX_EXPLORE, runs_made  # the first re-plan leaves the measured pairs
    assert (out["device_after"], out["edge_after"]) in set(fixed) | set(runs_made)
    assert out["observed_runs"] == 2 + len(runs_made)
