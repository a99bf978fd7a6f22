"""A real S3-compatible server for the tests: versitygw (built from the Go module proxy by scripts/build-s3.sh) over
a POSIX directory, on loopback, with one root key; objects are uploaded with a signed PUT, as a user would."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from splitdnn.storage import sigv4_headers

ACCESS, SECRET = "splitdnn-test", "s3cret-Key-for-the-tests"


def binary() -> Path | None:
    cache = Path(os.environ.get("SPLITDNN_CACHE") or Path.home() / ".cache" / "splitdnn")
    path = cache / "bin" / "versitygw"
    return path if os.access(path, os.X_OK) else None


@contextmanager
def s3_server(root: Path, objects: dict[str, bytes]) -> Iterator[dict[str, str]]:
    """Serve `objects` ({"bucket/key": bytes}); yields the environment a client needs (KServe's variable names:
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, S3_ENDPOINT, S3_USE_HTTPS)."""
    path = binary()
    if path is None:
        pytest.skip("no S3 server: run scripts/build-s3.sh (scripts/test.sh does)")
    for bucket in {name.split("/", 1)[0] for name in objects}:
        (root / bucket).mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = root.parent / f"{root.name}-versitygw.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [path, "--access", ACCESS, "--secret", SECRET, "--port", f"127.0.0.1:{port}", "posix", root],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"versitygw did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.1)
        for name, body in objects.items():
            url = f"http://127.0.0.1:{port}/{name}"
            signed = sigv4_headers(
                url, "us-east-1", ACCESS, SECRET, method="PUT", payload_sha256=hashlib.sha256(body).hexdigest()
            )
            with urllib.request.urlopen(urllib.request.Request(url, data=body, method="PUT", headers=signed)) as put:
                assert put.status == 200 and put.headers["ETag"]
        yield {
            "AWS_ACCESS_KEY_ID": ACCESS,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "S3_ENDPOINT": f"127.0.0.1:{port}",
            "S3_USE_HTTPS": "0",
        }
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
