"""A preset's lr follows its batch size: `--preset gassl-... --batch-size 128` used to keep lr 0.03 (tuned for
256) without a word. Now the linear scaling rule rescales it, unless --lr (or a config file's lr) is given,
and one line says which happened; config.toml records the lr the run used."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tomllib

import pytest

from geo_ssl.training.trainer.cli import build_parser
from geo_ssl.training.trainer.config import config_from_args
from tests.shard_fixtures import make_tiny_shards

PRESET = "gassl-fmow-moco"  # lr 0.03 for batch 256


def _cfg(*argv: str):
    return config_from_args(build_parser().parse_args(["--preset", PRESET, "--data", "d", *argv]))


def test_batch_size_rescales_the_presets_lr(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="geo_ssl.training.trainer.config"):
        assert _cfg("--batch-size", "128").lr == pytest.approx(0.015)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "batch_size 128 instead of the preset's 256: lr 0.03 -> 0.015" in lines[0]


def test_an_explicit_lr_wins_and_is_said(caplog, tmp_path) -> None:
    with caplog.at_level(logging.WARNING, logger="geo_ssl.training.trainer.config"):
        assert _cfg("--batch-size", "128", "--lr", "0.03").lr == 0.03  # the preset's value, given on purpose
        toml = tmp_path / "run.toml"
        toml.write_text("lr = 0.05\n")
        assert _cfg("--batch-size", "64", "--config", str(toml)).lr == 0.05
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("not rescaled (--lr wins" in line for line in lines)


def test_the_presets_own_batch_is_silent(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="geo_ssl.training.trainer.config"):
        assert _cfg().lr == 0.03 and _cfg("--batch-size", "256").lr == 0.03
    assert not caplog.records


def test_geo_pretrain_records_the_rescaled_lr(tmp_path) -> None:
    shards = tmp_path / "shards"
    make_tiny_shards(shards, n_locations=8, n_shards=1, split="train", image_size=40)
    out = tmp_path / "run"
    argv = [
        "--preset", PRESET, "--data", str(shards), "--out", str(out), "--arch", "resnet18", "--image-size", "32",
        "--batch-size", "8", "--moco-k", "16", "--epochs", "1", "--max-steps", "1", "--num-workers", "0",
        "--shuffle-buffer", "4", "--knn-every", "0",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GEO_SSL_PROGRESS": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "geo_ssl.training.trainer.cli", *argv],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = [line for line in proc.stderr.splitlines() if "linear scaling rule" in line]
    assert len(said) == 1 and "lr 0.03 -> 0.0009375" in said[0], proc.stderr[-2000:]
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["lr"] == pytest.approx(0.03 * 8 / 256)
