"""SplitInference resources: load from YAML, validate against the CRD's own schema, apply the defaults, and check
what a schema cannot (cross-field rules). Used by `splitdnn run`, `splitdnn render`, the operator and the tests, so a
file that `splitdnn run` accepts is one the API server accepts too.

The typed form (`Spec` and the dataclasses below) is the one home of the defaults: a field's dataclass default is its
default everywhere (the operator's pods, `splitdnn run`, the planner). The CRD repeats them as `default:` so that the
API server stores the same values; `tests/test_spec.py` walks the CRD schema and checks the two agree field by field.
`SplitInference.spec` is the dict form of the typed spec (what the API server stores, defaults filled in), kept for
code that reads or edits the resource as JSON; `SplitInference.typed` reads it back as a `Spec`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar

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


# --- the typed spec: field names are the JSON names in snake_case (maxInFlight ↔ max_in_flight) -------------------

N = TypeVar("N", bound="Node")


def json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _node_type(hint: Any) -> type[Node] | None:
    """The Node class inside a hint (`Tier`, `Tier | None`, `list[Tier]`), else None."""
    if isinstance(hint, type) and issubclass(hint, Node):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) in (typing.Union, list):
        for arg in typing.get_args(hint):
            found = _node_type(arg)
            if found is not None:
                return found
    return None


def _absent(value: Any) -> bool:
    """What the dict form leaves out: no value, an empty collection, an object with nothing set."""
    return value is None or (isinstance(value, (dict, list)) and not value)


class Node:
    """A dataclass of the spec: from and to its JSON dict (the API server's form). Unknown keys are ignored, as the
    API server prunes them; absent keys take the field's default."""

    @classmethod
    def from_dict(cls: type[N], data: dict) -> N:
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            key = json_name(f.name)
            if key not in data or data[key] is None:
                continue
            value, node = data[key], _node_type(hints[f.name])
            if node is None:
                kwargs[f.name] = copy.deepcopy(value)
            elif isinstance(value, list):
                kwargs[f.name] = [node.from_dict(v) for v in value]
            else:
                kwargs[f.name] = node.from_dict(value)
        return cls(**kwargs)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Node):
                value = value.to_dict()
            elif isinstance(value, list):
                value = [v.to_dict() if isinstance(v, Node) else copy.deepcopy(v) for v in value]
            else:
                value = copy.deepcopy(value)
            if not _absent(value):
                out[json_name(f.name)] = value
        return out


# keras.applications' models (Keras 3; tests/test_spec.py checks the list against the installed Keras): the operator,
# which has no TensorFlow, refuses another name at once instead of after a model Job
KERAS_APPLICATIONS = (
    *("ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtSmall", "ConvNeXtTiny", "ConvNeXtXLarge"),
    *("DenseNet121", "DenseNet169", "DenseNet201"),
    *(f"EfficientNetB{i}" for i in range(8)),
    *(f"EfficientNetV2{v}" for v in ("B0", "B1", "B2", "B3", "L", "M", "S")),
    *("InceptionResNetV2", "InceptionV3", "MobileNet", "MobileNetV2", "MobileNetV3Large", "MobileNetV3Small"),
    *("NASNetLarge", "NASNetMobile", "ResNet101", "ResNet101V2", "ResNet152", "ResNet152V2", "ResNet50"),
    *("ResNet50V2", "VGG16", "VGG19", "Xception"),
)


@dataclass
class Model(Node):
    """Exactly one of builtin, storage_uri, keras_application (the schema checks it); sha256 and secret_name go with
    storage_uri (`cross_field_problems` checks it)."""

    builtin: str | None = None
    storage_uri: str | None = None
    sha256: str | None = None
    secret_name: str | None = None
    keras_application: str | None = None
    input_shape: list[int] | None = None

    @property
    def source(self) -> str:
        """The model string the CLI and `splitdnn.models.load_model` take."""
        if self.builtin:
            return self.builtin
        if self.keras_application:
            return f"keras.applications.{self.keras_application}"
        return self.storage_uri or ""

    def problems(self) -> list[str]:
        """What the schema cannot say about the model's fields."""
        found = []
        if self.sha256 and not self.storage_uri:
            found.append("model.sha256 pins a model file: it needs model.storageUri")
        if self.secret_name and not (self.storage_uri or "").startswith("s3://"):
            found.append("model.secretName holds S3 credentials: it needs an s3:// model.storageUri")
        if self.keras_application and self.keras_application not in KERAS_APPLICATIONS:
            close = [n for n in KERAS_APPLICATIONS if n.lower().startswith(self.keras_application.lower()[:4])][:4]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            found.append(
                f"unknown model 'keras.applications.{self.keras_application}': keras.applications has no model "
                f"named {self.keras_application!r}{hint}"
            )
        return found


