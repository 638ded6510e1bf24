"""Issue 17 (Hardening 2), the loader's items: shards missing from the folder or not the manifest's (4, 18),
a stream closed at interpreter exit (15), an explicit split and an eval loader split over ranks (16), +tp
refused on one-image-per-sample shards (17). Real shard files, the real S3 server, real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.data.loader import LoaderConfig, eval_loader, pretrain_loader
from tests.s3_support import bucket_fs, moto_server
from tests.shard_fixtures import make_tiny_shards

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "GEO_SSL_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
S = 16


def _build(folder: Path, n_locations: int = 24, n_shards: int = 3, seed: int = 0, n_clusters: int = 4) -> str:
    """A build: `n_shards` train shards + one val shard of 6 locations, manifest.parquet beside them."""
    make_tiny_shards(
        folder, n_locations, n_shards, image_size=24, max_views=2, n_clusters=n_clusters, seed=seed
    )
    make_tiny_shards(
        folder, 6, 1, split="val", image_size=24, max_views=2, n_clusters=n_clusters, seed=seed + 1
    )
    return str(folder)


def _cfg(urls: str, **kw) -> LoaderConfig:
    base = dict(split="train", batch_size=4, image_size=S, num_workers=0, shuffle_buffer=0, decode="defer")
    return LoaderConfig(urls=urls, **{**base, **kw})


def _eval_keys(urls: str, **kw) -> tuple[list[str], object]:
    loader = eval_loader(urls, image_size=S, batch_size=8, num_workers=0, all_views=False, **kw)
    return [k for b in loader for k in b["key"]], loader


# ------------------------------------------------------------------ item 4: a shard missing from the folder


def test_missing_shard_counts_as_lost_says_so_and_strict_refuses(tmp_path, capfd):
    data = _build(tmp_path)
    os.remove(tmp_path / "train-000001.tar")  # listed in manifest.parquet (8 samples), gone from the folder
    loader = pretrain_loader(_cfg(data))
    err = capfd.readouterr().err
    assert "train-000001.tar: listed in manifest.parquet (8 samples) but not in the folder; left out" in err
    assert loader.plan.samples == 16 and loader.plan.lost == 8
    assert "8 samples of the manifest lost" in loader.plan.describe()
    assert sum(len(b["key"]) for b in loader) == 16
    assert loader.stats.missing == 8 and "train-000001.tar" in " ".join(loader.stats.errors)
    with pytest.raises(
        GeoSSLError, match=r"train-000001\.tar: listed in manifest.*not in the folder.*--strict"
    ):
        pretrain_loader(_cfg(data, strict=True))
    keys, ev = _eval_keys(data, split="train")
    assert len(keys) == 16 and ev.stats.corrupt == ev.stats.missing == 8
    with pytest.raises(GeoSSLError, match=r"train-000001\.tar"):
        _eval_keys(data, split="train", strict=True)
    keys, ev = _eval_keys(data, split="val", strict=True)  # the other split is whole: nothing to say
    assert len(keys) == 6 and ev.stats.corrupt == 0


def test_missing_shard_in_a_bucket_counts_as_lost(tmp_path):
    data = _build(tmp_path / "build")
    with moto_server("geo-ssl-hardening2-loader") as endpoint:
        fs = bucket_fs(endpoint)
        for name in sorted(os.listdir(data)):
            if name != "train-000002.tar":
                fs.put_file(os.path.join(data, name), f"geo-ssl-hardening2-loader/shards/{name}")
        url, options = "s3://geo-ssl-hardening2-loader/shards", {"client_kwargs": {"endpoint_url": endpoint}}
        keys, ev = _eval_keys(url, split="train", storage_options=options)
        assert len(keys) == 16 and ev.stats.missing == 8
        with pytest.raises(GeoSSLError, match=r"train-000002\.tar: listed in manifest"):
            pretrain_loader(_cfg(url, storage_options=options, strict=True))


def test_geo_pretrain_and_geo_eval_strict_refuse_a_missing_shard(tmp_path):
    data = _build(tmp_path / "build")
    os.remove(os.path.join(data, "train-000000.tar"))
    pretrain = [sys.executable, "-m", "geo_ssl.training.trainer.cli", "--data", data, "--out", str(tmp_path / "run"),
                "--arch", "resnet18", "--image-size", "32", "--batch-size", "8", "--num-workers", "0", "--strict"]  # fmt: skip
    knn = [sys.executable, "-m", "geo_ssl.training.evaluation.cli", "knn", "--weights", "random", "--arch",
           "resnet18", "--data", data, "--image-size", "32", "--batch-size", "8", "--k", "3", "--num-workers", "0"]  # fmt: skip
    for cmd, prog in ((pretrain, "geo-pretrain"), ([*knn, "--strict"], "geo-eval")):
        proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=180)
        err = proc.stderr.strip()
        assert proc.returncode == 2 and "\n" not in err, err[-2000:]
        assert err.startswith(f"{prog}: error: shard ") and "train-000000.tar: listed in manifest" in err, err
    out = tmp_path / "knn.json"
    proc = subprocess.run(
        [*knn, "--out", str(out)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["skipped_samples"] == 8  # not 0: the missing shard's 8 locations
    assert "train-000000.tar" in proc.stderr


# ------------------------------------------------------------------ item 18: shards of another build


def test_unlisted_and_replaced_shards_of_another_build_are_left_out(tmp_path, capfd):
    data = _build(tmp_path / "a")
    other = _build(tmp_path / "b", n_locations=40, n_shards=4, seed=7, n_clusters=5)  # 10 per shard
    small = _build(tmp_path / "c", n_locations=6, n_shards=3, seed=9)  # 2 per shard: a smaller whole tar
    shutil.copy(os.path.join(other, "train-000003.tar"), data)  # not in a's manifest
    shutil.copy(os.path.join(other, "train-000001.tar"), data)  # a's name, b's larger shard
    shutil.copy(os.path.join(small, "train-000002.tar"), data)  # a's name, c's smaller whole shard
    loader = pretrain_loader(_cfg(data))
    err = capfd.readouterr().err
    assert "train-000003.tar: not listed in manifest.parquet (another build's shard?); left out" in err
    assert "train-000001.tar: " in err and "train-000002.tar: " in err and "(another build's shard?)" in err
    assert loader.plan.samples == 8 and loader.plan.lost == 16  # only a's own shard 0 is read
    keys = {k for b in loader for k in b["key"]}
    assert len(keys) == 8
    with pytest.raises(GeoSSLError, match=r"another build's shard.*and 2 more shard.*--strict"):
        _eval_keys(data, split="train", strict=True)


def test_a_shard_cut_short_is_still_read_for_what_it_holds(tmp_path):
    """A cut shard (no end-of-archive blocks) differs in size too, but is damage, not another build."""
    data = _build(tmp_path)
    shard = Path(data) / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    keys, ev = _eval_keys(data, split="train")
    assert 16 < len(keys) < 24 and ev.stats.missing > 0
    assert "listed in manifest" not in " ".join(ev.stats.errors)


# ------------------------------------------------------------------ item 15: streams closed at exit

_HELD_TO_EXIT = """
import random, sys
import geo_ssl.training.data.loader as L
cfg = L.LoaderConfig(sys.argv[1], split="train", batch_size=2, image_size=16, num_workers={workers},
                     shuffle_buffer=2)
