"""Real S3 for tests: moto's server on loopback, and a fault-injecting HTTP proxy in front of it.

Every ThreadedMotoServer in one process shares moto's in-memory backend, so a bucket outlives the server
that made it: each test module uses its own bucket name, and creating an existing bucket is not an error.
"""

from __future__ import annotations

import copy
import http.client
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# What the CLIs under test should see: one botocore attempt (retries are ours), quick backoff, no bars.
_CLI_ENV = {
    "AWS_MAX_ATTEMPTS": "1",
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "GEO_SSL_IO_BACKOFF": "0.05",
    "GEO_SSL_PROGRESS": "0",
}
_SCRUB = ("FSSPEC_", "GEO_SSL_STORAGE_", "AWS_")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reset_fsspec() -> None:
    import fsspec.config
    import s3fs

    fsspec.config.conf.clear()
    fsspec.config.set_conf_env(fsspec.config.conf)  # FSSPEC_S3 etc. from the environment just set
    s3fs.S3FileSystem.clear_instance_cache()


@contextmanager
def patched_env(env: dict[str, str], scrub: bool = False) -> Iterator[None]:
    """Set `env` (AWS_PROFILE and, with `scrub`, every FSSPEC_/GEO_SSL_STORAGE_/AWS_ variable removed
    first) and fsspec's config from it; put the environment and fsspec's config back exactly afterwards."""
    import fsspec.config
    import s3fs

    saved_env, saved_conf = dict(os.environ), copy.deepcopy(fsspec.config.conf)
    for k in [k for k in os.environ if k == "AWS_PROFILE" or (scrub and k.startswith(_SCRUB))]:
        del os.environ[k]
    os.environ.update(env)
    _reset_fsspec()
    try:
        yield
    finally:
        for k in set(os.environ) - set(saved_env):
            del os.environ[k]
        for k, v in saved_env.items():
            if os.environ.get(k) != v:
                os.environ[k] = v
        fsspec.config.conf.clear()
        fsspec.config.conf.update(saved_conf)
        s3fs.S3FileSystem.clear_instance_cache()


def bucket_fs(endpoint: str):
    """An s3fs client of the test server, for setting up and inspecting the bucket."""
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)


@contextmanager
def moto_server(
    bucket: str | None = None, *, env: dict[str, str] | None = None, scrub: bool = False
) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 with test credentials and `env` set (see `patched_env`); creates
    `bucket` if given; yields the endpoint URL. No fsspec endpoint is configured here."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    with patched_env({**TEST_CREDENTIALS, **(env or {})}, scrub=scrub):
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        url = f"http://127.0.0.1:{port}"
        try:
            if bucket:
                try:
                    bucket_fs(url).mkdir(bucket)
                except FileExistsError:  # made by an earlier server in this process
                    pass
            yield url
        finally:
            server.stop()


@contextmanager
def plain_moto(bucket: str, **extra_env: str) -> Iterator[str]:
    """moto with NO fsspec endpoint and the FSSPEC_/GEO_SSL_STORAGE_/AWS_ environment scrubbed: only
    --storage-* flags (or GEO_SSL_STORAGE_*) can point a command at it. Yields the endpoint URL."""
    env = {**_CLI_ENV, "AWS_EC2_METADATA_DISABLED": "true", "GEO_SSL_IO_ATTEMPTS": "2", **extra_env}
    with moto_server(bucket, env=env, scrub=True) as url:
        yield url


# ---- faults -------------------------------------------------------------------------------------------
# A rule object decides, per request, None (forward it) or a fault: "503 SlowDown" (any status and S3 error
# code), "drop" (half the body, then the connection closed) or "reset" (closed before any answer).


@dataclass
class KeyFaults:
    """GETs of chosen keys (substrings of the request path) fail with 503; a count of -1 fails until cleared.

    The error code is SlowDown (s3fs retries it itself, 5 times) or ServiceUnavailable (it does not)."""

    failing: dict[str, int] = field(default_factory=dict)
    codes: dict[str, str] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)  # 503s sent per pattern
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, pattern: str, times: int = -1, code: str = "ServiceUnavailable") -> None:
        with self.lock:
            self.failing[pattern] = times
            self.codes[pattern] = code

    def clear(self) -> None:
        with self.lock:
            self.failing.clear()

    def decide(self, method: str, path: str) -> str | None:
        if method != "GET":
            return None
        with self.lock:
            for pattern, left in self.failing.items():
                if pattern in path and left != 0:
                    self.failing[pattern] = left - 1 if left > 0 else -1
                    self.failed[pattern] = self.failed.get(pattern, 0) + 1
                    return f"503 {self.codes.get(pattern, 'ServiceUnavailable')}"
        return None


