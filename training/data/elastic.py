"""Elastic resume: the rest of an epoch saved on R ranks, cut anew for R' ranks, each sample once.

Which positions of an epoch's sequence (epoch_plan) a run consumed is a pure function of the cut it ran
under (ranks, per-rank batch, logical workers, shuffle buffer) and the steps it took: batch j of a rank
belongs to logical worker j % W, which reads one contiguous block of the rank's share through a shuffle
buffer whose draws depend only on (seed, epoch, rank, worker). So a new run replays that arithmetic
without reading a byte, keeps the positions not consumed (in epoch order, so reads stay shard-contiguous
apart from the holes the shuffle buffer left) and cuts them into R' contiguous shares.

The new cut (`split_ranks`): n remaining positions over R' ranks of batch b give
steps = ceil(n / (R' b)) on every rank (DDP needs equal steps); the shares differ by at most one sample
and each share is cut into `steps` batches of floor or ceil of share / steps samples (never above b).
Nothing is lost or repeated. Only when fewer than R' x steps samples would fill them (b = 1 with an
uneven n, or fewer samples left than ranks) are the n mod R' samples left over dropped from the epoch
(a stderr line says so), which makes every share equal. When R' b equals the old global batch (geo-pretrain:
--batch-size is global) n is a multiple of it: full batches, and the epoch ends after exactly the steps
the uninterrupted run had left, so the step counter and the lr schedule run on unchanged.

A resume inside an already elastic epoch stacks cuts: `Cut`s in order, each over what the ones before
left. Exactness assumes every sample was readable: a corrupt sample skipped before the stop shifts which
ones the old run consumed by that sample.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

from geo_ssl.training.data.epoch_plan import Slice, positions
from geo_ssl.training.data.selection import seed_of

Runs = list[tuple[int, int]]  # positions [a, b) of the epoch's sequence, in reading order


@dataclass(frozen=True)
class Cut:
    """How one run read an epoch: ranks, per-rank batch, logical workers, shuffle buffer, and the batches
    each rank took under it (`steps_done`)."""

    world_size: int
    batch_size: int
    workers: int
    shuffle_buffer: int
    steps_done: int = 0


def shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer over a finite stream (one worker's share of one epoch; never across epochs)."""
    if size <= 1:
        yield from items
        return
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf


def seed_tag(level: int) -> tuple:
    """What the RNG seeds of a cut add: nothing for an epoch's first cut (plain resume stays identical)."""
    return () if level == 0 else ("elastic", level)


def split_ranks(n: int, world_size: int, batch_size: int) -> tuple[int, list[int]]:
    """(steps per rank, samples per rank) for n positions over `world_size` ranks (module doc)."""
    if n <= 0:
        return 0, [0] * world_size
    steps = -(-n // (world_size * batch_size))
    if n // world_size < steps:  # some batch would be empty: drop n mod R, equal shares
        n -= n % world_size
        steps = -(-(n // world_size) // batch_size)
    return steps, [n // world_size + (r < n % world_size) for r in range(world_size)]


def batch_sizes(share: int, steps: int) -> list[int]:
    return [share // steps + (j < share % steps) for j in range(steps)]


def _take(runs: Runs, lo: int, hi: int) -> Runs:
    """Items [lo, hi) of the sequence `runs` describes."""
    out: Runs = []
    at = 0
    for a, b in runs:
        s, e = max(lo, at), min(hi, at + b - a)
        if s < e:
            out.append((a + s - at, a + e - at))
        at += b - a
        if at >= hi:
            break
    return out


def _size(runs: Runs) -> int:
    return sum(b - a for a, b in runs)


def _blocks(runs: Runs, cut: Cut, level: int) -> Iterator[tuple[int, int, Runs, list[int]]]:
    """(rank, logical worker, its block, its batches' sizes in order) of a cut over `runs`."""
    steps, shares = split_ranks(_size(runs), cut.world_size, cut.batch_size)
    begin = 0
    for rank, share in enumerate(shares):
        sizes = batch_sizes(share, steps) if steps else []
        for w in range(cut.workers):
            mine = sizes[w :: cut.workers]
            yield rank, w, _take(runs, begin, begin + sum(mine)), mine
            begin += sum(mine)


def _left(block: Runs, taken: int, cut: Cut, seed: int, epoch: int, rank: int, w: int, level: int) -> Runs:
    """What a worker's block keeps after it handed out `taken` samples through its shuffle buffer."""
    n = _size(block)
    if taken <= 0:
        return block
    prefix = min(n, taken + cut.shuffle_buffer)  # the first `taken` draws need no more of the block
    rng = random.Random(seed_of(seed, epoch, rank, w, cut.workers, "shuffle", *seed_tag(level)))
    gone = set(itertools.islice(shuffled(iter(range(prefix)), cut.shuffle_buffer, rng), taken))
    kept = [i for i in range(prefix) if i not in gone]
    out: Runs = []
    for i in kept:  # consecutive indices into runs of the block
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    if prefix < n:
        out.append((prefix, n))
    return [r for a, b in out for r in _take(block, a, b)]


def remaining(used: int, cuts: list[Cut], seed: int, epoch: int) -> Runs:
    """The epoch's positions [0, used) that the runs under `cuts` (in order) did not consume."""
    runs: Runs = [(0, used)] if used > 0 else []
    for level, cut in enumerate(cuts):
        left: Runs = []
        for rank, w, block, sizes in _blocks(runs, cut, level):
            taken = sum(s for j, s in zip(range(w, cut.steps_done, cut.workers), sizes, strict=False))
            left += _left(block, taken, cut, seed, epoch, rank, w, level)
        runs = [r for r in left if r[1] > r[0]]
    return _merged(runs)


def _merged(runs: Runs) -> Runs:
    out: Runs = []
    for a, b in runs:
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def worker_share(
    counts: list[int], used: int, cuts: list[Cut], cut: Cut, seed: int, epoch: int, rank: int, logical: int
) -> tuple[list[Slice], list[int]]:
    """For logical worker `logical` of `rank` under `cut`, after `cuts`: the slices of shards it reads, and
    its batches' sizes (its batches are logical, logical + W, ... of the cut's steps)."""
    runs = remaining(used, cuts, seed, epoch)
    for r, w, block, sizes in _blocks(runs, cut, len(cuts)):
        if (r, w) == (rank, logical):
            return [sl for a, b in block for sl in positions(counts, seed, epoch, a, b)], sizes
    return [], []


def plan_rest(used: int, cuts: list[Cut], cut: Cut, seed: int, epoch: int) -> dict[str, int]:
    """The rest of the epoch under `cut`: `remaining` positions, `steps` per rank, `dropped` positions
    (module doc: only when some batch would be empty)."""
    n = _size(remaining(used, cuts, seed, epoch))
    steps, shares = split_ranks(n, cut.world_size, cut.batch_size)
    return {"remaining": n, "steps": steps, "dropped": n - sum(shares)}
