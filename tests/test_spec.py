"""The CRD's schema and the examples: every example validates; malformed specs are rejected with the field named."""

import copy
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from splitdnn import spec as spec_mod
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
    if path.name.startswith("cnn14"):  # Cho 2021's configurations (the coop example runs its device tier bare)
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
        (lambda s: s["model"].update(storageUri="/m/x.keras"), "spec.model"),
        (lambda s: s.update(model={"storageUri": "gs://bucket/m.keras"}), "spec.model.storageUri"),
        (lambda s: s.update(model={"storageUri": "s3://bucket-only"}), "spec.model.storageUri"),
        (lambda s: s.update(model={"storageUri": "https://h/m.keras", "sha256": "abc"}), "spec.model.sha256"),
        (lambda s: s.update(model={"storageUri": "s3://b/m.keras", "secretName": "S3_Creds"}), "spec.model.secretName"),
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


@pytest.mark.parametrize(
    "model,problems",
    [
        ({"storageUri": "s3://models/m.keras", "sha256": "ab" * 32, "secretName": "s3-creds"}, []),
        ({"storageUri": "https://h/m.keras", "sha256": "AB" * 32}, []),
        ({"storageUri": "pvc://claim/m.keras"}, []),
        ({"storageUri": "/models/m.keras"}, []),
        ({"builtin": "cnn14", "sha256": "ab" * 32}, ["model.sha256 pins a model file: it needs model.storageUri"]),
        (
            {"storageUri": "https://h/m.keras", "secretName": "s3-creds"},
            ["model.secretName holds S3 credentials: it needs an s3:// model.storageUri"],
        ),
    ],
)
def test_model_source_fields(model, problems):
    doc = base()
    doc["spec"]["model"] = model
    si = from_resource(doc)
    assert si.model_source == model.get("storageUri", "cnn14")
    assert cross_field_problems(si) == problems


# --- the typed spec: one home for the defaults, the CRD agrees ---------------------------------------------------


def api_server_defaults(value, node):
    """What the API server does on admission: fill in the schema's `default`s top-down (an object defaulted to {}
    gets its fields' defaults too)."""
    if node.get("type") == "object" and isinstance(value, dict):
        for key, sub in node.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = api_server_defaults(value[key], sub)
    elif node.get("type") == "array" and isinstance(value, list) and "items" in node:
        value = [api_server_defaults(v, node["items"]) for v in value]
    return value


def _default_of(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def test_typed_defaults_agree_with_the_crd():
    """Walk the CRD schema beside the dataclasses: the same fields, the same defaults; a field without a CRD
    default is absent by default (None or empty), and a required field has no default."""
    checked = []

    def walk(cls, node, path):
        hints = typing.get_type_hints(cls)
        fields = {spec_mod.json_name(f.name): f for f in dataclasses.fields(cls)}
        assert set(fields) == set(node["properties"]), f"{path}: typed fields differ from the CRD's"
        for key, f in fields.items():
            sub, where, default = node["properties"][key], f"{path}.{key}", _default_of(f)
            if default is dataclasses.MISSING:
                assert key in node.get("required", []), f"{where} has no default but the CRD does not require it"
                assert "default" not in sub, where
            node_cls = spec_mod._node_type(hints[f.name])
            if node_cls is not None and sub["type"] == "array":
                walk(node_cls, sub["items"], f"{where}[]")
            elif node_cls is not None:
                walk(node_cls, sub, where)
                if default is not dataclasses.MISSING:
                    want = api_server_defaults(copy.deepcopy(sub["default"]), sub) if "default" in sub else {}
                    assert default.to_dict() == want, where
            elif "default" in sub:
                assert default == sub["default"] and type(default) is type(sub["default"]), where
            elif default is not dataclasses.MISSING:
                assert default in (None, [], {}), f"{where}: a default the CRD does not have"
            checked.append(where)

    walk(spec_mod.Spec, spec_mod.schema()["properties"]["spec"], "spec")
    assert {"spec.workload.fps", "spec.workload.maxInFlight", "spec.tiers[].maxMessageBytes"} <= set(checked)


MINIMAL = {
    "apiVersion": "splitdnn.io/v1alpha1",
    "kind": "SplitInference",
    "metadata": {"name": "bare"},
    "spec": {"model": {"builtin": "cnn14"}, "splitPoints": ["conv2d"], "tiers": [{"name": "a"}, {"name": "b"}]},
}


@pytest.mark.parametrize("doc", [MINIMAL, *map(lambda p: yaml.safe_load(p.read_text()), EXAMPLES)])
def test_the_dict_form_is_what_the_api_server_stores(doc):
    stored = api_server_defaults(copy.deepcopy(doc), spec_mod.schema())
    assert from_resource(doc).spec == stored["spec"]


def test_a_spec_without_workload_gets_the_defaults():
    si = from_resource(copy.deepcopy(MINIMAL))
    assert si.typed.workload == spec_mod.Workload()
    assert (si.typed.workload.fps, si.typed.workload.max_in_flight, si.typed.workload.frames) == (1, 4, 50)
    assert si.workload["maxInFlight"] == 4 and si.deadline_seconds == 1.0
    assert si.typed.planner.mode == "fixed" and si.typed.adaptation.enabled is False
    assert si.typed.tiers[0].netem == spec_mod.Netem() and "netem" not in si.tiers[0]


def test_the_typed_view_follows_edits_of_the_dict():
    si = from_resource(copy.deepcopy(MINIMAL))
    si.spec["splitPoints"] = ["flatten"]
    si.tiers[1]["netem"] = {"delay": "5ms"}
    assert si.typed.split_points == ["flatten"] and si.typed.tiers[1].netem.delay == "5ms"
    assert spec_mod.Spec.from_dict(si.spec).to_dict() == si.spec  # the dict form round-trips


def test_the_operators_list_of_keras_applications_is_the_installed_keras():
    """The operator has no TensorFlow: its list of keras.applications names must be Keras' own."""
    import keras

    from splitdnn.spec import KERAS_APPLICATIONS

    installed = {n for n in dir(keras.applications) if n[:1].isupper() and callable(getattr(keras.applications, n))}
    assert set(KERAS_APPLICATIONS) == installed
