"""Exact epochs, in this process: the remainder below one global batch, epochs beyond the split, resume
without decoding the skipped batches, slices starting inside shards.

The matrix of 1, 2 and 3 ranks x 0, 1 and 2 workers (every location once per epoch, orders by (seed,
epoch), resume) and a mid-epoch kill of a real `geo-pretrain` run under real torchrun are in
test_epochs_torchrun.py.
"""

from __future__ import annotations

import collections
import os
import subprocess

import pytest
import torch

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.data.epoch_plan import plan_epoch, positions
from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader, views_loader
from tests.shard_fixtures import make_tiny_shards

S = 16


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> tuple[str, set[str]]:
    """3 shards of 5, 10 and 15 locations: fewer shards than 3 ranks x 2 workers."""
    folder = tmp_path_factory.mktemp("uneven")
    make_tiny_shards(folder, n_locations=30, n_shards=3, uneven=True, image_size=24)
    return str(folder), {f"train-{k}" for k in _all_keys(folder)}


def _all_keys(folder) -> list[str]:
    import webdataset as wds

    from geo_ssl.training.data.loader import resolve_shards

    return [
        s["__key__"].removeprefix("train-")
        for s in wds.WebDataset(resolve_shards(str(folder)), shardshuffle=False)
    ]


def _cfg(urls: str, **kw) -> LoaderConfig:
    base = dict(
        split="train", batch_size=5, image_size=S, num_workers=0, shuffle_buffer=4, seed=0, decode="defer"
    )
    base.update(kw)
    return LoaderConfig(urls=urls, **base)


def _epoch_keys(cfg: LoaderConfig, world: int, epoch: int) -> list[list[str]]:
    """Per rank: the keys in batch order."""
    out = []
    for rank in range(world):
        loader = pretrain_loader(cfg, rank=rank, world_size=world)
        loader.set_epoch(epoch)
        batches = [b["key"] for b in loader]
        assert len(batches) == len(loader) and all(len(b) == cfg.batch_size for b in batches)
        out.append([k for b in batches for k in b])
    return out


def test_remainder_below_one_global_batch_is_dropped_and_reported(tmp_path):
    make_tiny_shards(tmp_path, n_locations=29, n_shards=2, image_size=24)
    cfg = _cfg(str(tmp_path), batch_size=4)
    loader = pretrain_loader(cfg, rank=0, world_size=2)
    plan = loader.plan.as_dict()
    assert plan == dict(
        samples=29, used=24, global_batch=8, steps=3, remainder=5, remainder_policy="drop", lost=0
    )
    assert "5 samples below one global batch dropped" in loader.plan.describe()
    dropped = []
    for epoch in range(3):
        keys = [k for rank_keys in _epoch_keys(cfg, 2, epoch) for k in rank_keys]
        assert len(keys) == len(set(keys)) == 24
        dropped.append(frozenset(_all_keys(tmp_path)) - {k.removeprefix("train-") for k in keys})
    assert all(len(d) == 5 for d in dropped) and len(set(dropped)) > 1  # a different set each epoch


def test_epoch_longer_than_the_split_says_how_many_passes():
    plan = plan_epoch([20, 9], batch_size=4, world_size=2, epoch_samples=60)
    assert (plan.used, plan.steps, plan.remainder) == (56, 7, 4)
    assert plan.describe().startswith(
        "7 steps per epoch x global batch 8 = 56 samples, 1.93 passes over the split's 29"
    )
    assert (
        plan_epoch([20, 9], 4, 2, None).describe().startswith("3 steps per epoch x global batch 8 = 24 of 29")
    )


def test_split_smaller_than_a_global_batch_is_refused(uneven):
    with pytest.raises(GeoSSLError, match="less than one global batch"):
        pretrain_loader(_cfg(uneven[0], batch_size=16), rank=0, world_size=2)


def test_epoch_samples_beyond_the_split_repeat_evenly(uneven):
    folder, truth = uneven
    keys = _epoch_keys(_cfg(folder, epoch_samples=75, num_workers=2), 1, 0)[0]
    counts = collections.Counter(keys)
    assert len(keys) == 75 and set(counts) == truth and set(counts.values()) == {2, 3}


