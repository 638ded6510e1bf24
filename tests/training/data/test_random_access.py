"""Random access over sample_index.parquet (issue 19, item 6): the map-style dataset's items equal the
streaming eval loader's for the same keys, on a build made by write-shards, locally and from the moto
S3 server (ranged reads retried through a fault proxy); a DistributedSampler drives it through
DataLoader workers; a missing index or split is one line."""

from __future__ import annotations

import collections
import os
import pickle
import re
import shutil
import tarfile

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.retry import StorageError
from geo_ssl.pipeline.shards.options import ShardOptions
from geo_ssl.pipeline.shards.write import write_shards
from geo_ssl.training.data.loader import eval_loader
from geo_ssl.training.data.random_access import SampleIndexDataset
from geo_ssl.training.data.tar_stream import CorruptSampleError
from tests.index_factory import make_index
from tests.s3_support import FaultProxy, KeyFaults, bucket_fs, moto_server

BUCKET = "geo-ssl-random-access"
OPTS = {"resize": 64, "shard_bytes": 20_000, "seed": 1, "workers": 1}
SIZE = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_index(tmp_path_factory.mktemp("tiny"), n_locations=10)


def _build(tiny, folder, layout: str):
    write_shards(str(tiny.index), str(folder), options=ShardOptions(layout=layout, **OPTS))
    return folder


@pytest.fixture(scope="module")
def locations(tiny, tmp_path_factory):
    return _build(tiny, tmp_path_factory.mktemp("locations"), "locations")


@pytest.fixture(scope="module")
def views(tiny, tmp_path_factory):
    return _build(tiny, tmp_path_factory.mktemp("views"), "views")


@pytest.fixture(scope="module")
def s3(locations):
    """The locations build on moto's S3 behind a proxy that fails chosen GETs with 503."""
    with moto_server(BUCKET) as moto_url, FaultProxy(moto_url, KeyFaults()) as proxy:
        fs = bucket_fs(moto_url)
        for name in sorted(os.listdir(locations)):
            if os.path.isfile(locations / name):
                fs.put_file(str(locations / name), f"{BUCKET}/shards/{name}")
        # botocore's own retries off: a 503 reaches the dataset's retries
        options = {
            "client_kwargs": {"endpoint_url": proxy.url},
            "config_kwargs": {"retries": {"max_attempts": 0}},
        }
        yield f"s3://{BUCKET}/shards", options, proxy.faults


def _streamed(url, options: dict | None = None) -> dict[str, tuple[torch.Tensor, int, int]]:
    """The eval loader's items (every view) by key."""
    out = {}
    loader = eval_loader(
        str(url), image_size=SIZE, batch_size=5, num_workers=0, split="train", storage_options=options
    )
    for batch in loader:
        for j, key in enumerate(batch["key"]):
            out[key] = (batch["image"][j], int(batch["category"][j]), int(batch["geo_cluster"][j]))
    return out


def _assert_same(ds: SampleIndexDataset, streamed: dict) -> None:
    assert len(ds) == len(streamed) == len(set(ds.keys)) and sorted(ds.keys) == sorted(streamed)
    for i, key in enumerate(ds.keys):
        item = ds[i]
        image, category, cluster = streamed[key]
        assert item["key"] == key and (item["category"], item["geo_cluster"]) == (category, cluster)
        assert item["image"].dtype == torch.float32 and torch.equal(item["image"], image)
    assert len({c for _, c, _ in streamed.values()}) > 1  # labels that could be mixed up


def _tar_member(folder, key: str) -> bytes:
    """An item key's JPEG straight from the tars: `{key}/{NN}` is member `{key}.{NN}.jpg`, views layout
    `{key}/jpg` is `{key}.jpg`."""
    sample, view = key.rsplit("/", 1)
    name = f"{sample}.{view}.jpg" if view != "jpg" else f"{sample}.jpg"
    for tar_path in sorted(folder.glob("train-*.tar")):
        with tarfile.open(tar_path) as tar:
            if name in tar.getnames():
                return tar.extractfile(name).read()
    raise KeyError(name)


