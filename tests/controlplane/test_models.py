"""A user's own models through the operator on the real control plane: the model Job (run by the harness: kwok runs no
containers) fetches, checks and builds into the real artifact store; the operator, which has no TensorFlow, plans
from the graph it stored. Every bad input ends Failed with the reason in ModelReady, one ModelFailed Event and no
tier object; the good model's slices, fetched from the store the tiers use, compute the model's own outputs."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.fixtures import OperatorProcess, kubectl, wait_for
from harness.model_jobs import runner
from harness.own_model import own_model

TIMEOUT = 240  # a model Job imports TensorFlow on a busy 2-core machine
LIMIT = "1Mi"  # the operator's SPLITDNN_MAX_MODEL_BYTES here: the 2 MB file is too large


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import keras

    d = tmp_path_factory.mktemp("served")
    model = own_model()
    model.save(d / "mine.keras")
    inp = keras.Input(shape=(4,))
    keras.Model(inp, keras.layers.Lambda(lambda t: t * 2.0, name="double")(inp)).save(d / "lambda.keras")
    (d / "page.keras").write_text("<html><body>Please log in</body></html>\n")
    (d / "big.keras").write_bytes(b"\0" * 2_000_000)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(d), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    frame = np.random.default_rng(1).random((1, 12, 12, 3), dtype=np.float32)
    yield {
        "url": f"http://127.0.0.1:{server.server_address[1]}",
        "dir": d,
        "frame": frame,
        "outputs": np.asarray(model(frame)),
    }
    server.shutdown()


@pytest.fixture(scope="module")
def operator(crd, ns, tmp_path_factory):
    op = OperatorProcess(
        crd, ns, tmp_path_factory.mktemp("op") / "operator.log", extra_env={"SPLITDNN_MAX_MODEL_BYTES": LIMIT}
    ).start()
    yield op
    op.stop()
    print(op.log()[-4000:])


def resource(name: str, model: dict, points=("join", "pool")) -> dict:
    return {
        "apiVersion": "splitdnn.io/v1alpha1",
        "kind": "SplitInference",
        "metadata": {"name": name},
        "spec": {
            "model": model,
            "splitPoints": list(points),
            "tiers": [{"name": t} for t in ("device", "edge", "cloud")],
        },
    }


def apply(kc, ns, doc: dict) -> None:
    kubectl(kc, "apply", "-n", ns, "-f", "-", input=yaml.safe_dump(doc))


def status(kc, ns, name) -> dict:
    p = kubectl(kc, "get", "si", name, "-n", ns, "-o", "json", check=False)
    return (json.loads(p.stdout).get("status") or {}) if p.returncode == 0 else {}


def test_a_users_model_served_over_http_is_built_once_and_its_slices_compute_it(crd, ns, operator, made, files):
    from splitdnn import artifacts

    kc = crd
    made.append("mine")
    apply(kc, ns, resource("mine", {"storageUri": files["url"] + "/mine.keras"}))
    st = wait_for(
        lambda: (s := status(kc, ns, "mine")).get("phase") == "Running" and s, timeout=TIMEOUT, what="Running"
    )
    digest = hashlib.sha256((files["dir"] / "mine.keras").read_bytes()).hexdigest()
    assert st["model"]["digest"] == digest
    assert [t["firstLayer"] for t in st["plan"]["tiers"]] == ["image", "pool", "head"]  # the graph the Job read
    # the slices the tiers fetch (from the store the tiers use), chained: the model's own outputs
    store = artifacts.Store(runner(kc).url)
    out = Path(files["dir"]) / "tiers"
    for i in range(3):
        artifacts.fetch(store, st["plan"]["modelKey"], ["join", "pool"], i, out, wait_seconds=TIMEOUT)
    import tensorflow as tf

    doc = json.loads((out / "slices.json").read_text())
    values = {"image": files["frame"]}
    for entry in doc["slices"]:
        fn = tf.saved_model.load(str(out / entry["path"])).signatures["serving_default"]
        values = {k: v.numpy() for k, v in fn(**{t["name"]: values[t["name"]] for t in entry["inputs"]}).items()}
    assert float(np.abs(values["head"] - files["outputs"]).max()) <= 1e-5
    # a second SplitInference of the same model and split: no model Job
    jobs = kubectl(kc, "get", "jobs", "-n", ns, "-o", "name").stdout.split()
    made.append("again")
    apply(kc, ns, resource("again", {"storageUri": files["url"] + "/mine.keras"}))
    wait_for(lambda: status(kc, ns, "again").get("phase") == "Running", timeout=TIMEOUT, what="second Running")
    assert kubectl(kc, "get", "jobs", "-n", ns, "-o", "name").stdout.split() == jobs


BAD = {  # name -> (where the model is, the ModelReady reason, words of the message)
    "gone": ({"path": "/nothing-here.keras"}, "NotFound", "404"),
    "nobody": ({"url": "http://127.0.0.1:9/m.keras"}, "Unreachable", "127.0.0.1:9"),
    "pinned": ({"path": "/mine.keras", "sha256": "0" * 64}, "DigestMismatch", "sha256"),
    "page": ({"path": "/page.keras"}, "NotKerasArchive", "not a .keras archive"),
    "code": ({"path": "/lambda.keras"}, "UnsafeModel", "Lambda"),
    "huge": ({"path": "/big.keras"}, "TooLarge", "over the limit"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_model_is_failed_with_its_reason_one_event_and_no_tiers(crd, ns, operator, made, files, name):
    kc = crd
    where, reason, words = BAD[name]
    model = {"storageUri": where.get("url") or files["url"] + where["path"]}
    if "sha256" in where:
        model["sha256"] = where["sha256"]
    made.append(name)
    apply(kc, ns, resource(name, model))

    def failed():
        st = status(kc, ns, name)
        cond = {c["type"]: c for c in st.get("conditions") or []}.get("ModelReady")
        return st.get("phase") == "Failed" and cond and cond["status"] == "False" and cond

    cond = wait_for(failed, timeout=TIMEOUT, what=f"{name}: Failed with ModelReady False")
    assert cond["reason"] == reason and words in cond["message"], cond
    events = json.loads(
        kubectl(kc, "get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}", "-o", "json").stdout
    )["items"]
    assert [e["type"] for e in events if e["reason"] == "ModelFailed"] == ["Warning"], events
    tiers = kubectl(
        kc, "get", "deployments,services,configmaps", "-n", ns, "-l", f"splitdnn.io/splitinference={name}", "-o", "name"
    )
    assert tiers.stdout.split() == []


def test_a_split_point_the_model_does_not_have_is_named_without_tiers(crd, ns, operator, made, files):
    kc = crd
    made.append("nolayer")
    r = resource("nolayer", {"storageUri": files["url"] + "/mine.keras"}, ("join", "no_such_layer"))
    apply(kc, ns, r)
    st = wait_for(
        lambda: (s := status(kc, ns, "nolayer")).get("phase") == "Failed" and s, timeout=TIMEOUT, what="Failed"
    )
    valid = {c["type"]: c for c in st["conditions"]}["Valid"]
    assert valid["status"] == "False" and "no_such_layer" in valid["message"], valid
    tiers = kubectl(kc, "get", "deployments", "-n", ns, "-l", "splitdnn.io/splitinference=nolayer", "-o", "name")
    assert tiers.stdout.split() == []


def test_an_s3_model_runs_with_its_secret_and_a_wrong_key_is_named(crd, ns, operator, made, files, tmp_path):
    """s3:// through the operator: a real S3 server (versitygw), credentials from the Secret `model.secretName`
    names, handed to the model Job by secretKeyRef (the harness runner resolves them as the kubelet would). The right
    key: Running, the file's digest. A wrong key: Failed with BadCredentials, one ModelFailed Event, no tiers, no
    crash loop (the Job is not retried before RETRY_SECONDS)."""
    from harness.s3 import s3_server

    kc = crd
    body = (files["dir"] / "mine.keras").read_bytes()
    with s3_server(tmp_path / "s3", {"models/team/mine.keras": body}) as env:
        for secret, key in (("s3-right", env["AWS_SECRET_ACCESS_KEY"]), ("s3-wrong", "not-the-key")):
            data = {**env, "AWS_SECRET_ACCESS_KEY": key}
            kubectl(kc, "delete", "secret", secret, "-n", ns, "--ignore-not-found")
            kubectl(
                kc,
                "create",
                "secret",
                "generic",
                secret,
                "-n",
                ns,
                *[f"--from-literal={k}={v}" for k, v in data.items()],
            )
        for name, secret in (("s3-ok", "s3-right"), ("s3-bad", "s3-wrong")):
            made.append(name)  # (the same URI: the Secret is part of the model key, render.model_scope)
            apply(kc, ns, resource(name, {"storageUri": "s3://models/team/mine.keras", "secretName": secret}))
        st = wait_for(
            lambda: (s := status(kc, ns, "s3-ok")).get("phase") == "Running" and s,
            timeout=TIMEOUT,
            what="s3-ok Running",
        )
        assert st["model"]["digest"] == hashlib.sha256(body).hexdigest(), st["model"]

        def failed():
            s = status(kc, ns, "s3-bad")
            cond = {c["type"]: c for c in s.get("conditions") or []}.get("ModelReady")
            return s.get("phase") == "Failed" and cond and cond["status"] == "False" and cond

        cond = wait_for(failed, timeout=TIMEOUT, what="s3-bad: Failed with ModelReady False")
        assert cond["reason"] == "BadCredentials" and "AWS_SECRET_ACCESS_KEY" in cond["message"], cond
        events = json.loads(
            kubectl(
                kc, "get", "events", "-n", ns, "--field-selector", "involvedObject.name=s3-bad", "-o", "json"
            ).stdout
        )["items"]
        assert [e["type"] for e in events if e["reason"] == "ModelFailed"] == ["Warning"], events
        tiers = kubectl(kc, "get", "deployments", "-n", ns, "-l", "splitdnn.io/splitinference=s3-bad", "-o", "name")
        assert tiers.stdout.split() == []

        def builds():
            return [r for r in runner(kc).ran if r["namespace"] == ns and "s3://models/team/mine.keras" in r["command"]]

        ran = wait_for(lambda: len(builds()) == 2 and builds(), timeout=60, what="the failed build's process ended")
        assert sorted(r["returncode"] != 0 for r in ran) == [False, True], ran  # one build each: no retry loop
