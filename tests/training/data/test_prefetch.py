"""Prefetch (issue 19, item 2): through moto's S3 server behind the shaping proxy (a first-byte delay per
request), the loader fetches ahead and still gives the batches of local disk, key for key and byte for
byte; with sample_index.parquet a worker fetches only its part of the shards; the byte budget bounds what
is held; a failing part is retried (or fails as a storage error); an abandoned epoch leaves no thread."""

from __future__ import annotations

import os
import threading

import pytest

from geo_ssl.pipeline.shards.options import ShardOptions
from geo_ssl.pipeline.shards.write import write_shards
from geo_ssl.training.data.epoch_plan import Slice
from geo_ssl.training.data.loader import LoaderConfig, ShardReadError, pretrain_loader
from geo_ssl.training.data.prefetch import PartStream, Prefetcher, part_bounds, read_layout
from geo_ssl.training.data.shard_io import read_range
from tests.index_factory import make_index
from tests.net_shaping import ShapingProxy
from tests.s3_support import FaultProxy, WindowFaults, bucket_fs, moto_server

BUCKET = "geo-ssl-prefetch"


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """A write-shards build of 24 locations in small shards, with its sample_index.parquet."""
    tiny = make_index(tmp_path_factory.mktemp("index"), n_locations=24, splits=("train",), size=(96, 72))
    out = tmp_path_factory.mktemp("shards")
    options = ShardOptions(layout="locations", resize=48, shard_bytes=40_000, seed=1, workers=1)
    write_shards(str(tiny.index), str(out), options=options)
    assert (out / "sample_index.parquet").exists() and len(list(out.glob("train-*.tar"))) >= 3
    return out


@pytest.fixture(scope="module")
def s3(build):
    """The build on moto's S3 behind a shaping proxy (20 ms to the first byte, 50 MB/s per connection)."""
    with moto_server(BUCKET) as moto_url, ShapingProxy(moto_url, delay_ms=20, bandwidth=50e6) as proxy:
        fs = bucket_fs(moto_url)
        for name in sorted(os.listdir(build)):
            fs.put_file(str(build / name), f"{BUCKET}/shards/{name}")
        # botocore's own retries off: a 503 reaches the loader's retries
        options = {
            "client_kwargs": {"endpoint_url": proxy.url},
            "config_kwargs": {"retries": {"max_attempts": 0}},
        }
        yield f"s3://{BUCKET}/shards", options, proxy, moto_url


def _cfg(url, options=None, **kw) -> LoaderConfig:
    base = dict(
        split="train", batch_size=4, image_size=16, num_workers=0, shuffle_buffer=8, decode="defer", seed=3
    )
    return LoaderConfig(str(url), storage_options=options, **{**base, **kw})


def _epoch(cfg: LoaderConfig) -> tuple[list[tuple[str, bytes, bytes]], object]:
    loader = pretrain_loader(cfg)
    out = [
        (key, q, k)
        for batch in loader
        for key, q, k in zip(batch["key"], batch["q_jpeg"], batch["k_jpeg"], strict=True)
    ]
    return out, loader.stats


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("geo-ssl-prefetch")]


@pytest.mark.parametrize("workers", [0, 2])
def test_bucket_batches_equal_local_disk(build, s3, workers):
    url, options, proxy, _ = s3
    local, _ = _epoch(_cfg(build, num_workers=workers))
    before = proxy.stats.bytes_sent
    remote, stats = _epoch(_cfg(url, options, num_workers=workers, prefetch_bytes="64K"))
    assert remote == local and len(local) >= 20  # same keys, same JPEG bytes, same order
    assert stats.retries == 0
    tars = sum(f.stat().st_size for f in build.glob("train-*.tar"))
    others = sum(f.stat().st_size for f in build.iterdir() if not f.name.endswith(".tar"))
    # each worker fetched its part of the shards (byte ranges from the sample index), no whole shards
    assert proxy.stats.bytes_sent - before < tars + others + 40_000
    assert not _prefetch_threads()


@pytest.mark.parametrize("mode", ["image epoch", "cache"])
def test_image_epochs_and_the_cache_read_prefetched_bytes_too(build, s3, tmp_path, mode):
    url, options, proxy, _ = s3
    kw = {"epoch_unit": "image"} if mode == "image epoch" else {"cache_dir": str(tmp_path / "cache")}
    local, _ = _epoch(_cfg(build, **kw))
    before = proxy.stats.total_requests
    remote, _ = _epoch(_cfg(url, options, **kw))
    assert remote == local
    if mode == "cache":  # whole shards fetched ahead into the cache, each once
        assert len(list((tmp_path / "cache").glob("*.tar"))) == len(list(build.glob("train-*.tar")))
        again, _ = _epoch(_cfg(url, options, **kw))
        assert again == local
    assert proxy.stats.total_requests > before


