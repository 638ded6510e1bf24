"""Elastic resume (issue 19, item 5): an epoch saved on R ranks and resumed on R' ranks gives each sample
the saved run had not taken exactly once over the new ranks, then exact epochs on R' ranks.

The arithmetic (training/data/elastic.py) is checked against a direct simulation of the loader's cut
over many (R, b, W, steps, R', b', W') chains; the loader itself with real shards (2 -> 1, 2 -> 3 and a
second resume inside the elastic epoch); and a real `geo-pretrain` under torchrun, 2 ranks stopped by
SIGTERM mid-epoch and resumed with `--resume` on 1 and on 3 ranks (tests/training/data/trainer_probe.py).
"""

from __future__ import annotations

import json
import random
import shutil
import signal
from pathlib import Path

import pytest

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.data.elastic import Cut, batch_sizes, remaining, seed_tag, shuffled, split_ranks
from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader
from geo_ssl.training.data.selection import seed_of
from geo_ssl.training.trainer.checkpoint import LAST, step_name
from tests.shard_fixtures import make_tiny_shards
from tests.training.data.test_epochs_torchrun import (
    finish,
    paused_run,
    pretrain_args,
    read_records,
    signal_groups,
    torchrun,
)


def _simulate(items: list[int], cut: Cut, level: int, seed: int, epoch: int) -> list[list[list[int]]]:
    """Every rank's batches of a cut over `items`, as the loader cuts them: rank shares, then batch j
    of logical worker j % W from its contiguous block through the seeded shuffle buffer."""
    steps, shares = split_ranks(len(items), cut.world_size, cut.batch_size)
    out, begin = [], 0
    for rank, share in enumerate(shares):
        sizes = batch_sizes(share, steps) if steps else []
        batches: list[list[int]] = [[] for _ in range(steps)]
        for w in range(cut.workers):
            mine = range(w, steps, cut.workers)
            block = items[begin : begin + sum(sizes[j] for j in mine)]
            begin += len(block)
            rng = random.Random(seed_of(seed, epoch, rank, w, cut.workers, "shuffle", *seed_tag(level)))
            stream = shuffled(iter(block), cut.shuffle_buffer, rng)
            for j in mine:
                batches[j] = [next(stream) for _ in range(sizes[j])]
        out.append(batches)
    return out


