"""Output locks under hostile conditions (issue 17, items 1 and 25): real subprocesses, real signals, a
real full disk (a small tmpfs)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from geo_ssl.pipeline.common import procs
from tests.index_factory import TinyIndex, make_index
from tests.pipeline.test_hardening_cli import error_line, run_cli, start_lock_holder

ENV = {**os.environ, "GEO_SSL_PROGRESS": "0"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyIndex:
    return make_index(tmp_path_factory.mktemp("tiny"), n_locations=6)


# --- item 1: a killed run's zombie keeps its lock ------------------------------------------------------


def test_a_zombie_lock_holder_is_gone_and_the_rerun_resumes(tiny: TinyIndex, tmp_path: Path):
    """The holder is killed with kill -9 and never reaped (as under a PID 1 that does not reap): it stays
    a zombie of this test process, which `kill(pid, 0)` still finds."""
    out = tmp_path / "shards"
    holder = start_lock_holder(out)
    try:
        os.kill(holder.pid, signal.SIGKILL)  # no wait(): it stays a zombie
        deadline = time.monotonic() + 10
        while not procs.is_zombie(holder.pid):
            assert time.monotonic() < deadline, "the killed holder did not become a zombie"
            time.sleep(0.01)
        proc = run_cli(
            "write-shards", "--index", str(tiny.index), "--out", str(out), "--workers", "1", "--resize", "64"
        )
        assert procs.is_zombie(holder.pid)  # still there, unreaped, while the rerun ran
        assert proc.returncode == 0, proc.stderr
        assert not (out / ".geo-ssl.lock").exists()
        assert (out / "manifest.parquet").exists()
    finally:
        holder.kill()
        holder.wait()


# --- item 25: a full disk ------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 256 KiB tmpfs (needs root and a kernel that allows the mount; skipped otherwise)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path, leave: int) -> None:
    """Fill the disk but `leave` bytes."""
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    (disk / "filler").write_bytes(b"\0" * (free - leave))


def test_a_full_disk_names_the_file_and_leaves_no_lock_that_refuses_the_rerun(tiny: TinyIndex, small_disk):
    out = small_disk / "clusters"
    _fill(small_disk, 0)  # the lock file is created (an inode), its record cannot be written
    for _ in range(2):  # the rerun meets the same full disk, not a lock of the failed run
        proc = run_cli("cluster", "--index", str(tiny.index), "--k", "2", "--out", str(out))
        assert proc.returncode == 2
        line = error_line(proc)
        assert f"{out}/.geo-ssl.lock: No space left on device" in line and "free some space" in line
        assert not (out / ".geo-ssl.lock").exists()

    (small_disk / "filler").unlink()
    _fill(small_disk, 4096)  # room for the lock, not for the tables
    proc = run_cli("cluster", "--index", str(tiny.index), "--k", "2", "--out", str(out))
    assert proc.returncode == 2
    line = error_line(proc)
    assert f"{out}/clusters.parquet: " in line and "No space left on device" in line, line
    assert not (out / ".geo-ssl.lock").exists()

    (small_disk / "filler").unlink()
    proc = run_cli("cluster", "--index", str(tiny.index), "--k", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "cluster_stats.json").exists()
