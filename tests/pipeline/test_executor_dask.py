"""The Dask engine on a real LocalCluster of 2 worker processes: the same bytes as the process pool, and
a worker killed mid-build costs nothing but a rerun of its task."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytest.importorskip("distributed", reason="the dask extra is not installed (pip install 'geo-ssl[dask]')")

from geo_ssl.pipeline.common import executor, executor_dask
from geo_ssl.pipeline.fmow.index import index_fmow
from geo_ssl.pipeline.fmow.synth import synth_fmow
from geo_ssl.pipeline.shards import write as write_module
from geo_ssl.pipeline.shards.options import ShardOptions
from geo_ssl.pipeline.shards.shard_task import write_shard_or_fail
from tests.index_factory import TinyIndex, make_index

REPO = Path(__file__).resolve().parents[2]
OPTS = {"resize": 64, "shard_bytes": 20_000, "seed": 3, "workers": 2}


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under a folder, by relative path (temps and completion records included)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyIndex:
    return make_index(tmp_path_factory.mktemp("tiny"), n_locations=16)


@pytest.fixture(scope="module")
def pool_shards(tiny: TinyIndex) -> Path:
    out = tiny.index.parent / "pool"
    write_module.write_shards(str(tiny.index), str(out), options=ShardOptions(**OPTS))
    return out


@pytest.fixture(scope="module")
def dask_engine():
    """One LocalCluster (2 processes) for the module, closed at its end; the process pool after."""
    with executor.using("dask"):
        yield
    executor_dask.shutdown()


def _kill_my_worker_once(task: dict) -> dict:
    """Runs on a Dask worker: the first task to get here kills its own worker process (SIGKILL, no
    cleanup, as an OOM kill or a lost node would) after starting the shard's temp file; the scheduler
    must rerun the task elsewhere."""
    marker = Path(task["out"]).parent / "worker-killed"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return write_shard_or_fail(task)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    (Path(task["out"]) / f".tmp-half-{task['shard']}").write_bytes(b"\0" * 512)  # a half-written tar
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def test_dask_local_cluster_writes_the_same_shards_as_the_process_pool(tiny, pool_shards, dask_engine):
    out = tiny.index.parent / "dask"
    summary = write_module.write_shards(str(tiny.index), str(out), options=ShardOptions(**OPTS))
    assert summary.reconciles and summary.written == 16
    assert len(executor_dask.worker_pids()) == 2  # it really ran on a 2-process cluster
    assert _files(out) == _files(pool_shards)  # shards, manifest, card (relative inputs), records


def test_a_worker_killed_mid_build_costs_only_a_rerun_of_its_task(
    tiny, pool_shards, dask_engine, monkeypatch
):
    out = tiny.index.parent / "killed"
    pids_before = executor_dask.worker_pids()
    monkeypatch.setattr(write_module, "write_shard_or_fail", _kill_my_worker_once)
    summary = write_module.write_shards(str(tiny.index), str(out), options=ShardOptions(**OPTS))
    killed = int((tiny.index.parent / "worker-killed").read_text())
    assert killed in pids_before and killed not in executor_dask.worker_pids()  # the nanny replaced it
    assert summary.reconciles and summary.written == 16 and summary.skipped == 0
    assert _files(out) == _files(pool_shards)  # identical; the dead worker's temp file is gone


def test_synth_and_index_on_dask_match_the_process_pool(tmp_path, dask_engine):
    with executor.using(
        "process"
    ):  # in this process (their own tests show any worker count gives these bytes)
        synth_fmow(str(tmp_path / "pool"), locations=12, seed=1, workers=1)
        index_fmow(str(tmp_path / "pool"), str(tmp_path / "pool-index"), workers=1)
    synth_fmow(str(tmp_path / "dask"), locations=12, seed=1, workers=2)
    index_fmow(str(tmp_path / "pool"), str(tmp_path / "dask-index"), workers=2)  # same tree: same paths
    assert _files(tmp_path / "dask") == _files(tmp_path / "pool")
    pool_index, dask_index = _files(tmp_path / "pool-index"), _files(tmp_path / "dask-index")
    for name in ("images.parquet", "locations.parquet", "rejects.parquet"):
        assert dask_index[name] == pool_index[name], name


def test_kill_9_of_a_dask_client_stops_its_cluster_and_the_rerun_resumes(
    tmp_path, tiny, pool_shards, dask_engine
):
    """The LocalCluster's workers follow the killed client (no writer left behind); the rerun skips the
    shards the killed run finished and ends byte-identical to an uninterrupted build."""
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "geo_ssl.pipeline.cli", "write-shards", "--index", str(tiny.index),
        "--out", str(out), "--executor", "dask", *_flags(OPTS),
    ]  # fmt: skip
    env = {**os.environ, "GEO_SSL_PROGRESS": "0"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        main = psutil.Process(proc.pid)
        deadline = time.monotonic() + 90
        while not _finished_records(out):
            assert proc.poll() is None and time.monotonic() < deadline, "write-shards ended too early"
            time.sleep(0.01)
        children = main.children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        _, alive = psutil.wait_procs(children, timeout=8)
        assert not alive, f"Dask processes left running: {[p.pid for p in alive]}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    summary = write_module.write_shards(str(tiny.index), str(out), options=ShardOptions(**OPTS))
    assert summary.reconciles and summary.skipped >= 1
    mine, clean = _files(out), _files(pool_shards)
    for files in (mine, clean):  # completion records differ (written/skipped); the card's input paths too
        files.update({k: b"" for k in files if k.startswith("_done")})
        card = json.loads(files.pop("dataset.json"))
        assert card.pop("inputs")["index"].endswith("index")
        files["dataset.json"] = json.dumps(card).encode()
    assert mine == clean


def _finished_records(out: Path) -> list[Path]:
    """Completion records on disk (not one being written: ".tmp-...json")."""
    done = out / "_done"
    return [p for p in done.glob("*.json") if not p.name.startswith(".")] if done.is_dir() else []


def _flags(opts: dict) -> list[str]:
    return [x for k, v in opts.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def test_an_existing_cluster_by_scheduler_address(tiny, pool_shards, dask_engine):
    """--scheduler tcp://HOST:PORT: a client of a running cluster (here the module's LocalCluster)."""
    address = executor_dask.client_for(None, 2).scheduler.address
    assert address.startswith("tcp://127.0.0.1:")
    out = tiny.index.parent / "scheduler"
    with executor.using(None, address):
        summary = write_module.write_shards(str(tiny.index), str(out), options=ShardOptions(**OPTS))
    assert summary.reconciles and summary.written == 16
    assert _files(out) == _files(pool_shards)
