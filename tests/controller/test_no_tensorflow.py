"""The operator's image has no TensorFlow: every decision it makes — reconcile, a Deployment's refresh, the feedback
loop's pass, planner.mode auto — must run in a process where `tensorflow` and `keras` cannot be imported, from the
graph document a model Job stored. (A pass that still built the model in process failed in kind with "No module
named 'keras'" only once the image was slim.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness.fixtures import BLOCK_TENSORFLOW

ROOT = Path(__file__).resolve().parents[2]

PASSES = (
    BLOCK_TENSORFLOW
    + r"""
import json, sys, time
import yaml
from splitdnn.controller import feedback_pass, handlers, reconcile as core
from splitdnn.graph import GraphSummary

summary = GraphSummary.from_json(json.load(open(sys.argv[1])))
model = core.ModelState(key="k", summary=summary, digest="d" * 64, bytes=1)
lookup = lambda si: model
body = yaml.safe_load(open(sys.argv[2]))
body["metadata"].update(namespace="ns", generation=1, uid="u")
out = core.prepare(core.desired(body, lookup), "create", existing={})
assert out.apply and out.plan["modelDigest"] == "d" * 64, out.status
deps = {o["metadata"]["name"]: {**o, "status": {"readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1,
        "replicas": 1, "observedGeneration": 1}} for o in out.apply if o["kind"] == "Deployment"}
for o in deps.values():
    o["metadata"]["generation"] = 1
st = core.settle(core.desired(body, lookup), out, deps).status
assert st["phase"] == "Running", st["phase"]
body["status"] = st
body["spec"]["adaptation"] = {"enabled": True, "interval": "10s"}
p = feedback_pass.run(body, time.time(), None, {}, lookup=lookup)
assert "cannot plan" not in json.dumps(p.status), p.status
auto = dict(body, spec={**body["spec"], "splitPoints": [], "planner": {"mode": "auto"}}, status={})
planned = core.prepare(core.desired(auto, lookup), "create", existing={})
assert planned.plan and len(planned.plan["splitPoints"]) == 2, planned.status
print(json.dumps({"modules": sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))}))
"""
)


def test_the_operators_passes_run_without_tensorflow(tmp_path):
    from splitdnn.graph import build_graph
    from splitdnn.models import cnn14

    doc = tmp_path / "graph.json"
    doc.write_text(json.dumps(build_graph(cnn14()).summary().to_json()))
    done = subprocess.run(
        [sys.executable, "-c", PASSES, str(doc), str(ROOT / "examples" / "cnn14.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"modules": []}