def stream(loader):
    for epoch in range(3):
        loader.set_epoch(epoch)
        yield from loader
streams = [stream(L.pretrain_loader(cfg)) for _ in range(2)]
for _ in range(13):  # into the second epoch, ending mid-epoch
    for s in streams:
        next(s)
random.held = (streams, L)  # kept by a module cleared after the loader's: closed when its globals are None
"""


@pytest.mark.parametrize("workers", [0, 1])
def test_streams_kept_to_interpreter_exit_end_quietly(tmp_path, workers):
    data = _build(tmp_path)
    code = _HELD_TO_EXIT.replace("{workers}", str(workers))
    proc = subprocess.run(
        [sys.executable, "-c", code, data], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]


# ------------------------------------------------------------------ item 16: explicit split, ranks


def test_loader_config_needs_an_explicit_split(tmp_path):
    data = _build(tmp_path)
    with pytest.raises(GeoSSLError, match="split is required"):
        LoaderConfig(urls=data, batch_size=4)
    assert pretrain_loader(_cfg(data, split="val", batch_size=2)).plan.samples == 6
    assert pretrain_loader(_cfg(data, split="*")).plan.samples == 30  # every split, said so


def test_eval_loader_gives_each_rank_a_disjoint_part(tmp_path):
    data = _build(tmp_path)
    whole, _ = _eval_keys(data, split="train")
    parts = [_eval_keys(data, split="train", rank=r, world_size=2)[0] for r in range(2)]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == sorted(whole)
    assert len(parts[0]) == 16 and len(parts[1]) == 8  # shards 0 and 2, shard 1
    last = eval_loader(data, image_size=S, batch_size=8, num_workers=0, split="train", rank=3, world_size=4)
    assert len(last) == 0 and list(last) == []  # fewer shards than ranks: rank 3 has none
    with pytest.raises(GeoSSLError, match="outside world_size"):
        eval_loader(data, split="train", rank=2, world_size=2)


# ------------------------------------------------------------------ item 17: +tp on single-image samples


def test_tp_method_on_a_views_layout_card_is_refused_in_one_line(tmp_path):
    data = _build(tmp_path / "build")
    card = os.path.join(data, "dataset.json")
    with open(card, "w") as f:
        json.dump({"layout": "views", "splits": {"train": {"samples": 24}}}, f)
    base = [sys.executable, "-m", "geo_ssl.training.trainer.cli", "--data", data, "--out", str(tmp_path / "run"),
            "--arch", "resnet18", "--image-size", "32", "--batch-size", "8", "--num-workers", "0"]  # fmt: skip
    proc = subprocess.run(base, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=180)  # moco+geo+tp
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in err, err[-2000:]
    assert err.startswith("geo-pretrain: error: --method moco+geo+tp: temporal positives do not apply")
    assert card in err and 'layout "views"' in err and err.endswith("use moco+geo")
    from geo_ssl.training.trainer.config import PretrainConfig
    from geo_ssl.training.trainer.preflight import preflight

    preflight(PretrainConfig(data=data, out=str(tmp_path / "run2"), method="moco+geo", batch_size=8))


# ------------------------------------------------ a worker forked while the last epoch's queues still close


def test_an_epoch_leaves_no_queue_thread_ending_when_the_next_one_forks(tmp_path):
    """PyTorch closes a finished epoch's queues without joining their feeder threads; a fork while one of
    them ends can hang the new worker for good on CPython < 3.11.8 (seen once under torchrun, 3 ranks).
    Right after each epoch, none may still be running."""
    import threading

    loader = pretrain_loader(_cfg(_build(tmp_path), num_workers=2))
    for epoch in range(3):
        loader.set_epoch(epoch)
        assert sum(len(b["key"]) for b in loader) == 24
        assert [t for t in threading.enumerate() if t.name == "QueueFeederThread"] == [], epoch
