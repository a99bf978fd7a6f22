"""Model files named by a `storageUri`: fetch, verify, cache. Pure Python, no TensorFlow (the operator may use it).

The forms, the same in the CLI (`splitdnn run|slice|inspect SOURCE`) and in `spec.model.storageUri`:
- `https://HOST/PATH`, `http://HOST/PATH`  streamed to a file (never the whole body in memory), at most
  `MAX_REDIRECTS` redirects, never from https down to http;
- `s3://BUCKET/KEY`  an S3-compatible server (AWS, MinIO, ...), path-style, one GET signed with AWS Signature
  Version 4; credentials and endpoint from the environment variables KServe's storage initializer uses
  (`s3_env_from_secret` maps a KServe-style Secret to them);
- `pvc://CLAIM/PATH`  a file on a PersistentVolumeClaim, read where the caller mounted the claims
  (`pvc_root/CLAIM/PATH`, `pvc_root` defaulting to $SPLITDNN_PVC_ROOT);
- `file:///PATH` or a plain path.

Every fetch enforces a size limit (from Content-Length up front, and while streaming) and computes the file's
sha256; an optional pin (`sha256=`) is verified before the file is used (a mismatching download is removed).
Downloads land in a content-addressed cache (`<cache>/sha256/<digest>.keras`); a pinned digest already there is
used without any network, and an unpinned URI is revalidated with a conditional GET (ETag / Last-Modified), so
the same model is downloaded once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import html
import http.client
import json
import os
import re
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB: VGG16 (528 MB) fits, a runaway URL does not fill a Raspberry Pi's disk
DEFAULT_TIMEOUT = 30.0  # seconds to connect, and seconds without a byte while reading
MAX_REDIRECTS = 5
CHUNK = 1 << 20
SCHEMES = ("https", "http", "s3", "pvc", "file")
KSERVE_ANNOTATIONS = {  # KServe's S3 annotations on a Secret → the environment its storage initializer gets
    "serving.kserve.io/s3-endpoint": "S3_ENDPOINT",
    "serving.kserve.io/s3-usehttps": "S3_USE_HTTPS",
    "serving.kserve.io/s3-region": "AWS_REGION",
    "serving.kserve.io/s3-verifyssl": "S3_VERIFY_SSL",
}
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


class StorageError(ValueError):
    """A model file that cannot be had; the message names the URI and the cause, `reason` is a CamelCase word
    (for a Kubernetes condition): InvalidURI, NotFound, Unreachable, Timeout, AccessDenied, BadCredentials,
    HTTPError, TooManyRedirects, TooLarge, DigestMismatch."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Location:
    scheme: str  # https, http, s3, pvc, file (a plain path is file)
    authority: str  # host[:port], bucket or claim; "" for files
    path: str  # URL path (+query), object key, path in the claim, or the file path
    uri: str  # as given


@dataclass(frozen=True)
class Fetched:
    path: Path  # a local file, readable
    sha256: str
    size: int
    downloaded: bool  # False: a local file, or the cache already had it


# --- parsing ------------------------------------------------------------------------------------------------------


def is_uri(source: str) -> bool:
    return "://" in source


def parse(uri: str) -> Location:
    """Split a storageUri into its parts, or say which forms exist."""
    if not is_uri(uri):
        if not uri.strip():
            raise StorageError("InvalidURI", "empty model source")
        return Location("file", "", uri, uri)
    scheme, rest = uri.split("://", 1)
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise StorageError(
            "InvalidURI",
            f"unsupported storageUri {uri!r}: use https://HOST/PATH, http://HOST/PATH, s3://BUCKET/KEY, "
            "pvc://CLAIM/PATH or a file path",
        )
    if scheme == "file":
        return Location("file", "", urllib.parse.unquote(urllib.parse.urlsplit(uri).path), uri)
    authority, _, path = rest.partition("/")
    what = {"s3": "s3://BUCKET/KEY", "pvc": "pvc://CLAIM/PATH"}.get(scheme, f"{scheme}://HOST/PATH")
    if not authority or not path or any(c.isspace() for c in rest):
        raise StorageError("InvalidURI", f"bad storageUri {uri!r}: expected {what}")
    if scheme == "pvc" and ".." in path.split("/"):
        raise StorageError("InvalidURI", f"bad storageUri {uri!r}: '..' may not leave the claim")
    return Location(scheme, authority, path, uri)


