import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Subprocesses (`python -m splitdnn …`) see the same source tree as the tests.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session")
def cnn14_model():
    from splitdnn.models import load_model

    return load_model("cnn14")


@pytest.fixture(scope="session")
def cnn14_graph(cnn14_model):
    from splitdnn.graph import build_graph

    return build_graph(cnn14_model)


@pytest.fixture(scope="session")
def coop_slices(tmp_path_factory, cnn14_model, cnn14_graph):
    """CNN14 cut after max_pooling2d_1 and flatten, each slice also as .keras (what a cooperative tier computes)."""
    from splitdnn.slicer import export_slices, resolve_cuts

    out = tmp_path_factory.mktemp("coop-slices")
    cuts = resolve_cuts(cnn14_graph, ["max_pooling2d_1", "flatten"])
    export_slices(cnn14_model, cnn14_graph, cuts, out, tflite=False, keras=True)
    return str(out)


# The real Kubernetes control plane (Go-built, kwok nodes): see tests/harness/fixtures.py
from harness.fixtures import controlplane, kube_api, namespace  # noqa: E402,F401  (re-exported fixtures)

# SPLITDNN_SHUFFLE_SEED=<int> runs the tests in a random (seeded, replayable) order
from harness.shuffle import pytest_collection_modifyitems, pytest_report_header  # noqa: E402,F401

# Under CI=true a skip fails unless tests/skip-allowlist.txt allows it; every run prints the skip count.
from harness.skips import (  # noqa: E402,F401  (hooks of this conftest)
    pytest_configure,
    pytest_make_collect_report,
    pytest_runtest_makereport,
    pytest_terminal_summary,
)
