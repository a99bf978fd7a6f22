"""Spec fuzzing against the real API server and the operator (issue #18): hundreds of SplitInferences generated
from the CRD's own openAPIV3Schema (hypothesis), valid and invalid, are created in one namespace an operator
watches. Each one meant to break the schema must be refused by the API server with the field named; each one the
schema admits but the operator cannot deploy must end `Failed` with a `Valid=False` condition naming the field and
no child object; the valid ones must get past validation; the operator must neither crash (no traceback, same
process) nor stop answering: a valid resource applied after the campaign reaches Running (its time is printed next
to the time before the campaign; no wall-clock assert on two shared cores).

Three families, each case carrying what it expects:
- schema: a valid spec with one schema rule broken at a leaf the schema describes (type, bounds, pattern,
  maxLength, enum, min/maxItems, required, oneOf), or a metadata.name the API refuses (non-ASCII, upper case,
  longer than 253) → refused, the message names the field;
- operator: a schema-valid spec the operator must refuse (a split point that is no layer — non-ASCII too —, a
  wrong count, duplicate tiers, 16 tiers for a 14-layer model, an unknown kerasApplication, a name too long for
  its children or not a DNS label, a constraint naming no tier) → Failed naming it;
- valid: a deployable spec (builtin model or a storageUri, 1 to 14 tiers, extreme but allowed numbers) → not
  Failed.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.fixtures import OperatorProcess, wait_for

pytestmark = [pytest.mark.controlplane, pytest.mark.fuzz]

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "splitinference.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
GROUP, VERSION, PLURAL = "splitdnn.io", "v1alpha1", "splitinferences"
CASES = int(os.environ.get("SPLITDNN_SPEC_FUZZ_CASES", "560"))
LAYERS = [
    "conv2d",
    "conv2d_1",
    "max_pooling2d",
    "batch_normalization",
    "conv2d_2",
    "conv2d_3",
    "max_pooling2d_1",
    "batch_normalization_1",
    "conv2d_4",
    "max_pooling2d_2",
    "flatten",
    "batch_normalization_2",
    "dense",
    "dense_1",
]  # cnn14's, in model order (tests/test_spec.py and the planner tests use the same model)
WEIRD = st.sampled_from(["é", "中文", "ß", "\u200b", "🙂", " ", "\t", "Ω"])  # non-ASCII and blanks
DURATION = st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10_000), st.sampled_from(["us", "ms", "s", "m"]))

# ---- strategies from the schema ----------------------------------------------------------------------------------


def node_at(path: tuple) -> dict:
    """The schema node of a path of keys (int: an array item)."""
    node = SCHEMA
    for key in path:
        node = node["items"] if isinstance(key, int) else node["properties"][key]
    return node


def leaves(node: dict = SCHEMA, path: tuple = ()) -> list[tuple[tuple, dict]]:
    """Every (path, schema) the schema constrains, arrays through their first item."""
    found = [(path, node)] if path else []
    if node.get("type") == "object" and "properties" in node:
        for key, child in node["properties"].items():
            found += leaves(child, (*path, key))
    elif node.get("type") == "array":
        found += leaves(node["items"], (*path, 0))
    return found


def broken_values(node: dict) -> list[tuple[Any, str]]:
    """(a value that breaks `node`, the rule) — each one the API server must refuse."""
    kind, out = node.get("type"), []
    wrong_type = {"string": 7, "integer": "seven", "number": "seven", "boolean": "yes", "array": {"a": 1}}
    if kind in wrong_type:
        out.append((wrong_type[kind], "type"))
    if kind == "object" and not node.get("x-kubernetes-preserve-unknown-fields"):
        out.append((["not", "an", "object"], "type"))
    if "enum" in node:
        out.append(("nö-such-välue", "enum"))
    if "pattern" in node:
        out.append(("bad välue\t中", "pattern"))
    if "maxLength" in node:
        out.append(("a" * (node["maxLength"] + 1), "maxLength"))
    if "minLength" in node:
        out.append(("", "minLength"))
    if "maximum" in node:
        out.append((node["maximum"] + 1 if kind == "integer" else node["maximum"] * 1.5 + 1, "maximum"))
    if "minimum" in node:
        out.append((0 if node.get("exclusiveMinimum") else node["minimum"] - 1, "minimum"))
    if "maxItems" in node:
        out.append((["x"] * (node["maxItems"] + 1), "maxItems"))
    if node.get("minItems"):
        out.append(([], "minItems"))
    return out


BREAKABLE = [(path, value, rule) for path, node in leaves() for value, rule in broken_values(node)]


def names(max_size: int = 12) -> st.SearchStrategy[str]:
    """DNS-1035 labels (what a tier name and a Service name must be) of at most `max_size` characters."""
    return st.from_regex(rf"\A[a-z]([a-z0-9-]{{0,{max_size - 2}}}[a-z0-9])?\Z", fullmatch=True)


def numbers(node: dict) -> st.SearchStrategy:
    """Allowed numbers of a schema node, the extremes included."""
    lo, hi = node.get("minimum"), node.get("maximum")
    if node.get("type") == "integer":
        lo = 0 if lo is None else lo
        hi = 2**63 - 1 if hi is None else hi
        return st.one_of(st.sampled_from([lo, hi]), st.integers(lo, hi))
    lo = 1e-9 if node.get("exclusiveMinimum") else lo
    return st.one_of(st.sampled_from([lo, hi]), st.floats(lo, hi, allow_nan=False, allow_infinity=False))


def field(path: tuple) -> st.SearchStrategy:
    return numbers(node_at(path))


@st.composite
def tier(draw, name: str) -> dict:
    t: dict[str, Any] = {"name": name}
    for key in ("overheadRatio", "maxMessageBytes", "maxRequestBytes"):
        if draw(st.booleans()):
            t[key] = draw(field(("tiers", 0, key)))
    if draw(st.booleans()):
        t["netem"] = {"delay": draw(DURATION), "loss": f"{draw(st.integers(0, 100))}%"}
        if draw(st.booleans()):
            t["netem"]["limit"] = draw(field(("tiers", 0, "netem", "limit")))
    if draw(st.booleans()):
        label = st.from_regex(r"\A([A-Za-z0-9]([-A-Za-z0-9_.]{0,20}[A-Za-z0-9])?)?\Z", fullmatch=True)
        t["nodeSelector"] = {draw(names()): draw(label)}
    return t


@st.composite
def valid_spec(draw, tiers: int | None = None) -> tuple[str, dict]:
    """(name, spec): a deployable SplitInference — builtin cnn14 (split points from its layers) or a storageUri."""
    n = draw(st.one_of(st.just(1), st.just(14), st.integers(1, 14))) if tiers is None else tiers
    tier_names = draw(st.lists(names(max_size=10), min_size=n, max_size=n, unique=True))
    points = sorted(draw(st.lists(st.integers(0, len(LAYERS) - 2), min_size=n - 1, max_size=n - 1, unique=True)))
    model = draw(
        st.one_of(
            st.just({"builtin": "cnn14"}),
            st.builds(lambda h, p: {"storageUri": f"https://{h}.example/{p}.keras"}, names(), names()),
        )
    )
    spec: dict[str, Any] = {
        "model": model,
        "tiers": [draw(tier(t)) for t in tier_names],
        "splitPoints": [LAYERS[i] for i in points],
        "workload": {
            "fps": draw(field(("workload", "fps"))),
            "frames": draw(field(("workload", "frames"))),
            "maxInFlight": draw(field(("workload", "maxInFlight"))),
            "seed": draw(field(("workload", "seed"))),
            "deadline": draw(DURATION.filter(lambda d: not d.startswith("0"))),
            "source": draw(st.text(min_size=1, max_size=40)),
        },
    }
    # room for the children's suffixes (-<tier>-<split id>) and the campaign's -NNNNN
    name = draw(names(max_size=63 - 10 - 6 - max(len(t) for t in tier_names)))
    return name, spec


def breaking(spec: dict, path: tuple, value: Any) -> dict | None:
    """`spec` with `value` at `path` (None when the path's parent is not in this spec: nothing to break)."""
    out = copy.deepcopy(spec)
    parent: Any = out
    for key in path[:-1]:
        if isinstance(key, int):
            if not isinstance(parent, list) or not parent:
                return None
            parent = parent[0]
        elif isinstance(parent, dict):
            parent = parent.setdefault(key, {})
        else:
            return None
    last = path[-1]
    if isinstance(last, int) != isinstance(parent, list) or (isinstance(parent, list) and not parent):
        return None
    parent[last] = value
    return out


@st.composite
def schema_case(draw) -> dict:
    name, spec = draw(valid_spec())
    kind = draw(st.sampled_from(["leaf", "leaf", "leaf", "leaf", "name", "required", "oneOf", "tiers"]))
    if kind == "name":
        bad = draw(
            st.one_of(
                st.builds(lambda a, w: a + w, names(), WEIRD),
                st.builds(lambda a: a.upper() + "X", names()),
                st.just("a" * 254),
            )
        )
        return {"name": bad, "spec": spec, "expect": "refused", "needle": "metadata.name"}
    if kind == "required":
        key = draw(st.sampled_from(["model", "tiers", "tiers.name"]))
        if key == "tiers.name":
            del spec["tiers"][0]["name"]
            return {"name": name, "spec": spec, "expect": "refused", "needle": "name"}
        del spec[key]
        return {"name": name, "spec": spec, "expect": "refused", "needle": key}
    if kind == "oneOf":
        spec["model"] = draw(st.sampled_from([{}, {"builtin": "cnn14", "storageUri": "https://h.example/m.keras"}]))
        return {"name": name, "spec": spec, "expect": "refused", "needle": "model"}
    if kind == "tiers":  # 17 tiers: one over maxItems
        spec["tiers"] = [{"name": f"t{i}"} for i in range(17)]
        spec["splitPoints"] = LAYERS[:13]
        return {"name": name, "spec": spec, "expect": "refused", "needle": "tiers"}
    while True:
        path, value, rule = draw(st.sampled_from(BREAKABLE))
        broken = breaking(spec, path, value)
        if broken is not None:
            key = next(k for k in reversed(path) if isinstance(k, str))
            return {"name": name, "spec": broken, "expect": "refused", "needle": key, "rule": rule}


@st.composite
def operator_case(draw) -> dict:
    kind = draw(
        st.sampled_from(
            ["layer", "count", "duplicate", "sixteen", "keras", "long", "label", "constraint", "order", "selector"]
        )
    )
    name, spec = draw(valid_spec(tiers=draw(st.integers(2, 5))))
    if kind in ("layer", "sixteen", "order"):
        spec["model"] = {"builtin": "cnn14"}  # the operator knows these layers (a storageUri's only the slicer)
    if kind == "layer":
        spec["splitPoints"][-1] = draw(st.one_of(st.builds(lambda a, w: a + w, names(), WEIRD), names()))
        return {"name": name, "spec": spec, "expect": "failed", "needle": "is not a layer"}
    if kind == "count":
        spec["splitPoints"] = spec["splitPoints"][:-1]
        return {"name": name, "spec": spec, "expect": "failed", "needle": "split points for"}
    if kind == "duplicate":
        spec["tiers"][-1]["name"] = spec["tiers"][0]["name"]
        return {"name": name, "spec": spec, "expect": "failed", "needle": "duplicate tier names"}
    if kind == "sixteen":
        spec["tiers"] = [{"name": f"t{i}"} for i in range(16)]
        spec["splitPoints"] = [LAYERS[min(i, len(LAYERS) - 1)] for i in range(15)]
        return {"name": name, "spec": spec, "expect": "failed", "needle": "split point"}
    if kind == "keras":
        spec["model"] = {"kerasApplication": "Zz" + draw(st.from_regex(r"\A[A-Za-z0-9]{0,20}\Z", fullmatch=True))}
        return {"name": name, "spec": spec, "expect": "failed", "needle": "unknown model"}
    if kind == "long":  # a valid resource name whose children's names would be too long
        long = draw(st.integers(60, 253))
        return {"name": "l" * long, "spec": spec, "expect": "failed", "needle": "longer than 63"}
    if kind == "label":  # a resource name the API admits but a Service name cannot be (dots, a leading digit)
        bad = draw(st.one_of(st.builds(lambda a, b: f"{a}.{b}", names(), names()), st.builds("9{}".format, names())))
        return {"name": bad, "spec": spec, "expect": "failed", "needle": "metadata.name"}
    if kind == "selector":  # the schema admits any string; a label cannot be
        key, value = draw(st.sampled_from([("k", "bad välue"), ("ä", "v"), ("a/b/c", "v"), ("k", "x" * 64)]))
        spec["tiers"][-1]["nodeSelector"] = {key: value}
        return {"name": name, "spec": spec, "expect": "failed", "needle": "nodeSelector"}
    if kind == "constraint":
        spec["planner"] = {"constraints": {draw(st.sampled_from(["use", "skip"])): ["nö-such-tier"]}}
        return {"name": name, "spec": spec, "expect": "failed", "needle": "unknown tier"}
    spec["splitPoints"] = list(reversed(spec["splitPoints"]))  # "order" (a no-op for one point: then a count error)
    if len(set(spec["splitPoints"])) < 2:
        spec["splitPoints"] = []
        return {"name": name, "spec": spec, "expect": "failed", "needle": "split points for"}
    return {"name": name, "spec": spec, "expect": "failed", "needle": "layer order"}


@st.composite
def valid_case(draw) -> dict:
    name, spec = draw(valid_spec(tiers=draw(st.sampled_from([1, 1, 2, 2, 3, 3, 14]))))
    return {"name": name, "spec": spec, "expect": "deployed"}


# about 1 in 10 deployable (each brings 1 to 14 Deployments, pods and 2 Services a tier but one: the control plane
# shares two cores, and its Service range is a /24)
FAMILIES = {"schema": schema_case(), "operator": operator_case(), "valid": valid_case()}
CASE = st.sampled_from(("schema",) * 5 + ("operator",) * 4 + ("valid",)).flatmap(FAMILIES.__getitem__)


def generate(count: int) -> list[dict]:
    """`count` cases drawn by hypothesis (derandomized: the same cases every run), unique names."""
    found: list[dict] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(CASE)
    def collect(case):
        found.append(case)

    collect()
    seen: set[str] = set()
    cases = []
    for i, case in enumerate(found):
        case = dict(case)
        if case["expect"] != "refused" or case["needle"] != "metadata.name":
            # unique names; the suffix keeps a name's kind (a name too long or not a DNS label stays so)
            stem = case["name"][: 253 - 6] if len(case["name"]) > 63 else case["name"]
            case["name"] = f"{stem}-{i:05d}" if not stem.startswith(("9", "l" * 60)) else f"{stem}{i:05d}"
        if case["name"] in seen:
            continue
        seen.add(case["name"])
        cases.append(case)
    return cases


# ---- the campaign ------------------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def resource(name: str, spec: dict) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SplitInference", "metadata": {"name": name}, "spec": spec}


def time_to_running(co, ns: str, operator: OperatorProcess, name: str) -> float:
    example = yaml.safe_load((ROOT / "examples" / "cnn14.yaml").read_text())
    example["metadata"] = {"name": name}
    t0 = time.monotonic()
    co.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, example)

    def running():
        assert operator.alive(), operator.log()[-4000:]
        st_ = co.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name).get("status") or {}
        return st_.get("phase") == "Running"

    wait_for(running, timeout=300, interval=0.5, what=f"{name} Running")
    return time.monotonic() - t0


