"""Bring your own model (issue #15, local mode): `splitdnn.storage` fetches a `.keras` file by storageUri and
`splitdnn inspect|slice` load it. Real parts: a loopback HTTP server (stdlib, in a thread) serving a small branching
model built and saved by the test, the CLI as a subprocess, and a real S3 server (versitygw, built by
scripts/build-s3.sh) that checks AWS Signature Version 4."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from harness.cli import ROOT
from harness.own_model import own_model
from harness.s3 import s3_server
from splitdnn import storage
from splitdnn.storage import StorageError, fetch, parse, parse_bytes, s3_env_from_secret, sigv4_headers

# --- models of the test's own ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """{name: path} of the files the servers offer, and the model's outputs on a fixed frame."""
    import keras

    d = tmp_path_factory.mktemp("models")
    model = own_model()  # (tests/harness/own_model.py: the one kind and the control plane serve too)
    model.save(d / "m.keras")
    frame = np.random.default_rng(0).random((1, 12, 12, 3), dtype=np.float32)
    inp = keras.Input(shape=(4,))
    keras.Model(inp, keras.layers.Lambda(lambda t: t * 2.0, name="double")(inp)).save(d / "lambda.keras")
    (d / "notzip.keras").write_text("<html><body>Please log in</body></html>\n")
    return {"dir": d, "frame": frame, "outputs": np.asarray(model(frame))}


# --- a loopback HTTP server -------------------------------------------------------------------------------------