@pytest.mark.parametrize("layout", ["locations", "views"])
def test_items_equal_the_eval_loaders_for_the_same_keys(layout, request) -> None:
    folder = request.getfixturevalue(layout)
    ds = SampleIndexDataset(folder, split="train", image_size=SIZE)
    _assert_same(ds, _streamed(folder))
    suffixes = {k.rsplit("/", 1)[1] for k in ds.keys}
    assert (suffixes == {"jpg"}) if layout == "views" else ("01" in suffixes)  # one item per stored view
    assert torch.equal(ds[-1]["image"], ds[len(ds) - 1]["image"])
    with pytest.raises(IndexError):
        ds[len(ds)]
    raw = SampleIndexDataset(folder, split="train", transform=None)
    for i in (0, len(raw) - 1):
        item = raw[i]
        assert "image" not in item and item["jpeg"] == _tar_member(folder, item["key"])


def test_items_from_s3_equal_the_streamed_ones_through_retried_ranged_reads(s3) -> None:
    url, options, faults = s3
    ds = SampleIndexDataset(url, split="train", image_size=SIZE, storage_options=options)
    streamed = _streamed(url, options)
    _assert_same(ds, streamed)
    # two 503s on the next shard GETs: retried, the same item
    faults.fail(".tar", times=2)
    try:
        assert torch.equal(ds[3]["image"], streamed[ds.keys[3]][0]) and faults.failed[".tar"] == 2
        # storage that keeps failing: one line naming the shard, a StorageError (exit 3), not bad data
        faults.fail(".tar", times=-1)
        quick = SampleIndexDataset(
            url, split="train", image_size=SIZE, storage_options=options, read_attempts=2
        )
        with pytest.raises(StorageError) as err:
            quick[0]
        assert "train-000000.tar" in str(err.value) and "\n" not in str(err.value)
        assert err.value.exit_code == 3
    finally:
        faults.clear()
    # after a read in this process, the dataset still pickles (its client stays behind) and reads
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._fs is None and torch.equal(copy[1]["image"], streamed[ds.keys[1]][0])
    # DataLoader workers forked after the parent's reads open their own clients
    keys, images = [], []
    for batch in DataLoader(ds, batch_size=4, num_workers=2):
        keys += batch["key"]
        images.append(batch["image"])
    assert keys == ds.keys and torch.equal(torch.cat(images), torch.stack([streamed[k][0] for k in keys]))


def test_a_distributed_sampler_drives_it_through_loader_workers(locations) -> None:
    ds = SampleIndexDataset(locations, split="train", image_size=SIZE)
    seen: list[str] = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(1)
        got = []
        for batch in DataLoader(ds, batch_size=3, num_workers=2, sampler=sampler):
            got += batch["key"]
            assert batch["image"].shape[1:] == (3, SIZE, SIZE) and batch["category"].dtype == torch.int64
        assert got == [ds.keys[i] for i in sampler]  # the sampler's indices, in its order
        seen += got
    counts = collections.Counter(seen)
    padding = sampler.total_size - len(ds)  # DistributedSampler repeats a few to even out the ranks
    assert set(counts) == set(ds.keys) and len(seen) == sampler.total_size
    assert sum(n - 1 for n in counts.values()) == padding and max(counts.values()) <= 2


def test_missing_index_or_split_is_one_line(locations, s3, tmp_path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(locations, bare)
    (bare / "sample_index.parquet").unlink()
    url, options, _ = s3
    for where, opts in ((bare, None), (f"{url}-absent", options)):
        with pytest.raises(GeoSSLError) as err:
            SampleIndexDataset(where, split="train", storage_options=opts)
        text = str(err.value)
        assert f"{where}/sample_index.parquet: not found" in text and "write-shards" in text
        assert "\n" not in text
    with pytest.raises(GeoSSLError, match=r"no samples of split 'test' \(it has: train, val;"):
        SampleIndexDataset(locations, split="test")
    with pytest.raises(GeoSSLError, match="transform='train'"):
        SampleIndexDataset(locations, split="train", transform="train")


def test_a_missing_or_cut_shard_is_one_line_naming_it(locations, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(locations, copy)
    ds = SampleIndexDataset(copy, split="train", image_size=SIZE)
    last = sorted(copy.glob("train-*.tar"))[-1]
    with open(last, "r+b") as f:
        f.truncate(1024)  # cut short: the last item's bytes are gone
    with pytest.raises(
        CorruptSampleError,
        match=re.escape(f"shard {copy}/{last.name} key {ds.keys[-1]}: ") + r".*\(cut short\?\)",
    ):
        ds[len(ds) - 1]
    assert torch.equal(
        ds[0]["image"], SampleIndexDataset(locations, split="train", image_size=SIZE)[0]["image"]
    )
    last.unlink()
    with pytest.raises(GeoSSLError, match=f"{last.name}: listed in sample_index.parquet but missing"):
        ds[len(ds) - 1]
