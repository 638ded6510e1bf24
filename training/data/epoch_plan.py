"""Exact epochs: which samples each rank and loader worker reads, as slices of shards.

An epoch is one pass over the split in an order drawn from (seed, epoch): the shard list is shuffled and
the samples of each shard follow in file order, so the pass is a sequence of N (shard, sample index)
positions. The first `steps * world_size * batch_size` positions are used (`remainder_policy="drop"`:
the remainder below one global batch is left out of this epoch; since the shard order changes every
epoch, different samples are left out each time). Rank r takes the r-th contiguous share of
`steps * batch_size` positions; inside a rank, batch j belongs to logical worker j % W, and each logical
worker reads one contiguous block of its share, i.e. a few (shard, start, stop) slices, starting or
stopping inside a shard where the manifest's per-shard counts say so. With `epoch_samples` above N the
sequence continues into further passes, each shuffled anew, so every location comes floor or ceil of
epoch_samples / N times.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.data.selection import seed_of


@dataclass(frozen=True)
class Slice:
    """Samples [start, stop) of shard number `shard` (an index into the loader's shard list)."""

    shard: int
    start: int
    stop: int


@dataclass(frozen=True)
class EpochPlan:
    """How an epoch is cut: `samples` in the split, `used` per epoch (= steps x global_batch), the
    `remainder` left out of each epoch, and what happens to it (`remainder_policy`); `lost`: samples
    manifest.parquet lists in shards the loader left out (absent, or another build's: shard_list)."""

    samples: int
    used: int
    global_batch: int
    steps: int
    remainder: int
    remainder_policy: str = "drop"
    lost: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        tail = (
            f"; {self.remainder} samples below one global batch dropped per epoch (a different set each epoch)"
            if self.remainder > 0
            else ""
        )
        if self.used > self.samples:  # --epoch-samples above the split: several passes per epoch
            share = f"samples, {self.used / self.samples:.3g} passes over the split's {self.samples}"
        else:
            share = f"of {self.samples} samples"
        if self.lost:
            tail += f"; {self.lost} samples of the manifest lost (shards missing or not its own, left out)"
        return f"{self.steps} steps per epoch x global batch {self.global_batch} = {self.used} {share}{tail}"


def plan_epoch(counts: list[int], batch_size: int, world_size: int, epoch_samples: int | None) -> EpochPlan:
    """Steps per epoch, equal on every rank; refuses a split smaller than one global batch."""
    samples = sum(counts)
    wanted = samples if epoch_samples is None else int(epoch_samples)
    global_batch = batch_size * world_size
    if samples == 0:
        raise GeoSSLError("the shards hold no samples")
    if wanted < global_batch:
        raise GeoSSLError(
            f"{wanted} samples per epoch is less than one global batch ({world_size} rank(s) x batch "
            f"{batch_size} = {global_batch}); use a smaller --batch-size"
        )
    steps = wanted // global_batch
    return EpochPlan(
        samples=samples,
        used=steps * global_batch,
        global_batch=global_batch,
        steps=steps,
        remainder=wanted - steps * global_batch,
    )


def shard_order(n_shards: int, seed: int, epoch: int, pass_index: int) -> list[int]:
    order = list(range(n_shards))
    random.Random(seed_of(seed, epoch, pass_index, "shards")).shuffle(order)
    return order


def positions(counts: list[int], seed: int, epoch: int, begin: int, end: int) -> list[Slice]:
    """Positions [begin, end) of the epoch's sample sequence as slices (adjacent ranges of one shard merged)."""
    out: list[Slice] = []
    total = sum(counts)
    pass_index = begin // total
    at = begin
    while at < end:
        base = pass_index * total
        for shard in shard_order(len(counts), seed, epoch, pass_index):
            lo, hi = base, base + counts[shard]
            base = hi
            if hi <= at or counts[shard] == 0:
                continue
            if lo >= end:
                break
            s, e = max(lo, at) - lo, min(hi, end) - lo
            out.append(Slice(shard, s, e))
            at = lo + e
            if at >= end:
                break
        pass_index += 1
    return out


def worker_batches(steps: int, start_step: int, n_workers: int, physical: int) -> tuple[int, list[int]]:
    """(logical worker, the batch indices it yields from start_step on) for DataLoader worker `physical`.

    Batch j belongs to logical worker j % n; the DataLoader asks its workers round robin from worker 0,
    so physical worker p serves logical worker (p + start_step) % n, which makes batch start_step come
    first after a resume.
    """
    logical = (physical + start_step) % n_workers
    return logical, [j for j in range(logical, steps, n_workers) if j >= start_step]


def worker_block(
    counts: list[int],
    plan: EpochPlan,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int,
    logical: int,
    n_workers: int,
) -> list[Slice]:
    """The slices logical worker `logical` of rank `rank` reads in this epoch (all its batches' samples)."""
    per_worker = [len(range(w, plan.steps, n_workers)) * batch_size for w in range(n_workers)]
    begin = rank * plan.steps * batch_size + sum(per_worker[:logical])
    return positions(counts, seed, epoch, begin, begin + per_worker[logical])