class Server:
    """Routes: /NAME serves models[dir]/NAME with an ETag (304 on If-None-Match); /missing 404; /private 403;
    /stall-body sends headers then nothing; /stall-head sends nothing; /big claims 10 MB; /endless streams
    without Content-Length; /short promises more than it sends; /hop/N redirects N times then to /m.keras;
    /loop redirects to itself."""

    def __init__(self, root: Path):
        self.root, self.release = root, threading.Event()
        self.bodies: list[str] = []  # paths answered with a full body
        self.not_modified: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path
                if path == "/missing":
                    return self.send_error(404)
                if path == "/private":
                    return self.send_error(403)
                if path == "/loop":
                    return self.redirect("/loop")
                if path.startswith("/hop/"):
                    n = int(path.rsplit("/", 1)[1])
                    return self.redirect(f"/hop/{n - 1}" if n > 1 else "/m.keras")
                if path == "/stall-head":
                    server.release.wait(30)
                    return
                if path.startswith("/large/"):  # N MiB of a repeating pattern, with Content-Length
                    mib = int(path.rsplit("/", 1)[1])
                    self.send_response(200)
                    self.send_header("Content-Length", str(mib << 20))
                    self.end_headers()
                    block = bytes(range(256)) * 4096
                    for _ in range(mib):
                        self.wfile.write(block)
                    return
                if path in ("/stall-body", "/big", "/short", "/endless"):
                    self.send_response(200)
                    if path != "/endless":
                        self.send_header("Content-Length", str(10_000_000))
                    self.end_headers()
                    if path == "/stall-body":
                        server.release.wait(30)
                    elif path == "/short":
                        self.wfile.write(b"PK" + b"\0" * 1000)
                    elif path == "/endless":
                        for _ in range(64):
                            self.wfile.write(b"\0" * 65536)
                    return
                file = server.root / path.lstrip("/")
                if not file.is_file():
                    return self.send_error(404)
                body = file.read_bytes()
                etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
                if self.headers.get("If-None-Match") == etag:
                    server.not_modified.append(path)
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    return self.end_headers()
                server.bodies.append(path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.end_headers()
                self.wfile.write(body)

            def redirect(self, to):
                self.send_response(302)
                self.send_header("Location", to)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(models):
    s = Server(models["dir"])
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def leftovers(cache: Path) -> list[Path]:
    """Partial downloads and blobs: what a failed fetch must not leave."""
    return [p for p in cache.rglob("*") if p.is_file() and p.parent.name in ("tmp", "sha256")]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- parsing ------------------------------------------------------------------------------------------------------


def parts(uri: str) -> tuple[str, str, str]:
    loc = parse(uri)
    return loc.scheme, loc.authority, loc.path


def test_uri_forms():
    assert parse("https://h:8443/a/m.keras?sig=1") == storage.Location(
        "https", "h:8443", "a/m.keras?sig=1", "https://h:8443/a/m.keras?sig=1"
    )
    assert parts("s3://bucket/dir/m.keras") == ("s3", "bucket", "dir/m.keras")
    assert parts("pvc://claim/models/m.keras") == ("pvc", "claim", "models/m.keras")
    assert parts("file:///data/m%20x.keras") == ("file", "", "/data/m x.keras")
    assert parts("rel/m.keras") == ("file", "", "rel/m.keras")
    for bad, says in [
        ("gs://b/m.keras", "unsupported storageUri"),
        ("s3://bucket", "expected s3://BUCKET/KEY"),
        ("s3:///key", "expected s3://BUCKET/KEY"),
        ("https://host", "expected https://HOST/PATH"),
        ("pvc://claim/../etc/m.keras", "'..' may not leave the claim"),
    ]:
        with pytest.raises(StorageError, match=says) as err:
            parse(bad)
        assert err.value.reason == "InvalidURI" and bad in str(err.value)
    assert parse_bytes("1Gi") == 1 << 30 and parse_bytes("500M") == 500_000_000 and parse_bytes(42) == 42
    with pytest.raises(ValueError, match="512Mi"):
        parse_bytes("lots")


def test_kserve_secret_layout_maps_to_the_environment():
    env = s3_env_from_secret(
        {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "other": "x"},
        {
            "serving.kserve.io/s3-endpoint": "minio.ns:9000",
            "serving.kserve.io/s3-usehttps": "0",
            "serving.kserve.io/s3-region": "eu-west-1",
            "unrelated": "y",
        },
    )
    assert env == {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "S3_ENDPOINT": "minio.ns:9000",
        "S3_USE_HTTPS": "0",
        "AWS_REGION": "eu-west-1",
    }
    assert storage._s3_endpoint(env)[:2] == ("http://minio.ns:9000", "eu-west-1")
    assert storage._s3_endpoint({})[:2] == ("https://s3.us-east-1.amazonaws.com", "us-east-1")


def test_sigv4_matches_the_aws_documentation_example():
    """The GET Object example of the S3 API reference ("Signature Calculations for the Authorization Header:
    Transferring Payload in a Single Chunk"), with its published signature."""
    headers = sigv4_headers(
        "https://examplebucket.s3.amazonaws.com/test.txt",
        "us-east-1",
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        now=dt.datetime(2013, 5, 24, tzinfo=dt.UTC),
        extra={"Range": "bytes=0-9"},
    )
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


# --- HTTP ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_http_downloads_once_then_revalidates_or_uses_the_pin(server, models, cache):
    url, want = f"{server.url}/m.keras", sha(models["dir"] / "m.keras")
    seen: list[tuple[int, int | None]] = []
    first = fetch(url, cache_dir=cache, progress=lambda done, total: seen.append((done, total)))
    assert first.downloaded and first.sha256 == want and first.path == cache / "sha256" / f"{want}.keras"
    assert first.path.read_bytes() == (models["dir"] / "m.keras").read_bytes()
    assert seen[-1] == (first.size, first.size)
    again = fetch(url, cache_dir=cache)  # conditional GET: 304, the cached file
    assert (again.downloaded, again.path, server.bodies, server.not_modified) == (
        False,
        first.path,
        ["/m.keras"],
        ["/m.keras"],
    )
    pinned = fetch(url, sha256=want.upper(), cache_dir=cache)  # the pin is in the cache: no request at all
    assert pinned.path == first.path and len(server.bodies) + len(server.not_modified) == 2
    hopped = fetch(f"{server.url}/hop/3", cache_dir=cache)  # redirects are followed (up to 5)
    assert hopped.sha256 == want and hopped.downloaded
    assert leftovers(cache) == [first.path]


@pytest.mark.slow
@pytest.mark.parametrize(
    "path,reason,says",
    [
        ("/missing", "NotFound", "HTTP 404"),
        ("/private", "AccessDenied", "HTTP 403"),
        ("/loop", "TooManyRedirects", "more than 5 redirects"),
        ("/hop/6", "TooManyRedirects", "more than 5 redirects"),
        ("/short", "Unreachable", "after 1,002 of 10,000,000 bytes"),
    ],
)
def test_http_errors_name_the_uri_and_the_status(server, cache, path, reason, says):
    with pytest.raises(StorageError, match=says) as err:
        fetch(server.url + path, cache_dir=cache, max_bytes=20_000_000)
    assert err.value.reason == reason and server.url + path in str(err.value)
    assert leftovers(cache) == []


def test_unreachable_host(cache):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StorageError, match=f"cannot reach 127.0.0.1:{port}") as err:
        fetch(f"http://127.0.0.1:{port}/m.keras", cache_dir=cache)
    assert err.value.reason == "Unreachable"


