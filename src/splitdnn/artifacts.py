"""The artifact store: a model's graph and its slices, built once by TensorFlow and fetched by every tier.

TensorFlow runs once per model and once per slice, in a model Job (`splitdnn artifacts build`); tier pods fetch
only their own slice (`splitdnn artifacts fetch`, no TensorFlow) and the operator plans from the graph document
the Job stored (no TensorFlow in the operator either). Everything is content-addressed:

    blobs/sha256/<hex>           a model file (.keras) or a slice (a tar of its directory); a PUT is refused
                                 unless the body hashes to <hex>, every GET is hashed again by the reader
    refs/models/<model key>.json the model a spec names → {"digest", "bytes", "graph": a graph summary}
    refs/slices/<slice key>.json one slice of one model digest → {"blob", "bytes", "entry": its slices.json entry}

The model key hashes what the spec says (source, input shape, sha256 pin); the slice key hashes the model digest,
the layers the slice runs and the slicing options. So a second SplitInference of the same model, a pod restart or
a rollout finds everything built; a re-split builds only the slices it has not seen (a cut moved at one end keeps
the other slices); a new model file (a new pin, a new URI) is a new digest and a new set of slices.

Trade-offs (docs/operator.md): the store is one HTTP server the chart installs (an emptyDir, or the PVC
`artifacts.persistence.existingClaim` names, so a restart does not re-slice); it has no authentication (blobs
cannot be forged — their name is their hash — but a client in the cluster could overwrite a ref); an unpinned URI
is read once per spec: a file replaced at the same URL is picked up when the spec changes (pin `sha256` to roll).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitdnn import storage

MODEL_FORMAT = "splitdnn.model/1"
SLICE_FORMAT = "splitdnn.slice/1"  # bump when the slicer's output changes: old slices are then not reused
DEFAULT_TIMEOUT = 30.0
MAX_REF_BYTES = 16 << 20  # a graph summary of a 1,000-layer model is ~200 kB
CHUNK = 1 << 20
HEX64 = re.compile(r"^[0-9a-f]{64}$")
KEY = re.compile(r"^[0-9a-f]{16,64}$")
KINDS = ("models", "slices")
FAILURE_MESSAGE_CHARS = 1000  # of a failed build's message (the Job's report is a termination message: ≤ 4 kB)


class ArtifactError(RuntimeError):
    """The store cannot give what was asked; `reason` is a CamelCase word for a condition (StoreUnreachable,
    NotBuilt, DigestMismatch, StoreError)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class SliceMismatch(ValueError):
    """An exported slice does not compute what the model's layers compute."""


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def model_key(
    source: str, input_shape: Sequence[int] | None = None, sha256: str | None = None, scope: str | None = None
) -> str:
    """What a spec names (not what the file holds: that is the digest the build finds). `scope`: whose the source
    is when its name alone does not say (a namespace's claim, a Secret's credentials: see
    controller.render.model_scope); unscoped keys are unchanged."""
    shape = [int(d) for d in input_shape] if input_shape else None
    named = {"format": MODEL_FORMAT, "source": source, "inputShape": shape, "sha256": sha256}
    return _digest({**named, "scope": scope} if scope else named)[:32]


@dataclass(frozen=True)
class SliceRef:
    """One slice of a split: its position, the layers it runs and its key in the store."""

    index: int
    first: str
    last: str
    key: str

    @property
    def name(self) -> str:
        return f"slice{self.index}"


def split_slices(
    digest: str, layers: Sequence[str], split_points: Sequence[str], keras: bool = False
) -> list[SliceRef]:
    """The slices of `split_points` over a model's `layers` (graph order). Raises ValueError for a point the model
    does not have or out of order (the slicer's own check repeats it with hints)."""
    index = {name: i for i, name in enumerate(layers)}
    cuts = []
    for p in split_points:
        if p not in index:
            raise ValueError(f"split point {p!r} is not a layer of the model")
        cuts.append(index[p])
    if any(b <= a for a, b in zip(cuts, cuts[1:])) or (cuts and cuts[-1] >= len(layers) - 1):
        raise ValueError(f"split points {list(split_points)} are out of layer order or cut after the last layer")
    bounds = [-1, *cuts, len(layers) - 1]
    refs = []
    for k, (before, last) in enumerate(zip(bounds, bounds[1:])):
        first = layers[before + 1]
        key = _digest({"format": SLICE_FORMAT, "model": digest, "first": first, "last": layers[last], "keras": keras})[
            :32
        ]
        refs.append(SliceRef(k, first, layers[last], key))
    return refs


