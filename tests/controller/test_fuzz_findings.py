"""Pure checks of what the spec fuzzer (tests/controlplane/test_spec_fuzz.py) found, without a control plane."""

from __future__ import annotations

import json

import yaml

from splitdnn.controller import reconcile
from splitdnn.controller.kube import yaml_safe_json
from splitdnn.spec import node_selector_problems


def body(name: str, **tier) -> dict:
    return {
        "apiVersion": "splitdnn.io/v1alpha1",
        "kind": "SplitInference",
        "metadata": {"name": name, "namespace": "ns", "generation": 1},
        "spec": {"model": {"builtin": "cnn14"}, "splitPoints": [], "tiers": [{"name": "device", **tier}]},
    }


def test_apply_body_keeps_every_character_as_yaml_reads_it():
    obj = {"args": ["x🙂é中", "\x7f\x85\u2028\ufeff\x00\t"]}
    raw = yaml_safe_json(obj)
    assert b"\\ud83d" not in raw and "🙂".encode() in raw  # no surrogate pair
    assert json.loads(raw) == obj and yaml.safe_load(raw) == obj


def test_names_the_api_admits_but_children_cannot_have_fail_before_any_child_is_listed():
    for name, needle in (("a.b", "metadata.name"), ("9a", "metadata.name"), ("l" * 64, "longer than 63")):
        d = reconcile.desired(body(name))
        assert d.problems and any(needle in p for p in d.problems), (name, d.problems)
    assert not reconcile.desired(body("ok")).problems


def test_node_selector_must_be_labels():
    assert node_selector_problems({"splitdnn.io/tier": "edge", "a": "", "k": "x.y_z"}) == []
    assert [p.split()[0] for p in node_selector_problems({"ä": "v", "k": "bad välue", "a/b/c": "x" * 64})] == [
        "key",
        "value",
        "key",
        "value",
    ]
    d = reconcile.desired(body("ok", nodeSelector={"k": "bad välue"}))
    out = reconcile.prepare(d, "create", {})
    assert out.result == "failed" and "tiers[0].nodeSelector" in out.status["message"] and not out.apply
