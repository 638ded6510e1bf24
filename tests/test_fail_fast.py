"""An endpoint or API that nothing listens at fails in seconds with one line, not after minutes of retries."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geo_ssl.pipeline.common import reach
from geo_ssl.pipeline.common.retry import EXIT_STORAGE, RetryPolicy, StorageError, retry_io
from tests.s3_support import free_port

CLI = [sys.executable, "-m", "geo_ssl.pipeline.cli"]
#: The full retry policy is left on (no AWS_MAX_ATTEMPTS / GEO_SSL_IO_ATTEMPTS): it took 55-70 s before.
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_", "GEO_SSL_IO_"))},
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
    "FLICKR_API_KEY": "key", "FLICKR_API_SECRET": "secret", "GEO_SSL_PROGRESS": "0",
}  # fmt: skip


def _run(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=15, env=ENV)
    return proc, time.monotonic() - started


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("urls: ")]  # the URL list's summary
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_a_closed_storage_endpoint_fails_at_once(tmp_path: Path) -> None:
    port = free_port()
    proc, took = _run("index-fmow", "--root", "s3://nowhere/fmow", "--out", str(tmp_path / "i"),
                      "--storage-endpoint", f"http://127.0.0.1:{port}")  # fmt: skip
    assert proc.returncode == EXIT_STORAGE and took < 15
    line = _one_line(proc)
    assert "storage unreachable" in line and f"127.0.0.1:{port}" in line and "rerun" in line


def test_a_closed_api_url_fails_at_once(tmp_path: Path) -> None:
    port = free_port()
    urls = tmp_path / "urls.txt"
    urls.write_text("n01440764_1\thttp://farm1.static.flickr.com/1/123_abc.jpg\n")
    proc, took = _run("harvest-flickr", "--urls", str(urls), "--out", str(tmp_path / "h"),
                      "--api-url", f"http://127.0.0.1:{port}/services/rest/")  # fmt: skip
    assert proc.returncode == EXIT_STORAGE and took < 15
    line = _one_line(proc)
    assert f"Flickr API unreachable at http://127.0.0.1:{port}/services/rest/: connection refused" in line
    assert "--api-url" in line


def _refusal(url: str) -> Exception:
    """What botocore raises for a refused connection: EndpointConnectionError from ConnectionRefusedError."""
    from botocore.exceptions import EndpointConnectionError

    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as cause:
            raise EndpointConnectionError(endpoint_url=f"{url}/bucket/key") from cause
    except EndpointConnectionError as exc:
        return exc


def _tries(url: str) -> int:
    calls = []

    def fail() -> None:
        calls.append(1)
        raise _refusal(url)

    with pytest.raises(StorageError) as err:
        retry_io(fail, f"reading {url}/bucket/key", RetryPolicy(attempts=3, backoff=0.01, jitter=0))
    assert err.value.exit_code == EXIT_STORAGE
    return len(calls)


def test_only_a_first_contact_refusal_skips_the_retries() -> None:
    """Nothing listened at the first contact: one try. It answered once: a refusal is a blip, all tries."""
    dead = f"http://127.0.0.1:{free_port()}"
    assert reach.probe(dead) == "connection refused, nothing listens there"
    assert _tries(dead) == 1
    with socket.create_server(("127.0.0.1", 0)) as server:
        alive = f"http://127.0.0.1:{server.getsockname()[1]}"
        assert reach.probe(alive) is None
    assert reach.probe(alive) is None  # probed once: closed now, but it answered before
    assert _tries(alive) == 3