# --- the client -----------------------------------------------------------------------------------------------


class Store:
    """The artifact store at `url` (http://HOST:PORT), through urllib."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _open(self, method: str, path: str, data: Any = None, headers: dict | None = None):
        req = urllib.request.Request(f"{self.url}/{path}", data=data, method=method, headers=headers or {})
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            body = exc.read()[:300].decode(errors="replace")
            reason = "DigestMismatch" if exc.code == 400 and "sha256" in body else "StoreError"
            raise ArtifactError(reason, f"artifact store {self.url}: {method} /{path}: HTTP {exc.code} {body}") from exc
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", exc)
            raise ArtifactError("StoreUnreachable", f"artifact store {self.url} unreachable: {why}") from exc

    def get_ref(self, kind: str, key: str) -> dict | None:
        response = self._open("GET", f"refs/{kind}/{key}.json")
        if response is None:
            return None
        with response:
            return json.loads(response.read())

    def put_ref(self, kind: str, key: str, doc: dict) -> None:
        body = json.dumps(doc, separators=(",", ":")).encode()
        self._open("PUT", f"refs/{kind}/{key}.json", body, {"Content-Type": "application/json"}).close()

    def has_blob(self, digest: str) -> bool:
        response = self._open("HEAD", f"blobs/sha256/{digest}")
        if response is not None:
            response.close()
        return response is not None

    def put_blob(self, path: Path) -> tuple[str, int]:
        """Upload a file unless the store has it; (sha256, size)."""
        digest, size = file_sha256(path)
        if not self.has_blob(digest):
            with open(path, "rb") as f:
                headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
                self._open("PUT", f"blobs/sha256/{digest}", f, headers).close()
        return digest, size

    def get_blob(self, digest: str, dest: Path) -> int:
        """Download a blob to `dest`, hashing as it streams; DigestMismatch (and no file) if it is not `digest`."""
        response = self._open("GET", f"blobs/sha256/{digest}")
        if response is None:
            raise ArtifactError("NotBuilt", f"artifact store {self.url} has no blob sha256:{digest}")
        h, size = hashlib.sha256(), 0
        tmp = dest.with_name(dest.name + ".part")
        with response, open(tmp, "wb") as out:
            while chunk := response.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
        if h.hexdigest() != digest:
            tmp.unlink()
            raise ArtifactError("DigestMismatch", f"blob sha256:{digest} from {self.url} hashes to {h.hexdigest()}")
        os.replace(tmp, dest)
        return size


def file_sha256(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


# --- the server -----------------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ArtifactServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        if self.server.verbose:
            super().log_message(format, *args)

    def _path(self) -> tuple[str, Path] | None:
        """('blob'|'ref', file) for a well-formed path, None otherwise (answered 404: nothing else is served)."""
        parts = self.path.split("?")[0].strip("/").split("/")
        root = self.server.root
        if len(parts) == 3 and parts[:2] == ["blobs", "sha256"] and HEX64.match(parts[2]):
            return "blob", root / "blobs" / "sha256" / parts[2]
        if len(parts) == 3 and parts[0] == "refs" and parts[1] in KINDS and parts[2].endswith(".json"):
            if KEY.match(parts[2][:-5]):
                return "ref", root / "refs" / parts[1] / parts[2]
        return None

    def _reply(self, code: int, body: bytes = b"", ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/healthz":
            return self._reply(200, b"ok\n")
        if self.path == "/stats":
            return self._reply(200, json.dumps(self.server.stats()).encode(), "application/json")
        found = self._path()
        if found is None or not found[1].is_file():
            return self._reply(404, b"not found\n")
        size = found[1].stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/json" if found[0] == "ref" else "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command == "GET":
            with open(found[1], "rb") as f:
                shutil.copyfileobj(f, self.wfile, CHUNK)

    def do_PUT(self) -> None:  # noqa: N802
        found = self._path()
        if found is None:
            return self._reply(404, b"not found\n")
        kind, dest = found
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._reply(411, b"Content-Length required\n")
        limit = self.server.max_bytes if kind == "blob" else MAX_REF_BYTES
        if length > limit:
            self.close_connection = True
            return self._reply(413, f"{length} bytes > limit {limit}\n".encode())
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, suffix=".part")
        h, left = hashlib.sha256(), length
        try:
            with os.fdopen(fd, "wb") as out:
                while left > 0:
                    chunk = self.rfile.read(min(CHUNK, left))
                    if not chunk:
                        raise ConnectionError("body shorter than Content-Length")
                    h.update(chunk)
                    out.write(chunk)
                    left -= len(chunk)
            if kind == "blob" and h.hexdigest() != dest.name:
                os.unlink(name)
                return self._reply(400, f"body sha256 {h.hexdigest()} is not {dest.name}\n".encode())
            if kind == "ref":
                json.loads(Path(name).read_text())  # a ref is a JSON document (ValueError → 400)
            os.replace(name, dest)  # readers see the old file or the new one, never half of one
        except ValueError:
            os.unlink(name)
            return self._reply(400, b"a ref must be a JSON document\n")
        except (ConnectionError, OSError):
            if os.path.exists(name):
                os.unlink(name)
            self.close_connection = True
            return
        self._reply(201)


class ArtifactServer(http.server.ThreadingHTTPServer):
    """`splitdnn artifacts serve`: blobs and refs under `root` (see the module docstring)."""

    daemon_threads = True

    def __init__(self, root: Path, address: tuple[str, int], max_bytes: int, verbose: bool = False):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.verbose = verbose
        for sub in ("blobs/sha256", *(f"refs/{k}" for k in KINDS)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        super().__init__(address, _Handler)

    def stats(self) -> dict:
        blobs = [p for p in (self.root / "blobs" / "sha256").iterdir() if HEX64.match(p.name)]
        return {
            "blobs": len(blobs),
            "blobBytes": sum(p.stat().st_size for p in blobs),
            **{k: sum(1 for p in (self.root / "refs" / k).glob("*.json")) for k in KINDS},
        }


def start_server(root: Path, host: str = "127.0.0.1", port: int = 0, max_bytes: int = 4 << 30) -> ArtifactServer:
    """A server in a background thread (tests, `splitdnn run`); `.server_address` has the port."""
    server = ArtifactServer(root, (host, port), max_bytes)
    threading.Thread(target=server.serve_forever, daemon=True, name="artifact-store").start()
    return server


# --- fetch: what a tier pod does (no TensorFlow) ----------------------------------------------------------------


def _rename(entry: dict, old: str, new: str) -> dict:
    """A slice entry built as `old` (its position in the split it was first built for) as slice `new`."""
    out = {}
    for k, v in entry.items():
        out[k] = f"{new}/{v[len(old) + 1 :]}" if isinstance(v, str) and v.startswith(f"{old}/") else v
    out["name"] = new
    return out


def slice_refs(store: Store, model: dict, split_points: Sequence[str], keras: bool = False) -> list[dict | None]:
    """The store's ref of each slice of a split (None where it is not built)."""
    refs = split_slices(model["digest"], model["graph"]["layers"], split_points, keras)
    return [store.get_ref("slices", r.key) for r in refs]


