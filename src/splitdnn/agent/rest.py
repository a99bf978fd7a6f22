"""TF Serving's REST API on a tier (`--rest-port`; 8501 in pods), on the standard library's threading HTTP server.

    GET  /v1/models/NAME[/versions/1]            model status (AVAILABLE while the chain behind answers)
    GET  /v1/models/NAME[/versions/1]/metadata   signature serving_default: inputs and outputs, dtype and shape
    POST /v1/models/NAME[/versions/1]:predict    {"instances": [...]} or {"inputs": ...} → predictions / outputs

Errors are `{"error": "..."}` with TF Serving's HTTP codes (400 bad input, 404 unknown model or version, 413 a body
over `--max-request-bytes`, 429 this tier's queue is full, 501 classify/regress, 503/504 from the tiers behind).
What the JSON means is in `api`. A body must arrive within the tier's `--timeout`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

from splitdnn.agent import api
from splitdnn.agent.tier import Tier
from splitdnn.agent.wire import TooLarge, tensors_of

log = logging.getLogger("splitdnn.agent.rest")
HEX = b"0123456789abcdefABCDEF"

PATH = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>predict|classify|regress)|/(?P<metadata>metadata))?",
    re.IGNORECASE,
)


def handle(tier: Tier, method: str, path: str, body: bytes, next_address: str | None = None) -> tuple[int, dict]:
    """One REST request -> (HTTP status, JSON document). Never raises for a bad request."""
    try:
        return 200, _route(tier, method, path.split("?", 1)[0], body)
    except Exception as exc:  # noqa: BLE001 - every failure becomes TF Serving's error shape
        error = api.error_of(exc, tier.name, next_address)
        if error.code == grpc.StatusCode.INTERNAL:
            log.exception("internal error on %s %s", method, path)
        return 413 if isinstance(exc, TooLarge) else error.http_status, {"error": error.message}


def _route(tier: Tier, method: str, path: str, body: bytes) -> dict[str, Any]:
    match = PATH.fullmatch(path)
    if match is None or (method == "GET") != (match["verb"] is None) or method not in ("GET", "POST"):
        malformed = grpc.StatusCode.INVALID_ARGUMENT if path.lower().startswith("/v1/") else grpc.StatusCode.NOT_FOUND
        raise api.ApiError(malformed, f"Malformed request: {method} {path}")
    version = int(match["version"]) if match["version"] else None
    api.check_model(tier.model, match["name"], version, match["label"] or "")
    if method == "GET" and match["metadata"]:
        return api.metadata_json(tier.model, tier.entry.inputs, tier.entry.model_outputs)
    if method == "GET":
        return api.to_json(api.model_status(tier.ready(), tier.stopping.is_set(), tier.not_ready_reason()))
    if match["verb"].lower() != "predict":
        raise api.unimplemented(tier.model, match["verb"].lower())
    tensors, row = api.parse_predict(body, tier.entry.inputs)
    response = b"".join(tier.reply_chunks(tier.predict(tensors)))
    from splitdnn.agent import messages

    return api.render_predict(tensors_of(messages.PredictResponse.FromString(response).outputs), row)


def serve(tier: Tier, port: int, host: str = "0.0.0.0", next_address: str | None = None) -> ThreadingHTTPServer:
    """Start the REST server in a thread of its own (one thread per connection); returns it (`.shutdown()`)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: clients reuse the connection
        timeout = tier.timeout  # a body (or an idle connection) that stalls this long is dropped

        def _answer(self, method: str) -> None:
            coding = (self.headers.get("Transfer-Encoding") or "").strip().lower()
            if coding:  # (curl -T -, Go's and the API server proxy's streamed bodies: no Content-Length)
                self._answer_chunked(method, coding)
                return
            text = (self.headers.get("Content-Length") or "0").strip()
            length = int(text) if text.isascii() and text.isdigit() else -1
            if length < 0:  # where the body ends is unknown: the connection cannot be reused
                self.close_connection = True
                status, doc = 400, {"error": f"{tier.name}: Content-Length {text!r} is not a number of bytes"}
            elif length > tier.max_request_bytes:  # refused unread; the connection cannot be reused
                self.close_connection = True
                status, doc = (
                    413,
                    {
                        "error": f"{tier.name}: the body has {length} bytes, over the limit of "
                        f"{tier.max_request_bytes} (--max-request-bytes)"
                    },
                )
            else:
                body = self._body(length)
                if len(body) < length:  # the sender stalled or closed: what it sent is not a request
                    self.close_connection = True
                    status, doc = (
                        400,
                        {
                            "error": f"{tier.name}: the body ended after {len(body)} of {length} bytes "
                            f"(Content-Length), or did not arrive within {tier.timeout:g} s (--timeout)"
                        },
                    )
                else:
                    status, doc = handle(tier, method, self.path, body, next_address)
            self._send_json(status, doc)

        def _answer_chunked(self, method: str, coding: str) -> None:
            """A body in HTTP/1.1 chunks (RFC 9112 7.1), with the same limit and deadline as a sized one."""
            if coding != "chunked":
                self.close_connection = True
                message = f"Transfer-Encoding {coding!r} is not supported (send chunked or a Content-Length)"
                self._send_json(501, {"error": f"{tier.name}: {message}"})
                return
            try:
                body = self._chunks(time.monotonic() + tier.timeout)
            except ValueError as exc:  # the connection is out of step with the framing: not reusable
                self.close_connection = True
                self._send_json(413 if isinstance(exc, TooLarge) else 400, {"error": f"{tier.name}: {exc}"})
                return
            self._send_json(*handle(tier, method, self.path, body, next_address))

        def _chunks(self, end: float) -> bytes:
            parts: list[bytes] = []
            got = 0
            try:
                while True:
                    line = self.rfile.readline(1026)
                    size_text = line.split(b";", 1)[0].strip()  # (chunk extensions are ignored)
                    if not line.endswith(b"\n") or not size_text or not all(c in HEX for c in size_text):
                        raise ValueError(f"a malformed chunk size line {line[:40]!r} in a chunked body")
                    size = int(size_text, 16)
                    if size == 0:
                        while self.rfile.readline(8194) not in (b"\r\n", b"\n", b""):  # trailer fields: ignored
                            pass
                        return b"".join(parts)
                    got += size
                    if got > tier.max_request_bytes:
                        raise TooLarge(
                            f"the chunked body is over the limit of {tier.max_request_bytes} bytes "
                            "(--max-request-bytes)"
                        )
                    chunk = self._body(size, end)
                    if len(chunk) < size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                        raise ValueError(
                            "the chunked body ended inside a chunk, or did not arrive within "
                            f"{tier.timeout:g} s (--timeout)"
                        )
                    parts.append(chunk)
            except TimeoutError:
                raise ValueError(f"the chunked body did not arrive within {tier.timeout:g} s (--timeout)") from None

        def _body(self, length: int, end: float | None = None) -> bytes:
            parts: list[bytes] = []
            got = 0
            if end is None:  # in all: a byte every few seconds must not hold the thread
                end = time.monotonic() + tier.timeout
            try:
                while got < length and time.monotonic() < end:
                    part = self.rfile.read1(length - got)
                    if not part:
                        break
                    parts.append(part)
                    got += len(part)
            except TimeoutError:
                pass
            return b"".join(parts)

        def _send_json(self, status: int, doc: dict) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._answer("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._answer("POST")

        # other methods on the API's paths: "Malformed request" (400; 404 elsewhere), as TF Serving
        do_PUT = do_DELETE = do_PATCH = do_OPTIONS = lambda self: self._answer(self.command)  # noqa: E731

        def parse_request(self) -> bool:
            if not super().parse_request():
                return False
            if self.request_version == "HTTP/0.9":  # "GET /path" alone: its answer would have no status line
                self.send_error(400, "HTTP/0.9 requests are not supported: send HTTP/1.x")
                return False
            return True

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """http.server's own refusals (a garbage request line, an unknown method, headers too long) in the API's
            shape, `{"error": ...}`, and always with an HTTP/1.1 status line (a garbage line counts as HTTP/0.9,
            which has none)."""
            self.close_connection = True
            if self.request_version == "HTTP/0.9":
                self.request_version = "HTTP/1.1"
            self._send_json(code, {"error": f"{tier.name}: {message or self.responses.get(code, ('',))[0]}"})

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: debug only
            log.debug("%s %s", self.address_string(), format % args)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address) -> None:
            """A client that went away before its answer is not a server error (socketserver prints a traceback)."""
            import sys

            exc = sys.exc_info()[1]
            if isinstance(exc, ConnectionError):
                log.debug("REST client %s went away: %s", client_address, exc)
            else:
                log.exception("REST request from %s failed", client_address)

    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="rest").start()
    return server