@dataclass
class Netem(Node):
    """Emulation of a tier's outgoing link; None = not emulated."""

    delay: str | None = None
    jitter: str | None = None
    loss: str | None = None
    rate: str | None = None
    limit: int | None = None


@dataclass
class Tier(Node):
    name: str
    node_selector: dict[str, str] = field(default_factory=dict)
    overhead_ratio: float = 0
    max_message_bytes: int = 4194304
    max_request_bytes: int = 67108864  # 64 MiB: the agent's --max-request-bytes
    # the agent's --runtime; None: litert where the tier's slice converted to .tflite, else tensorflow (--runtime auto)
    runtime: Literal["tensorflow", "litert"] | None = None
    threads: int | None = None  # the agent's --threads (None: the runtime's default)
    devices: int = 1  # > 1: a cooperative group computes the tier's slice (the agent's --devices)
    netem: Netem = field(default_factory=Netem)
    resources: dict[str, Any] = field(default_factory=dict)


@dataclass
class Workload(Node):
    """The frames the first tier's source offers. The operator's pods and `splitdnn run` both take these."""

    fps: float = 1
    frames: int = 50  # 0 = endless
    deadline: str = "1s"
    max_in_flight: int = 4
    source: str = "synthetic"
    seed: int = 0
    warmup_frames: int = 0

    @property
    def deadline_seconds(self) -> float:
        return parse_duration(self.deadline)


@dataclass
class Constraints(Node):
    pin: dict[str, str] = field(default_factory=dict)
    forbid: dict[str, list[str]] = field(default_factory=dict)
    use: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    max_upload_bytes: dict[str, int] = field(default_factory=dict)
    max_time: dict[str, str] = field(default_factory=dict)
    max_time_share: dict[str, float] = field(default_factory=dict)


@dataclass
class Planner(Node):
    mode: Literal["fixed", "auto"] = "fixed"
    objective: Literal["latency", "throughput", "bytes"] = "throughput"
    coop: Literal["mls", "sls", "off"] = "mls"  # how a tier of several devices splits its slice (the agent's --coop)
    constraints: Constraints = field(default_factory=Constraints)


@dataclass
class Adaptation(Node):
    enabled: bool = False
    prometheus_url: str | None = None
    interval: str = "30s"
    max_frame_drop_rate: float = 0.05
    cooldown: str = "2m"
    margin: float = 0.1


@dataclass
class Spec(Node):
    model: Model
    tiers: list[Tier]
    split_points: list[str] = field(default_factory=list)
    workload: Workload = field(default_factory=Workload)
    planner: Planner = field(default_factory=Planner)
    adaptation: Adaptation = field(default_factory=Adaptation)

    @property
    def cooperative(self) -> bool:
        """A tier computes with several devices (its slice is sliced as .keras too, see `tiers[].devices`)."""
        return any(t.devices > 1 for t in self.tiers)


@dataclass
class SplitInference:
    name: str
    namespace: str
    spec: dict  # the dict form of `Spec`: what the API server stores, defaults filled in
    labels: dict[str, str] = field(default_factory=dict)  # metadata.labels (kopf.adopt copies them to the children)

    @property
    def typed(self) -> Spec:
        """The spec as dataclasses (read from `spec` each time, so edits of the dict show)."""
        return Spec.from_dict(self.spec)

    @property
    def tiers(self) -> list[dict]:
        return self.spec["tiers"]

    @property
    def tier_names(self) -> list[str]:
        return [t["name"] for t in self.tiers]

    @property
    def planner_chooses(self) -> bool:
        """planner.mode auto without splitPoints: the planner picks the split (from the model's graph)."""
        return (self.spec.get("planner") or {}).get("mode") == "auto" and not self.spec.get("splitPoints")

    @property
    def model_source(self) -> str:
        """The model spec string the CLI and `splitdnn.models.load_model` take."""
        return model_source(self.spec)

    @property
    def input_shape(self) -> list[int] | None:
        return self.spec["model"].get("inputShape")

    @property
    def workload(self) -> dict:
        return self.spec.get("workload", {})

    @property
    def deadline_seconds(self) -> float:
        return self.typed.workload.deadline_seconds


