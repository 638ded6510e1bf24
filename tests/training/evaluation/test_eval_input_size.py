"""geo-eval evaluates at the size the backbone was trained at, unless --image-size says otherwise (and then
it says so): a 48-px checkpoint used to be scored at 224 px without a word."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geo_ssl.training.evaluation import export
from geo_ssl.training.evaluation.cli import DEFAULT_IMAGE_SIZE, input_size
from geo_ssl.training.trainer.checkpoint import LAST
from tests.shard_fixtures import make_train_val_shards
from tests.training.tiny_run import tiny_run

TRAINED = 48  # not the default 224, and not the shards' stored size


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return make_train_val_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def run(shards, tmp_path_factory) -> Path:
    return tiny_run(shards, tmp_path_factory.mktemp("run"), image_size=TRAINED)


def _geo_eval(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GEO_SSL_PROGRESS": "0"}
    return subprocess.run(
        [sys.executable, "-m", "geo_ssl.training.evaluation.cli", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_geo_eval_uses_the_trained_size_and_says_when_told_otherwise(run, shards, tmp_path) -> None:
    common = ["knn", "--weights", str(run / LAST), "--data", shards, "--batch-size", "8", "--num-workers", "0",
              "--k", "3", "--max-bank", "8", "--max-query", "4"]  # fmt: skip
    plain = _geo_eval(*common, "--out", str(tmp_path / "plain.json"))
    assert plain.returncode == 0, plain.stderr
    result = json.loads((tmp_path / "plain.json").read_text())
    assert result["image_size"] == TRAINED and result["trained_image_size"] == TRAINED
    assert result["image_size_from"] == "the checkpoint"
    assert "note" not in plain.stderr

    told = _geo_eval(*common, "--image-size", "64", "--out", str(tmp_path / "told.json"))
    assert told.returncode == 0, told.stderr
    result = json.loads((tmp_path / "told.json").read_text())
    assert result["image_size"] == 64 and result["trained_image_size"] == TRAINED
    notes = [line for line in told.stderr.splitlines() if line.startswith("geo-eval: note:")]
    assert len(notes) == 1 and "--image-size 64" in notes[0] and f"trained at {TRAINED} px" in notes[0]


@pytest.mark.parametrize("name", ["backbone.safetensors", "backbone.pth"])
def test_an_export_keeps_the_trained_size(run, tmp_path, name) -> None:
    """safetensors: its metadata; .pth (a bare state_dict): the JSON card written beside it."""
    dst = tmp_path / name
    export.export_backbone(str(run / LAST), str(dst))
    _, meta = export.load_backbone(str(dst))
    got = input_size(str(dst), meta, None)
    assert (got["image_size"], got["trained"], got["note"]) == (TRAINED, TRAINED, None)
    if name.endswith(".pth"):
        os.remove(str(dst) + ".json")  # timm's config.json beside it still says the trained size
        assert input_size(str(dst), meta, None)["image_size"] == TRAINED
        other = tmp_path / "other.pth"  # a shared config.json names its own export's file, not this one
        other.write_bytes(dst.read_bytes())
        assert input_size(str(other), meta, None)["image_size"] == DEFAULT_IMAGE_SIZE
        os.remove(tmp_path / "config.json")  # no card, nothing recorded: the official crop size
        assert input_size(str(dst), meta, None)["image_size"] == DEFAULT_IMAGE_SIZE


def test_random_weights_take_the_default_or_the_flag() -> None:
    meta = {"source": "random", "arch": "resnet18"}
    assert input_size("random", meta, None) == {
        "image_size": DEFAULT_IMAGE_SIZE, "source": "default", "trained": None, "note": None,
    }  # fmt: skip
    assert (
        input_size("random", meta, 64)["image_size"] == 64 and input_size("random", meta, 64)["note"] is None
    )