_WINDOW_MODES = {"500": "500 InternalError", "503": "503 SlowDown"}


class WindowFaults:
    """`fail(after, count, modes)`: the `count` matching requests after the next `after` ones fail, cycling
    through `modes` ("500": InternalError, "503": SlowDown, "drop", "reset"). `matches(method, path)` picks
    the requests (default: GETs of .tar objects); `seen` counts them, `failed` the faults sent."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen = 0
        self.failed = 0
        self._fail_from = self._fail_to = -1
        self._modes: tuple[str, ...] = ("503",)
        self.matches: Callable[[str, str], bool] = lambda method, path: method == "GET" and ".tar" in path

    def fail(self, after: int, count: int, modes: tuple[str, ...] = ("500", "503", "drop", "reset")) -> None:
        with self.lock:
            self._fail_from, self._fail_to = self.seen + after, self.seen + after + count
            self._modes = modes

    def decide(self, method: str, path: str) -> str | None:
        if not self.matches(method, path):
            return None
        with self.lock:
            n = self.seen
            self.seen += 1
            if self._fail_from <= n < self._fail_to:
                self.failed += 1
                mode = self._modes[(n - self._fail_from) % len(self._modes)]
                return _WINDOW_MODES.get(mode, mode)
        return None


_HOP = set("connection keep-alive transfer-encoding proxy-connection te upgrade content-length".split())
_MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "ServiceUnavailable": "Service is unable to handle request.",
    "InternalError": "We encountered an internal error. Please try again.",
}


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 that forwards to `upstream` (a URL) unless `faults.decide` says
    otherwise. http.server answers `Expect: 100-continue` before the body is read, as S3 does; chunked
    request bodies are de-chunked; a HEAD keeps the object's Content-Length."""

    def __init__(self, upstream: str, faults: KeyFaults | WindowFaults):
        self.upstream_port = urlsplit(upstream).port
        self.faults = faults
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def _body(h: BaseHTTPRequestHandler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return h.rfile.read(int(h.headers.get("Content-Length") or 0))
        data = b""
        while size := int(h.rfile.readline().split(b";")[0].strip() or b"0", 16):
            data += h.rfile.read(size)
            h.rfile.readline()
        while h.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return data

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, reason: str | None, headers, length: str) -> None:
        h.send_response(status, reason)
        for k, v in headers:
            if k.lower() not in _HOP:
                h.send_header(k, v)
        h.send_header("Content-Length", length)
        h.end_headers()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = self._body(h)
        fault = self.faults.decide(h.command, h.path)
        if fault == "reset":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault not in (None, "drop"):
            status, code = fault.split(" ", 1)
            xml = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{_MESSAGES.get(code, code)}</Message></Error>"
            ).encode()
            self._send(h, int(status), None, [("Content-Type", "application/xml")], str(len(xml)))
            if h.command != "HEAD":
                h.wfile.write(xml)
            return
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP and k.lower() != "expect"}
            conn.request(h.command, h.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        head = h.command == "HEAD"  # keeps the object's Content-Length, sends no body
        length = (resp.getheader("Content-Length") if head else None) or str(len(data))
        self._send(h, resp.status, resp.reason, resp.getheaders(), length)
        if head:
            return
        if fault == "drop" and len(data) > 1:
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.wfile.write(data)


@dataclass
class S3Endpoint:
    url: str  # the proxy's endpoint URL (what clients use)
    faults: KeyFaults
    env: dict[str, str]  # environment for subprocesses: credentials, endpoint, few retries


@contextmanager
def s3_with_faults(bucket: str = "geo-ssl-test") -> Iterator[S3Endpoint]:
    """moto behind a FaultProxy with KeyFaults; creates `bucket` and points fsspec's s3 at the proxy
    (FSSPEC_S3 in os.environ, so subprocesses inherit it)."""
    with moto_server(bucket) as moto_url, FaultProxy(moto_url, KeyFaults()) as proxy:
        env = {
            **TEST_CREDENTIALS,
            **_CLI_ENV,
            "FSSPEC_S3": json.dumps({"client_kwargs": {"endpoint_url": proxy.url}}),
            "GEO_SSL_IO_ATTEMPTS": "3",
        }
        with patched_env(env):
            yield S3Endpoint(url=proxy.url, faults=proxy.faults, env=env)