def parse_bytes(text: str | int) -> int:
    """`1073741824`, `512Mi`, `1Gi`, `500M` → bytes (Kubernetes quantity suffixes)."""
    units = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    units |= {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    match = re.fullmatch(r"\s*([0-9]+)\s*([kKMGT]i?|)\s*", str(text))
    if not match or match.group(2) not in units:
        raise ValueError(f"bad size {text!r}: expected bytes like 1073741824, 512Mi or 1Gi")
    return int(match.group(1)) * units[match.group(2)]


def s3_env_from_secret(data: Mapping[str, str], annotations: Mapping[str, str]) -> dict[str, str]:
    """The environment a fetch of an `s3://` URI takes, from a Secret laid out as KServe's (keys
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; annotations serving.kserve.io/s3-endpoint, -usehttps, -region,
    -verifyssl). `data` holds decoded strings."""
    env = {k: data[k] for k in SECRET_KEYS if data.get(k)}
    env |= {name: annotations[key] for key, name in KSERVE_ANNOTATIONS.items() if annotations.get(key)}
    return env


# --- the cache ----------------------------------------------------------------------------------------------------


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("SPLITDNN_MODEL_CACHE"):
        return Path(env["SPLITDNN_MODEL_CACHE"])
    return Path(env.get("SPLITDNN_CACHE") or Path.home() / ".cache" / "splitdnn") / "models"


class Cache:
    """`sha256/<digest>.keras` (written only after the digest is known and checked), `uris/<key>.json` (what a URI
    gave last time: digest and HTTP validators), `tmp/` (downloads in progress, same filesystem for the rename)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def blob(self, digest: str) -> Path:
        return self.root / "sha256" / f"{digest}.keras"

    def _index(self, key: str) -> Path:
        return self.root / "uris" / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def remembered(self, key: str) -> dict | None:
        try:
            entry = json.loads(self._index(key).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or not self.blob(str(entry.get("sha256"))).is_file():
            return None
        return entry

    def remember(self, key: str, entry: dict) -> None:
        path = self._index(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, path)

    def tmp_file(self) -> tuple[IO[bytes], Path]:
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", suffix=".part")
        return os.fdopen(fd, "wb"), Path(name)


# --- fetching -----------------------------------------------------------------------------------------------------

Progress = Callable[[int, int | None], None]  # (bytes so far, total or None)


def fetch(
    uri: str,
    sha256: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    cache_dir: Path | str | None = None,
    pvc_root: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Progress | None = None,
) -> Fetched:
    """The file named by `uri` on this machine, its digest checked against `sha256` when given. Raises
    StorageError naming the URI and the cause; nothing half-downloaded is left in the cache."""
    env = os.environ if env is None else env
    if sha256 is not None and not SHA256_RE.match(sha256):
        raise StorageError("InvalidURI", f"bad sha256 {sha256!r}: expected 64 hexadecimal digits")
    want = sha256.lower() if sha256 else None
    loc = parse(uri)
    if loc.scheme in ("file", "pvc"):
        return _local(loc, want, max_bytes, pvc_root if pvc_root is not None else env.get("SPLITDNN_PVC_ROOT"))
    cache = Cache(Path(cache_dir) if cache_dir else default_cache_dir(env))
    if want and cache.blob(want).is_file():
        return Fetched(cache.blob(want), want, cache.blob(want).stat().st_size, downloaded=False)
    if loc.scheme == "s3":
        endpoint, region, context = _s3_endpoint(env)
        url = f"{endpoint}/{loc.authority}/{urllib.parse.quote(loc.path, safe='/')}"
        key = f"{uri}\n{endpoint}"
    else:
        url, key, context = uri, uri, None
    last = cache.remembered(key)
    headers = {}
    if last and (want is None or last["sha256"] == want):
        if last.get("etag"):
            headers["If-None-Match"] = last["etag"]
        if last.get("last_modified"):
            headers["If-Modified-Since"] = last["last_modified"]
    if loc.scheme == "s3":
        headers |= _sigv4_headers(url, region, env)
    response = _open(loc, url, headers, timeout, context, env)
    if response is None:  # 304 Not Modified: the cached file is the URI's content
        if last is None:
            raise StorageError("HTTPError", f"{uri}: HTTP 304 Not Modified to a request that was not conditional")
        blob = cache.blob(last["sha256"])
        return Fetched(blob, last["sha256"], blob.stat().st_size, downloaded=False)
    with response:
        digest, size = _download(loc, response, cache, want, max_bytes, timeout, progress)
    cache.remember(
        key,
        {
            "uri": uri,
            "sha256": digest,
            "size": size,
            "etag": response.headers.get("ETag"),
            "last_modified": response.headers.get("Last-Modified"),
        },
    )
    return Fetched(cache.blob(digest), digest, size, downloaded=True)


def _local(loc: Location, want: str | None, max_bytes: int, pvc_root: Path | str | None) -> Fetched:
    if loc.scheme == "pvc":
        if pvc_root is None:
            raise StorageError(
                "InvalidURI", f"{loc.uri}: pvc:// is read inside the cluster (the claim mounted); here use a path"
            )
        path = Path(pvc_root) / loc.authority / loc.path
    else:
        path = Path(loc.path)
    if not path.is_file():
        where = (
            f" (claim {loc.authority!r} mounted at {Path(pvc_root or '') / loc.authority})"
            if loc.scheme == "pvc"
            else ""
        )
        raise StorageError("NotFound", f"model file {loc.uri!r} does not exist{where}")
    size = path.stat().st_size
    if size > max_bytes:
        raise StorageError("TooLarge", f"model file {loc.uri!r} is {size:,} bytes, over the limit of {max_bytes:,}")
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    digest = h.hexdigest()
    if want and digest != want:
        raise StorageError("DigestMismatch", f"{loc.uri}: sha256 is {digest}, the pin says {want}")
    return Fetched(path, digest, size, downloaded=False)


def _download(loc, response, cache: Cache, want, max_bytes: int, timeout: float, progress) -> tuple[str, int]:
    """Stream the body into the cache, hashing and counting; the file is renamed into place only when whole and
    matching the pin, else removed."""
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    if total is not None and total > max_bytes:
        raise StorageError("TooLarge", f"{loc.uri}: {total:,} bytes (Content-Length), over the limit of {max_bytes:,}")
    out, tmp = cache.tmp_file()
    h, done, shown = hashlib.sha256(), 0, 0
    try:
        with out:
            while True:
                try:
                    block = response.read(CHUNK)
                except TimeoutError:
                    raise StorageError(
                        "Timeout", f"{loc.uri}: no data for {timeout:g} s after {done:,} bytes"
                    ) from None
                except (http.client.IncompleteRead, ConnectionError) as exc:
                    raise StorageError(
                        "Unreachable", f"{loc.uri}: connection lost after {done:,} bytes: {exc}"
                    ) from None
                if not block:
                    break
                done += len(block)
                if done > max_bytes:
                    raise StorageError("TooLarge", f"{loc.uri}: more than {max_bytes:,} bytes, over the limit")
                h.update(block)
                out.write(block)
                if progress and done - shown >= 16 * CHUNK:
                    progress(done, total)
                    shown = done
        if total is not None and done != total:
            raise StorageError("Unreachable", f"{loc.uri}: connection closed after {done:,} of {total:,} bytes")
        digest = h.hexdigest()
        if want and digest != want:
            raise StorageError("DigestMismatch", f"{loc.uri}: downloaded sha256 is {digest}, the pin says {want}")
        if progress:
            progress(done, total)
        cache.blob(digest).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, cache.blob(digest))
        return digest, done
    finally:
        tmp.unlink(missing_ok=True)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """At most MAX_REDIRECTS, never https → http; none at all for S3 (the signature is for one URL)."""

    max_redirections = MAX_REDIRECTS

    def __init__(self, follow: bool):
        self.follow = follow

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not self.follow:
            return None  # urllib raises HTTPError with the 3xx
        if urllib.parse.urlsplit(req.full_url).scheme == "https" and not newurl.lower().startswith("https://"):
            raise StorageError("HTTPError", f"{req.full_url}: redirected from https to {newurl}: refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(loc: Location, url: str, headers: dict, timeout: float, context, env) -> http.client.HTTPResponse | None:
    """The response to GET, or None for 304; every other status becomes a StorageError that says what to fix."""
    handlers: list[urllib.request.BaseHandler] = [_Redirects(follow=loc.scheme != "s3")]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers=headers, method="GET")
    try:
        return opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return None
        with exc:
            body = exc.read(4096).decode("utf-8", "replace")
        raise _status_error(loc, url, exc.code, exc.reason, body, env) from None
    except urllib.error.URLError as exc:
        cause = exc.reason
        if isinstance(cause, TimeoutError):
            raise StorageError("Timeout", f"{loc.uri}: no answer from {_host(url)} within {timeout:g} s") from None
        raise StorageError("Unreachable", f"{loc.uri}: cannot reach {_host(url)}: {cause}") from None
    except TimeoutError:
        raise StorageError("Timeout", f"{loc.uri}: no answer from {_host(url)} within {timeout:g} s") from None
    except (http.client.HTTPException, ConnectionError) as exc:
        raise StorageError("Unreachable", f"{loc.uri}: {_host(url)} broke the connection: {exc!r}") from None


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def _status_error(loc: Location, url: str, code: int, reason: str, body: str, env) -> StorageError:
    status = f"HTTP {code} {reason}".strip()
    if loc.scheme != "s3":
        if code in (301, 302, 303, 307, 308):
            return StorageError("TooManyRedirects", f"{loc.uri}: {status}: more than {MAX_REDIRECTS} redirects")
        word = {404: "NotFound", 410: "NotFound", 401: "AccessDenied", 403: "AccessDenied"}.get(code, "HTTPError")
        return StorageError(word, f"{loc.uri}: {status}")
    found = re.search(r"<Code>([^<]+)</Code>", body)
    s3code = found.group(1) if found else ""
    said = re.search(r"<Message>([^<]+)</Message>", body)
    message = html.unescape(said.group(1)) if said else ""
    detail = f"{status}, {s3code}: {message}".rstrip(": ") if s3code else status
    at = f"{loc.uri} at {_host(url)}"
    if s3code == "AuthorizationHeaderMalformed":  # the signature's scope: most often the region
        return StorageError("BadCredentials", f"{at}: the server refused the signature ({detail}): check AWS_REGION")
    # AWS and MinIO say InvalidAccessKeyId / SignatureDoesNotMatch; versitygw answers an unknown access key with
    # 404 XAdminUserNotFound
    if "AccessKey" in s3code or "Signature" in s3code or s3code == "XAdminUserNotFound":
        return StorageError(
            "BadCredentials",
            f"{at}: the server refused the credentials ({detail}): check AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (the Secret named by spec.model.secretName)",
        )
    if code in (401, 403):
        who = "with these credentials" if env.get("AWS_ACCESS_KEY_ID") else "without credentials (none were given)"
        return StorageError("AccessDenied", f"{at}: access denied {who} ({detail})")
    if code == 404:
        return StorageError(
            "NotFound", f"{at}: no such {'bucket' if s3code == 'NoSuchBucket' else 'object'} ({detail})"
        )
    if code in (301, 307):
        return StorageError(
            "HTTPError", f"{at}: {detail}: the bucket lives elsewhere; set S3_ENDPOINT and AWS_REGION for it"
        )
    return StorageError("HTTPError", f"{at}: {detail}")


# --- S3: endpoint and AWS Signature Version 4 for one GET ----------------------------------------------------------


def _s3_endpoint(env: Mapping[str, str]) -> tuple[str, str, ssl.SSLContext | None]:
    """(scheme://host[:port], region, TLS context) from KServe's variables: S3_ENDPOINT (host[:port], or a URL),
    S3_USE_HTTPS ("0" = http), S3_VERIFY_SSL ("0" = do not check the certificate), AWS_REGION; AWS_ENDPOINT_URL
    (a URL, as the AWS SDKs read it) wins when set. No endpoint: AWS S3 in the region."""
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint = env.get("AWS_ENDPOINT_URL") or env.get("S3_ENDPOINT") or f"s3.{region}.amazonaws.com"
    if "://" not in endpoint:
        use_https = env.get("S3_USE_HTTPS", "1").strip().lower() not in ("0", "false", "no")
        endpoint = f"{'https' if use_https else 'http'}://{endpoint}"
    context = None
    if env.get("S3_VERIFY_SSL", "1").strip().lower() in ("0", "false", "no"):
        context = ssl.create_default_context()  # the user asked for no certificate check (a self-signed MinIO)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return endpoint.rstrip("/"), region, context


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_headers(
    url: str,
    region: str,
    access_key: str,
    secret_key: str,
    session_token: str | None = None,
    now: dt.datetime | None = None,
    extra: Mapping[str, str] | None = None,
    method: str = "GET",
    payload_sha256: str = EMPTY_SHA256,
) -> dict[str, str]:
    """Headers that sign `METHOD url` (a GET with an empty body unless told; `extra` headers signed too) with AWS
    Signature Version 4, as specified in https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html
    (canonical request → string to sign → signing key derived from the secret, date, region and service →
    signature)."""
    now = now or dt.datetime.now(dt.UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    parts = urllib.parse.urlsplit(url)
    headers = {k.lower(): v for k, v in (extra or {}).items()}
    headers |= {"host": parts.netloc, "x-amz-content-sha256": payload_sha256, "x-amz-date": amz_date}
    if session_token:
        headers["x-amz-security-token"] = session_token
    signed = ";".join(sorted(headers))
    query = "&".join(sorted(parts.query.split("&"))) if parts.query else ""
    canonical = "\n".join(
        [
            method,
            parts.path or "/",  # already URI-encoded once, as S3 wants (no double encoding)
            query,
            "".join(f"{k}:{headers[k].strip()}\n" for k in sorted(headers)),
            signed,
            payload_sha256,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), day), region), "s3"), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    del headers["host"]  # urllib sends Host from the URL, the same netloc
    return headers


def _sigv4_headers(url: str, region: str, env: Mapping[str, str]) -> dict[str, str]:
    access, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        return {}  # anonymous: a public bucket
    return sigv4_headers(url, region, access, secret, env.get("AWS_SESSION_TOKEN"))
