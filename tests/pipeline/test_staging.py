"""Uploads to object storage are staged in one local folder, and what a killed run left there is swept."""

from __future__ import annotations

import os
import subprocess

from geo_ssl.pipeline.common import fsio


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_remote_writes_are_staged_named_after_their_writer():
    with fsio.atomic_local_path("memory://geo-ssl-staging-test/out/train-000000.tar") as tmp:
        assert os.path.dirname(tmp) == fsio.staging_dir()
        assert os.path.basename(tmp).startswith(f".tmp-{os.getpid()}-")
        with open(tmp, "wb") as f:
            f.write(b"shard bytes")
    assert not os.path.exists(tmp)  # uploaded, then removed
    assert fsio.read_bytes("memory://geo-ssl-staging-test/out/train-000000.tar") == b"shard bytes"


def test_a_killed_runs_staged_uploads_are_removed_and_live_ones_kept():
    folder = fsio.staging_dir()
    stale = os.path.join(folder, f".tmp-{_dead_pid()}-abc-train-000003.tar")
    mine = os.path.join(folder, f".tmp-{os.getpid()}-def-train-000004.tar")
    for path in (stale, mine):
        with open(path, "wb") as f:
            f.write(b"x" * 1024)
    try:
        assert fsio.remove_stale_temps("memory://geo-ssl-staging-test/out") >= 1
        assert not os.path.exists(stale) and os.path.exists(mine)
    finally:
        for path in (stale, mine):
            if os.path.exists(path):
                os.unlink(path)
