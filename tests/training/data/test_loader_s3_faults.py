"""Streaming from a real S3 server (moto, loopback) behind a fault-injecting proxy: retries at the byte
offset, the failure message after the retries, and the local shard cache (issue 9 item 4)."""

from __future__ import annotations

import collections
import os

import pytest

from geo_ssl.training.data.loader import LoaderConfig, ShardReadError, eval_loader, pretrain_loader
from geo_ssl.training.data.shard_cache import ShardCache, parse_size
from tests.s3_support import FaultProxy, WindowFaults, bucket_fs, moto_server
from tests.shard_fixtures import make_tiny_shards

BUCKET = "geo-ssl-faults"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server holding 3 shards (24 locations) + manifest, and a fault proxy in front of it."""
    local = tmp_path_factory.mktemp("s3src")
    make_tiny_shards(local, n_locations=24, n_shards=3, image_size=24)
    with moto_server(BUCKET) as moto_url, FaultProxy(moto_url, WindowFaults()) as proxy:
        fs = bucket_fs(moto_url)
        for name in sorted(os.listdir(local)):
            fs.put_file(os.path.join(local, name), f"{BUCKET}/shards/{name}")
        # Small blocks: every shard takes several ranged GETs, so faults land in the middle of shards.
        # botocore's own retries off (s3fs still retries dropped connections and SlowDown itself).
        options = {
            "client_kwargs": {"endpoint_url": proxy.url},
            "default_block_size": 4096,
            "config_kwargs": {"retries": {"max_attempts": 0}},
        }
        truth = sorted(f"train-{n}" for n in _keys(local))
        yield f"s3://{BUCKET}/shards", options, proxy.faults, truth


def _keys(folder) -> list[str]:
    import tarfile

    out = set()
    for name in os.listdir(folder):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(folder, name)) as tar:
                out |= {m.name.split(".", 1)[0].removeprefix("train-") for m in tar.getmembers()}
    return sorted(out)


def _cfg(url: str, options: dict, **kw) -> LoaderConfig:
    base = dict(
        split="train",
        batch_size=4,
        image_size=16,
        num_workers=0,
        shuffle_buffer=4,
        decode="defer",
        storage_options=options,
    )
    base.update(kw)
    return LoaderConfig(urls=url, **base)


def test_faults_mid_epoch_lose_and_repeat_nothing(s3, capfd):
    url, options, proxy, truth = s3
    # the stream path (prefetch off: its 4 KB blocks put faults mid-shard); prefetched parts: test_prefetch.py
    loader = pretrain_loader(_cfg(url, options, prefetch=0))
    # 8 failing GETs in a row a few GETs into the epoch: 500 InternalError (s3fs gives up at once), 503
    # SlowDown, body cut in half, connection reset (s3fs retries these itself); the loader re-opens the
    # shard at the byte offset it had reached and goes on
    proxy.fail(after=5, count=8)
    before = proxy.seen
    keys = [k for b in loader for k in b["key"]]
    assert proxy.failed == 8 and proxy.seen - before > 13
    assert sorted(keys) == truth  # every sample exactly once
    assert loader.stats.retries >= 1 and loader.stats.corrupt == 0  # an I/O error is not bad data
    assert "retry in" in capfd.readouterr().err
    # the eval loader reads through the same retrying source
    proxy.fail(after=3, count=4, modes=("500", "drop"))
    ev = eval_loader(
        url, image_size=16, batch_size=64, num_workers=0, all_views=False, storage_options=options
    )
    assert sorted(k for b in ev for k in b["key"]) == truth and ev.stats.retries >= 1


def test_storage_down_fails_naming_the_shard(s3):
    url, options, proxy, _ = s3
    proxy.fail(after=0, count=10**6, modes=("500",))
    try:
        with pytest.raises(
            ShardReadError, match=r"shard s3://geo-ssl-faults/shards/train-00000\d\.tar: .*after 2 attempts"
        ):
            list(pretrain_loader(_cfg(url, options, read_attempts=2)))
    finally:
        proxy.fail(after=0, count=0)


def test_shard_cache_serves_the_second_epoch_and_stays_under_its_cap(s3, tmp_path, capfd):
    url, options, proxy, _ = s3
    cache = tmp_path / "cache"
    cfg = _cfg(url, options, cache_dir=str(cache), cache_limit="1G")
    loader = pretrain_loader(cfg)
    first = [k for b in loader for k in b["key"]]
    names = sorted(n for n in os.listdir(cache) if not n.startswith("listing-"))  # + the shard list kept
    assert len(names) == 3 and all(n.endswith(".tar") and "-train-00000" in n for n in names)
    before = proxy.seen
    # every GET of a shard fails now: the cache alone serves epoch 2 (size and ETag checked, here from
    # the folder listing s3fs holds)
    proxy.fail(after=0, count=10**6, modes=("503",))
    try:
        second = [k for b in loader for k in b["key"]]
    finally:
        proxy.fail(after=0, count=0)
    assert proxy.seen == before and sorted(second) == sorted(first) and len(set(second)) == 24
    # the store answers nothing about the shards (HEAD included), a fresh client with no listing: the
    # cached copies are used, with one line each
    proxy.matches = lambda method, path: ".tar" in path
    proxy.fail(after=0, count=10**6, modes=("500",))
    fresh = {**options, "skip_instance_cache": True}
    try:
        shards = url + "/train-{000000..000002}.tar"
        third = [
            k
            for b in pretrain_loader(_cfg(shards, fresh, cache_dir=str(cache), read_attempts=1))
            for k in b["key"]
        ]
    finally:
        proxy.fail(after=0, count=0)
        proxy.matches = lambda method, path: method == "GET" and ".tar" in path
    assert sorted(third) == sorted(first) and capfd.readouterr().err.count("using the cached copy") == 3
    # a cap below the data: least recently used shards are evicted, the folder stays under the cap
    small = tmp_path / "small"
    limit = 150_000  # two of the three shards (72 + 72 + 61 KB)
    loader = pretrain_loader(_cfg(url, options, cache_dir=str(small), cache_limit=limit))
    keys = [k for b in loader for k in b["key"]]
    assert len(set(keys)) == 24
    sizes = [os.path.getsize(small / n) for n in os.listdir(small) if n.endswith(".tar")]
    assert 1 <= len(sizes) < 3 and sum(sizes) <= limit
    assert not [n for n in os.listdir(small) if n.startswith(".tmp-")]


def test_cache_names_cannot_collide_between_data_sets(tmp_path):
    cache = ShardCache(str(tmp_path), "1M")
    a = cache.name_for("s3://bucket/fmow/train-000000.tar", 100, "etag1")
    b = cache.name_for("s3://bucket/geoimagenet/train-000000.tar", 100, "etag1")
    c = cache.name_for("s3://bucket/fmow/train-000000.tar", 100, "etag2")  # replaced in the bucket
    assert len({a, b, c}) == 3 and all(n.endswith("-train-000000.tar") for n in (a, b, c))
    assert parse_size("20G") == 20 << 30 and parse_size("512M") == 512 << 20 and parse_size(1000) == 1000
    counts = collections.Counter(parse_size(s) > 0 for s in ("1K", "1.5T", "3 GB"))
    assert counts[True] == 3


def test_geo_pretrain_cache_flags_reach_the_loader(s3, tmp_path):
    from geo_ssl.pipeline.common.errors import GeoSSLError
    from geo_ssl.training.trainer.cli import build_parser
    from geo_ssl.training.trainer.config import config_from_args
    from geo_ssl.training.trainer.feed import make_loader

    url, options, _, _ = s3
    cache = tmp_path / "cache"
    argv = ["--data", url, "--method", "moco", "--batch-size", "8", "--num-workers", "0", "--data-path", "cpu",
            "--cache-dir", str(cache), "--cache-limit", "1G"]  # fmt: skip
    cfg = config_from_args(build_parser().parse_args(argv))
    assert (cfg.cache_dir, cfg.cache_limit) == (str(cache), "1G")
    import fsspec.config

    saved = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = {"client_kwargs": options["client_kwargs"]}  # what FSSPEC_S3='{...}' sets
    try:
        loader = make_loader(cfg, 0, 1)
        keys = [k for b in loader for k in b["key"]]
    finally:
        if saved is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved
    assert len(set(keys)) == 24 and len([n for n in os.listdir(cache) if n.endswith(".tar")]) == 3
    bad = config_from_args(build_parser().parse_args([*argv[:-1], "lots"]))
    with pytest.raises(GeoSSLError, match="cache limit 'lots': not a size"):
        make_loader(bad, 0, 1)
