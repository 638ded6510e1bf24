"""`--epoch-unit image` (GASSL's epoch: each location once per view) and `--crop gassl` (GASSL's +TP crop)."""

from __future__ import annotations

import collections
import random

import pytest

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.data.epoch_unit import ShardViews, anchored_views, samples_of, shard_views
from geo_ssl.training.data.gassl_crop import GasslTpAugment, augment_for
from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader
from geo_ssl.training.data.selection import choose_views
from geo_ssl.training.data.shard_list import resolve_shards, shard_counts
from tests.shard_fixtures import make_tiny_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[str, dict[str, int]]:
    """3 uneven shards of 18 locations with 1..5 views; the true view count of every location."""
    import json

    import webdataset as wds

    folder = tmp_path_factory.mktemp("unit")
    make_tiny_shards(folder, n_locations=18, n_shards=3, uneven=True, image_size=16, max_views=5)
    truth = {
        s["__key__"]: len(json.loads(s["json"])["views"])
        for s in wds.WebDataset(resolve_shards(str(folder)), shardshuffle=False)
    }
    return str(folder), truth


def _cfg(urls: str, batch: int, **kw) -> LoaderConfig:
    base = dict(
        split="train",
        batch_size=batch,
        image_size=16,
        num_workers=0,
        shuffle_buffer=8,
        seed=0,
        decode="defer",
    )
    base.update(kw)
    return LoaderConfig(urls=urls, **base)


def _epoch(cfg: LoaderConfig, world: int, epoch: int) -> list[str]:
    keys = []
    for rank in range(world):
        loader = pretrain_loader(cfg, rank=rank, world_size=world)
        loader.set_epoch(epoch)
        keys += [k for b in loader for k in b["key"]]
    return keys


def _batch_dividing(total: int, world: int) -> int:
    return next(b for b in range(9, 0, -1) if total % (b * world) == 0)


@pytest.mark.parametrize(("world", "workers"), [(1, 0), (2, 2)])
def test_image_epoch_draws_each_location_once_per_view(shards, world, workers):
    folder, truth = shards
    total = sum(truth.values())
    assert total > 2 * len(truth)  # views differ per location, so the two units differ
    batch = _batch_dividing(total, world)
    cfg = _cfg(folder, batch, epoch_unit="image", num_workers=workers)
    loader = pretrain_loader(cfg, 0, world)
    assert len(loader) * batch * world == total  # steps count images, not locations
    e0 = _epoch(cfg, world, 0)
    assert collections.Counter(e0) == truth  # draws proportional to views: exactly n_views each
    e1 = _epoch(cfg, world, 1)
    assert collections.Counter(e1) == truth and e1 != e0  # every epoch, in another (seed, epoch) order
    assert _epoch(cfg, world, 0) == e0


def test_location_epoch_is_unchanged(shards):
    folder, truth = shards
    keys = _epoch(_cfg(folder, 6), 1, 0)
    assert collections.Counter(keys) == dict.fromkeys(truth, 1)


def test_view_positions_map_to_samples():
    sv = ShardViews(("a", "b", "c", "d"), (3, 1, 4, 2))  # positions a:0-2 b:3 c:4-7 d:8-9
    assert samples_of(sv, 0, 10) == (0, 4, {"a": range(3), "b": range(1), "c": range(4), "d": range(2)})
    assert samples_of(sv, 2, 6) == (0, 3, {"a": range(2, 3), "b": range(1), "c": range(2)})
    assert samples_of(sv, 5, 9) == (2, 4, {"c": range(1, 4), "d": range(1)})  # c cut: keeps its view numbers
    assert samples_of(sv, 10, 10) == (0, 0, {})


