"""Streaming loaders over geo-ssl shards: MoCo pairs, N views per location for other SSL methods, eval.

One shard sample is one location with all its views (schemas/SAMPLE_FORMAT.md). The training stream:

    shard URLs  -- shuffled per pass with a seed shared by all ranks, split by rank, then by worker
    tar members -- read with webdataset's tar expander + grouper, opened through fsspec (s3:// etc.)
    select      -- parse the json, pick the views, keep only their JPEG bytes (not decoded)
    shuffle     -- webdataset shuffle buffer of these encoded samples
    render      -- draw crop/jitter/blur/flip, decode only the chosen views in the DCT domain
    batch       -- stack, then colour + normalise the whole batch at once (geo_ssl.training.data.augment)

Every rank yields exactly `len(loader)` batches per epoch: each worker repeats its shards for as
long as asked (shards are replicated when there are fewer than ranks x workers), and the loader
stops after `len()` batches, so DDP never waits on a rank that ran out of uneven shards. Seeds
derive from (cfg.seed, epoch, rank, worker); call `set_epoch(epoch)` before each epoch (a loader
iterated again without it moves to the next epoch by itself).

Corrupt samples (bad tar member, undecodable JPEG, bad json, missing view) are skipped and counted
in `loader.stats` without sleeping; `strict=True` raises `CorruptSampleError` naming shard and key.

Other SSL methods (SimCLR, BYOL, multi-crop, ...) ask the same shards for N views per location:

    from geo_ssl.training.data.loader import LoaderConfig, views_loader
    cfg = LoaderConfig(urls="shards/train-{000000..000041}.tar", batch_size=256, image_size=224)
    loader = views_loader(cfg, n_views=4, rank=rank, world_size=world_size)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:   # batch["views"]: float32 [B, 4, 3, 224, 224]
            ...                # batch["geo_cluster"], batch["category"]: int64 [B]; batch["key"]: list[str]

With `temporal=True` the N views come from distinct timestamps while the location has enough (then
repeat), each with its own MoCo-v2 augmentation; `temporal=False` augments one random view N times;
`augment=False` only resizes, centre-crops and normalises. Plain webdataset reads the shards too.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.data.augment import MocoV2Augment, ViewParams, eval_params, finish_views
from geo_ssl.training.data.selection import Picked, choose_views, pick_views, read_meta, render_views, seed_of
from geo_ssl.training.data.shard_list import resolve_shards, shard_counts
from geo_ssl.training.data.tar_stream import (
    CorruptSampleError,
    LoaderStats,
    SampleErrors,
    shard_samples,
)

__all__ = [
    "CorruptSampleError",
    "EvalLoader",
    "LoaderConfig",
    "LoaderStats",
    "StreamingLoader",
    "eval_loader",
    "pretrain_loader",
    "resolve_shards",
    "shard_counts",
    "views_loader",
]


@dataclass
class LoaderConfig:
    """What to stream and how. `batch_size` is per rank; `epoch_samples` counts locations over all ranks."""

    urls: str | list[str]
    split: str | None = None
    batch_size: int = 256
    image_size: int = 224
    temporal: bool = True
    augment: bool = True
    num_workers: int = 4
    shuffle_buffer: int = 1000
    seed: int = 0
    strict: bool = False
    epoch_samples: int | None = None
    storage_options: dict | None = None


# ------------------------------------------------------------------------------------------- streams


@dataclass
class _Spec:
    """Everything a worker needs; picklable."""

    shards: list[str]
    storage_options: dict | None
    batch_size: int
    image_size: int
    n_views: int
    temporal: bool
    augment: bool
    shuffle_buffer: int
    seed: int
    strict: bool
    epoch: int = 0
    rank: int = 0
    world_size: int = 1
    layout: str = "views"  # "pairs": (q, k) tensors; "views": [B, N, ...]


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _train_shard_urls(spec: _Spec, worker: int, n_workers: int) -> Iterator[str]:
    """Endless shard sequence for one (rank, worker): each pass shuffles the shard list with a seed all
    ranks share, then keeps every world_size-th (split_by_node) and every n_workers-th (split_by_worker).
    With fewer shards than ranks x workers, the list is repeated so that nobody gets none."""
    copies = math.ceil(spec.world_size * n_workers / len(spec.shards))
    for p in itertools.count():
        order = list(spec.shards) * copies
        random.Random(seed_of(spec.seed, spec.epoch, p, "shards")).shuffle(order)
        yield from order[spec.rank :: spec.world_size][worker::n_workers]


class _TrainStream(IterableDataset):
    def __init__(self, spec: _Spec):
        self.spec = spec

    def __iter__(self):
        spec = self.spec
        worker, n_workers = _worker()
        stats = LoaderStats()
        errors = SampleErrors(stats, spec.strict)
        rng_pick = random.Random(seed_of(spec.seed, spec.epoch, spec.rank, worker, "pick"))
        rng_aug = random.Random(seed_of(spec.seed, spec.epoch, spec.rank, worker, "augment"))
        rng_buf = random.Random(seed_of(spec.seed, spec.epoch, spec.rank, worker, "shuffle"))
        aug = MocoV2Augment(image_size=spec.image_size)

        def params_for(w: int, h: int) -> ViewParams:
            return aug.sample(rng_aug, w, h) if spec.augment else eval_params(w, h)

        def fields_of(fields: list[str]) -> tuple[str, ...]:
            return tuple(fields[i] for i in choose_views(rng_pick, len(fields), spec.n_views, spec.temporal))

        def pick(src):
            for sample in src:
                try:
                    yield pick_views(sample, fields_of)
                except Exception as exc:
                    errors.record(f"shard {sample.get('__url__')} key {sample.get('__key__')}", exc)

        def render(src):
            for picked in src:
                try:
                    crops, params = render_views(picked, spec.image_size, params_for)
                except Exception as exc:
                    errors.record(f"shard {picked.url} key {picked.key}", exc)
                    continue
                errors.ok()
                stats.views_decoded += len(picked.data)
                yield picked, crops, params

        def collate(items):
            stats.samples += len(items)
            return _collate_train(items, spec), stats.take()

        stages = [
            lambda: _train_shard_urls(spec, worker, n_workers),
            lambda urls: shard_samples(urls, spec.storage_options, stats, errors, forever=True),
            pick,
        ]
        if spec.shuffle_buffer > 0:
            stages.append(
                wds.shuffle(spec.shuffle_buffer, initial=min(100, spec.shuffle_buffer), rng=rng_buf)
            )
        stages += [render, wds.batched(spec.batch_size, collation_fn=collate, partial=False)]
        return iter(wds.DataPipeline(*stages))


def _collate_train(items: list, spec: _Spec) -> dict:
    b, n, s = len(items), spec.n_views, spec.image_size
    if spec.layout == "pairs":
        out = torch.empty((n, b, 3, s, s), dtype=torch.float32)
        order = [(i, j) for j in range(n) for i in range(b)]  # view-major: q block, then k block
    else:
        out = torch.empty((b, n, 3, s, s), dtype=torch.float32)
        order = [(i, j) for i in range(b) for j in range(n)]
    crops = torch.stack([items[i][1][j] for i, j in order])
    finish_views(crops, [items[i][2][j] for i, j in order], out=out.view(b * n, 3, s, s))
    geo = torch.tensor([it[0].geo for it in items], dtype=torch.int64)
    category = torch.tensor([it[0].category for it in items], dtype=torch.int64)
    keys = [it[0].key for it in items]
    if spec.layout == "pairs":
        return {"q": out[0], "k": out[1], "geo_cluster": geo, "category": category, "key": keys}
    return {"views": out, "geo_cluster": geo, "category": category, "key": keys}


class _EvalStream(IterableDataset):
    def __init__(
        self,
        shards: list[str],
        storage_options: dict | None,
        image_size: int,
        batch_size: int,
        all_views: bool,
    ):
        self.shards, self.storage_options = shards, storage_options
        self.image_size, self.batch_size, self.all_views = image_size, batch_size, all_views

    def __iter__(self):
        worker, n_workers = _worker()
        stats = LoaderStats()
        errors = SampleErrors(stats, strict=False)
        size = self.image_size

        def views(src):
            for sample in src:
                try:
                    _, fields, geo, category = read_meta(sample)
                    chosen = fields if self.all_views else fields[:1]
                    data = {f: sample[f] for f in chosen}
                except Exception as exc:
                    errors.record(f"shard {sample.get('__url__')} key {sample.get('__key__')}", exc)
                    continue
                for f in chosen:
                    key = f"{sample['__key__']}/{f.split('.')[0]}" if self.all_views else sample["__key__"]
                    picked = Picked(key, sample["__url__"], geo, category, (f,), {f: data[f]})
                    try:
                        crops, params = render_views(picked, size, eval_params)
                    except Exception as exc:
                        errors.record(f"shard {picked.url} key {sample['__key__']} view {f}", exc)
                        continue
                    stats.views_decoded += 1
                    yield picked, crops[0], params[0]

        def collate(items):
            stats.samples += len(items)
            images = finish_views(torch.stack([c for _, c, _ in items]), [p for _, _, p in items])
            category = torch.tensor([it[0].category for it in items], dtype=torch.int64)
            geo = torch.tensor([it[0].geo for it in items], dtype=torch.int64)
            keys = [it[0].key for it in items]
            return {"image": images, "category": category, "geo_cluster": geo, "key": keys}, stats.take()

        return iter(
            wds.DataPipeline(
                lambda: iter(self.shards[worker::n_workers]),
                lambda urls: shard_samples(urls, self.storage_options, stats, errors, forever=False),
                views,
                wds.batched(self.batch_size, collation_fn=collate, partial=True),
            )
        )


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    _fixed_mmap_threshold()


def _fixed_mmap_threshold(nbytes: int = 128 * 1024) -> None:
    """Stop glibc from raising its mmap threshold after the first large free.

    JPEG payloads and decoded images (100 KB - 1 MB) otherwise land in the heap, whose fragmentation
    grows a worker's RSS by hundreds of MB over an epoch; returned to the OS via mmap, RSS stays flat.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def _batches(dataset: IterableDataset, num_workers: int) -> Iterator:
    if num_workers == 0:
        return iter(dataset)
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        worker_init_fn=_worker_init,
        persistent_workers=False,
    )
    return iter(loader)


