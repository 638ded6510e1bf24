"""The shaping proxy (tests/net_shaping.py) really shapes: the first byte of an answer comes no sooner than
the delay, a capped connection delivers no faster than the cap, and s3fs through it gets the same bytes."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.net_shaping import ShapingProxy
from tests.s3_support import bucket_fs, moto_server

BUCKET = "geo-ssl-net-shaping"
KEY = "blob.bin"
SIZE = 2_000_000
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def blob():
    """moto holding a 2 MB object of random bytes; yields (moto URL, the bytes)."""
    data = os.urandom(SIZE)
    with moto_server(BUCKET) as url:
        bucket_fs(url).pipe_file(f"{BUCKET}/{KEY}", data)
        yield url, data


def _get(proxy: ShapingProxy, headers: dict | None = None) -> tuple[float, float, bytes]:
    """(s to the status line, s to the last byte, body) of a plain GET of the object through the proxy
    (a presigned URL: moto refuses unsigned reads)."""
    url = urlsplit(bucket_fs(proxy.url).url(f"{BUCKET}/{KEY}"))
    conn = http.client.HTTPConnection("127.0.0.1", url.port, timeout=30)
    try:
        t0 = time.perf_counter()
        conn.request("GET", f"{url.path}?{url.query}", headers=headers or {})
        resp = conn.getresponse()
        first = time.perf_counter() - t0
        body = resp.read()
        assert resp.status in (200, 206), (resp.status, body[:200])
        return first, time.perf_counter() - t0, body
    finally:
        conn.close()


def test_first_byte_waits_the_delay(blob):
    url, data = blob
    with ShapingProxy(url, delay_ms=200) as proxy:
        first, _, body = _get(proxy, {"Range": "bytes=0-9"})
        proxy.delay_ms = 0
        undelayed, _, _ = _get(proxy, {"Range": "bytes=0-9"})
    assert body == data[:10]
    assert first >= 0.2
    assert undelayed < first  # the knob, not the server, made the wait
    assert proxy.stats.requests == {"GET": 2}


def test_bandwidth_is_capped_per_connection(blob):
    url, data = blob
    with ShapingProxy(url, bandwidth=4_000_000) as proxy:
        _, total, body = _get(proxy)
    assert body == data
    assert total >= SIZE / 4_000_000  # 0.5 s: the last chunk leaves no sooner than it is due
    assert total < 2 * SIZE / 4_000_000  # a cap, not a crawl: near the rate asked for
    assert proxy.stats.bytes_sent >= SIZE


def test_s3fs_through_the_proxy_gets_the_same_bytes(blob):
    url, data = blob
    with ShapingProxy(url, delay_ms=20, bandwidth=50_000_000) as proxy:
        fs = bucket_fs(proxy.url)
        whole = fs.cat_file(f"{BUCKET}/{KEY}")
        part = fs.cat_file(f"{BUCKET}/{KEY}", start=1000, end=300_000)
        size = fs.info(f"{BUCKET}/{KEY}")["size"]
    assert whole == data
    assert part == data[1000:300_000]
    assert size == SIZE
    assert proxy.stats.requests.get("GET", 0) >= 2
    assert proxy.stats.bytes_sent >= SIZE + 299_000


def test_latency_benchmark_smoke(tmp_path):
    """The benchmark end to end, tiny: the bucket through the delayed proxy gives the same epoch as local
    disk, each S3 row went through the proxy, and a 300 ms delay shows in the time to the first batch."""
    out = tmp_path / "lat"
    cmd = [sys.executable, "-m", "tests.bench.bench_loader_latency", "--out", str(out), "--quick",
           "--locations", "48", "--shard-bytes", "40000", "--image-size", "32", "--crop", "32", "--batch-size", "8",
           "--delays", "0,300", "--workers", "0", "--loads", "defer", "--peers", "none"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = json.loads((out / "latency.json").read_text())["runs"]
    by_source = {r["source"]: r for r in runs}
    assert set(by_source) == {"local disk", "S3 +0 ms", "S3 +300 ms"}
    samples = by_source["local disk"]["samples"]
    assert samples > 0 and all(r["samples"] == samples for r in runs)
    assert all(by_source[s]["requests"] >= 2 for s in ("S3 +0 ms", "S3 +300 ms"))
    assert by_source["S3 +300 ms"]["first_batch_s"] >= 0.6  # listing/manifest + first shard: >= 2 requests
    assert "| defer | 0 | S3 +300 ms |" in (out / "latency.md").read_text()
