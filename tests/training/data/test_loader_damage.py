"""Damaged shards: a bad tar header, random bytes, 0 bytes, a cut at a member boundary (issue 7 items 1, 23, 24)."""

from __future__ import annotations

import os
import tarfile

import pytest

from geo_ssl.training.data.loader import CorruptSampleError, LoaderConfig, eval_loader, pretrain_loader
from tests.shard_fixtures import make_tiny_shards

S = 16


@pytest.fixture()
def shards(tmp_path) -> tuple[str, list[str]]:
    """3 shards of 4 locations (manifest.parquet beside them); returns the folder and every key."""
    paths = make_tiny_shards(tmp_path, n_locations=12, n_shards=3, image_size=24, max_views=3)
    keys = []
    for p in paths:
        with tarfile.open(p) as tar:
            for m in tar.getmembers():
                key = m.name.split(".", 1)[0]
                if key not in keys:
                    keys.append(key)
    return str(tmp_path), keys


def _members(path: str) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def _eval_keys(folder: str, **kw):
    loader = eval_loader(folder, image_size=S, batch_size=64, all_views=False, **kw)
    return [k for b in loader for k in b["key"]], loader


def _cfg(folder: str, **kw) -> LoaderConfig:
    base = dict(split="train", batch_size=4, image_size=S, num_workers=0, shuffle_buffer=0, decode="defer")
    base.update(kw)
    return LoaderConfig(urls=folder, **base)


def test_bad_checksum_in_first_header_skips_one_sample_and_resyncs(shards):
    folder, keys = shards
    shard = os.path.join(folder, "train-000000.tar")
    with open(shard, "r+b") as f:  # issue 7's reproduction: the first header's checksum field
        f.seek(150)
        f.write(b"9")
    got, loader = _eval_keys(folder, num_workers=0)
    assert sorted(got) == sorted(keys[1:])  # only the first sample is lost; the rest of the shard is read
    text = " ".join(loader.stats.errors)
    assert "train-000000.tar: bad tar header at byte 0" in text and keys[0] in text
    assert loader.stats.corrupt == 1
    with pytest.raises(CorruptSampleError, match=r"train-000000\.tar.*bad tar header at byte 0"):
        _eval_keys(folder, num_workers=0, strict=True)


def test_damaged_header_inside_a_shard_resyncs_on_the_next_valid_header(shards):
    folder, keys = shards
    shard = os.path.join(folder, "train-000001.tar")
    members = _members(shard)
    victim = next(m for m in members if m.name.startswith(keys[5]) and m.name.endswith(".jpg"))
    with open(shard, "r+b") as f:
        f.seek(victim.offset + 20)  # inside the name field: the checksum no longer matches
        f.write(b"\xff\xfe")
    got, loader = _eval_keys(folder, num_workers=0)
    assert sorted(got) == sorted(k for k in keys if k != keys[5])
    assert f"bad tar header at byte {victim.offset}" in " ".join(loader.stats.errors)
    # training: equal steps, the skipped sample counted, the worker's last batch filled again
    train = pretrain_loader(_cfg(folder))
    seen = [k for b in train for k in b["key"]]
    assert len(seen) == 12 and keys[5] not in seen and train.stats.corrupt == 1 and train.stats.refilled == 1


def test_shard_of_random_bytes_counts_its_samples_as_missing(shards):
    folder, keys = shards
    shard = os.path.join(folder, "train-000002.tar")
    size = os.path.getsize(shard)
    with open(shard, "wb") as f:
        f.write(os.urandom(size))
    got, loader = _eval_keys(folder, num_workers=2)
    assert sorted(got) == sorted(keys[:8])
    assert loader.stats.missing == 4 and loader.stats.corrupt == 4
    assert "train-000002.tar" in " ".join(loader.stats.errors)
    train = pretrain_loader(_cfg(folder, num_workers=2))
    assert sum(len(b["key"]) for b in train) == 12 and train.stats.missing == 4


@pytest.mark.parametrize("cut", ["empty", "member_boundary"])
def test_short_shard_is_compared_with_the_manifest(shards, cut):
    folder, keys = shards
    shard = os.path.join(folder, "train-000001.tar")
    if cut == "empty":
        lost, keep = 4, 0
    else:  # cut exactly where sample 2 of this shard begins: a valid, shorter tar
        lost, keep = 2, next(m.offset for m in _members(shard) if m.name.startswith(keys[6]))
    with open(shard, "r+b") as f:
        f.truncate(keep)
    got, loader = _eval_keys(folder, num_workers=0)
    assert len(got) == 12 - lost and loader.stats.missing == lost == loader.stats.corrupt
    assert f"{lost} of its samples 0..3 missing" in " ".join(loader.stats.errors)
    with pytest.raises(CorruptSampleError, match=r"train-000001\.tar.*missing"):
        list(pretrain_loader(_cfg(folder, strict=True)))


def test_strict_with_workers_is_one_line(shards):
    folder, _ = shards
    with open(os.path.join(folder, "train-000001.tar"), "r+b") as f:
        f.seek(150)
        f.write(b"9")
    with pytest.raises(CorruptSampleError) as info:
        list(pretrain_loader(_cfg(folder, strict=True, num_workers=2, decode="cpu")))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message and "train-000001.tar" in message
    with pytest.raises(CorruptSampleError) as info:
        _eval_keys(folder, num_workers=2, strict=True)
    assert "\n" not in str(info.value)


def test_geo_eval_prints_records_and_honours_strict(tmp_path, capsys):
    """issue 7 items 1, 10, 24: geo-eval on a shard with a damaged header (the issue's `dd` at byte 150)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from geo_ssl.training.evaluation.cli import main

    make_tiny_shards(tmp_path, n_locations=8, n_shards=2, image_size=32, max_views=1)
    make_tiny_shards(tmp_path, n_locations=4, n_shards=1, image_size=32, max_views=1, split="val", seed=1)
    with open(tmp_path / "train-000001.tar", "r+b") as f:
        f.seek(150)
        f.write(b"9")
    args = ["knn", "--weights", "random", "--arch", "resnet18", "--data", str(tmp_path),
            "--image-size", "32", "--batch-size", "8", "--k", "3"]  # fmt: skip
    out = tmp_path / "knn.json"
    main([*args, "--num-workers", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert "skipped 1 unreadable samples" in err and "train-000001.tar" in err
    result = json.loads(out.read_text())
    assert result["skipped_samples"] == 1 and result["bank"] == 7
    # --strict with loader workers: one line, exit 2 (a real process: the workers are real too)
    geo_eval = str(Path(sys.executable).parent / "geo-eval")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GEO_SSL_PROGRESS": "0"}
    proc = subprocess.run(
        [geo_eval, *args, "--num-workers", "2", "--strict"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "train-000001.tar" in lines[0] and "bad tar header at byte 0" in lines[0], (
        lines
    )
