"""SIGTERM to a `geo-pretrain` with loader workers, as Slurm/systemd/timeout send it: real processes, real signals.

To the whole process group (workers included) and to the main process only: both must end with a
checkpoint at the step the run had reached, exit 143 (documented in --help), print no traceback and
leave no worker behind. While the first run holds its folder, a second run on it is refused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.trainer.checkpoint import LAST
from geo_ssl.training.trainer.config import PretrainConfig
from geo_ssl.training.trainer.loop import pretrain
from geo_ssl.training.trainer.run_log import read_metrics
from tests.shard_fixtures import make_tiny_shards

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "GEO_SSL_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("shards")
    make_tiny_shards(folder, n_locations=16, n_shards=2, split="train", image_size=40, n_clusters=4)
    return str(folder)


def pretrain_cmd(shards: str, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "geo_ssl.training.trainer.cli", "--data", shards, "--out", str(out),
        "--arch", "resnet18", "--image-size", "32", "--batch-size", "8", "--moco-k", "16", "--epochs", "500",
        "--num-workers", "2", "--n-clusters", "4", "--knn-every", "0", "--log-every", "1",
        "--shuffle-buffer", "8", "--ckpt-every", "1000",
    ]  # fmt: skip


def wait_for_steps(proc: subprocess.Popen, out: Path, steps: int, timeout: float = 120) -> None:
    """Until metrics.jsonl holds `steps` records (a few epochs: the workers have been re-forked)."""
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while not (metrics.exists() and metrics.read_text().count("\n") >= steps):
        if proc.poll() is not None:
            raise AssertionError(proc.communicate()[1][-3000:])
        assert time.monotonic() < deadline, f"fewer than {steps} steps within {timeout} s"
        time.sleep(0.05)


def group_is_gone(pgid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("target", ["group", "main"])
def test_sigterm_with_loader_workers_checkpoints_current_step(shards, tmp_path, target):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        pretrain_cmd(shards, out), cwd=REPO, env=ENV, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_steps(proc, out, 3)  # 2 steps per epoch: step 3 runs on the second set of workers
        if target == "main":
            # the folder is in use: a second run on it is refused at once (the first one's flock)
            second = PretrainConfig(
                data=shards, out=str(out), arch="resnet18", batch_size=8, n_clusters=4, resume=True
            )
            with pytest.raises(GeoSSLError, match=rf"another run is using this folder \(pid {proc.pid}\)"):
                pretrain(second)
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)  # the workers get it too, as from Slurm or systemd
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and "killed by signal" not in err, err[-3000:]
    assert "continue with --resume" in err
    ckpt = torch.load(out / LAST, weights_only=True)
    steps = [r["step"] for r in read_metrics(str(out), "train")]
    # the checkpoint is at the last step trained, not at an epoch end or --ckpt-every boundary
    assert ckpt["step"] == steps[-1] >= 3 and steps == list(range(1, steps[-1] + 1))
    assert group_is_gone(proc.pid), "loader workers outlived the run"
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == ckpt["step"]
