"""SplitInference resources: load from YAML, validate against the CRD's own schema, apply its defaults, and
check what a schema cannot (cross-field rules). Used by `splitdnn run`, the operator and the tests, so a file
that `splitdnn run` accepts is one the API server accepts too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from splitdnn.units import parse_duration

GROUP = "splitdnn.io"
VERSION = "v1alpha1"
KIND = "SplitInference"
PLURAL = "splitinferences"
CRD_FILE = Path(__file__).resolve().parent / "data" / "splitinference.yaml"


class SpecError(ValueError):
    """A SplitInference that the API or the operator would refuse; the message names the field."""


@lru_cache(maxsize=1)
def crd() -> dict:
    return yaml.safe_load(CRD_FILE.read_text())


def schema() -> dict:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def validate_schema(resource: dict) -> None:
    """Structural validation with the CRD's OpenAPI schema (draft-4 semantics, as the API server uses)."""
    import jsonschema

    validator = jsonschema.Draft4Validator(schema())
    errors = sorted(validator.iter_errors(resource), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path) or "(root)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise SpecError(f"{where}: {first.message}{more}")


def apply_defaults(value: Any, node: dict) -> Any:
    """Fill in the schema's `default`s like the API server does on admission."""
    if node.get("type") == "object" and isinstance(value, dict):
        for key, sub in node.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(value[key], sub)
    elif node.get("type") == "array" and isinstance(value, list) and "items" in node:
        value = [apply_defaults(v, node["items"]) for v in value]
    return value


@dataclass
class SplitInference:
    name: str
    namespace: str
    spec: dict  # with defaults applied

    @property
    def tiers(self) -> list[dict]:
        return self.spec["tiers"]

    @property
    def tier_names(self) -> list[str]:
        return [t["name"] for t in self.tiers]

    @property
    def model_source(self) -> str:
        """The model spec string the CLI and `splitdnn.models.load_model` take."""
        return model_source(self.spec)

    @property
    def input_shape(self):
        return self.spec["model"].get("inputShape")

    @property
    def workload(self) -> dict:
        return self.spec.get("workload", {})

    @property
    def deadline_seconds(self) -> float:
        return parse_duration(self.workload.get("deadline", "1s"))


def model_source(spec: dict) -> str:
    model = spec["model"]
    if "builtin" in model:
        return model["builtin"]
    if "kerasApplication" in model:
        return f"keras.applications.{model['kerasApplication']}"
    return model["uri"]


def from_resource(resource: dict) -> SplitInference:
    """Validate a resource dict (as read from YAML or the API) and apply defaults."""
    if not isinstance(resource, dict):
        raise SpecError("a SplitInference must be a YAML mapping")
    if resource.get("kind") != KIND or resource.get("apiVersion") != f"{GROUP}/{VERSION}":
        raise SpecError(
            f"expected apiVersion {GROUP}/{VERSION} kind {KIND}, "
            f"got {resource.get('apiVersion')} {resource.get('kind')}"
        )
    resource = copy.deepcopy(resource)
    validate_schema(resource)
    resource = apply_defaults(resource, schema())
    meta = resource.get("metadata") or {}
    if not meta.get("name"):
        raise SpecError("metadata.name is required")
    return SplitInference(meta["name"], meta.get("namespace", "default"), resource["spec"])


def load_file(path: str | Path) -> list[SplitInference]:
    """Every SplitInference in a (multi-document) YAML file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such file")
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    items = [from_resource(d) for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if not items:
        raise SpecError(f"{path}: no {KIND} in this file")
    return items


def cross_field_problems(si: SplitInference, layer_names: list[str] | None = None) -> list[str]:
    """What the schema cannot say. `layer_names` (model order) enables the split-point checks."""
    problems = []
    names = si.tier_names
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"duplicate tier names: {', '.join(duplicates)}")
    planner = si.spec.get("planner", {})
    points = si.spec.get("splitPoints")
    if planner.get("mode", "fixed") == "fixed" or points:
        points = points or []
        if len(points) != len(names) - 1:
            problems.append(
                f"{len(points)} split points for {len(names)} tiers: need exactly {len(names) - 1} "
                f"(one fewer than tiers), or planner.mode: auto"
            )
        if layer_names is not None:
            unknown = [p for p in points if p not in layer_names]
            for p in unknown:
                problems.append(f"split point {p!r} is not a layer of model {si.model_source!r}")
            known = [layer_names.index(p) for p in points if p in layer_names]
            if not unknown and known != sorted(set(known)):
                problems.append("split points must be distinct and in layer order")
            if not unknown and known and known[-1] == len(layer_names) - 1:
                problems.append(f"split point {points[-1]!r} is the last layer: the last tier would get nothing")
    constraints = planner.get("constraints", {})
    for key in ("use", "skip"):
        for tier in constraints.get(key, []):
            if tier not in names:
                problems.append(f"planner.constraints.{key} names unknown tier {tier!r}")
    return problems