def model_source(spec: dict) -> str:
    return Model.from_dict(spec["model"]).source


def from_resource(resource: dict) -> SplitInference:
    """Validate a resource dict (as read from YAML or the API) and apply the defaults."""
    if not isinstance(resource, dict):
        raise SpecError("a SplitInference must be a YAML mapping")
    if resource.get("kind") != KIND or resource.get("apiVersion") != f"{GROUP}/{VERSION}":
        raise SpecError(
            f"expected apiVersion {GROUP}/{VERSION} kind {KIND}, "
            f"got {resource.get('apiVersion')} {resource.get('kind')}"
        )
    validate_schema(resource)
    meta = resource.get("metadata") or {}
    if not meta.get("name"):
        raise SpecError("metadata.name is required")
    spec = Spec.from_dict(resource["spec"]).to_dict()
    return SplitInference(meta["name"], meta.get("namespace", "default"), spec, dict(meta.get("labels") or {}))


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


LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def node_selector_problems(selector: dict[str, str]) -> list[str]:
    """Keys and values a pod's nodeSelector cannot have (Kubernetes label syntax). The schema admits any string;
    the tier's Deployment would be refused after the tiers before it were applied (found by the spec fuzzer)."""
    problems = []
    for key, value in selector.items():
        prefix, _, name = key.rpartition("/")
        if not (LABEL_NAME.fullmatch(name) and len(name) <= 63) or (
            prefix and not (DNS_SUBDOMAIN.fullmatch(prefix) and len(prefix) <= 253)
        ):
            problems.append(f"key {key!r} is not a label key ([prefix/]name, name: 63 letters, digits, '-_.')")
        if value and not (LABEL_NAME.fullmatch(value) and len(value) <= 63):
            problems.append(f"value {value!r} of {key!r} is not a label value (63 letters, digits, '-_.', or empty)")
    return problems


def cross_field_problems(si: SplitInference, layer_names: list[str] | None = None) -> list[str]:
    """What the schema cannot say. `layer_names` (model order) enables the split-point checks."""
    spec = si.typed
    problems = spec.model.problems()
    names = [t.name for t in spec.tiers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"duplicate tier names: {', '.join(duplicates)}")
    for i, t in enumerate(spec.tiers):
        problems += [f"tiers[{i}].nodeSelector: {p}" for p in node_selector_problems(t.node_selector)]
        if t.devices > 1 and t.runtime == "litert":
            problems.append(f"tiers[{i}]: a cooperative tier (devices > 1) computes with TensorFlow, not litert")
    points = spec.split_points
    if spec.planner.mode == "fixed" or points:
        if len(points) != len(names) - 1:
            problems.append(
                f"{len(points)} split points for {len(names)} tiers: need exactly {len(names) - 1} "
                f"(one fewer than tiers), or planner.mode: auto"
            )
        if layer_names is not None:
            unknown = [p for p in points if p not in layer_names]
            for p in unknown:
                problems.append(f"split point {p!r} is not a layer of model {spec.model.source!r}")
            known = [layer_names.index(p) for p in points if p in layer_names]
            if not unknown and known != sorted(set(known)):
                problems.append("split points must be distinct and in layer order")
            if not unknown and known and known[-1] == len(layer_names) - 1:
                problems.append(f"split point {points[-1]!r} is the last layer: the last tier would get nothing")
    constraints = spec.planner.constraints
    for key, tiers in (("use", constraints.use), ("skip", constraints.skip)):
        for tier in tiers:
            if tier not in names:
                problems.append(f"planner.constraints.{key} names unknown tier {tier!r}")
    return problems