class StreamingLoader:
    """An epoch of exactly `len(self)` batches per rank; iterate once per epoch after `set_epoch`."""

    def __init__(self, spec: _Spec, steps: int, num_workers: int):
        self._spec, self._steps, self.num_workers = spec, steps, num_workers
        self.epoch = 0
        self._epoch_set = True
        self.stats = LoaderStats()

    def __len__(self) -> int:
        return self._steps

    @property
    def shards(self) -> list[str]:
        return list(self._spec.shards)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._epoch_set = int(epoch), True

    def __iter__(self) -> Iterator[dict]:
        if not self._epoch_set:
            self.epoch += 1
        self._epoch_set = False
        it = _batches(_TrainStream(replace(self._spec, epoch=self.epoch)), self.num_workers)
        try:
            for _ in range(self._steps):
                batch, delta = next(it)
                self.stats.add(delta)
                yield batch
        finally:
            del it  # shuts the workers down


class EvalLoader:
    """Finite, deterministic pass over every sample (or every stored view) in shard order."""

    def __init__(
        self,
        shards: list[str],
        storage_options: dict | None,
        image_size: int,
        batch_size: int,
        num_workers: int,
        all_views: bool,
    ):
        self.shards, self.storage_options = shards, storage_options
        self.image_size, self.batch_size, self.all_views = image_size, batch_size, all_views
        self.num_workers = min(num_workers, len(shards))
        self.stats = LoaderStats()
        self._len: int | None = None

    def __len__(self) -> int:
        if self._len is None:
            counts = shard_counts(self.shards, self.storage_options)
            n = [v if self.all_views else s for s, v in counts]
            workers = max(1, self.num_workers)
            self._len = sum(math.ceil(sum(n[w::workers]) / self.batch_size) for w in range(workers))
        return self._len

    def __iter__(self) -> Iterator[dict]:
        ds = _EvalStream(self.shards, self.storage_options, self.image_size, self.batch_size, self.all_views)
        for batch, delta in _batches(ds, self.num_workers):
            self.stats.add(delta)
            yield batch


