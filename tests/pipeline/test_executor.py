"""The executor's process pool: workers never outlive a killed run; engine choice errors are one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from geo_ssl.pipeline.common import executor
from geo_ssl.pipeline.common.errors import GeoSSLError
from tests.index_factory import make_index

REPO = Path(__file__).resolve().parents[2]


def _outputs(folder: Path) -> dict[str, int]:
    """Every file under OUT (shards, temps, completion records) with its size."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_kill_9_of_write_shards_stops_its_workers_and_resource_tracker(tmp_path: Path) -> None:
    """Issue 7 item 6: after kill -9 of the main pid only, no process it started lives on or writes."""
    tiny = make_index(
        tmp_path / "idx", n_locations=48, splits=("train",), size=(480, 360), views=(3, 4), seed=5
    )
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "geo_ssl.pipeline.cli", "write-shards", "--index", str(tiny.index),
        "--out", str(out), "--workers", "2", "--shard-bytes", "1", "--resize", "320", "--no-dct",
    ]  # fmt: skip
    env = {**os.environ, "GEO_SSL_PROGRESS": "0"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        main = psutil.Process(proc.pid)
        done = out / "_done"
        deadline = time.monotonic() + 60
        children: list[psutil.Process] = []
        # Wait until both workers are running tasks (a completion record is out), then kill the main pid.
        while not (done.is_dir() and any(p.suffix == ".json" for p in done.iterdir())):
            assert proc.poll() is None and time.monotonic() < deadline, "write-shards ended too early"
            children = main.children(recursive=True)
            time.sleep(0.01)
        children = main.children(recursive=True)
        cmdlines = [" ".join(c.cmdline()) for c in children]
        assert len(children) == 3 and any("resource_tracker" in c for c in cmdlines), cmdlines  # + 2 workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        _gone, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"still running after kill -9 of the run: {[p.pid for p in alive]}"
        after = _outputs(out)
        time.sleep(1.0)
        assert _outputs(out) == after, "files changed after the run was killed"
        assert len([p for p in after if p.endswith(".tar")]) < 48  # killed mid-build, not after it
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_engine_choice_errors_are_one_line() -> None:
    with pytest.raises(GeoSSLError, match="use one of process, dask"):
        executor.resolve("spark")
    with pytest.raises(GeoSSLError, match="needs --executor dask"):
        executor.resolve("process", "tcp://127.0.0.1:8786")
    with pytest.raises(GeoSSLError, match="scheduler address"):
        executor.resolve("dask", "127.0.0.1:8786")
    assert executor.resolve(None, "tcp://127.0.0.1:8786").engine == "dask"  # a scheduler implies Dask


def test_dask_missing_is_one_line_exit_2(tmp_path: Path) -> None:
    """Without the extra installed (distributed made unimportable), --executor dask says how to get it."""
    code = (
        "import sys; sys.modules['distributed'] = None\n"
        "from geo_ssl.pipeline.cli import main\n"
        f"main(['synth-fmow', '--out', {str(tmp_path / 's')!r}, '--locations', '2', '--executor', 'dask'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'geo-ssl[dask]'" in lines[0], r.stderr
