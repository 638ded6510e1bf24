"""The streaming loader on real shard files (tests/shard_fixtures.py) and a real S3 server (moto)."""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from geo_ssl.training.data.augment import IMAGENET_MEAN, IMAGENET_STD
from geo_ssl.training.data.loader import (
    CorruptSampleError,
    LoaderConfig,
    eval_loader,
    pretrain_loader,
    resolve_shards,
    shard_counts,
    views_loader,
)
from geo_ssl.training.data.selection import choose_views
from tests.s3_support import bucket_fs, moto_server
from tests.shard_fixtures import make_sample, make_tiny_shards, write_shard

S = 32  # output size used throughout; stored views have shorter side 64


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("shards")
    make_tiny_shards(folder, n_locations=24, n_shards=3, max_views=5)
    return str(folder)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("uneven")
    make_tiny_shards(folder, n_locations=30, n_shards=3, uneven=True)
    return str(folder)


def _samples(folder: str) -> dict[str, dict]:
    out = {}
    for s in wds.WebDataset(resolve_shards(folder), shardshuffle=False):
        meta = json.loads(s["json"])
        views = []
        for v in meta["views"]:
            img = Image.open(io.BytesIO(s[v["field"]])).convert("RGB")
            w, h = img.size
            side = min(w, h)
            img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
            arr = np.asarray(img.resize((S, S), Image.BILINEAR), dtype=np.float32) / 255.0
            views.append(torch.from_numpy(((arr - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)).float())
        out[s["__key__"]] = {"meta": meta, "cls": int(s["cls"]), "views": torch.stack(views)}
    return out


def _nearest_view(image: torch.Tensor, views: torch.Tensor) -> int:
    return int(((views - image[None]) ** 2).mean(dim=(1, 2, 3)).argmin())


def _cfg(urls, **kw) -> LoaderConfig:
    base = dict(split="train", batch_size=4, image_size=S, num_workers=0, shuffle_buffer=8, seed=0)
    base.update(kw)
    return LoaderConfig(urls=urls, **base)


def test_pairs_shapes_labels_and_temporal_views(shards):
    truth = _samples(shards)
    loader = pretrain_loader(_cfg(shards, augment=False, epoch_samples=48))
    assert len(loader) == 12
    seen_multi = seen_single = 0
    for batch in loader:
        q, k, geo, category, keys = (batch[n] for n in ("q", "k", "geo_cluster", "category", "key"))
        assert q.shape == k.shape == (4, 3, S, S) and q.dtype == k.dtype == torch.float32
        assert geo.dtype == category.dtype == torch.int64 and len(keys) == 4
        for i, key in enumerate(keys):
            t = truth[key]
            assert int(geo[i]) == t["cls"] == t["meta"]["cluster"]
            assert int(category[i]) == t["meta"]["category_index"]
            n = len(t["meta"]["views"])
            qi, ki = _nearest_view(q[i], t["views"]), _nearest_view(k[i], t["views"])
            if n == 1:
                seen_single += 1
                assert torch.equal(q[i], k[i])  # the same image twice
            else:
                seen_multi += 1
                assert qi != ki  # another view of the same place...
                stamps = [v["timestamp"] for v in t["meta"]["views"]]
                assert stamps[qi] != stamps[ki]  # ...taken at another time
    assert seen_multi > 10 and seen_single > 0
    assert loader.stats.samples == 48 and loader.stats.corrupt == 0


def test_temporal_off_gives_one_view_twice(shards):
    loader = pretrain_loader(_cfg(shards, augment=False, temporal=False, epoch_samples=16))
    for batch in loader:
        assert torch.equal(batch["q"], batch["k"])


def test_augmented_pairs_differ_and_are_reproducible(shards):
    cfg = _cfg(shards, epoch_samples=8)
    first = [b["q"] for b in pretrain_loader(cfg)]
    again = [b["q"] for b in pretrain_loader(cfg)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    loader = pretrain_loader(cfg)
    loader.set_epoch(1)
    other = [b["q"] for b in loader]
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    batch = next(iter(pretrain_loader(cfg)))
    assert not torch.equal(batch["q"], batch["k"])


def test_choose_views_rules():
    import random

    rng = random.Random(0)
    for _ in range(200):
        pair = choose_views(rng, 5, 2, temporal=True)
        assert len(set(pair)) == 2
        many = choose_views(rng, 3, 5, temporal=True)
        assert sorted(set(many)) == [0, 1, 2] and len(many) == 5  # every timestamp before repeats
        assert choose_views(rng, 1, 2, temporal=True) == [0, 0]
        assert len(set(choose_views(rng, 5, 3, temporal=False))) == 1


def test_views_loader_gives_n_distinct_views(shards):
    truth = _samples(shards)
    loader = views_loader(_cfg(shards, augment=False, epoch_samples=24), n_views=3)
    batches = list(loader)
    assert len(batches) == 6
    for batch in batches:
        views, geo, keys = batch["views"], batch["geo_cluster"], batch["key"]
        assert views.shape == (4, 3, 3, S, S)
        for i, key in enumerate(keys):
            stored = truth[key]["views"]
            picked = {_nearest_view(views[i, j], stored) for j in range(3)}
            assert len(picked) == min(3, len(stored))
            assert int(geo[i]) == truth[key]["cls"]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_rank_gets_the_same_number_of_batches_on_uneven_shards(uneven, num_workers):
    sizes = [s for s, _ in shard_counts(resolve_shards(uneven))]
    assert len(set(sizes)) == 3  # really uneven: 5, 10, 15 samples
    counts = []
    for rank in range(2):
        loader = pretrain_loader(_cfg(uneven, num_workers=num_workers), rank=rank, world_size=2)
        counts.append((len(loader), sum(1 for _ in loader)))
    # 30 locations / (2 ranks x 4) = 3 steps each, even though 3 shards < 2 ranks x 2 workers.
    assert counts == [(3, 3), (3, 3)]


def test_epoch_length_without_manifest_is_counted(uneven, tmp_path):
    for name in os.listdir(uneven):
        if name.endswith(".tar"):
            os.symlink(os.path.join(uneven, name), tmp_path / name)
    assert len(pretrain_loader(_cfg(str(tmp_path)))) == len(pretrain_loader(_cfg(uneven))) == 7


def test_split_filter_and_patterns(tmp_path):
    make_tiny_shards(tmp_path, n_locations=6, n_shards=2, split="train")
    make_tiny_shards(tmp_path, n_locations=4, n_shards=1, split="val")
    assert len(resolve_shards(str(tmp_path))) == 3
    assert [os.path.basename(u) for u in resolve_shards(str(tmp_path), split="val")] == ["val-000000.tar"]
    assert len(resolve_shards(str(tmp_path / "train-{000000..000001}.tar"))) == 2
    with pytest.raises(Exception, match="no shards"):
        resolve_shards(str(tmp_path), split="test")


@pytest.fixture()
def corrupt_shards(tmp_path) -> str:
    """Two good shards and one holding a truncated JPEG, a bad json and a missing view member."""
    import random

    make_tiny_shards(tmp_path, n_locations=8, n_shards=2)
    rng = random.Random(5)
    bad_jpeg = make_sample("train", 100, 1, 64, 0, 6, 1, rng)
    bad_jpeg["00.jpg"] = bad_jpeg["00.jpg"][:200]
    bad_json = make_sample("train", 101, 2, 64, 1, 6, 2, rng)
    bad_json["json"] = b"{not json"
    missing = make_sample("train", 102, 3, 64, 2, 6, 3, rng)
    del missing["01.jpg"]
    good = [make_sample("train", 103 + i, 2, 64, i % 6, 6, i % 4, rng) for i in range(3)]
    write_shard(str(tmp_path / "train-000002.tar"), [good[0], bad_jpeg, good[1], bad_json, missing, good[2]])
    (tmp_path / "manifest.parquet").unlink()  # it does not list the added shard; counted from the headers
    return str(tmp_path)


def test_corrupt_samples_are_skipped_and_counted_without_sleeping(corrupt_shards):
    cfg = _cfg(corrupt_shards, epoch_samples=40, temporal=False)
    loader = pretrain_loader(cfg)
    start = time.perf_counter()
    keys = [k for batch in loader for k in batch["key"]]
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0  # webdataset's warn_and_continue would sleep 0.5 s per error
    assert len(keys) == 40
    assert not {"train-airport_100", "train-airport_hangar_101"} & set(keys)
    assert loader.stats.corrupt >= 2
    text = " ".join(loader.stats.errors)
    assert "train-000002.tar" in text and "train-airport_100" in text and "train-airport_hangar_101" in text


def test_strict_raises_naming_shard_and_key(corrupt_shards):
    cfg = _cfg(corrupt_shards, epoch_samples=40, strict=True, shuffle_buffer=0)
    with pytest.raises(CorruptSampleError, match=r"train-000002\.tar.*key train-"):
        for _ in pretrain_loader(cfg):
            pass


def test_truncated_shard_is_skipped(tmp_path):
    make_tiny_shards(tmp_path, n_locations=9, n_shards=3)
    path = tmp_path / "train-000001.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])  # cut inside a member
    loader = eval_loader(str(tmp_path), image_size=S, batch_size=64, num_workers=0, all_views=False)
    keys = [k for batch in loader for k in batch["key"]]
    assert 6 <= len(keys) < 9 and len(set(keys)) == len(keys)
    assert loader.stats.corrupt >= 1 and "train-000001.tar" in " ".join(loader.stats.errors)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_loader_is_deterministic_and_complete(shards, num_workers):
    truth = _samples(shards)
    n_views = sum(len(t["meta"]["views"]) for t in truth.values())
    loader = eval_loader(shards, image_size=S, batch_size=16, num_workers=num_workers)
    first = list(loader)
    second = list(loader)
    assert len(first) == len(loader)
    keys = [k for batch in first for k in batch["key"]]
    assert len(keys) == len(set(keys)) == n_views
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a["image"], b["image"]) and a["key"] == b["key"]
    for batch in first:
        images, category, geo, ks = (batch[n] for n in ("image", "category", "geo_cluster", "key"))
        assert images.dtype == torch.float32 and images.shape[1:] == (3, S, S)
        for i, key in enumerate(ks):
            loc, view = key.split("/")
            assert (
                int(geo[i]) == truth[loc]["cls"] and int(category[i]) == truth[loc]["meta"]["category_index"]
            )
            assert _nearest_view(images[i], truth[loc]["views"]) == int(view)
    firsts = eval_loader(shards, image_size=S, batch_size=16, num_workers=num_workers, all_views=False)
    assert sorted(k for batch in firsts for k in batch["key"]) == sorted(truth)


@pytest.fixture(scope="module")
def s3_shards(shards):
    """The same shards on a real S3 endpoint (moto server on loopback)."""
    with moto_server("geo-ssl-loader-test") as endpoint:
        fs = bucket_fs(endpoint)
        for name in sorted(os.listdir(shards)):
            fs.put_file(os.path.join(shards, name), f"geo-ssl-loader-test/shards/{name}")
        yield "s3://geo-ssl-loader-test/shards", {"client_kwargs": {"endpoint_url": endpoint}}


def test_s3_reads_the_same_samples_as_local(shards, s3_shards):
    url, options = s3_shards
    local = list(eval_loader(shards, image_size=S, batch_size=32, num_workers=0))
    remote_loader = eval_loader(
        f"{url}/train-{{000000..000002}}.tar",
        image_size=S,
        batch_size=32,
        num_workers=0,
        storage_options=options,
    )
    remote = list(remote_loader)
    assert len(remote) == len(local) == len(remote_loader)
    for a, b in zip(local, remote, strict=True):
        assert a["key"] == b["key"] and torch.equal(a["image"], b["image"])
    # Training from the bucket folder (manifest read from S3), in worker processes.
    cfg = _cfg(url, storage_options=options, num_workers=2, augment=False)
    loader = pretrain_loader(cfg)
    assert len(loader) == 6
    keys = [k for batch in loader for k in batch["key"]]
    assert len(keys) == 24 and set(keys) <= {x.split("/")[0] for batch in local for x in batch["key"]}
