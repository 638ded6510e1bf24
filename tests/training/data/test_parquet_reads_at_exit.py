"""A one-line error after the manifest was read exits 2, every time.

pyarrow's pool threads (pre_buffer's async reads, threaded column reads) could still be releasing the
Python buffer of a read when the interpreter exited, and the process aborted ("terminate called without
an active exception", exit 134); 4 of 40 such runs did before the reads became single-threaded."""

from __future__ import annotations

import subprocess
import sys

from tests.shard_fixtures import make_tiny_shards


def test_an_error_after_reading_the_manifest_exits_2_every_time(tmp_path):
    make_tiny_shards(tmp_path / "s", n_locations=16, n_shards=2, split="train", image_size=40, n_clusters=4)
    # 6 runs: the race hit 4 of 40 before the fix. The manifest is read (batch check), then torch is imported (method check) and the method is unknown
    cmd = [sys.executable, "-m", "geo_ssl.training.trainer.cli", "--method", "no-such-method", "--data",
           str(tmp_path / "s"), "--out", str(tmp_path / "run"), "--batch-size", "8", "--split", "train"]  # fmt: skip
    codes = [subprocess.run(cmd, capture_output=True, text=True, timeout=120).returncode for _ in range(6)]
    assert codes == [2] * 6
