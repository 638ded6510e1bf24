"""--scheduler pointing at something that is not a Dask scheduler, and a scheduler killed mid-build (issue 17,
item 8): one line each, within seconds, exit 3 where a rerun helps. Real processes: an HTTP server, a
`dask scheduler` and a `dask worker`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="the dask extra is not installed (pip install 'geo-ssl[dask]')")

from geo_ssl.pipeline.shards import write as write_module
from geo_ssl.pipeline.shards.options import ShardOptions
from tests.index_factory import TinyIndex, make_index
from tests.s3_support import free_port

CLI = [sys.executable, "-m", "geo_ssl.pipeline.cli"]
ENV = {**os.environ, "GEO_SSL_PROGRESS": "0"}
OPTS = {"resize": 64, "shard_bytes": 20_000, "seed": 3, "workers": 1}
FLAGS = [x for k, v in OPTS.items() for x in (f"--{k.replace('_', '-')}", str(v))]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyIndex:
    return make_index(tmp_path_factory.mktemp("tiny"), n_locations=30)


@pytest.fixture(scope="module")
def http_port():
    """A plain HTTP server on loopback (what a dashboard or any web port is to a Dask client)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.mark.parametrize("scheme", ["tcp", "http"])
def test_a_scheduler_address_that_is_a_web_server_is_one_line_within_seconds(
    scheme, tiny, http_port, tmp_path
):
    started = time.monotonic()
    proc = subprocess.run(
        [*CLI, "write-shards", "--index", str(tiny.index), "--out", str(tmp_path / "out"), *FLAGS,
         "--scheduler", f"{scheme}://127.0.0.1:{http_port}"],
        capture_output=True, text=True, timeout=120, env=ENV,
    )  # fmt: skip
    assert time.monotonic() - started < 20
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(
        f"geo-build-dataset: error: --scheduler {scheme}://127.0.0.1:{http_port}: not a Dask"
    )
    assert not list((tmp_path / "out").glob("*.tar"))


def _spawn(*args: str, stderr: int | None = subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dask", *args], env=ENV, stdout=subprocess.DEVNULL, stderr=stderr, text=True
    )


def _finished_records(out: Path) -> list[Path]:
    done = out / "_done"
    return [p for p in done.glob("*.json") if not p.name.startswith(".")] if done.is_dir() else []


def test_a_scheduler_killed_mid_build_is_one_line_exit_3_and_the_rerun_resumes(tiny, tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    scheduler = _spawn(
        "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard",
        stderr=subprocess.PIPE,
    )  # fmt: skip
    worker = None
    try:
        for line in scheduler.stderr:  # ready once it prints its address
            if "Scheduler at" in line:
                break
        worker = _spawn("worker", address, "--nthreads", "1", "--no-dashboard")
        run = subprocess.Popen(
            [*CLI, "write-shards", "--index", str(tiny.index), "--out", str(out), *FLAGS, "--scheduler", address],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 90
        while not _finished_records(out):
            assert run.poll() is None and time.monotonic() < deadline, "write-shards ended too early"
            time.sleep(0.01)
        os.kill(scheduler.pid, signal.SIGKILL)
        killed = time.monotonic()
        _, err = run.communicate(timeout=60)
        assert time.monotonic() - killed < 15
    finally:
        for p in (worker, scheduler):
            if p is not None:
                p.kill()
                p.wait()
    assert run.returncode == 3, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Dask scheduler at " + address in lines[0] and "rerun the same command" in lines[0]

    summary = write_module.write_shards(str(tiny.index), str(out), options=ShardOptions(**OPTS))
    assert summary.reconciles and summary.skipped >= 1