STREAM_PROBE = """
import json, sys, time
from splitdnn.storage import fetch
def peak_kib():  # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's over exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
before, t0 = peak_kib(), time.monotonic()
got = fetch(sys.argv[1], cache_dir=sys.argv[2], max_bytes=1 << 30)
after, seconds = peak_kib(), time.monotonic() - t0
print(json.dumps({"size": got.size, "before_kib": before, "after_kib": after, "seconds": seconds,
                  "tf": "tensorflow" in sys.modules}))
"""


@pytest.mark.slow
def test_a_large_download_streams_in_bounded_memory_without_tensorflow(server, cache):
    """200 MiB through a fresh process that imports only splitdnn.storage: its peak RSS grows by a few MiB, not by
    the body's size, and TensorFlow is never imported (the operator can use this module)."""
    proc = subprocess.run(
        [sys.executable, "-c", STREAM_PROBE, f"{server.url}/large/200", str(cache)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    probe = json.loads(proc.stdout)
    assert probe["size"] == 200 << 20 and probe["tf"] is False
    assert probe["after_kib"] - probe["before_kib"] < 16 * 1024, probe
    assert leftovers(cache) == [
        cache / "sha256" / f"{hashlib.sha256((bytes(range(256)) * 4096) * 200).hexdigest()}.keras"
    ]
    rss = f"peak RSS {probe['before_kib'] / 1024:.1f} → {probe['after_kib'] / 1024:.1f} MiB"
    print(f"streamed 200 MiB in {probe['seconds']:.2f} s (figure, not asserted): {rss}")


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/stall-head", "/stall-body"])
def test_a_stalled_server_times_out(server, cache, path):
    with pytest.raises(StorageError, match=r"(no answer from 127\.0\.0\.1:\d+|no data) for 1 s|within 1 s") as err:
        fetch(server.url + path, cache_dir=cache, timeout=1.0, max_bytes=20_000_000)
    assert err.value.reason == "Timeout" and server.url + path in str(err.value)
    assert leftovers(cache) == []


@pytest.mark.slow
def test_digest_mismatch_removes_the_download(server, cache):
    with pytest.raises(StorageError, match="the pin says " + "0" * 64) as err:
        fetch(f"{server.url}/m.keras", sha256="0" * 64, cache_dir=cache)
    assert err.value.reason == "DigestMismatch"
    assert leftovers(cache) == []
    with pytest.raises(StorageError, match="64 hexadecimal digits"):
        fetch(f"{server.url}/m.keras", sha256="abc", cache_dir=cache)


@pytest.mark.slow
def test_size_limit_from_content_length_and_while_streaming(server, models, cache):
    with pytest.raises(StorageError, match=r"10,000,000 bytes \(Content-Length\), over the limit of 1,000,000"):
        fetch(f"{server.url}/big", cache_dir=cache, max_bytes=1_000_000)
    with pytest.raises(StorageError, match="more than 1,000,000 bytes") as err:  # no Content-Length
        fetch(f"{server.url}/endless", cache_dir=cache, max_bytes=1_000_000)
    assert err.value.reason == "TooLarge"
    size = (models["dir"] / "m.keras").stat().st_size
    with pytest.raises(StorageError, match=f"{size:,} bytes"):
        fetch(str(models["dir"] / "m.keras"), max_bytes=size - 1)  # local files too
    assert leftovers(cache) == []


@pytest.mark.slow
def test_local_paths_and_pvc(models, tmp_path):
    file = models["dir"] / "m.keras"
    local = fetch(str(file), sha256=sha(file))
    assert (local.path, local.downloaded) == (file, False)
    assert fetch(f"file://{file}").sha256 == sha(file)
    claim = tmp_path / "mnt" / "models-claim" / "v1"
    claim.mkdir(parents=True)
    shutil.copy(file, claim / "m.keras")
    assert fetch("pvc://models-claim/v1/m.keras", pvc_root=tmp_path / "mnt").sha256 == sha(file)
    with pytest.raises(StorageError, match="pvc:// is read inside the cluster"):
        fetch("pvc://models-claim/v1/m.keras", env={})
    with pytest.raises(StorageError, match="does not exist") as err:
        fetch(str(tmp_path / "nope.keras"))
    assert err.value.reason == "NotFound"
    with pytest.raises(StorageError, match="the pin says") as err:
        fetch(str(file), sha256="1" * 64)
    assert file.is_file()  # a user's own file is never removed


# --- loading: models.load_model and the CLI -------------------------------------------------------------------------


@pytest.mark.slow
def test_load_model_over_http_gives_the_models_outputs(server, models, cache, monkeypatch):
    from splitdnn.models import load_model

    monkeypatch.setenv("SPLITDNN_CACHE", str(cache.parent))
    model = load_model(f"{server.url}/m.keras")
    assert {l.name for l in model.layers} >= {"stem", "left", "right", "join", "head"}
    np.testing.assert_allclose(np.asarray(model(models["frame"])), models["outputs"], atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,says",
    [
        ("notzip.keras", r"is not a \.keras archive \(a zip file\): text or HTML \(an error page\?\)"),
        ("lambda.keras", r"has a Lambda layer \(Python code\): refused, \.keras files are loaded with safe_mode=True"),
    ],
)
def test_bad_files_get_one_line(server, cache, monkeypatch, name, says):
    from splitdnn.models import ModelSourceError, load_model

    monkeypatch.setenv("SPLITDNN_CACHE", str(cache.parent))
    with pytest.raises(ModelSourceError, match=says) as err:
        load_model(f"{server.url}/{name}")
    assert "\n" not in str(err.value)


def splitdnn(*args, cache: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "SPLITDNN_CACHE": str(cache.parent), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "splitdnn", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=full,
    )


@pytest.mark.slow
def test_cli_inspect_and_slice_a_model_over_http(server, models, cache, tmp_path):
    url = f"{server.url}/m.keras"
    inspected = splitdnn("inspect", url, "--json", "--sha256", sha(models["dir"] / "m.keras"), cache=cache)
    assert inspected.returncode == 0, inspected.stderr
    doc = json.loads(inspected.stdout)
    assert doc["model"] == "mine" and "join" in {c["after"] for c in doc["cuts"]}
    names = [layer["name"] for layer in doc["layers"]]
    assert names[:2] == ["image", "stem"] and {"left", "right", "join", "head"} <= set(names)
    out = tmp_path / "slices"
    sliced = splitdnn("slice", url, "--at", "join", "--out", out, cache=cache)
    assert sliced.returncode == 0, sliced.stderr
    assert "verified: max abs diff" in sliced.stderr and "wrote 2 slices" in sliced.stdout
    manifest = json.loads((out / "slices.json").read_text())
    assert len(manifest["slices"]) == 2
    assert server.bodies == ["/m.keras"]  # the second command used the cache (a 304)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,says",
    [
        (["/missing"], "HTTP 404"),
        (["/m.keras", "--sha256", "f" * 64], "the pin says " + "f" * 64),
        (["/m.keras", "--max-model-bytes", "1Ki"], "over the limit of 1,024"),
        (["/notzip.keras"], "is not a .keras archive"),
        (["/lambda.keras"], "has a Lambda layer"),
        (["/m.keras", "--max-model-bytes", "lots"], "--max-model-bytes: bad size 'lots'"),
    ],
)
def test_cli_bad_sources_exit_2_with_one_line(server, cache, args, says):
    path, *flags = args
    proc = splitdnn("inspect", server.url + path, "--json", *flags, cache=cache)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and says in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "path,at,reason",
    [
        ("/missing", "join", "NotFound"),
        ("/notzip.keras", "join", "NotKerasArchive"),
        ("/lambda.keras", "join", "UnsafeModel"),
        ("/m.keras", "no_such_layer", "InvalidSplitPoint"),
    ],
)
def test_slice_reports_why_it_failed(server, cache, tmp_path, path, at, reason):
    """`splitdnn slice --report` (a tier pod's termination message): the failure's reason word and its line."""
    report = tmp_path / "report.json"
    proc = splitdnn("slice", server.url + path, "--at", at, "--out", tmp_path / "out", "--report", report, cache=cache)
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = json.loads(report.read_text())["error"]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error == {"reason": reason, "message": line.removeprefix("error: ")}


