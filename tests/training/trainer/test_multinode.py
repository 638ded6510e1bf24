"""Multi-node training (issue 9 item 5): two `torchrun --nnodes 2 --nproc_per_node 1` launchers on
loopback, one per node rank, rendezvous at a static master address; gloo on CPU, uneven shards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from geo_ssl.training.trainer.checkpoint import LAST
from geo_ssl.training.trainer.run_log import read_metrics
from tests.s3_support import free_port
from tests.shard_fixtures import make_tiny_shards

REPO = Path(__file__).resolve().parents[3]


def test_two_nodes_one_process_each_train_in_lockstep(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    make_tiny_shards(
        shards, n_locations=20, n_shards=3, split="train", image_size=40, n_clusters=4, uneven=True
    )
    out = tmp_path / "run"
    port = free_port()
    env = {**os.environ, "GEO_SSL_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    nodes = []
    for node_rank in (0, 1):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
            "-m", "geo_ssl.training.trainer.cli", "--data", str(shards), "--out", str(out), "--arch", "resnet18",
            "--method", "moco+geo+tp", "--image-size", "32", "--batch-size", "8", "--moco-k", "16",
            "--epochs", "1", "--num-workers", "0", "--shuffle-buffer", "4", "--knn-every", "0", "--n-clusters", "4",
            "--log-every", "1",
        ]  # fmt: skip
        log = open(tmp_path / f"node{node_rank}.log", "w+")  # closed below
        nodes.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [proc.wait(timeout=240) for proc, _ in nodes]
    finally:
        for proc, log in nodes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    logs = [(tmp_path / f"node{r}.log").read_text() for r in (0, 1)]
    assert codes == [0, 0], "\n----\n".join(text[-3000:] for text in logs)
    assert "on 2 rank(s)" in logs[0]
    ckpt = torch.load(out / LAST, weights_only=True)
    # 20 locations, global batch 8 = 4 per rank: 2 steps per epoch on each node, although shards are uneven
    assert ckpt["world_size"] == 2 and ckpt["steps_per_epoch"] == 2 and ckpt["step"] == 2
    assert len(ckpt["rng"]) == 2  # both nodes' RNG states, for an exact resume
    assert [r["step"] for r in read_metrics(str(out), "train")] == [1, 2]  # one writer: rank 0