def test_every_view_is_the_anchor_once_per_image_epoch(shards):
    """GASSL: each stored image is the anchor (query) exactly once per epoch; the key is another view."""
    folder, truth = shards
    total = sum(truth.values())
    batch = _batch_dividing(total, 2)
    anchors, pairs = collections.Counter(), 0
    for rank in range(2):
        loader = pretrain_loader(_cfg(folder, batch, epoch_unit="image", num_workers=2), rank, 2)
        loader.set_epoch(3)
        for b in loader:
            for key, q, k in zip(b["key"], b["q_jpeg"], b["k_jpeg"], strict=True):
                anchors[(key, q)] += 1
                pairs += 1
                assert (q != k) == (truth[key] > 1)  # +tp: the key is another timestamp where there is one
    assert pairs == total and len(anchors) == total  # every (location, view) is the anchor exactly once
    assert set(anchors.values()) == {1}


def test_anchor_rule():
    rng = random.Random(0)
    assert anchored_views(rng, 5, 2, True, 3)[0] == 3
    assert anchored_views(rng, 5, 2, False, 4) == [4, 4]  # moco, moco+geo: the anchor twice
    assert anchored_views(rng, 2, 4, True, 1)[:2] == [1, 0]
    a, b = random.Random(7), random.Random(7)
    assert anchored_views(a, 5, 2, True, None) == choose_views(b, 5, 2, True)  # location epochs unchanged


def test_view_counts_from_sample_index_agree_with_the_headers(shards, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder, truth = shards
    urls = resolve_shards(folder)
    counts = shard_counts(urls)
    from_headers = shard_views(urls, counts)
    assert {k: v for sv in from_headers for k, v in zip(sv.keys, sv.views, strict=True)} == truth
    # A sample index beside the shards is used when it agrees with the manifest (here: reversed rows
    # with offsets, to show the order comes from the offsets, not the row order).
    rows = [
        {"shard": u.rsplit("/", 1)[1], "key": k, "views": v, "offset": i}
        for u, sv in zip(urls, from_headers, strict=True)
        for i, (k, v) in enumerate(zip(sv.keys, sv.views, strict=True))
    ]
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    pq.write_table(pa.Table.from_pylist(rows[::-1]), copy / "sample_index.parquet")
    curls = resolve_shards(str(copy))
    assert shard_views(curls, shard_counts(curls)) == from_headers


def test_gassl_crop_is_drawn_inside_the_central_square_at_scale_008_to_1():
    aug = augment_for("gassl", 224)
    assert isinstance(aug, GasslTpAugment) and aug.scale == (0.08, 1.0)
    assert augment_for("moco", 224).scale == (0.2, 1.0)
    assert augment_for("moco", 64, 0.4).scale == augment_for("gassl", 64, 0.4).scale == (0.4, 1.0)
    assert isinstance(augment_for("gassl", 64, 0.4), GasslTpAugment)
    with pytest.raises(GeoSSLError, match="crop_scale"):
        augment_for("moco", 64, 1.5)
    rng = random.Random(0)
    fractions = []
    for _ in range(400):
        x, y, w, h = aug.sample(rng, 300, 100).box  # central square: x in [100, 200]
        assert 100 <= x and x + w <= 200 and 0 <= y and y + h <= 100
        fractions.append(w * h / 100**2)
    assert min(fractions) < 0.2 <= max(fractions)  # below MoCo-v2's 0.2 lower bound: GASSL's 0.08
    assert min(fractions) >= 0.06  # 0.08 up to rounding of a 100-px square


def test_pretrain_config_reaches_the_loader(shards):
    from geo_ssl.training.trainer.config import config_from_dict
    from geo_ssl.training.trainer.feed import make_loader

    folder, truth = shards
    total = sum(truth.values())
    b = _batch_dividing(total, 1)
    base = {"data": folder, "batch_size": b, "num_workers": 0, "data_path": "cpu", "crop": "gassl"}
    assert len(make_loader(config_from_dict({**base, "epoch_unit": "image"}), 0, 1)) == total // b
    assert len(make_loader(config_from_dict(base), 0, 1)) == len(truth) // b
