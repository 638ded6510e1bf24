"""`geo-eval finetune` (issue 18, item 5): the whole network trains, the result has top-1, macro F1 and the
per-location top-1, and bad flags are one line with exit 2. Real subprocesses and real shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geo_ssl.training.data.loader import LoaderConfig, eval_loader, views_loader
from geo_ssl.training.evaluation.finetune import card_classes, finetune
from geo_ssl.training.evaluation.linear_probe import assert_unchanged, linear_probe, snapshot
from geo_ssl.training.models.backbone import FeatureExtractor, build_resnet
from tests.shard_fixtures import make_train_val_shards

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return make_train_val_shards(tmp_path_factory.mktemp("shards"))


def geo_eval(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "geo_ssl.training.evaluation.cli", *args]
    env = {**os.environ, "GEO_SSL_PROGRESS": "0"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_geo_eval_finetune_prints_and_writes_top1_f1_and_per_location(shards, tmp_path):
    out = tmp_path / "ft.json"
    proc = geo_eval(
        "finetune", "--weights", "random", "--arch", "resnet18", "--data", shards, "--image-size", "32",
        "--batch-size", "4", "--num-workers", "0", "--epochs", "2", "--max-steps", "3", "--lr", "25",
        "--num-classes", "6", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("finetune top-1: ") and "macro F1: " in line and "last-epoch" in line, line
    result = json.loads(out.read_text())
    assert f"per-location top-1: {result['per_location_top1']:.2f}%" in line
    assert result["eval"] == "finetune" and result["reported"] == "last-epoch" and result["steps"] == 3
    assert 0 <= result["macro_f1"] <= 100 and 0 <= result["top1"] <= 100
    # every stored view of the 6 val locations is an image; the views of one location vote
    assert result["locations"] == 6 and result["n_val"] > 6 and result["multi_view_locations"] >= 1
    assert result["backbone_tensors_changed"] > 0 and result["bn"] == "frozen"
    assert result["lr"] == pytest.approx(25 * 4 / 256)


def _train_loader(shards: str) -> object:
    cfg = LoaderConfig(urls=shards, split="train", batch_size=4, image_size=32, temporal=False, num_workers=0,
                       epoch_unit="image")  # fmt: skip
    return views_loader(cfg, n_views=1)


def test_finetune_moves_the_backbone_and_the_probe_does_not(shards):
    def val():
        return eval_loader(shards, image_size=32, batch_size=8, num_workers=0, split="val")

    torch.manual_seed(0)
    resnet = build_resnet("resnet18")
    before = snapshot(resnet)
    probe_net = FeatureExtractor(build_resnet("resnet18"))
    probe_before = snapshot(probe_net)
    linear_probe(probe_net, eval_loader(shards, 32, 8, 0, "train"), val(), torch.device("cpu"), epochs=2)
    assert_unchanged(probe_net, probe_before)  # the frozen protocol

    result = finetune(resnet, _train_loader(shards), val(), torch.device("cpu"), n_classes=6, epochs=1,
                      lr=0.1, max_steps=2)  # fmt: skip
    after = resnet.state_dict()
    assert not torch.equal(after["conv1.weight"], before["conv1.weight"])  # the backbone trained
    assert not torch.equal(after["layer4.1.bn2.weight"], before["layer4.1.bn2.weight"])
    # --bn frozen (GASSL: model.eval() while training): BN statistics stay the pretrained ones
    assert torch.equal(after["bn1.running_mean"], before["bn1.running_mean"])
    assert after["fc.weight"].shape == (6, 512)
    assert result["backbone_tensors_changed"] > 0 and result["steps"] == 2

    resnet = build_resnet("resnet18")
    before = snapshot(resnet)
    finetune(resnet, _train_loader(shards), val(), torch.device("cpu"), n_classes=6, epochs=1, lr=0.1,
             bn="train", max_steps=1, max_val=4)  # fmt: skip
    assert not torch.equal(resnet.state_dict()["bn1.running_mean"], before["bn1.running_mean"])


def test_card_classes_reads_the_dataset_card(tmp_path):
    assert card_classes(str(tmp_path)) == 0
    cats = [{"id": 0, "name": "airport"}, {"id": 60, "name": "zoo"}]
    (tmp_path / "dataset.json").write_text(json.dumps({"categories": cats}))
    assert card_classes(str(tmp_path)) == 61


def test_bad_finetune_flags_are_one_line_exit_2(shards, tmp_path):
    base = ["finetune", "--weights", "random", "--arch", "resnet18", "--data", shards]
    cases = [
        (["--max-steps", "-1"], "--max-steps -1: must be >= 0"),
        (["--num-classes", "-2"], "--num-classes -2: must be >= 0"),
        (["--crop-scale", "1.5"], "--crop-scale 1.5: must be in (0, 1]"),
        (["--epochs", "0"], "--epochs 0: must be > 0"),
        (["--lr", "nan"], "--lr nan: must be a finite number > 0"),
        (["--val-split", "train"], "the same split as --train-split"),
        ([], "no dataset.json listing the categories; give --num-classes"),  # tiny shards have no card
        (["--num-classes", "3"], "is outside the 3 classes; give --num-classes above it"),
    ]
    for extra, needle in cases:
        proc = geo_eval(*base, "--image-size", "32", "--batch-size", "4", "--num-workers", "0", *extra)
        err = proc.stderr.strip()
        assert proc.returncode == 2, (extra, err[-2000:])
        assert err.startswith("geo-eval: error:") and "\n" not in err and needle in err, (extra, err)
        assert "top-1" not in proc.stdout