def test_the_rest_of_an_epoch_is_every_position_once_over_many_cuts():
    rng = random.Random(7)
    for trial in range(300):
        used = rng.randint(1, 90)
        cuts, items, seen, dropped = [], list(range(used)), [], []
        seed, epoch = rng.randint(0, 9), rng.randint(0, 3)
        for level in range(rng.randint(1, 3)):
            world, batch = rng.randint(1, 4), rng.randint(1, 5)
            if level == 0:  # an epoch's first cut: full global batches of the plan
                world, batch = rng.choice([(w, b) for w in range(1, 5) for b in range(1, 6) if w * b <= used])
                items = list(range(used // (world * batch) * world * batch))
                used = len(items)
            cut = Cut(world, batch, rng.randint(1, 3), rng.choice([0, 1, 3, 8]))
            ranks = _simulate(items, cut, level, seed, epoch)
            steps = len(ranks[0])
            assert all(len(r) == steps for r in ranks)  # equal steps on every rank (DDP)
            assert all(1 <= len(b) <= batch for r in ranks for b in r)  # no empty batch, none above b
            done = rng.randint(0, steps)
            cuts.append(Cut(cut.world_size, batch, cut.workers, cut.shuffle_buffer, done))
            taken = [p for r in ranks for b in r[:done] for p in b]
            seen += taken
            cut_off = len(items) - sum(split_ranks(len(items), world, batch)[1])  # left out of the epoch
            assert cut_off == 0 or len(items) // world < -(-len(items) // (world * batch)), cuts  # only then
            dropped += items[len(items) - cut_off :]
            rest = [p for a, b in remaining(used, cuts, seed, epoch) for p in range(a, b)]
            assert rest == [p for p in items[: len(items) - cut_off] if p not in set(taken)], (trial, cuts)
            items = rest
        final = Cut(rng.randint(1, 4), rng.randint(2, 5), rng.randint(1, 3), 4)
        if len(items) >= final.world_size:  # with b >= 2 and a sample per rank, nothing is dropped
            seen += [p for r in _simulate(items, final, len(cuts), seed, epoch) for b in r for p in b]
            assert sorted(seen + dropped) == list(range(used)), (trial, cuts, final)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """Two uneven shards of 10 and 20 locations."""
    folder = tmp_path_factory.mktemp("elastic")
    make_tiny_shards(folder, n_locations=30, n_shards=2, uneven=True, image_size=40, n_clusters=4)
    return str(folder)


def _loader(folder: str, batch: int, world: int, rank: int, workers: int = 0):
    cfg = LoaderConfig(folder, split="train", batch_size=batch, image_size=16, num_workers=workers,
                       shuffle_buffer=4, seed=0, decode="defer")  # fmt: skip
    return pretrain_loader(cfg, rank=rank, world_size=world)


def _keys(loader) -> list[list[str]]:
    return [list(b["key"]) for b in loader]


def test_a_loader_state_of_2_ranks_resumes_on_1_and_3_ranks_each_location_once(shards):
    """2 ranks x batch 3 (5 steps, all 30 locations) stopped after 2 steps; the rest on 1 rank x 6 and
    3 ranks x 2 (the same global batch: exactly the 3 steps left), and on 3 ranks x 4 (another global
    batch: 2 steps of shorter batches); then a second stop inside the elastic epoch, resumed on 1 rank."""
    taken, states = [], []
    for rank in range(2):
        loader = _loader(shards, 3, 2, rank, workers=2)
        it = iter(loader)
        taken += [k for _ in range(2) for k in next(it)["key"]]
        states.append(json.loads(json.dumps(loader.state_dict())))
        it.close()
    assert states[0]["step"] == 2 and len(set(taken)) == 12
    for world, batch, steps in [(1, 6, 5), (3, 2, 5), (3, 4, 4)]:
        rest = []
        for rank in range(world):
            loader = _loader(shards, batch, world, rank)
            loader.load_state_dict(states[rank % 2])
            assert loader.steps_in_epoch() == steps  # 2 steps before, the rest after
            got = _keys(loader)
            assert len(got) == steps - 2, (world, batch)
            rest += [k for b in got for k in b]
            loader.set_epoch(1)  # the next epoch: exact on the new ranks, as a fresh loader's
            fresh = _loader(shards, batch, world, rank)
            fresh.set_epoch(1)
            assert _keys(loader) == _keys(fresh), (world, rank)
        assert len(rest) == len(set(rest)) == 18 and set(rest).isdisjoint(taken), (world, batch)
    # stopped again after 1 step of 3 ranks x 2 (its state holds the first cut), resumed on 1 rank x 4
    again, inner = [], []
    for rank in range(3):
        loader = _loader(shards, 2, 3, rank, workers=1)
        loader.load_state_dict(states[0])
        it = iter(loader)
        again += list(next(it)["key"])
        inner.append(loader.state_dict())
        it.close()
    assert inner[0]["step"] == 3 and len(inner[0]["elastic"]["cuts"]) == 1
    last = _loader(shards, 4, 1, 0)
    last.load_state_dict(inner[0])
    tail = [k for b in _keys(last) for k in b]
    assert sorted(taken + again + tail) == sorted(set(taken + again + tail)) and len(tail) == 12


def test_a_state_of_2_workers_resumes_on_0_workers_each_location_once(shards):
    """Same ranks, another number of loader workers: the batches would differ from the stop on (batch j
    belongs to worker j % W), so the rest of the epoch is cut anew (loader.other_cut), not replayed."""
    loader = _loader(shards, 5, 1, 0, workers=2)
    it = iter(loader)
    taken = [k for _ in range(3) for k in next(it)["key"]]
    state = loader.state_dict()
    it.close()
    other = _loader(shards, 5, 1, 0, workers=0)
    assert other.other_cut(state) and not _loader(shards, 5, 1, 0, workers=2).other_cut(state)
    other.load_state_dict(state)
    rest = [k for b in _keys(other) for k in b]
    assert sorted(taken + rest) == sorted(set(taken + rest)) and len(taken + rest) == 30


def test_an_elastic_state_of_other_data_is_refused(shards, tmp_path):
    state = _loader(shards, 3, 2, 0).state_dict()
    other = tmp_path / "other"
    make_tiny_shards(other, n_locations=30, n_shards=2, uneven=True, image_size=40, split="val")
    cfg = LoaderConfig(str(other), split="val", batch_size=6, image_size=16, num_workers=0, seed=0)
    with pytest.raises(GeoSSLError, match=r"^loader state: data "):
        pretrain_loader(cfg).load_state_dict(state)
    with pytest.raises(GeoSSLError, match=r"^loader state: seed "):
        _loader(shards, 6, 1, 0).load_state_dict({**state, "seed": 6})


def _epoch_keys(records: list[list[dict]], epoch: int) -> list[str]:
    return [k for rows in records for b in rows if b["epoch"] == epoch for k in b["keys"]]


def _resume(tmp_path: Path, name: str, world: int, *extra: str) -> list[list[dict]]:
    """`geo-pretrain --out RUN --resume` on `world` ranks: each rank's batches (trainer_probe records)."""
    rec = tmp_path / f"rec-{name}"
    proc = torchrun(
        world, "trainer_probe.py", str(rec), "--", "--out", str(tmp_path / name), "--resume", *extra
    )
    assert f"resuming on {world} rank(s) x " in proc.stderr, proc.stderr[-3000:]
    return [read_records(rec, r) for r in range(world)]


def test_geo_pretrain_on_2_ranks_stopped_mid_epoch_resumes_on_1_and_on_3_ranks(shards, tmp_path):
    """Global batch 6 over 30 locations: 5 steps per epoch on any of 1, 2, 3 ranks. 2 ranks stop at step
    3 (SIGTERM); `--resume` on 1 rank (2 -> 1) to the end; its checkpoint of step 4, one step into the
    rest of epoch 0, resumed on 3 ranks (1 -> 3, the epoch's third cut). Each time epoch 0 is the split,
    each location once, and epoch 1 is exactly an uninterrupted run's epoch on the new ranks. (2 -> 3
    directly: the loader test above, with real loaders.)"""
    args = pretrain_args(shards, tmp_path / "run")
    args[args.index("--batch-size") + 1] = "6"
    rec_a = tmp_path / "rec-a"
    proc, groups = paused_run(rec_a, 2, args)
    signal_groups(groups, signal.SIGTERM)
    (rec_a / "go").touch()
    err = finish(proc, groups)
    assert "stopped by signal 15 at step 3" in err, err[-3000:]
    before = _epoch_keys([read_records(rec_a, r) for r in range(2)], 0)
    assert len(before) == len(set(before)) == 18
    shutil.copytree(tmp_path / "run", tmp_path / "run1")
    on1 = _resume(tmp_path, "run1", 1, "--save-steps", "4")  # 2 -> 1, keeping the checkpoint of step 4
    shutil.copytree(tmp_path / "run1", tmp_path / "run13")
    shutil.copy(tmp_path / "run13" / step_name(4), tmp_path / "run13" / LAST)
    on13 = _resume(tmp_path, "run13", 3)  # 2 -> 1 -> 3: from step 4, one step into the 1-rank rest
    tail1 = [b for b in on1[0] if b["step"] == 3]
    for world, later, first_step, head in [(1, on1, 3, []), (3, on13, 4, tail1)]:
        assert all([b["step"] for b in rows] == list(range(first_step, 10)) for rows in later), world
        epoch0 = before + _epoch_keys([head], 0) + _epoch_keys(later, 0)
        assert len(epoch0) == len(set(epoch0)) == 30, world  # the split, each location once
        for rank in range(world):  # epoch 1: an uninterrupted run's on `world` ranks
            loader = _loader(shards, 6 // world, world, rank, workers=2)
            loader.set_epoch(1)
            assert [b["keys"] for b in later[rank] if b["epoch"] == 1] == _keys(loader), (world, rank)