def manifest(model: dict, split_points: Sequence[str], refs: Sequence[dict]) -> dict:
    """The split's slices.json (the slicer's layout) from the built slices' entries."""
    return {
        "model": model["graph"]["model"],
        "cuts": list(split_points),
        "slices": [_rename(r["entry"], r["entry"]["name"], f"slice{i}") for i, r in enumerate(refs)],
    }


def fetch(
    store: Store,
    key: str,
    split_points: Sequence[str],
    index: int,
    out: Path,
    keras: bool = False,
    wait_seconds: float = 0.0,
    say: Callable[[str], None] | None = None,
) -> dict:
    """Slice `index` of the model `key` cut at `split_points` into `out` (slices.json + `slice<index>/`), its digest
    checked; waits up to `wait_seconds` for a build in progress. Returns a report: the model digest, the slice's
    blob and size, and which slices of the split have a .tflite (the slicer's conversion report)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        model = store.get_ref("models", key)
        refs = slice_refs(store, model, split_points, keras) if model is not None and usable(model) else []
        failed = next((r for r in [model, *refs] if r and "error" in r), None)
        if failed is not None:  # the model Job could not build it: its reason, not a timeout
            raise ArtifactError(failed["error"]["reason"], failed["error"]["message"])
        if model and all(refs):
            break
        if time.monotonic() >= deadline:
            what = "model" if model is None else f"slices {[i for i, r in enumerate(refs) if r is None]} of the split"
            raise ArtifactError("NotBuilt", f"artifact store {store.url} has no {what} for model key {key}")
        if say:
            say("waiting for the model Job to build the slices")
        time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
    doc = manifest(model, split_points, refs)  # type: ignore[arg-type]
    ref = refs[index]
    assert ref is not None
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        blob = Path(tmp) / "slice.tar"
        size = store.get_blob(ref["blob"], blob)
        target = out / f"slice{index}"
        shutil.rmtree(target, ignore_errors=True)
        with tarfile.open(blob) as tar:
            _extract(tar, target)
    (out / "slices.json").write_text(json.dumps(doc, indent=2) + "\n")
    if say:
        took = time.monotonic() - started
        say(f"fetched slice{index} ({size / 1e6:.1f} MB, sha256:{ref['blob'][:12]}) in {took:.1f} s")
    from splitdnn.slicer import conversion_report

    return {
        "model": {"sha256": model["digest"], "bytes": model["bytes"]},
        "slice": {"name": f"slice{index}", "sha256": ref["blob"], "bytes": size},
        **conversion_report(doc),
    }


def _extract(tar: tarfile.TarFile, target: Path) -> None:
    """Unpack a slice: only files and directories under `target` (Debian 12's Python 3.11.2 predates tarfile's
    `filter="data"`, which says the same)."""
    for member in tar.getmembers():
        parts = Path(member.name).parts
        if Path(member.name).is_absolute() or ".." in parts or not (member.isfile() or member.isdir()):
            raise ArtifactError("StoreError", f"slice archive member {member.name!r} refused (not a plain file)")
    tar.extractall(target)  # noqa: S202 - every member checked above


# --- build: what the model Job does (TensorFlow) ---------------------------------------------------------------


def _tar(directory: Path, dest: Path) -> None:
    """A slice directory as a tar with fixed metadata (the same files give the same blob)."""

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False, filter=clean)


def build(
    store: Store,
    source: str,
    input_shape: Sequence[int] | None = None,
    sha256: str | None = None,
    max_bytes: int | None = None,
    split_points: Sequence[str] | None = None,
    keras: bool = False,
    say: Callable[[str], None] = lambda _m: None,
    scope: str | None = None,
) -> dict:
    """Make sure the store has the model (file, digest, graph) and, unless `split_points` is None, the slices of
    that split (`[]`: the whole model as one slice); TensorFlow runs only for what is missing (`scope`: the model
    key's, see `model_key`). Returns the report
    (`built`: what this call computed). A failure is also recorded in the store where the operator (a model) or
    the waiting tiers (slices) look, with its reason word (`failure_reason`), and raised."""
    key = model_key(source, input_shape, sha256, scope)
    stage = [f"models/{key}"]  # the refs a failure here is recorded in (a bad split point is not: the operator
    # checks split points against the graph itself)
    try:
        model = usable(store.get_ref("models", key))
        keras_model = None
        built: list[str] = []
        with tempfile.TemporaryDirectory() as tmp:
            if model is None:
                from splitdnn.graph import build_graph
                from splitdnn.models import load_source

                keras_model, fetched = load_source(source, input_shape, sha256=sha256, max_bytes=max_bytes, say=say)
                path = fetched.path if fetched else Path(tmp) / "model.keras"
                if fetched is None:  # a builtin or keras.applications model: code; its file is what the tiers slice
                    keras_model.save(path)
                digest, size = store.put_blob(path)
                summary = build_graph(keras_model).summary()
                model = {
                    "format": MODEL_FORMAT,
                    "source": source,
                    "digest": digest,
                    "bytes": size,
                    "graph": summary.to_json(),
                }
                store.put_ref("models", key, model)
                built.append("graph")
                say(f"model {source}: sha256:{digest[:12]}, {size / 1e6:.1f} MB, {len(summary.layers)} layers")
            stage.clear()
            points = [] if split_points is None else list(split_points)
            slices = (
                split_slices(model["digest"], model["graph"]["layers"], points, keras)
                if split_points is not None
                else []
            )
            refs = {s.key: store.get_ref("slices", s.key) for s in slices}
            missing = [s for s in slices if usable(refs[s.key]) is None]
            stage[:] = [f"slices/{s.key}" for s in missing]
            if missing:
                from splitdnn.graph import build_graph
                from splitdnn.models import load_keras_file, load_source
                from splitdnn.slicer import export_slices, resolve_cuts, verify_slice

                if keras_model is None and model["digest"] and (storage.is_uri(source) or source.endswith(".keras")):
                    path = Path(tmp) / "model.keras"  # the store's copy, its digest checked on the way
                    store.get_blob(model["digest"], path)
                    keras_model = load_keras_file(path, source)
                elif keras_model is None:  # code (a builtin, keras.applications): built again, seeded the same
                    keras_model = load_source(source, input_shape)[0]
                graph = build_graph(keras_model)
                cuts = resolve_cuts(graph, points)
                out = Path(tmp) / "slices"
                done = export_slices(
                    keras_model, graph, cuts, out, progress=say, keras=keras, only={s.name for s in missing}
                )
                for s, entry in zip(missing, done["slices"]):
                    diff = verify_slice(keras_model, graph, out, entry)
                    if diff > 1e-5:
                        raise SliceMismatch(f"{s.name}: the SavedModel differs from the model by {diff:.2e} > 1e-5")
                    blob = Path(tmp) / f"{s.name}.tar"
                    _tar(out / s.name, blob)
                    digest, size = store.put_blob(blob)
                    ref = {"format": SLICE_FORMAT, "blob": digest, "bytes": size, "entry": entry}
                    store.put_ref("slices", s.key, ref)
                    refs[s.key] = ref
                    built.append(s.name)
                    say(f"{s.name} ({s.first} .. {s.last}): sha256:{digest[:12]}, {size / 1e6:.1f} MB")
        stage.clear()
        report: dict[str, Any] = {
            "model": {"sha256": model["digest"], "bytes": model["bytes"]},
            "key": key,
            "built": built,
        }
        if slices:
            from splitdnn.slicer import conversion_report

            report |= conversion_report(manifest(model, points, [refs[s.key] or {} for s in slices]))
        return report
    except Exception as exc:
        error = {**failure(exc), "time": time.time()}
        for where in stage:
            kind, key = where.split("/")
            try:
                store.put_ref(kind, key, {"format": MODEL_FORMAT if kind == "models" else SLICE_FORMAT, "error": error})
            except ArtifactError:
                pass  # the store is what failed: the Job's own report says so
        raise


def usable(ref: dict | None) -> dict | None:
    """A ref, unless it records a failed build (a later build tries again)."""
    return None if ref is None or "error" in ref else ref


def failure(exc: BaseException) -> dict[str, str]:
    """A failed build as both its tellers say it, the store's error ref and the model Job's report (the operator
    announces a new message as a new ModelFailed Event): its reason word and its message."""
    return {"reason": failure_reason(exc), "message": str(exc).strip("'\"")[:FAILURE_MESSAGE_CHARS]}


def failure_reason(exc: BaseException) -> str:
    """The condition's reason word for a failed build: the storage's (NotFound, Unreachable, DigestMismatch…),
    NotKerasArchive / UnsafeModel / InvalidModel, InvalidSplitPoint, SliceMismatch, SliceFailed, the store's."""
    from splitdnn.slicer import CutError

    if isinstance(exc, ArtifactError):
        return exc.reason
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:  # ModelSourceError
        return reason
    if isinstance(exc, SliceMismatch):
        return "SliceMismatch"
    if isinstance(exc, CutError) or (isinstance(exc, ValueError) and "split point" in str(exc)):
        return "InvalidSplitPoint"
    if isinstance(exc, ValueError):
        return "SliceFailed" if "slice" in str(exc).lower() else "InvalidModel"
    return type(exc).__name__
