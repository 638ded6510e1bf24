"""Library messages go through `logging` (a caller can silence or route them), with today's stderr lines by
default; the command lines take --quiet / --verbose."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from geo_ssl.pipeline.common import logs
from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader
from tests.shard_fixtures import make_tiny_shards

LINE = "train-000001.tar: listed in manifest.parquet (8 samples) but not in the folder; left out"


@pytest.fixture()
def geo_logger(monkeypatch) -> Iterator[logging.Logger]:
    """The "geo_ssl" logger as a fresh process has it; put back afterwards."""
    logger = logs.get_logger(logs.LOGGER)
    saved = (logger.level, logger.propagate, list(logger.handlers))
    for name in (logs.ENV_LEVEL, "GEO_SSL_PROGRESS"):  # set then removed: put back as they were at the end
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    yield logger
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    logger.handlers[:] = saved[2]


def _left_out(folder: Path) -> None:
    make_tiny_shards(folder, 24, 3, image_size=24, max_views=2, n_clusters=4, seed=0)
    os.remove(folder / "train-000001.tar")  # listed in manifest.parquet, gone: the loader says so
    cfg = dict(split="train", batch_size=4, image_size=16, num_workers=0, shuffle_buffer=0, decode="defer")
    pretrain_loader(LoaderConfig(urls=str(folder), **cfg))


def test_loader_lines_default_silenced_and_routed(geo_logger, tmp_path, capfd, caplog) -> None:
    assert not geo_logger.propagate
    _left_out(tmp_path / "a")  # nothing configured: the same stderr line as before
    first = capfd.readouterr().err.splitlines()[0]
    assert first.startswith("geo-ssl loader: shard ") and first.endswith(LINE), first
    geo_logger.setLevel(logging.ERROR)
    _left_out(tmp_path / "b")
    assert "left out" not in capfd.readouterr().err  # silenced the usual way
    geo_logger.setLevel(logging.INFO)
    logs.propagate()
    with caplog.at_level(logging.INFO):
        _left_out(tmp_path / "c")
    assert "left out" not in capfd.readouterr().err  # routed: the root's handlers have it, not stderr
    record = next(r for r in caplog.records if LINE in r.getMessage())
    assert record.name == "geo_ssl.training.data.loader" and record.levelno == logging.WARNING


def test_verbosity_reaches_worker_processes(geo_logger) -> None:
    logs.set_verbosity(argparse.Namespace(quiet=True, verbose=False))
    assert geo_logger.level == logging.WARNING and os.environ["GEO_SSL_PROGRESS"] == "0"
    probe = "from geo_ssl.pipeline.common import logs; print(logs.get_logger('geo_ssl').level)"
    level = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert int(level) == logging.WARNING


@pytest.mark.parametrize("module", ["geo_ssl.pipeline.cli", "geo_ssl.training.evaluation.export"])
def test_quiet_and_verbose_are_flags_that_exclude_each_other(module: str) -> None:
    args = ["validate", "x"] if module.endswith("pipeline.cli") else ["a.pt", "b.safetensors"]
    argv = [sys.executable, "-m", module, *args, "--quiet", "--verbose"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--verbose: not allowed with argument --quiet" in proc.stderr, proc.stderr