RUN_YAML = """
apiVersion: splitdnn.io/v1alpha1
kind: SplitInference
metadata: {name: mine}
spec:
  model: {storageUri: URL, sha256: SHA}
  splitPoints: [join]
  tiers: [{name: device}, {name: cloud}]
  workload: {fps: 20, frames: 4, deadline: 30s, source: synthetic}
"""


@pytest.mark.slow
def test_cli_run_a_spec_whose_model_is_on_a_web_server(server, models, cache, tmp_path):
    spec = tmp_path / "mine.yaml"
    spec.write_text(RUN_YAML.replace("URL", f"{server.url}/m.keras").replace("SHA", sha(models["dir"] / "m.keras")))
    proc = splitdnn("run", spec, "--json", cache=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["completed"] == 4 == result["offered"] and [t["name"] for t in result["tiers"]] == ["device", "cloud"]
    assert server.bodies == ["/m.keras"]
    spec.write_text(RUN_YAML.replace("URL", f"{server.url}/missing").replace("SHA", "a" * 64))
    proc = splitdnn("run", spec, "--json", cache=cache)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {server.url}/missing: HTTP 404 Not Found"


# --- S3: a real S3-compatible server -----------------------------------------------------------------------------


@pytest.fixture
def s3(tmp_path, models):
    """versitygw (tests/harness/s3.py); bucket `models` holds team/m.keras."""
    with s3_server(tmp_path / "s3", {"models/team/m.keras": (models["dir"] / "m.keras").read_bytes()}) as env:
        yield env


@pytest.mark.slow
def test_s3_right_key_loads_the_model_wrong_key_is_named(s3, models, cache, monkeypatch):
    from splitdnn.models import ModelSourceError, load_model

    got = fetch("s3://models/team/m.keras", cache_dir=cache, env=s3)
    assert got.downloaded and got.sha256 == sha(models["dir"] / "m.keras")
    again = fetch("s3://models/team/m.keras", cache_dir=cache, env=s3)  # If-None-Match → 304: the cached file
    assert (again.downloaded, again.path) == (False, got.path)
    with pytest.raises(StorageError, match='the region "eu-west-1" is wrong.*check AWS_REGION'):
        fetch("s3://models/team/m.keras", cache_dir=cache, env={**s3, "AWS_REGION": "eu-west-1"})
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SPLITDNN_CACHE", str(cache.parent))
    model = load_model("s3://models/team/m.keras")
    np.testing.assert_allclose(np.asarray(model(models["frame"])), models["outputs"], atol=1e-6)

    for wrong in ({"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, {"AWS_ACCESS_KEY_ID": "nobody"}):
        with pytest.raises(StorageError, match="refused the credentials") as err:
            fetch("s3://models/team/m.keras", cache_dir=cache.parent / "other-cache", env={**s3, **wrong})
        assert err.value.reason == "BadCredentials" and "AWS_SECRET_ACCESS_KEY" in str(err.value)
    with pytest.raises(StorageError, match="no such") as err:
        fetch("s3://models/team/other.keras", cache_dir=cache, env=s3)
    assert err.value.reason == "NotFound"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(ModelSourceError, match="s3://models/team/m.keras at 127.0.0.1:"):
        load_model("s3://models/team/m.keras", sha256=None, max_bytes=None)


@pytest.mark.slow
def test_cli_inspect_s3_and_wrong_key(s3, cache):
    ok = splitdnn("inspect", "s3://models/team/m.keras", "--json", cache=cache, env=s3)
    assert ok.returncode == 0, ok.stderr
    assert "join" in {layer["name"] for layer in json.loads(ok.stdout)["layers"]}
    bad = splitdnn(
        "inspect",
        "s3://models/team/m.keras",
        "--json",
        cache=cache.parent / "other-cache",
        env={**s3, "AWS_SECRET_ACCESS_KEY": "x"},
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "refused the credentials" in bad.stderr and "AWS_ACCESS_KEY_ID" in bad.stderr


def test_a_storage_uri_is_read_by_the_model_job_only():
    """Nothing here reads a remote model in process (the operator has no TensorFlow; the model Job fetches it): no
    network here, or this port, where nobody listens, would give Unreachable."""
    from splitdnn.controller import plan as plan_mod

    for uri in ("http://127.0.0.1:9/m.keras", "https://127.0.0.1:9/presigned?sig=1", "s3://b/m.keras"):
        with pytest.raises(plan_mod.ModelUnavailable, match="the model Job fetches it"):
            plan_mod.model_summary(uri)


# --- the model Job's wiring (controller.render), run for real ----------------------------------------------------


def model_job(uri: str, store: str, secret: str | None = None):
    """The model Job's container and the pod volumes the operator renders for a SplitInference whose model is at
    `uri` (secretName `secret`), and the SplitInference."""
    from splitdnn.controller import render
    from splitdnn.spec import GROUP, KIND, VERSION, from_resource

    model = {"storageUri": uri, **({"secretName": secret} if secret else {})}
    si = from_resource(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": "mine", "namespace": "team"},
            "spec": {"model": model, "splitPoints": ["join", "pool"], "tiers": [{"name": t} for t in ("a", "b", "c")]},
        }
    )
    job = render.render_model_job(si, ["join", "pool"], "img", store)
    pod = job["spec"]["template"]["spec"]
    (builder,) = pod["containers"]
    # a tier pod needs neither the Secret nor the claim: it fetches its slice from the store
    tier = render.render_deployment(
        si, {"splitPoints": ["join", "pool"], "splitId": "s1", "modelKey": "k"}, 0, "i", store
    )
    assert "secretKeyRef" not in json.dumps(tier) and "persistentVolumeClaim" not in json.dumps(tier)
    return builder, pod["volumes"], si


def resolve_env(container: dict, secrets: dict[str, dict]) -> dict:
    """The container's environment as the kubelet makes it: values, and secretKeyRefs looked up in `secrets`
    (a missing optional key is left out; a missing required one is an error, as CreateContainerConfigError)."""
    env = {}
    for var in container.get("env", []):
        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if ref is None:
            if "value" in var:
                env[var["name"]] = var["value"]
            continue
        data = secrets[ref["name"]]
        if ref["key"] in data:
            env[var["name"]] = data[ref["key"]]
        else:
            assert ref.get("optional"), f"Secret {ref['name']} has no key {ref['key']}"
    return env


def run_build(container: dict, env: dict, report: Path, cache: Path) -> subprocess.CompletedProcess:
    cmd = container["command"]
    assert cmd[:3] == ["splitdnn", "artifacts", "build"]
    cmd = [sys.executable, "-m", "splitdnn", *cmd[1:]]
    cmd[cmd.index("--report") + 1] = str(report)  # the pod's /dev/termination-log
    full = {"PATH": os.environ["PATH"], "SPLITDNN_CACHE": str(cache), "PYTHONPATH": str(ROOT / "src"), **env}
    full.pop("HOME", None)
    return subprocess.run(cmd, env={**full, "HOME": str(cache)}, capture_output=True, text=True, timeout=600)


@pytest.fixture
def store(tmp_path):
    from splitdnn import artifacts

    server = artifacts.start_server(tmp_path / "store")
    yield artifacts.Store(f"http://127.0.0.1:{server.server_address[1]}", timeout=10)
    server.shutdown()


@pytest.mark.slow
def test_the_model_job_fetches_an_s3_model_with_the_secret_it_names(s3, models, store, tmp_path):
    from splitdnn import artifacts
    from splitdnn.controller import render
    from splitdnn.controller.status import slicer_report

    builder, volumes, si = model_job("s3://models/team/m.keras", store.url, "team-s3")
    assert {v["name"] for v in volumes} == {"tmp"}
    secret = dict(s3)  # the Secret's data keys, as a user writes them (KServe's names)
    with pytest.raises(AssertionError, match="has no key AWS_ACCESS_KEY_ID"):
        resolve_env(builder, {"team-s3": {"AWS_SECRET_ACCESS_KEY": "x"}})
    # the wrong key first: the reason in the Job's report and in the store, where the operator reads it
    wrong = resolve_env(builder, {"team-s3": {**secret, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}})
    refused = run_build(builder, wrong, tmp_path / "r1.json", tmp_path / "cache1")
    assert refused.returncode != 0 and "refused the credentials" in refused.stderr, refused.stderr[-3000:]
    said = slicer_report({"message": (tmp_path / "r1.json").read_text(), "exitCode": 2})
    assert said["error"]["reason"] == "BadCredentials" and "refused the credentials" in said["error"]["message"]
    assert store.get_ref("models", render.model_key(si))["error"]["reason"] == "BadCredentials"
    # the Secret fixed: the next Job builds it
    env = resolve_env(builder, {"team-s3": secret})
    assert {k: env[k] for k in secret} == secret
    done = run_build(builder, env, tmp_path / "r2.json", tmp_path / "cache2")
    assert done.returncode == 0, done.stderr[-3000:]
    said = slicer_report({"message": (tmp_path / "r2.json").read_text(), "exitCode": 0})
    assert said["model"]["sha256"] == sha(models["dir"] / "m.keras") and len(said["slices"]) == 3
    out = tmp_path / "tier"
    for i in range(3):
        artifacts.fetch(store, render.model_key(si), ["join", "pool"], i, out)
    assert [s["name"] for s in json.loads((out / "slices.json").read_text())["slices"]] == [
        "slice0",
        "slice1",
        "slice2",
    ]


@pytest.mark.slow
def test_the_model_job_reads_a_pvc_model_where_the_claim_is_mounted(models, store, tmp_path):
    from splitdnn.controller.render import PVC_ROOT

    builder, volumes, _ = model_job("pvc://team-models/v1/m.keras", store.url)
    (claim,) = [v for v in volumes if "persistentVolumeClaim" in v]
    assert claim["persistentVolumeClaim"] == {"claimName": "team-models", "readOnly": True}
    (mount,) = [m for m in builder["volumeMounts"] if m["name"] == claim["name"]]
    assert mount == {"name": claim["name"], "mountPath": f"{PVC_ROOT}/team-models", "readOnly": True}
    env = resolve_env(builder, {})
    assert env["SPLITDNN_PVC_ROOT"] == PVC_ROOT
    # the claim's files where the kubelet would mount them (PVC_ROOT under tmp_path)
    root = tmp_path / "pvc"
    (root / "team-models" / "v1").mkdir(parents=True)
    shutil.copy(models["dir"] / "m.keras", root / "team-models" / "v1" / "m.keras")
    done = run_build(builder, {**env, "SPLITDNN_PVC_ROOT": str(root)}, tmp_path / "r.json", tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "r.json").read_text())["built"] == ["graph", "slice0", "slice1", "slice2"]
    missing = run_build(
        model_job("pvc://team-models/v2/m.keras", store.url)[0],
        {**env, "SPLITDNN_PVC_ROOT": str(root)},
        tmp_path / "r3.json",
        tmp_path / "c3",
    )
    assert missing.returncode != 0 and "team-models" in missing.stderr, missing.stderr[-3000:]