def test_without_prefetch_workers_read_past_their_part(build, s3):
    """What the ranges fix: read through the stream, two workers fetch more than the shards' bytes."""
    url, options, proxy, _ = s3
    before = proxy.stats.bytes_sent
    _epoch(_cfg(url, options, num_workers=2, prefetch=0, batch_size=2))
    with_ranges = proxy.stats.bytes_sent
    _epoch(_cfg(url, options, num_workers=2, batch_size=2))
    assert proxy.stats.bytes_sent - with_ranges < with_ranges - before


def test_byte_budget_bounds_what_is_held(build, s3):
    url, options, _, _ = s3
    shards = sorted(f"{url}/{f.name}" for f in build.glob("train-*.tar"))
    counts = [_samples(build / os.path.basename(s)) for s in shards]
    layout = read_layout(shards, counts, options)
    assert layout is not None and all(b is not None for b in layout.bounds)
    slices = [Slice(i, 1, n) for i, n in enumerate(counts)]

    def fetch(s: int, lo: int, hi: int | None) -> bytes:
        return read_range(shards[slices[s].shard], lo, hi, options)

    def held_at_most(budget: int) -> int:
        ranges = [part_bounds(*layout.byte_range(sl)[:2], budget) for sl in slices]
        ahead = Prefetcher(slices, ranges, fetch, ahead=8, budget=budget)
        try:
            for sl in slices:
                with PartStream(ahead, ahead.take(sl)) as stream:
                    got = stream.read()
                lo, hi, _ = layout.byte_range(sl)
                assert got == (build / os.path.basename(shards[sl.shard])).read_bytes()[lo:hi]
        finally:
            ahead.close()
        assert ahead.held == 0
        return ahead.peak_held

    largest = max(hi - lo for sl in slices for lo, hi in [layout.byte_range(sl)[:2]])
    assert held_at_most(1_000) <= largest  # a budget below one part: one part at a time, still every byte
    assert held_at_most(1 << 30) > largest  # the bound is what stopped it: unbounded, it fetches ahead
    assert not _prefetch_threads()


def _samples(tar) -> int:
    import tarfile

    with tarfile.open(tar) as f:
        return len({m.name.split(".", 1)[0] for m in f.getmembers()})


def test_a_failing_part_is_retried(build, s3):
    url, options, proxy, _ = s3
    local, _ = _epoch(_cfg(build))
    proxy.faults.fail("train-000001.tar", times=2)
    try:
        remote, stats = _epoch(_cfg(url, options))
    finally:
        proxy.faults.clear()
    assert remote == local
    assert stats.retries == 2


def test_faults_of_every_kind_on_parts_lose_and_repeat_nothing(build, s3):
    """500 (s3fs gives up at once), 503 SlowDown, a body cut in half, a reset connection: on prefetched
    parts, fetched again whole, nothing lost or repeated."""
    url, options, _, moto_url = s3
    local, _ = _epoch(_cfg(build))
    with FaultProxy(moto_url, WindowFaults()) as proxy:
        proxy.faults.fail(after=1, count=4)
        remote, _ = _epoch(_cfg(url, {**options, "client_kwargs": {"endpoint_url": proxy.url}}))
    assert proxy.faults.failed == 4 and remote == local


def test_a_part_that_keeps_failing_is_a_storage_error(build, s3):
    url, options, proxy, _ = s3
    proxy.faults.fail("train-000001.tar")
    try:
        with pytest.raises(ShardReadError, match=r"train-000001\.tar: reading bytes") as err:
            _epoch(_cfg(url, options, read_attempts=2))
    finally:
        proxy.faults.clear()
    assert err.value.exit_code == 3
    assert not _prefetch_threads()


def test_an_abandoned_epoch_leaves_no_thread(build, s3):
    url, options, _, _ = s3
    loader = pretrain_loader(_cfg(url, options, prefetch_bytes="8K"))
    it = iter(loader)
    next(it)
    assert _prefetch_threads()  # fetching ahead while the first batch is out
    it.close()
    assert not _prefetch_threads()


def test_geo_pretrain_prefetch_flags_reach_the_loader(build):
    from geo_ssl.training.trainer.cli import build_parser
    from geo_ssl.training.trainer.config import config_from_args
    from geo_ssl.training.trainer.feed import make_loader

    def source(*flags: str):
        argv = ["--data", str(build), "--method", "moco", "--batch-size", "4", "--num-workers", "0",
                "--data-path", "cpu", *flags]  # fmt: skip
        return make_loader(config_from_args(build_parser().parse_args(argv)), 0, 1)._spec.source

    assert source().prefetch == 0  # local disk: nothing to hide
    chosen = source("--prefetch", "2", "--prefetch-bytes", "1M")
    assert (chosen.prefetch, chosen.prefetch_bytes) == (2, 1 << 20)
    assert chosen.layout is not None and all(b is not None for b in chosen.layout.bounds)