def children_by_owner(kube_api, ns: str) -> dict[str, list[str]]:
    from kubernetes import client

    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    out: dict[str, list[str]] = {}
    for items in (
        apps.list_namespaced_deployment(ns).items,
        core.list_namespaced_service(ns).items,
        core.list_namespaced_config_map(ns).items,
    ):
        for obj in items:
            meta: Any = obj.metadata
            for ref in meta.owner_references or []:
                out.setdefault(ref.name, []).append(meta.name)
    return out


def unreachable_model(case: dict, status: dict) -> bool:
    """A valid spec whose storageUri host does not exist (`<name>.example`): its model Job fails on the fetch, and
    whether the campaign sees that or the Building before it is timing. Failing so, naming the host, is right."""
    uri = (case["spec"].get("model") or {}).get("storageUri", "")
    host = uri.split("/")[2] if uri.count("/") >= 2 else ""
    return bool(host) and f"cannot reach {host}" in (status.get("message") or "")


def test_spec_fuzz_campaign(crd, kube_api, own_ns, tmp_path):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    kc, ns = crd, own_ns
    co = client.CustomObjectsApi(kube_api)
    cases = generate(CASES)
    assert len(cases) >= 500, len(cases)
    operator = OperatorProcess(kc, ns, tmp_path / "operator.log", resync=5).start()
    try:
        before = time_to_running(co, ns, operator, "before-campaign")
        rss0 = rss_mb(operator.proc.pid)
        pid = operator.proc.pid

        problems: list[str] = []
        accepted: dict[str, dict] = {}
        rejected = 0
        for case in cases:
            try:
                co.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, resource(case["name"], case["spec"]))
            except ApiException as exc:
                body = str(exc.body or "")
                if exc.status not in (400, 422):
                    problems.append(f"{case['name'][:80]}: API answered {exc.status}: {body[:300]}")
                elif case["expect"] != "refused":
                    problems.append(f"{case['name'][:80]}: refused but expected {case['expect']}: {body[:400]}")
                elif case["needle"] not in body:
                    problems.append(f"{case['name'][:80]}: refused without naming {case['needle']!r}: {body[:400]}")
                else:
                    rejected += 1
                continue
            if case["expect"] == "refused":
                problems.append(f"{case['name'][:80]}: accepted, expected refused ({case['needle']}, {case})")
            accepted[case["name"]] = case

        # Wait for a phase on each; a deployed one is deleted once it has one: the test cluster's Service range
        # (a /24) cannot hold every deployable case's Services at once (the operator retries a 500 meanwhile).
        status: dict[str, dict] = {}
        deadline, waiting = time.monotonic() + 240, list(accepted)
        while waiting and time.monotonic() < deadline:
            time.sleep(5)
            assert operator.alive(), "operator died:\n" + operator.log()[-4000:]
            items: list[dict] = co.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]  # type: ignore[index]
            for i in items:
                name = i["metadata"]["name"]
                if name in accepted and name not in status and (i.get("status") or {}).get("phase"):
                    status[name] = i["status"]
                    if status[name]["phase"] != "Failed":
                        co.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            waiting = [n for n in accepted if n not in status]
            print(f"spec fuzz: {len(status)}/{len(accepted)} accepted ones have a phase")
        problems += [f"{n[:80]}: no phase after 240 s ({accepted.pop(n)})" for n in waiting]
        owned = children_by_owner(kube_api, ns)
        for name, case in accepted.items():
            st_ = status[name]
            if case["expect"] == "failed":
                valid: dict = next((c for c in st_.get("conditions", []) if c["type"] == "Valid"), {})
                if st_["phase"] != "Failed" or valid.get("status") != "False":
                    problems.append(f"{name[:80]}: {st_['phase']}, expected Failed naming {case['needle']!r}")
                elif case["needle"] not in valid.get("message", ""):
                    problems.append(f"{name[:80]}: Failed without naming {case['needle']!r}: {valid.get('message')}")
                else:
                    rejected += 1
                if owned.get(name):
                    problems.append(f"{name[:80]}: invalid but has children {owned[name]}")
            elif st_["phase"] == "Failed" and not unreachable_model(case, st_):
                problems.append(f"{name[:80]}: Failed, expected deployed: {st_.get('message')} ({case['spec']})")

        log = operator.log()
        assert operator.alive() and operator.proc.pid == pid, "the operator restarted or died"
        assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
        growth = rss_mb(pid) - rss0
        # clear the campaign's pods before timing the operator again (same conditions as before)
        co.delete_collection_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
        after = time_to_running(co, ns, operator, "after-campaign")
        assert "Traceback" not in operator.log()
    finally:
        operator.stop()
    print(f"spec fuzz: valid CR to Running {before:.1f} s before the campaign, {after:.1f} s after")
    print(json.dumps({"accepted": len(accepted), "refused_by_api": len(cases) - len(accepted)}))
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])
    print(f"fuzz spec: {len(cases)} inputs, {rejected} rejected as expected, 0 crashes, rss +{max(growth, 0):.0f} MB")
