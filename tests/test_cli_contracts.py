"""CLI contracts: `splitdnn render` prints what the operator applies; `splitdnn run --dry-run` prints the agents'
command lines; both agree on every flag a spec decides; `inspect` and the `run` summary fit 80 columns."""

import io
import json
import os
import re
import subprocess
import sys

import kopf
import pytest
import yaml
from typer.testing import CliRunner

from harness.cli import ROOT, run_cli
from splitdnn.agent.command import LINK_FLAGS, TIER_FLAGS, WORKLOAD_FLAGS, flag_values
from splitdnn.cli import app
from splitdnn.controller import plan as plan_mod
from splitdnn.controller import render
from splitdnn.planner import deploy
from splitdnn.spec import load_file

pytestmark = pytest.mark.slow  # TensorFlow model building

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
NO_WORKLOAD = """\
apiVersion: splitdnn.io/v1alpha1
kind: SplitInference
metadata: {name: bare, labels: {team: vision}}
spec:
  model: {builtin: cnn14}
  splitPoints: [conv2d]
  tiers:
    - {name: device, netem: {delay: 20ms, jitter: 2ms, loss: 1%, rate: 8mbit}}
    - {name: cloud, overheadRatio: 0.5}
"""
CONTRACT_FLAGS = (*WORKLOAD_FLAGS, *TIER_FLAGS, *LINK_FLAGS)


@pytest.fixture
def no_workload(tmp_path):
    path = tmp_path / "bare.yaml"
    path.write_text(NO_WORKLOAD)
    return path


def cli(*args: str, env: dict | None = None) -> str:
    """The CLI in this process (TensorFlow loads once for all tests); stdout, exit code 0 asserted."""
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def operator_objects(path, namespace: str | None = None, split_points: list | None = None) -> list[dict]:
    """What reconcile (controller/handlers.py) applies for this file, step by step: the spec with the split in force,
    the plan with its predicted figures (no profiles off-cluster), the rendered children, adopted by the resource."""
    (si,) = load_file(path)
    if namespace:
        si.namespace = namespace
    if split_points:
        si.spec["splitPoints"] = split_points  # what effective_spec does with the loop's split
    summary = plan_mod.model_summary(si.model_source, tuple(si.input_shape) if si.input_shape else None)
    plan = plan_mod.build_plan(si, summary)
    plan["predicted"].update(deploy.predicted(si, summary, plan["splitPoints"], {}))
    objs = render.render_all(si, plan)
    owner = {
        "apiVersion": "splitdnn.io/v1alpha1",
        "kind": "SplitInference",
        "metadata": {"name": si.name, "namespace": si.namespace, "uid": "u-1", "labels": si.labels},
    }
    kopf.adopt(objs, owner=owner)
    for o in objs:  # the one thing `render` cannot know: the live resource's uid
        assert o["metadata"].pop("ownerReferences")[0]["uid"] == "u-1"
    return objs


def test_render_prints_what_the_operator_applies(no_workload):
    out = run_cli("render", "examples/cnn14.yaml", "--namespace", "shop").stdout
    docs = list(yaml.safe_load_all(out))  # what kubectl reads
    assert docs == operator_objects(ROOT / "examples/cnn14.yaml", namespace="shop")
    assert out.startswith("---\n") and "plan.json: |" in out  # the plan JSON as a readable block
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert kinds[:3] == [("ConfigMap", "cnn14-plan"), ("Service", "cnn14-device"), ("Deployment", "cnn14-device")]
    assert {d["metadata"]["namespace"] for d in docs} == {"shop"}
    # a re-split's objects, and a resource's labels copied to its children as kopf.adopt does
    docs = list(
        yaml.safe_load_all(cli("render", str(ROOT / "examples/cnn14.yaml"), "--split-points", "max_pooling2d,dense"))
    )
    assert docs == operator_objects(ROOT / "examples/cnn14.yaml", split_points=["max_pooling2d", "dense"])
    docs = list(yaml.safe_load_all(cli("render", str(no_workload))))
    assert docs == operator_objects(no_workload)
    assert all(d["metadata"]["labels"]["team"] == "vision" for d in docs)