# ------------------------------------------------------------------------------------------------ API


def _train_loader(
    cfg: LoaderConfig, n_views: int, rank: int, world_size: int, layout: str
) -> StreamingLoader:
    if not 0 <= rank < world_size:
        raise GeoSSLError(f"rank {rank} is outside world_size {world_size}")
    if cfg.batch_size < 1 or cfg.image_size < 8 or n_views < 1:
        raise GeoSSLError("batch_size, n_views must be >= 1 and image_size >= 8")
    shards = resolve_shards(cfg.urls, cfg.split, cfg.storage_options)
    total = cfg.epoch_samples
    if total is None:
        total = sum(s for s, _ in shard_counts(shards, cfg.storage_options))
    steps = max(1, int(total) // (world_size * cfg.batch_size))
    spec = _Spec(
        shards=shards,
        storage_options=cfg.storage_options,
        batch_size=cfg.batch_size,
        image_size=cfg.image_size,
        n_views=n_views,
        temporal=cfg.temporal,
        augment=cfg.augment,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=cfg.seed,
        strict=cfg.strict,
        rank=rank,
        world_size=world_size,
        layout=layout,
    )
    return StreamingLoader(spec, steps, cfg.num_workers)


def pretrain_loader(cfg: LoaderConfig, rank: int = 0, world_size: int = 1) -> StreamingLoader:
    """MoCo pairs: dict items {"q", "k": float32 [B, 3, S, S], "geo_cluster", "category": int64 [B], "key"}."""
    return _train_loader(cfg, 2, rank, world_size, "pairs")


def views_loader(cfg: LoaderConfig, n_views: int, rank: int = 0, world_size: int = 1) -> StreamingLoader:
    """N views per location: dict items {"views": float32 [B, N, 3, S, S], "geo_cluster", "category", "key"}."""
    return _train_loader(cfg, n_views, rank, world_size, "views")


def eval_loader(
    urls: str | list[str],
    image_size: int = 224,
    batch_size: int = 256,
    num_workers: int = 4,
    split: str | None = None,
    all_views: bool = True,
    storage_options: dict | None = None,
) -> EvalLoader:
    """Dict items {"image": float32 [B, 3, S, S], "category", "geo_cluster": int64 [B], "key"}; eval transform
    (Resize(S) + CenterCrop(S) + ImageNet normalisation). Keys are `{key}/{NN}` per view with
    all_views=True (every stored view), else the location key with its first (oldest) view."""
    shards = resolve_shards(urls, split, storage_options)
    return EvalLoader(shards, storage_options, image_size, batch_size, num_workers, all_views)