def test_positions_cover_passes_in_shuffled_shard_order():
    counts = [3, 0, 5, 2]
    slices = positions(counts, seed=7, epoch=0, begin=0, end=20)
    per_pass = [sl for sl in slices]
    assert sum(sl.stop - sl.start for sl in per_pass) == 20
    assert all(counts[sl.shard] and 0 <= sl.start < sl.stop <= counts[sl.shard] for sl in slices)
    assert plan_epoch(counts, 3, 2, None).steps == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_gives_identical_batches_without_decoding_the_skipped(uneven, workers):
    folder, _ = uneven
    cfg = _cfg(folder, decode="cpu", batch_size=3, num_workers=workers)
    full_loader = pretrain_loader(cfg)
    full_loader.set_epoch(2)
    full = list(full_loader)
    assert len(full) == 10
    for start in (3, 4):  # 4 with 2 workers: the resume starts on the other worker
        resumed_loader = pretrain_loader(cfg)
        resumed_loader.set_epoch(2, start_step=start)
        resumed = list(resumed_loader)
        assert len(resumed) == 10 - start
        for a, b in zip(full[start:], resumed, strict=True):
            assert a["key"] == b["key"] and torch.equal(a["q"], b["q"]) and torch.equal(a["k"], b["k"])
        decoded = resumed_loader.stats.views_decoded
        assert 0 < decoded < full_loader.stats.views_decoded * (10 - start + 0.5) / 10
    # the iteration after a resumed one is a whole epoch again
    assert len(list(resumed_loader)) == 10


def test_loader_workers_leave_the_global_torch_rng_alone(uneven):
    """The trainer restores its RNG at a mid-epoch resume, then starts the loader: were the DataLoader to
    draw its worker seed from the global RNG there, the resumed steps would train differently (shuffle-BN
    permutations) on the same batches."""
    loader = pretrain_loader(_cfg(uneven[0], num_workers=2))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    loader.set_epoch(0, start_step=1)
    assert len(list(loader)) == len(loader) - 1
    assert torch.equal(torch.get_rng_state(), before)


def test_views_loader_resume_and_deferred_views(uneven):
    folder, truth = uneven
    cfg = _cfg(folder, batch_size=6)
    loader = views_loader(cfg, n_views=3)
    batches = list(loader)
    assert len(batches) == 5 and {k for b in batches for k in b["key"]} == truth
    jpegs = batches[0]["views_jpeg"]
    assert len(jpegs) == 6 and all(len(v) == 3 and all(x[:2] == b"\xff\xd8" for x in v) for v in jpegs)
    loader.set_epoch(0, start_step=2)
    assert [b["key"] for b in loader] == [b["key"] for b in batches[2:]]
    pairs = next(iter(pretrain_loader(cfg)))
    assert set(pairs) == {"q_jpeg", "k_jpeg", "geo_cluster", "category", "key"}
    assert pairs["geo_cluster"].dtype == torch.int64 and len(pairs["q_jpeg"]) == 6


def test_slices_start_inside_a_shard_on_seekable_and_piped_streams(uneven):
    """A worker's slice [start, stop) of a shard: the members before start are passed over (a seek on a
    file, a read on a pipe), and the samples come out exactly as in a full read."""
    from geo_ssl.training.data.tar_stream import LoaderStats, SampleErrors, slice_samples

    folder, _ = uneven
    shard = os.path.join(folder, "train-000002.tar")  # 15 samples
    errors = SampleErrors(LoaderStats(), strict=True)
    with open(shard, "rb") as f:
        full = list(slice_samples(f, shard, 0, 15, errors))
    assert len(full) == 15
    with open(shard, "rb") as f:
        part = list(slice_samples(f, shard, 4, 9, errors))
    proc = subprocess.Popen(["cat", shard], stdout=subprocess.PIPE)
    try:
        assert not proc.stdout.seekable()
        piped = list(slice_samples(proc.stdout, shard, 4, 9, errors))
    finally:
        proc.stdout.close()
        proc.wait()
    assert part == piped == full[4:9]
    assert errors.stats.corrupt == errors.stats.missing == 0
