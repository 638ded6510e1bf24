"""`geo-export` never writes over its input or over a training checkpoint (issue 17, item 5).

Before: `geo-export RUN/checkpoint-last.pt RUN/checkpoint-last.pt` exited 0 having replaced the 138 MB
training checkpoint with the 44 MB backbone, and `--resume` then failed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geo_ssl.training.evaluation import export
from geo_ssl.training.trainer.checkpoint import FORMAT, LAST
from geo_ssl.training.trainer.config import PretrainConfig
from geo_ssl.training.trainer.loop import pretrain
from tests.shard_fixtures import make_tiny_shards

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "GEO_SSL_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two real geo-pretrain run folders (2 steps each)."""
    shards = tmp_path_factory.mktemp("shards")
    make_tiny_shards(shards, n_locations=8, n_shards=1, split="train", image_size=40, n_clusters=2)
    outs = []
    for name in ("a", "b"):
        out = tmp_path_factory.mktemp(name)
        pretrain(PretrainConfig(
            data=str(shards), out=str(out), arch="resnet18", method="moco", image_size=32, batch_size=4,
            moco_k=8, epochs=1, num_workers=0, shuffle_buffer=4, knn_every=0,
        ))  # fmt: skip
        outs.append(out)
    return outs[0], outs[1]


def geo_export(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "geo_ssl.training.evaluation.export", *args]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_refuses_its_input_and_training_checkpoints_in_one_line(runs, tmp_path):
    a, b = runs
    before = {p: digest(p / LAST) for p in (a, b)}
    link = tmp_path / "link.pt"
    link.symlink_to(a / LAST)
    cases = [
        ((str(a / LAST), str(a / LAST)), "is the input checkpoint"),  # was: exit 0, the run destroyed
        ((str(a / LAST), str(a / ".." / a.name / LAST)), "is the input checkpoint"),  # another spelling
        ((str(link), str(a / LAST)), "is the input checkpoint"),  # through a link
        ((str(a / LAST), str(b / LAST)), "is a geo-pretrain training checkpoint"),  # another run's
    ]
    for args, needle in cases:
        proc = geo_export(*args)
        err = proc.stderr.strip()
        assert proc.returncode == 2, err[-2000:]
        assert err.startswith(f"geo-export: error: {args[1]}: ") and "\n" not in err and needle in err, err
    assert {p: digest(p / LAST) for p in (a, b)} == before
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))  # no card or temp beside either checkpoint
    assert not [n for n in os.listdir(a) if n.startswith(LAST + ".")]


def test_export_still_replaces_an_earlier_export(runs, tmp_path):
    a, _ = runs
    dst = tmp_path / "backbone.pth"
    for _ in range(2):  # the second run writes over the first one's backbone, as before
        export.export_backbone(str(a / LAST), str(dst))
    assert not export._is_training_checkpoint(str(dst)) and export._is_training_checkpoint(str(a / LAST))
    assert export._TRAINING_FORMAT == FORMAT.encode()  # the torch-free sniff looks for the real format
