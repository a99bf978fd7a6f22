"""The plan against the real CNN14 graph: the shipped examples are valid and their figures add up."""

import pytest

from splitdnn.controller import plan as plan_mod
from splitdnn.spec import load_file

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("example", ["examples/cnn14.yaml", "examples/cnn14-type2.yaml", "examples/cnn14-type3.yaml"])
def test_examples_are_valid_and_planned(example, cnn14_graph):
    (si,) = load_file(example)
    summary = plan_mod.model_summary(si.model_source)
    assert list(summary.layers) == [l.name for l in cnn14_graph.layers]
    assert plan_mod.problems(si, summary) == []
    plan = plan_mod.build_plan(si, summary)
    assert sum(t["layers"] for t in plan["tiers"]) == len(summary.layers)
    assert [l["bytes"] for l in plan["links"]] == [
        next(c.bytes for c in cnn14_graph.cuts if c.after == p) for p in si.spec["splitPoints"]]


def test_unknown_keras_application_is_a_named_problem():
    from splitdnn.models import ModelSourceError

    with pytest.raises(ModelSourceError, match="NoSuchNet"):
        plan_mod.model_summary("keras.applications.NoSuchNet")