def test_render_refuses_what_the_operator_would_fail(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(NO_WORKLOAD.replace("[conv2d]", "[nope]"))
    result = CliRunner().invoke(app, ["render", str(bad)])
    assert result.exit_code == 2 and "split point 'nope' is not a layer of model 'cnn14'" in result.stderr
    result = CliRunner().invoke(app, ["render", str(ROOT / "examples/cnn14.yaml"), "--split-points", ","])
    assert result.exit_code == 2 and "--split-points" in result.stderr


def test_render_plans_auto_mode_like_the_operator(tmp_path):
    auto = tmp_path / "auto.yaml"
    auto.write_text(NO_WORKLOAD.replace("  splitPoints: [conv2d]\n", "  planner: {mode: auto, objective: latency}\n"))
    (si,) = load_file(auto)
    summary = plan_mod.model_summary("cnn14")
    points, _ = deploy.choose(si, summary, {})
    docs = list(yaml.safe_load_all(cli("render", str(auto))))
    plan = json.loads(docs[0]["data"]["plan.json"])
    assert plan["splitPoints"] == points and plan["mode"] == "auto" and plan["predicted"]["latencySeconds"] > 0


def test_dry_run_prints_the_command_lines_and_starts_nothing(no_workload):
    before = _children(os.getpid())
    doc = json.loads(cli("run", str(no_workload), "--dry-run", "--json", "--frames", "7"))
    assert set(doc) == {"tiers"} and [t["name"] for t in doc["tiers"]] == ["device", "cloud"]
    assert all(isinstance(a, str) for t in doc["tiers"] for a in t["argv"])
    device, cloud = (t["argv"] for t in doc["tiers"])
    assert device[:4] == [sys.executable, "-m", "splitdnn", "agent"]
    assert flag_values(device, ("--frames", "--fps", "--max-inflight")) == {
        "--frames": "7",
        "--fps": "1",
        "--max-inflight": "4",
    }
    assert device[device.index("--next") + 1] == f"127.0.0.1:{cloud[cloud.index('--port') + 1]}"
    assert _children(os.getpid()) == before
    text = cli("run", str(no_workload), "--dry-run")
    assert text.splitlines()[0] == "# device" and " agent --slices " in text.splitlines()[1]


@pytest.mark.parametrize("path", [*EXAMPLES, None], ids=[*(p.name for p in EXAMPLES), "no-workload"])
def test_render_and_dry_run_give_each_tier_the_same_flags(path, no_workload):
    path = path or no_workload
    pods = [
        d["spec"]["template"]["spec"]["containers"][0]["command"]
        for d in yaml.safe_load_all(cli("render", str(path)))
        if d["kind"] == "Deployment"
    ]
    local = [t["argv"] for t in json.loads(cli("run", str(path), "--dry-run", "--json"))["tiers"]]
    assert len(pods) == len(local) == len(load_file(path)[0].tiers)
    for k, (pod, argv) in enumerate(zip(pods, local)):
        assert flag_values(pod, CONTRACT_FLAGS) == flag_values(argv, CONTRACT_FLAGS), f"tier {k}"
        assert "--max-inflight" in flag_values(pod, CONTRACT_FLAGS)
        assert ("--fps" in flag_values(pod, CONTRACT_FLAGS)) == (k == 0)  # the frame source is the first tier's


def test_without_workload_the_agents_get_the_crd_defaults(no_workload):
    device = json.loads(cli("run", str(no_workload), "--dry-run", "--json"))["tiers"][0]["argv"]
    want = {"--fps": "1", "--frames": "50", "--deadline": "1s", "--max-inflight": "4"}
    assert flag_values(device, WORKLOAD_FLAGS) == want
    assert flag_values(device, LINK_FLAGS) == {"--delay": "20ms", "--jitter": "2ms", "--loss": "1%", "--rate": "8mbit"}


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
        except (OSError, ValueError, IndexError):
            pass
    return found


# --- 80 columns ---------------------------------------------------------------------------------------------------


def _table_rows(text: str, names: list[str]) -> list[str]:
    """The line of each name (a row), asserting it is on exactly one line, whole."""
    lines = text.splitlines()
    rows = []
    for name in names:
        hits = [line for line in lines if re.search(rf"(^|\s){re.escape(name)}(\s|$)", line)]
        assert len(hits) == 1, (name, hits)
        rows.append(hits[0])
    return rows


@pytest.mark.parametrize(
    "model", [["cnn14"], ["keras.applications.MobileNetV2", "--input-shape", "96,96,3"]], ids=["cnn14", "mobilenet"]
)
def test_inspect_fits_80_columns(model):
    def inspect(*args: str, **env: str) -> str:  # as a user runs it (a fresh process: Keras names its layers anew)
        return subprocess.run(
            [sys.executable, "-m", "splitdnn", "inspect", *model, *args],
            capture_output=True,
            text=True,
            env=dict(os.environ, **env),
            cwd=ROOT,
            check=True,
        ).stdout

    doc = json.loads(inspect("--json"))
    out = inspect(COLUMNS="80")  # a terminal 80 columns wide
    assert max(len(line) for line in out.splitlines()) <= 80
    rows = _table_rows(out, [layer["name"] for layer in doc["layers"]])  # one line per layer, names whole
    for i, (row, layer) in enumerate(zip(rows, doc["layers"])):
        assert row.split()[0] == str(i)
        assert "×".join(str(d) for d in layer["output_shape"][1:]) in row  # the output shape on the same line
    crossing = {c["index"]: c["bytes"] for c in doc["cuts"]}
    assert all(f"{crossing[i]:,}" in row for i, row in enumerate(rows) if i in crossing)
    assert "not shown at 80 columns: class, out bytes" in out


def _result(names: list[str]) -> dict:
    """A summary as `run_local` returns it (figures of a 3-tier netns run)."""
    tiers = [
        {
            "name": n,
            "slice": f"slice{k}",
            "frames": 1234,
            "stage_seconds_mean": 0.0123 * (k + 1),
            "link_bytes": 123_456_789,
            "link_transfer_seconds_mean": 0.0456,
            "link_rtt_seconds": 0.2525,
            "link_bandwidth_bytes_per_second": 1.25e6,
            "link_emulation": "inprocess+tc",
        }
        for k, n in enumerate(names)
    ]
    counts = {"offered": 1234, "completed": 1200, "dropped": 20, "late": 10, "failed": 4, "drop_rate": 34 / 1234}
    return {**counts, "seconds": 123.4, "tiers": tiers}


def test_run_summary_fits_80_columns():
    from rich.console import Console

    from splitdnn.agent.local import summary_table

    names = ["pi-camera", "jetson-edge", "gpu-cloud"]
    out = io.StringIO()
    console = Console(file=out, width=80)  # what `splitdnn run` prints in a terminal 80 columns wide
    console.print(summary_table(_result(names), console.width))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    stages = _table_rows(text, [f"slice{k}" for k in range(3)])
    assert [row.split()[0] for row in stages] == names
    links = _table_rows(text, [f"{a} → {b}" for a, b in zip(names, [*names[1:], "results"])])
    assert all("inprocess+tc" in row and "123,456,789" in row for row in links)
    assert "drop rate 2.8%" in text and "not shown" not in text


def test_run_summary_leaves_out_columns_not_names():
    from rich.console import Console

    from splitdnn.agent.local import summary_table

    names = ["a-tier-name-of-thirty-chars-xx", "another-tier-of-thirty-chars-x"]
    out = io.StringIO()
    Console(file=out, width=80).print(summary_table(_result(names), 80))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    (row,) = _table_rows(text, [f"{names[0]} → {names[1]}"])
    assert "123,456,789" in row and "not shown at 80 columns: " in text


def test_a_real_run_without_workload_at_80_columns(tmp_path):
    """`splitdnn run` end to end for a spec without workload, in an 80-column terminal: the agents run the CRD's
    workload defaults, and the summary keeps whole tier names on one line each."""
    spec = tmp_path / "bare.yaml"
    spec.write_text(NO_WORKLOAD.replace("name: device,", "name: raspberry-pi-camera,"))
    proc = subprocess.run(
        [sys.executable, "-m", "splitdnn", "run", str(spec), "--frames", "3"],
        capture_output=True,
        text=True,
        env=dict(os.environ, COLUMNS="80"),
        cwd=ROOT,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = proc.stdout.split("3 frames in", 1)[1]
    assert max(len(line) for line in summary.splitlines()) <= 80
    _table_rows(summary, ["raspberry-pi-camera → cloud", "cloud → results"])
    stages = _table_rows(summary, ["slice0", "slice1"])
    assert [row.split()[:3] for row in stages] == [["raspberry-pi-camera", "slice0", "3"], ["cloud", "slice1", "3"]]


def test_inspect_json_is_unchanged():
    """The table changed for narrow terminals; the JSON contract did not."""
    doc = json.loads(cli("inspect", "cnn14", "--json"))
    assert set(doc) == {"model", "params_total", "input_bytes", "layers", "cuts"}
    assert set(doc["layers"][0]) == {"name", "class", "output_shape", "params", "flops", "output_bytes"}


@pytest.mark.parametrize("value", ["100", "3000000000"])
def test_agent_refuses_a_request_limit_out_of_range(value, tmp_path):
    proc = run_cli(
        "agent", "--slices", tmp_path, "--slice", "slice0", "--max-request-bytes", value, check=False, timeout=120
    )
    assert proc.returncode == 2 and "--max-request-bytes" in proc.stderr, proc.stderr
