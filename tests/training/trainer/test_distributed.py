"""A real 2-process `torchrun` run (gloo, CPU; NCCL where there are 2 GPUs) over uneven shards: DDP,
cross-rank shuffle-BN, the queue."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from geo_ssl.training.trainer.checkpoint import LAST
from geo_ssl.training.trainer.run_log import read_metrics
from tests.shard_fixtures import make_tiny_shards

REPO = Path(__file__).resolve().parents[1]


def test_torchrun_two_ranks_over_uneven_shards(tmp_path):
    shards = tmp_path / "shards"
    make_tiny_shards(
        shards, n_locations=20, n_shards=3, split="train", image_size=40, n_clusters=4, uneven=True
    )
    make_tiny_shards(shards, n_locations=6, n_shards=1, split="val", image_size=40, n_clusters=4, seed=1)
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "geo_ssl.training.trainer.cli", "--data", str(shards), "--out", str(out), "--arch", "resnet18",
        "--method", "moco+geo+tp", "--image-size", "32", "--batch-size", "8", "--moco-k", "16", "--epochs", "1",
        "--num-workers", "1", "--shuffle-buffer", "4", "--n-clusters", "4", "--knn-k", "5", "--log-every", "1",
    ]  # fmt: skip
    env = {**os.environ, "GEO_SSL_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    if torch.cuda.device_count() < 2:  # rank r takes cuda:r: with fewer GPUs both ranks run on the CPU
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 rank(s)" in proc.stderr
    assert "FutureWarning" not in proc.stderr, proc.stderr[-3000:]  # torch's broadcast_buffers, once per rank
    ckpt = torch.load(out / LAST, weights_only=True)
    # 20 locations, 4 per rank per step: 2 steps per epoch on each rank, even though shards are uneven
    assert ckpt["world_size"] == 2 and ckpt["steps_per_epoch"] == 2 and ckpt["step"] == 2
    assert len(ckpt["rng"]) == 2  # both ranks' RNG states, for an exact resume
    assert ckpt["bn_splits"] == 1  # under DDP each rank's batch is its own BN split
    # every rank enqueued the gathered global batch: 2 steps x 8 keys filled the whole queue
    assert int(ckpt["model"]["moco.queue_ptr"]) == 0
    assert [r["step"] for r in read_metrics(str(out), "train")] == [1, 2]
    knn = read_metrics(str(out), "knn")
    assert len(knn) == 1 and knn[0]["bank"] == 20 and knn[0]["query"] == 6
