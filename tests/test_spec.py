"""The CRD's schema and the examples: every example validates; malformed specs are rejected with the field named."""

from pathlib import Path

import pytest
import yaml

from splitdnn.spec import SpecError, crd, cross_field_problems, from_resource, load_file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_crd_identity():
    doc = crd()
    assert doc["spec"]["group"] == "splitdnn.io"
    assert doc["spec"]["names"]["kind"] == "SplitInference"
    assert doc["spec"]["names"]["plural"] == "splitinferences"
    assert doc["spec"]["names"]["shortNames"] == ["si"]
    version = doc["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Ready", "Split", "Drop", "Latency", "Age"]
    # the packaged copy is the very file in crds/
    assert (ROOT / "src/splitdnn/data/splitinference.yaml").resolve() == (ROOT / "crds/splitinference.yaml").resolve()


def test_structural_schema_every_field_typed():
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def walk(node, path):
        if node.get("x-kubernetes-preserve-unknown-fields"):
            return
        assert "type" in node, f"{path} has no type"
        for key, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{}}")

    walk(schema, "")


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate(path, cnn14_graph):
    items = load_file(path)
    assert len(items) == 1
    si = items[0]
    assert si.tier_names == ["device", "edge", "cloud"]
    assert [t["overheadRatio"] for t in si.tiers] == [10, 5, 1]
    assert si.workload["frames"] == 50
    assert all(t["nodeSelector"] == {"splitdnn.io/tier": t["name"]} for t in si.tiers)
    assert cross_field_problems(si, [l.name for l in cnn14_graph.layers]) == []


def test_paper_configurations():
    t1, t2, t3 = (load_file(ROOT / "examples" / f)[0] for f in ("cnn14.yaml", "cnn14-type2.yaml", "cnn14-type3.yaml"))
    assert [t["maxMessageBytes"] for t in t1.tiers] == [500_000] * 3
    assert [t["maxMessageBytes"] for t in t2.tiers] == [50_000] * 3
    assert t3.tiers[-1]["netem"]["delay"] == "1002.5ms" and t1.tiers[-1]["netem"]["delay"] == "252.5ms"


def base():
    return yaml.safe_load((ROOT / "examples/cnn14.yaml").read_text())


def mutate(fn):
    doc = base()
    fn(doc["spec"])
    return doc


@pytest.mark.parametrize(
    "change,field",
    [
        (lambda s: s["tiers"][0]["netem"].update(delay="2.5"), "spec.tiers.0.netem.delay"),
        (lambda s: s["tiers"][1]["netem"].update(rate="fast"), "spec.tiers.1.netem.rate"),
        (lambda s: s["tiers"][0]["netem"].update(loss="5"), "spec.tiers.0.netem.loss"),
        (lambda s: s["tiers"][0].update(overheadRatio=-1), "spec.tiers.0.overheadRatio"),
        (lambda s: s["workload"].update(fps=0), "spec.workload.fps"),
        (lambda s: s["workload"].update(frames=-3), "spec.workload.frames"),
        (lambda s: s["planner"].update(objective="speed"), "spec.planner.objective"),
        (lambda s: s["model"].update(uri="/m/x.keras"), "spec.model"),
        (lambda s: s.update(model={}), "spec.model"),
        (lambda s: s["tiers"][0].update(name="Device_1"), "spec.tiers.0.name"),
        (lambda s: s.pop("tiers"), "spec"),
    ],
)
def test_malformed_specs_are_rejected_naming_the_field(change, field):
    with pytest.raises(SpecError) as err:
        from_resource(mutate(change))
    assert str(err.value).startswith(field)


def test_defaults_are_applied():
    doc = base()
    del doc["spec"]["workload"]["maxInFlight"]
    del doc["spec"]["tiers"][0]["maxMessageBytes"]
    si = from_resource(doc)
    assert si.workload["maxInFlight"] == 4
    assert si.tiers[0]["maxMessageBytes"] == 4194304
    assert si.spec["adaptation"]["margin"] == 0.1


def test_cross_field_problems_are_named(cnn14_graph):
    layers = [l.name for l in cnn14_graph.layers]
    doc = base()
    doc["spec"]["splitPoints"] = ["conv2d"]
    assert "1 split points for 3 tiers" in cross_field_problems(from_resource(doc), layers)[0]
    doc["spec"]["splitPoints"] = ["conv2d", "nope"]
    assert cross_field_problems(from_resource(doc), layers) == ["split point 'nope' is not a layer of model 'cnn14'"]
    doc["spec"]["splitPoints"] = ["flatten", "conv2d"]
    assert "layer order" in cross_field_problems(from_resource(doc), layers)[0]
    doc = base()
    doc["spec"]["tiers"][2]["name"] = "edge"
    assert "duplicate tier names: edge" in cross_field_problems(from_resource(doc), layers)
    doc = base()
    doc["spec"]["planner"]["mode"] = "auto"
    del doc["spec"]["splitPoints"]
    assert cross_field_problems(from_resource(doc), layers) == []
