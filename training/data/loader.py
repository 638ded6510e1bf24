"""Streaming loaders over geo-ssl shards: MoCo pairs, N views per location for other SSL methods, eval.

One shard sample is one location with all its views (schemas/SAMPLE_FORMAT.md). The training stream:

    epoch plan  -- one pass over the split in a (seed, epoch) order, cut into per-rank, per-worker slices
                   of shards (geo_ssl.training.data.epoch_plan); sample counts from the manifest
    tar members -- a lean tar reader (tar_stream) over fsspec (s3:// etc.), transient storage errors
                   retried at the byte offset (shard_io), optionally through a local cache (shard_cache);
                   from object storage the next slices' bytes are fetched ahead in epoch order
                   (prefetch: ranged GETs in parallel, bounded by `prefetch` slices and `prefetch_bytes`)
    select      -- parse the json, pick the views, keep only their JPEG bytes (not decoded)
    shuffle     -- a shuffle buffer of these encoded samples, inside one worker's share of one epoch
    render      -- draw crop/jitter/blur/flip, decode only the chosen views in the DCT domain, then colour,
                   grayscale, blur and flip on the 8-bit crop (geo_ssl.training.data.augment)
    batch       -- normalise every crop straight into a reused float batch (augment.BatchBuffers), or
                   with output="uint8" render each view straight into its slot of a channels-last uint8
                   batch (its last op writes there), for the consumer to normalise on its device
                   (augment.normalize_batch; what the trainer does)

Exact epochs: every location of the split comes exactly once per epoch over all ranks and workers, and
every rank yields exactly `len(loader)` batches (`loader.plan`: the samples below one global batch are
dropped from the epoch, a different set each epoch; `loader.plan.describe()` says how many). Workers start
and stop inside shards, so fewer shards than ranks x workers is fine. The order depends on (cfg.seed,
epoch) only; call `set_epoch(epoch)` before each epoch (a loader iterated again without it moves to the
next epoch by itself). `set_epoch(epoch, start_step=s)` resumes mid-epoch: the next iteration yields
batches s..len-1, identical to those of an uninterrupted epoch, without decoding the s batches before.
Batch j's content does not depend on what happened to batches before it, except through the epoch plan.
A user's own loop saves `loader.state_dict()` (JSON-able: epoch, batches handed out, a fingerprint of the
data and the cut) and a new loader of the same config continues with `load_state_dict(state)`. A state
saved on another number of ranks resumes elastically: the rest of that epoch, each sample the saved run
had not taken exactly once over the new ranks (`steps_in_epoch()` batches), then exact epochs
(geo_ssl.training.data.elastic).

Corrupt samples (damaged tar header, bad member, undecodable JPEG, bad json, missing view, samples the
manifest lists but the shard lacks) are skipped and counted in `loader.stats` without sleeping; a worker
that comes up short fills its last batches by reading its share again (`stats.refilled`). `strict=True`
raises `CorruptSampleError` naming shard and key or byte offset, as one line, also from worker processes.
Storage errors are retried with backoff, then raise `ShardReadError` naming the shard (never counted as
corrupt data). Before any read, the shards are compared with manifest.parquet beside them
(shard_list.select_shards: names and sizes from the folder listing): a shard the manifest lists but the
folder lacks, one it does not list, or one whose size says it is another build's is left out with one
stderr line; the manifest's samples of those count as missing, and `strict=True` refuses them. Through
a cache (`cache_dir`) a fetched shard is also hashed against the manifest's sha256: one of the same size
but other bytes is left out the same way when read (shard_cache.NotTheShardError).

Other SSL methods (SimCLR, BYOL, multi-crop, ...) ask the same shards for N views per location:

    from geo_ssl.training.data.loader import LoaderConfig, views_loader
    cfg = LoaderConfig(urls="shards/", split="train", batch_size=256, image_size=224)
    loader = views_loader(cfg, n_views=4, rank=rank, world_size=world_size)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:   # batch["views"]: float32 [B, 4, 3, 224, 224]
            ...                # batch["geo_cluster"], batch["category"]: int64 [B]; batch["key"]: list[str]

8-bit batches (`LoaderConfig(output="uint8")`): the same crops, augmented, not normalised: "q", "k" and
"views" are uint8 [..., 3, S, S] with channels-last strides (a quarter of the bytes to move to a GPU and
no float pass on the loader's cores). `augment.normalize_batch(batch["q"].to(device))` gives what the
default output="float" batch holds (within 4e-7 on a GPU, bit-identical as a contiguous CPU tensor);
geo-pretrain consumes them that way.

Deferred decode (for a GPU data path, geo_ssl.training.data.gpu_*): `LoaderConfig(decode="defer")`
does everything except decode and augmentation (shard order, view choice, shuffle, batching, corrupt-json
accounting) and yields the chosen views' JPEG bytes, one list entry per sample, in batch order:

    pretrain_loader -> {"q_jpeg": list[bytes], "k_jpeg": list[bytes],
                        "geo_cluster": int64 [B], "category": int64 [B], "key": list[str]}
    views_loader    -> {"views_jpeg": list[list[bytes]]  (B lists of N),
                        "geo_cluster", "category", "key"}

q_jpeg[i] / k_jpeg[i] are views of location key[i] at distinct timestamps where it has them (the same
bytes twice otherwise, or with temporal=False); the consumer draws the MoCo-v2 augmentation per view.
Batches, epochs, resume (set_epoch(epoch, start_step=s)) and stats work exactly as in the default
`decode="cpu"` mode. A JPEG that turns out undecodable on the device is the consumer's to count.

With `temporal=True` the N views come from distinct timestamps while the location has enough (then
repeat), each with its own MoCo-v2 augmentation; `temporal=False` augments one random view N times;
`augment=False` only resizes, centre-crops and normalises. Plain webdataset reads the shards too.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.logs import get_logger
from geo_ssl.training.data.augment import (
    BatchBuffers,
    MocoV2Augment,
    ViewParams,
    eval_params,
    finish_views,
    uint8_batch,
)
from geo_ssl.training.data.elastic import Cut, plan_rest, seed_tag, worker_share
from geo_ssl.training.data.elastic import shuffled as _shuffled
from geo_ssl.training.data.epoch_plan import (
    EpochPlan,
    Slice,
    plan_epoch,
    positions,
    worker_batches,
    worker_block,
)
from geo_ssl.training.data.epoch_unit import (
    ShardViews,
    anchored_views,
    check_unit,
    read_image_slice,
    samples_of,
    shard_views,
    unit_counts,
)
from geo_ssl.training.data.listing_cache import cached_shard_set
from geo_ssl.training.data.prefetch import (
    Layout,
    PartStream,
    Prefetcher,
    connect,
    part_bounds,
    prefetch_default,
    read_layout,
)
from geo_ssl.training.data.selection import Picked, pick_views, read_meta, render_views, seed_of
from geo_ssl.training.data.shard_cache import NotTheShardError, ShardCache, parse_size
from geo_ssl.training.data.shard_io import ShardReadError, loader_policy, open_with_retries, read_range
from geo_ssl.training.data.shard_list import ALL_SPLITS, ShardSet, is_local, resolve_shards, shard_counts
from geo_ssl.training.data.tar_stream import (
    _MAX_ERRORS_KEPT,
    CorruptSampleError,
    LoaderStats,
    SampleErrors,
    slice_samples,
)

__all__ = [
    "CorruptSampleError",
    "EpochPlan",
    "EvalLoader",
    "LoaderConfig",
    "LoaderStats",
    "ShardReadError",
    "StreamingLoader",
    "eval_loader",
    "pretrain_loader",
    "resolve_shards",
    "shard_counts",
    "views_loader",
]

log = get_logger(__name__)
_DECODE_MODES = ("cpu", "defer")
_STATE_FORMAT = 1  # StreamingLoader.state_dict's layout
_OUTPUTS = ("float", "uint8")


@dataclass
class LoaderConfig:
    """What to stream and how. `batch_size` is per rank; `epoch_samples` counts locations over all ranks
    (default: the split's size). `cache_dir`/`cache_limit`: keep remote shards in a local LRU cache
    (limit in bytes or '20G'). `read_attempts`: reads per storage failure before ShardReadError.
    `prefetch`: slices each worker fetches ahead of its reader, in epoch order (prefetch.py; None: 4 for
    object storage, 0 for local disk; 0: off), holding at most `prefetch_bytes` per worker ('128M').
    `split` is required: the split whose shards a folder gives ("train", ...), "*" for all of them."""

    urls: str | list[str]
    split: str | None = None  # required (checked below): a folder holds every split of a build
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
    decode: str = "cpu"  # "cpu": decoded, augmented float batches; "defer": JPEG bytes (see module doc)
    cache_dir: str | None = None
    cache_limit: int | str = "20G"
    read_attempts: int = 6
    prefetch: int | None = None
    prefetch_bytes: int | str = "128M"
    epoch_unit: str = "location"  # "image": each location once per view (GASSL's epoch; epoch_unit.py)
    # the training augmentation, built once by the caller (gassl_crop.augment_for: --crop, --crop-scale);
    # None = MoCo-v2's at image_size
    augmentation: MocoV2Augment | None = None
    output: str = "float"  # "uint8": unnormalised 8-bit batches (module doc); decode="defer" ignores it

    def __post_init__(self) -> None:
        if not self.split:
            raise GeoSSLError(
                f"LoaderConfig(urls={self.urls!r}): split is required: name the split to read "
                f"(e.g. split='train'; split='{ALL_SPLITS}' reads every split of a folder)"
            )


# ------------------------------------------------------------------------------------------- reading


@dataclass
class _Source:
    """Where shard bytes come from, for any worker; picklable."""

    shards: list[str]
    counts: list[int]
    storage_options: dict | None = None
    cache_dir: str | None = None
    cache_limit: int | str = "20G"
    read_attempts: int = 6
    sha256: list[str] | None = None  # manifest.parquet's per shard (ShardSet.sha256), checked by the cache
    prefetch: int = 0  # slices fetched ahead per worker (prefetch.py); 0: read as the reader goes
    prefetch_bytes: int = 128 << 20
    layout: Layout | None = None  # object sizes and indexed sample bounds (prefetch.read_layout)

    def _cached(self, url: str) -> bool:
        return bool(self.cache_dir) and not is_local(url)

    def read(self, sl: Slice, errors: SampleErrors, ahead: Prefetcher | None = None) -> Iterator[dict]:
        """The samples of one slice; retries and the cache are below this line, and the bytes come from
        `ahead` when it fetched this slice. A shard the cache finds is not the manifest's (its sha256) is
        left out like select_shards' (strict: refused)."""
        url = self.shards[sl.shard]
        stats = errors.stats
        policy = loader_policy(self.read_attempts)
        on_retry = _retry_counter(stats)
        parts = ahead.take(sl) if ahead is not None else None
        start, stop = sl.start, sl.stop
        if self._cached(url):
            try:
                stream = None
                if parts:
                    stream = _open_fetched(ahead, parts)
                stream = stream or ShardCache(self.cache_dir, self.cache_limit, self.storage_options).open(
                    url, policy, on_retry, self.sha256[sl.shard] if self.sha256 else ""
                )
            except NotTheShardError as exc:
                _left_out_on_read(exc, sl.stop - sl.start, errors)
                return
        elif parts is not None and self.layout is not None:
            skipped = self.layout.byte_range(sl)[2]  # the stream begins at sample `skipped` of the shard
            stream, start, stop = PartStream(ahead, parts), start - skipped, stop - skipped
        else:
            stream = open_with_retries(url, self.storage_options, policy, on_retry)
        with stream:
            stats.shards_opened += 1
            for sample in slice_samples(stream, url, start, stop, errors):
                sample["__url__"] = url
                yield sample

    def prefetcher(self, slices: list[Slice], stats: LoaderStats) -> Prefetcher | None:
        """What fetches `slices` (a worker's reads of this epoch, in order) ahead; None: prefetch off."""
        if not self.prefetch or not slices or (self.layout is None and not self.cache_dir):
            return None
        policy, on_retry = loader_policy(self.read_attempts), _retry_counter(stats)
        connect(self.shards[slices[0].shard], self.storage_options)
        if self.cache_dir:  # whole shards into the cache: its cap and checks apply
            cache = ShardCache(self.cache_dir, self.cache_limit, self.storage_options)

            def into_cache(s: int, _lo: int, _hi: int | None) -> str:
                shard = slices[s].shard
                sha = self.sha256[shard] if self.sha256 else ""
                return cache.path_for(self.shards[shard], policy, on_retry, sha)[0]

            ranges = [[(0, None)] if self._cached(self.shards[sl.shard]) else [] for sl in slices]
            return Prefetcher(slices, ranges, into_cache, self.prefetch, self.prefetch * (8 << 20))

        def fetch(s: int, lo: int, hi: int | None) -> bytes:
            return read_range(self.shards[slices[s].shard], lo, hi, self.storage_options, policy, on_retry)

        layout = self.layout
        ranges = [part_bounds(*layout.byte_range(sl)[:2], self.prefetch_bytes) for sl in slices]
        return Prefetcher(slices, ranges, fetch, self.prefetch, self.prefetch_bytes)


def _retry_counter(stats: LoaderStats) -> Callable[[str], None]:
    """The loader's on_retry: counts the retry in `stats` and says it on stderr."""

    def on_retry(message: str) -> None:
        stats.retries += 1
        log.info("geo-ssl loader: %s", message)

    return on_retry


def _open_fetched(ahead: Prefetcher, parts: list[int]):
    """The shard a prefetch put in the cache, opened; None when evicted since (fetched again by the
    caller). The cache's errors (NotTheShardError, ShardReadError) are raised here."""
    try:
        path = ahead.result(parts[0])
    finally:
        ahead.done(parts)
    try:
        return open(path, "rb", buffering=1 << 20)
    except FileNotFoundError:
        return None


def _left_out_on_read(exc: NotTheShardError, samples: int, errors: SampleErrors) -> None:
    """A shard found not to be the manifest's when fetched: strict refuses it (one line, exit 2); else its
    samples count as missing, as those of shards left out before the epoch (_count_left_out), said once."""
    if errors.strict:
        raise GeoSSLError(f"{exc}; --strict refuses shards that disagree with manifest.parquet") from None
    stats = errors.stats
    stats.corrupt += samples
    stats.missing += samples
    if len(stats.errors) < _MAX_ERRORS_KEPT:
        stats.errors.append(str(exc))
    if exc.new:
        log.warning("geo-ssl loader: %s; left out, its samples counted as missing", exc)


@dataclass
class _Failure:
    """A worker's error, shipped as an item so the main process raises it as one line."""

    error: BaseException


# ------------------------------------------------------------------------------------------- streams


@dataclass
class _Spec:
    """Everything a worker needs; picklable."""

    source: _Source
    plan: EpochPlan
    batch_size: int
    image_size: int
    n_views: int
    temporal: bool
    augment: bool
    shuffle_buffer: int
    seed: int
    strict: bool
    n_workers: int = 1  # logical workers (batch j belongs to j % n_workers)
    epoch: int = 0
    start_step: int = 0
    rank: int = 0
    world_size: int = 1
    layout: str = "views"  # "pairs": (q, k) tensors; "views": [B, N, ...]
    decode: str = "cpu"
    unit_views: list[ShardViews] | None = None  # epoch_unit "image": plan positions are views
    augmentation: MocoV2Augment | None = None
    output: str = "float"
    # an elastic epoch (elastic.py): (positions the epoch's first cut used, the cuts that ran before this
    # one); plan.steps is then this cut's steps and start_step counts in it
    elastic: tuple[int, tuple[Cut, ...]] | None = None


def _read(spec: _Spec, sl: Slice, errors: SampleErrors, ahead: Prefetcher | None = None) -> Iterator[dict]:
    """The samples of one plan slice; with epoch_unit "image" the slice counts views (epoch_unit.py)."""
    if spec.unit_views is None:
        return spec.source.read(sl, errors, ahead)
    read = functools.partial(spec.source.read, ahead=ahead)
    return read_image_slice(read, sl, spec.unit_views[sl.shard], errors)


def _first_pass(spec: _Spec, block: list[Slice], errors: SampleErrors) -> Iterator[dict]:
    """A worker's block of the epoch, in order, with the bytes of the next slices fetched ahead on a few
    threads (prefetch.py), which end with this generator (the epoch done or its iterator dropped)."""
    reads = block
    if spec.unit_views is not None:  # the shard slices read_image_slice will ask for
        bounds = [samples_of(spec.unit_views[sl.shard], sl.start, sl.stop)[:2] for sl in block]
        reads = [Slice(sl.shard, a, b) for sl, (a, b) in zip(block, bounds, strict=True) if b > a]
    ahead = spec.source.prefetcher(reads, errors.stats)
    try:
        for sl in block:
            yield from _read(spec, sl, errors, ahead)
    finally:
        if ahead is not None:
            ahead.close()


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class _WorkerStream(IterableDataset):
    """In a loader worker, a GeoSSLError travels to the main process as a _Failure item (one line there,
    not a worker traceback); in the main process it is raised as is."""

    # held by the class, not looked up in the module: a stream kept alive until the interpreter exits is
    # closed after the module's globals were cleared to None (`except None` would raise a TypeError)
    _shipped: type[BaseException] = GeoSSLError

    def _batches(self) -> Iterator:
        raise NotImplementedError

    def __iter__(self):
        try:
            yield from self._batches()
        except self._shipped as exc:
            if get_worker_info() is None:
                raise
            yield _Failure(exc)


class _TrainStream(_WorkerStream):
    """One worker's batches of one epoch: (batch, stats delta) items, or a _Failure."""

    def __init__(self, spec: _Spec):
        self.spec = spec

    def _refill(self, block: list[Slice], stats: LoaderStats) -> Iterator[dict]:
        """Samples to fill the last batches after corrupt ones were skipped, only read when the first pass
        came up short: the worker's share again, else the rank's, else the whole epoch's (errors are not
        counted twice)."""
        spec, quiet = self.spec, SampleErrors(LoaderStats(), strict=False)
        share = spec.plan.steps * spec.batch_size
        tiers = [
            block,
            positions(spec.source.counts, spec.seed, spec.epoch, spec.rank * share, (spec.rank + 1) * share),
            positions(spec.source.counts, spec.seed, spec.epoch, 0, spec.plan.used),
        ]
        while True:
            got = 0
            for tier in tiers:
                for sl in tier:
                    for sample in _read(spec, sl, quiet):
                        got += 1
                        stats.refilled += 1
                        yield sample
                if got:
                    break
            if not got:
                raise GeoSSLError(f"no readable sample in the epoch's {len(spec.source.shards)} shard(s)")

    def _batches(self):
        spec = self.spec
        physical, n_physical = _worker()
        if n_physical != spec.n_workers:
            raise GeoSSLError(f"loader planned for {spec.n_workers} workers, runs in {n_physical}")
        logical, wanted = worker_batches(spec.plan.steps, spec.start_step, spec.n_workers, physical)
        if not wanted:
            return
        stats = LoaderStats()
        errors = SampleErrors(stats, spec.strict)
        if spec.elastic is None:
            block = worker_block(
                spec.source.counts,
                spec.plan,
                spec.batch_size,
                spec.seed,
                spec.epoch,
                spec.rank,
                logical,
                spec.n_workers,
            )
            sizes, tag = [spec.batch_size] * len(range(logical, spec.plan.steps, spec.n_workers)), ()
        else:  # the rest of an epoch another cut began: this cut's share of what it left (elastic.py)
            used, cuts = spec.elastic
            cut = Cut(spec.world_size, spec.batch_size, spec.n_workers, spec.shuffle_buffer)
            block, sizes = worker_share(
                spec.source.counts, used, list(cuts), cut, spec.seed, spec.epoch, spec.rank, logical
            )
            tag = seed_tag(len(cuts))
        key = (spec.seed, spec.epoch, spec.rank, logical, spec.n_workers)
        rng_pick = random.Random(seed_of(*key, "pick", *tag))
        rng_buf = random.Random(seed_of(*key, "shuffle", *tag))

        def fields_of(fields: list[str], copy: int | None = None) -> tuple[str, ...]:
            # copy: an "image" epoch's copy c of a location has view c as its anchor (epoch_unit.py)
            chosen = anchored_views(rng_pick, len(fields), spec.n_views, spec.temporal, copy)
            return tuple(fields[i] for i in chosen)

        def picked(samples: Iterator[dict], errors: SampleErrors) -> Iterator[Picked]:
            for sample in samples:
                try:
                    yield pick_views(sample, functools.partial(fields_of, copy=sample.get("__copy__")))
                except Exception as exc:
                    errors.record(f"shard {sample.get('__url__')} key {sample.get('__key__')}", exc)

        first_pass = _first_pass(spec, block, errors)
        items = itertools.chain(
            _shuffled(picked(first_pass, errors), spec.shuffle_buffer, rng_buf),
            picked(self._refill(block, stats), SampleErrors(LoaderStats(), strict=False)),
        )
        aug = spec.augmentation or MocoV2Augment(image_size=spec.image_size)
        for j, size in zip(range(logical, spec.plan.steps, spec.n_workers), sizes, strict=True):
            batch = [next(items) for _ in range(size)]
            if j < spec.start_step:
                continue  # resume: the samples are consumed (same order as before), nothing is decoded
            bspec = spec if size == spec.batch_size else replace(spec, batch_size=size)  # elastic: shorter
            if spec.decode == "defer":
                out = _collate_deferred(batch, bspec)
            else:
                rng_aug = random.Random(seed_of(spec.seed, spec.epoch, spec.rank, j, "augment", *tag))
                u8, slots = _uint8_slots(bspec) if spec.output == "uint8" else (None, None)
                rendered = _render_batch(batch, bspec, aug, rng_aug, errors, stats, slots)
                out = _collate_train(rendered, bspec, u8)
            stats.samples += size
            yield out, stats.take()


def _render_batch(
    batch: list[Picked],
    spec: _Spec,
    aug: MocoV2Augment,
    rng: random.Random,
    errors: SampleErrors,
    stats: LoaderStats,
    slots: Callable[[int], list] | None = None,
) -> list:
    """Decode and crop each sample; one that fails is replaced by another sample of the same batch drawn
    anew, so that a batch always consumes exactly batch_size samples of the stream (resume stays exact).
    `slots(i)`: sample i's output arrays (the uint8 batch), written in place by the render."""

    def params_for(w: int, h: int) -> ViewParams:
        return aug.sample(rng, w, h) if spec.augment else eval_params(w, h)

    out: list = [None] * len(batch)
    for i, picked in enumerate(batch):
        try:
            crops, params = render_views(picked, spec.image_size, params_for, slots and slots(i))
        except Exception as exc:
            errors.record(f"shard {picked.url} key {picked.key}", exc)
            continue
        errors.ok()
        stats.views_decoded += len(picked.data)
        out[i] = (picked, crops, params)
    good = [i for i, item in enumerate(out) if item is not None]
    if not good:
        raise GeoSSLError(f"no decodable sample in a batch of {len(batch)} (last shard {batch[-1].url})")
    for i, item in enumerate(out):
        if item is None:
            picked = out[good[i % len(good)]][0]
            crops, params = render_views(picked, spec.image_size, params_for, slots and slots(i))
            stats.refilled += 1
            out[i] = (picked, crops, params)
    return out


_OUT_BUFFERS = BatchBuffers()  # per process; a worker hands out fresh shared-memory batches


def _batch_shape(spec: _Spec) -> tuple[int, ...]:
    b, n, s = spec.batch_size, spec.n_views, spec.image_size
    return (n, b, 3, s, s) if spec.layout == "pairs" else (b, n, 3, s, s)  # pairs: a q block, a k block


def _uint8_slots(spec: _Spec) -> tuple[torch.Tensor, Callable[[int], list]]:
    """The batch's uint8 output (channels-last, augment.uint8_batch) and, per sample, the (S, S, 3)
    arrays its views are rendered into: no copy after the render."""
    b, n, s = spec.batch_size, spec.n_views, spec.image_size
    out = uint8_batch(_batch_shape(spec), _OUT_BUFFERS)
    hwc = out.view(b * n, 3, s, s).permute(0, 2, 3, 1).numpy()  # a view: out's own memory
    if spec.layout == "pairs":
        return out, lambda i: [hwc[j * b + i] for j in range(n)]
    return out, lambda i: [hwc[i * n + j] for j in range(n)]


def _collate_train(items: list, spec: _Spec, rendered: torch.Tensor | None = None) -> dict:
    """The batch dict; `rendered`: the uint8 batch the views were already rendered into (_uint8_slots),
    else the crops are normalised into a reused float batch (augment.BatchBuffers)."""
    b, n, s = len(items), spec.n_views, spec.image_size
    if rendered is not None:  # 8-bit, channels-last: the consumer normalises (augment.normalize_batch)
        out = rendered
    else:
        if spec.layout == "pairs":
            order = [(i, j) for j in range(n) for i in range(b)]  # view-major: q block, then k block
        else:
            order = [(i, j) for i in range(b) for j in range(n)]
        out = _OUT_BUFFERS.get(_batch_shape(spec))
        finish_views([items[i][1][j] for i, j in order], None, out=out.view(b * n, 3, s, s))
    geo = torch.tensor([it[0].geo for it in items], dtype=torch.int64)
    category = torch.tensor([it[0].category for it in items], dtype=torch.int64)
    keys = [it[0].key for it in items]
    if spec.layout == "pairs":
        return {"q": out[0], "k": out[1], "geo_cluster": geo, "category": category, "key": keys}
    return {"views": out, "geo_cluster": geo, "category": category, "key": keys}


def _collate_deferred(batch: list[Picked], spec: _Spec) -> dict:
    geo = torch.tensor([p.geo for p in batch], dtype=torch.int64)
    category = torch.tensor([p.category for p in batch], dtype=torch.int64)
    keys = [p.key for p in batch]
    if spec.layout == "pairs":
        q = [p.data[p.fields[0]] for p in batch]
        k = [p.data[p.fields[1]] for p in batch]
        return {"q_jpeg": q, "k_jpeg": k, "geo_cluster": geo, "category": category, "key": keys}
    views = [[p.data[f] for f in p.fields] for p in batch]
    return {"views_jpeg": views, "geo_cluster": geo, "category": category, "key": keys}


class _EvalStream(_WorkerStream):
    def __init__(self, source: _Source, image_size: int, batch_size: int, all_views: bool, strict: bool):
        self.source, self.image_size, self.batch_size = source, image_size, batch_size
        self.all_views, self.strict = all_views, strict

    def _batches(self):
        worker, n_workers = _worker()
        stats = LoaderStats()
        errors = SampleErrors(stats, strict=self.strict)
        size = self.image_size

        def samples():
            for shard in range(worker, len(self.source.shards), n_workers):
                yield from self.source.read(Slice(shard, 0, self.source.counts[shard]), errors)

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

        batch: list = []
        for item in views(samples()):
            batch.append(item)
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch = []
        if batch:
            yield collate(batch)
        elif stats.corrupt or stats.shards_opened:
            # ship the counts of a tail that delivered nothing (e.g. a shard with only missing samples)
            yield None, stats.take()


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    _fixed_mmap_threshold()


def _fixed_mmap_threshold(nbytes: int = 256 * 1024) -> None:
    """Stop glibc from raising its mmap threshold after the first large free.

    Large JPEG payloads and images (256 KB - several MB) otherwise land in the heap, whose fragmentation
    grows a worker's RSS by hundreds of MB over an epoch; returned to the OS via mmap, RSS stays flat.
    256 KB, not lower: a 224 px crop and each colour op's output (147 KB) then reuse heap memory instead
    of faulting in fresh pages every time (8-18% more pairs per core with 2 workers, measured), and
    the decoded image goes into a reused buffer (decode.decode_rgb(scratch=True)). PSS over an epoch
    stays flat (BENCHMARKS.md, loader (d)).
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def _items(dataset: IterableDataset, num_workers: int) -> Iterator:
    """The dataset's items, from worker processes when num_workers > 0; a worker's error re-raised here
    as the same one-line error (not PyTorch's wrapped traceback)."""
    if num_workers == 0:
        yield from dataset
        return
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        worker_init_fn=_worker_init,
        persistent_workers=False,
        # its own generator: starting the workers must not draw from the caller's global torch RNG
        # (a mid-epoch resume restores that RNG; a draw after it would shift the trainer's randomness)
        generator=torch.Generator(),
    )
    it, join_feeders = iter(loader), _join_feeders  # a global may be gone when the finally runs at exit
    try:
        for item in it:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        queues = [*getattr(it, "_index_queues", ()), getattr(it, "_worker_result_queue", None)]
        del it  # shuts the workers down
        join_feeders(queues)


def _join_feeders(queues: list) -> None:
    """Wait until the closed queues' feeder threads have ended.

    PyTorch closes a finished epoch's queues without joining their feeder threads, so they end while the
    next loader already forks its workers. CPython before 3.11.8 (gh-112275) can then fork while an ending
    thread holds the runtime's thread-list lock, and the new worker hangs for good in PyOS_AfterFork_Child
    (seen once under torchrun with 3 ranks). A closed queue's feeder ends within milliseconds."""
    for q in queues:
        thread = getattr(q, "_thread", None)  # multiprocessing.Queue's feeder, started on its first put
        if thread is not None and getattr(q, "_closed", False):
            thread.join(timeout=5)


def _say_left_out(chosen: ShardSet) -> None:
    """One stderr line per shard left out of the split (shard_list.select_shards), then the samples lost."""
    for line in chosen.left_out:
        log.warning("geo-ssl loader: %s; left out", line)
    if chosen.lost:
        log.warning(
            "geo-ssl loader: %s samples of manifest.parquet are in shards left out: counted as missing; "
            "--strict refuses",
            chosen.lost,
        )


def _count_left_out(stats: LoaderStats, chosen: ShardSet | None) -> None:
    """Samples of shards left out count as missing (and corrupt) once per pass, as a shard's lacking ones."""
    if chosen is None or not (chosen.lost or chosen.left_out):
        return
    stats.corrupt += chosen.lost
    stats.missing += chosen.lost
    stats.errors.extend(chosen.left_out[: max(0, _MAX_ERRORS_KEPT - len(stats.errors))])


class StreamingLoader:
    """An epoch of exactly `len(self)` batches per rank; iterate once per epoch after `set_epoch`.

    `state_dict()` / `load_state_dict()` let a user's own loop resume mid-epoch (see state_dict)."""

    def __init__(self, spec: _Spec, num_workers: int, left_out: ShardSet | None = None):
        self._spec, self.num_workers = spec, num_workers
        self._left_out = left_out  # rank 0 counts the samples of shards left out, once per epoch
        self.epoch = 0
        self._start_step = 0
        self._epoch_set = True
        self._step = 0  # while iterating: batches of self.epoch handed out, start_step included
        self.stats = LoaderStats()
        # an epoch resumed on another number of ranks (load_state_dict): (epoch, positions its first cut
        # used, the cuts that ran before this loader's), and elastic.plan_rest of it, computed once
        self._elastic: tuple[int, int, tuple[Cut, ...]] | None = None
        self._rest: dict[str, int] | None = None

    def __len__(self) -> int:
        return self._spec.plan.steps

    @property
    def plan(self) -> EpochPlan:
        """Steps, samples used and the remainder dropped per epoch (`plan.describe()` for a line)."""
        return self._spec.plan

    @property
    def shards(self) -> list[str]:
        return list(self._spec.source.shards)

    def _cut(self) -> Cut:
        spec = self._spec
        return Cut(spec.world_size, spec.batch_size, spec.n_workers, spec.shuffle_buffer)

    def _elastic_rest(self, epoch: int) -> tuple[int, dict[str, int]] | None:
        """(steps taken before this loader's cut, elastic.plan_rest) when `epoch` is an elastic one."""
        if self._elastic is None or self._elastic[0] != epoch:
            return None
        _, used, cuts = self._elastic
        if self._rest is None:
            self._rest = plan_rest(used, list(cuts), self._cut(), self._spec.seed, epoch)
        return sum(c.steps_done for c in cuts), self._rest

    def steps_in_epoch(self, epoch: int | None = None) -> int:
        """Batches per rank in `epoch` (default: the current one): len(self), except in an epoch resumed
        on another number of ranks, where it is the steps taken before plus this cut's (elastic.py)."""
        rest = self._elastic_rest(self.epoch if epoch is None else int(epoch))
        return len(self) if rest is None else rest[0] + rest[1]["steps"]

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Next iteration: epoch `epoch`, from batch `start_step` on (a mid-epoch resume)."""
        rest = self._elastic_rest(int(epoch))
        first = 0 if rest is None else rest[0]
        if not first <= int(start_step) <= self.steps_in_epoch(int(epoch)):
            raise GeoSSLError(
                f"start_step {start_step} is outside the epoch's steps {first}..{self.steps_in_epoch(epoch)}"
            )
        self.epoch, self._start_step, self._epoch_set = int(epoch), int(start_step), True

    def __iter__(self) -> Iterator[dict]:
        if not self._epoch_set:
            self.epoch, self._start_step = self.epoch + 1, 0
        self._epoch_set = False
        spec = replace(self._spec, epoch=self.epoch, start_step=self._start_step)
        self._start_step, self._step = 0, spec.start_step
        left = self.steps_in_epoch() - spec.start_step
        if left <= 0:
            return
        rest = self._elastic_rest(self.epoch)
        if rest is not None and self._elastic is not None:  # this cut's steps, counted from 0
            plan = replace(spec.plan, steps=rest[1]["steps"])
            elastic = (self._elastic[1], self._elastic[2])
            spec = replace(spec, plan=plan, start_step=spec.start_step - rest[0], elastic=elastic)
        _count_left_out(self.stats, self._left_out)
        it = _items(_TrainStream(spec), self.num_workers)
        try:
            for _ in range(left):
                batch, delta = next(it)
                self.stats.add(delta)
                self._step += 1  # counted before the batch is handed out: a state saved with it skips it
                yield batch
        finally:
            it.close()

    def _fingerprint(self) -> dict[str, int | str]:
        """What fixes the batch sequence besides (epoch, step): the data, the cut and the order's inputs."""
        spec, plan = self._spec, self._spec.plan
        names = [url.rstrip("/").rsplit("/", 1)[-1] for url in spec.source.shards]
        return {
            "steps": plan.steps,
            "batch_size": spec.batch_size,
            "samples": plan.samples,
            "shards": len(names),
            "data": f"{seed_of(names, spec.source.counts):016x}",  # shard names and sample counts
            "workers": spec.n_workers,  # the order depends on the logical worker count (epoch_plan)
            "shuffle_buffer": spec.shuffle_buffer,
        }

    def state_dict(self) -> dict:
        """Where this loader stands, as plain ints and strings (json.dump or torch.save it): `epoch` and
        `step`, the batches of that epoch already handed out by the iterator (the `start_step` it was set to
        included; an epoch handed out in full gives the next epoch, step 0), with `seed`, `rank`,
        `world_size` and a `plan` fingerprint that load_state_dict checks.

        No RNG state is needed: batch j of an epoch is a function of (seed, epoch, rank, j) and the data
        alone. View picks and the shuffle buffer are seeded per (seed, epoch, rank, worker) and replayed
        from the epoch's start on a resume (the skipped samples are read, not decoded); batch j's
        augmentation is seeded by (seed, epoch, rank, j); the global torch/numpy/random RNGs are not used."""
        epoch, step = (self.epoch, self._start_step) if self._epoch_set else (self.epoch, self._step)
        return self.state_at(epoch, step)

    def state_at(self, epoch: int, step: int) -> dict:
        """state_dict() as it reads once `step` batches of `epoch` are handed out (a trainer whose data
        path prefetches saves the step it trained, not the loader's). In an epoch resumed on another number
        of ranks it also holds `elastic`: the cuts that ran before (elastic.py)."""
        spec = self._spec
        if step >= self.steps_in_epoch(epoch):
            epoch, step = epoch + 1, 0
        state = {
            "format": _STATE_FORMAT,
            "epoch": epoch,
            "step": step,
            "seed": spec.seed,
            "rank": spec.rank,
            "world_size": spec.world_size,
            "plan": self._fingerprint(),
        }
        if self._elastic is not None and self._elastic[0] == epoch:
            state["elastic"] = {"used": self._elastic[1], "cuts": [asdict(c) for c in self._elastic[2]]}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` (this or another loader's state_dict): the next iteration yields exactly
        the batches of that epoch not yet handed out, then later iterations the next epochs. A state of
        other data, batch size, workers or seed is refused with one line (GeoSSLError).

        A state saved under another cut (`other_cut`: another number of ranks, per-rank batch, loader
        workers or shuffle buffer) is an elastic resume (elastic.py): the rest of that epoch, each sample
        the saved run had not taken once over this loader's ranks (`steps_in_epoch()` says how many
        batches), then exact epochs under this cut."""
        mine = self.state_dict()
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise GeoSSLError(f"loader state: not a StreamingLoader state of format {_STATE_FORMAT}")
        if self.other_cut(state):
            self._load_elastic(state, mine)
            return
        for key in ("seed", "rank", "world_size"):
            if state.get(key) != mine[key]:
                raise GeoSSLError(f"loader state: {key} {state.get(key)!r} when saved, {mine[key]!r} here")
        saved = state.get("plan") if isinstance(state.get("plan"), dict) else {}
        for key, value in mine["plan"].items():
            if saved.get(key) != value:
                raise GeoSSLError(
                    f"loader state: {key} {saved.get(key)!r} when saved, {value!r} here "
                    "(other shards, batch size, ranks or workers give other batches)"
                )
        epoch, step = _epoch_step(state)
        used, cuts = _saved_cuts(state)
        self._elastic, self._rest = ((epoch, used, cuts), None) if cuts else (None, None)
        self.set_epoch(epoch, start_step=step)

    def other_cut(self, state: dict) -> bool:
        """Whether `state` was saved under another cut of the same epochs (ranks, per-rank batch, logical
        workers or shuffle buffer: the batches differ from here on), which load_state_dict resumes
        elastically; the data and the seed are checked there."""
        if not isinstance(state, dict) or type(state.get("world_size")) is not int:
            return False
        saved, mine = state.get("plan") if isinstance(state.get("plan"), dict) else {}, self._fingerprint()
        return state["world_size"] != self._spec.world_size or any(
            saved.get(k) != mine[k] for k in ("batch_size", "workers", "shuffle_buffer")
        )

    def _load_elastic(self, state: dict, mine: dict) -> None:
        """A state of another world size: the saved cut joins the epoch's cuts, this loader reads the rest."""
        saved = state.get("plan") if isinstance(state.get("plan"), dict) else {}
        for key, want, got in [("seed", mine["seed"], state.get("seed"))] + [
            (k, mine["plan"][k], saved.get(k)) for k in ("data", "samples", "shards")
        ]:
            if got != want:
                raise GeoSSLError(f"loader state: {key} {got!r} when saved, {want!r} here (other data)")
        epoch, step = _epoch_step(state)
        used, cuts = _saved_cuts(state)
        if not cuts:
            used = _int(saved, "steps") * _int(saved, "batch_size") * int(state["world_size"])
        done = step - sum(c.steps_done for c in cuts)
        old = Cut(int(state["world_size"]), _int(saved, "batch_size"), _int(saved, "workers"),
                  _int(saved, "shuffle_buffer"), done)  # fmt: skip
        if used <= 0 or not 0 <= done <= plan_rest(used, list(cuts), old, self._spec.seed, epoch)["steps"]:
            raise GeoSSLError(f"loader state: epoch {epoch}, step {step}: not a step of the saved epoch")
        cuts = (*cuts, old) if done else cuts
        self._elastic, self._rest = ((epoch, used, cuts), None) if cuts else (None, None)
        rest = self._elastic_rest(epoch)
        if rest is not None and rest[1]["dropped"] and self._spec.rank == 0:
            log.warning("geo-ssl loader: %s of the epoch's %s remaining samples do not fill a batch on each "
                        "of %s ranks: left out of epoch %s", rest[1]["dropped"], rest[1]["remaining"],
                        self._spec.world_size, epoch)  # fmt: skip
        self.set_epoch(epoch, start_step=step)


def _int(d: dict, key: str) -> int:
    value = d.get(key)
    if type(value) is not int or value < 0:
        raise GeoSSLError(f"loader state: {key} {value!r}: not a count")
    return value


def _epoch_step(state: dict) -> tuple[int, int]:
    epoch, step = state.get("epoch"), state.get("step")
    if not (type(epoch) is int and type(step) is int and epoch >= 0):
        raise GeoSSLError(f"loader state: epoch {epoch!r}, step {step!r}: not an epoch and a step")
    return epoch, step


def _saved_cuts(state: dict) -> tuple[int, tuple[Cut, ...]]:
    """The `elastic` part of a state: (positions the epoch's first cut used, the cuts before)."""
    saved = state.get("elastic")
    if saved is None:
        return 0, ()
    try:
        cuts = tuple(Cut(**{k: _int(c, k) for k in c}) for c in saved["cuts"])
        return _int(saved, "used"), cuts
    except (TypeError, KeyError, AttributeError) as exc:
        raise GeoSSLError(f"loader state: elastic {saved!r}: not a list of cuts ({exc})") from None


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
        strict: bool = False,
        cache_dir: str | None = None,
        cache_limit: int | str = "20G",
        counts: list[tuple[int, int]] | None = None,
        left_out: ShardSet | None = None,
        sha256: list[str] | None = None,
    ):
        self.shards, self.storage_options = shards, storage_options
        self.image_size, self.batch_size, self.all_views = image_size, batch_size, all_views
        self.num_workers = min(num_workers, len(shards))
        self.strict = strict
        self.stats = LoaderStats()
        self._counts = counts if counts is not None else shard_counts(shards, storage_options)
        self._left_out = left_out  # samples of shards left out: counted as missing once per pass
        self._source = _Source(
            shards,
            [s for s, _ in self._counts],
            storage_options,
            cache_dir=cache_dir,
            cache_limit=cache_limit,
            sha256=sha256,
        )
        self._len: int | None = None

    def __len__(self) -> int:
        if self._len is None:
            n = [v if self.all_views else s for s, v in self._counts]
            workers = max(1, self.num_workers)
            self._len = sum(math.ceil(sum(n[w::workers]) / self.batch_size) for w in range(workers))
        return self._len

    def __iter__(self) -> Iterator[dict]:
        _count_left_out(self.stats, self._left_out)
        if not self.shards:  # a rank with no shard of its own (fewer shards than ranks)
            return
        ds = _EvalStream(self._source, self.image_size, self.batch_size, self.all_views, self.strict)
        for batch, delta in _items(ds, self.num_workers):
            self.stats.add(delta)
            if batch is not None:
                yield batch


# ------------------------------------------------------------------------------------------------ API


def _train_loader(
    cfg: LoaderConfig, n_views: int, rank: int, world_size: int, layout: str
) -> StreamingLoader:
    if not 0 <= rank < world_size:
        raise GeoSSLError(f"rank {rank} is outside world_size {world_size}")
    if cfg.batch_size < 1 or cfg.image_size < 8 or n_views < 1:
        raise GeoSSLError("batch_size, n_views must be >= 1 and image_size >= 8")
    if cfg.decode not in _DECODE_MODES:
        raise GeoSSLError(f"decode={cfg.decode!r}: choose one of {', '.join(_DECODE_MODES)}")
    if cfg.output not in _OUTPUTS:
        raise GeoSSLError(f"output={cfg.output!r}: choose one of {', '.join(_OUTPUTS)}")
    if cfg.cache_dir:
        ShardCache(cfg.cache_dir, cfg.cache_limit)  # checks the folder and the limit up front
    chosen = cached_shard_set(cfg.urls, cfg.split, cfg.storage_options, cfg.cache_dir, cfg.strict)
    if rank == 0:
        _say_left_out(chosen)
    shards, pairs = chosen.shards, chosen.counts
    counts = [s for s, _ in pairs]
    if cfg.augmentation is not None and cfg.augmentation.image_size != cfg.image_size:
        raise ValueError(f"augmentation for {cfg.augmentation.image_size} px, loader at {cfg.image_size} px")
    unit_views = None
    if check_unit(cfg.epoch_unit) == "image":  # plan over views: each location once per view
        unit_views = shard_views(shards, pairs, cfg.storage_options)
        counts = unit_counts(unit_views)
    plan = replace(plan_epoch(counts, cfg.batch_size, world_size, cfg.epoch_samples), lost=chosen.lost)
    n_workers = max(1, min(cfg.num_workers, plan.steps))
    source = _Source(
        shards, counts, cfg.storage_options, cfg.cache_dir, cfg.cache_limit, cfg.read_attempts, chosen.sha256
    )
    source = _with_prefetch(source, cfg, [s for s, _ in pairs])
    spec = _Spec(
        source=source,
        plan=plan,
        batch_size=cfg.batch_size,
        image_size=cfg.image_size,
        n_views=n_views,
        temporal=cfg.temporal,
        augment=cfg.augment,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=cfg.seed,
        strict=cfg.strict,
        n_workers=n_workers,
        rank=rank,
        world_size=world_size,
        layout=layout,
        decode=cfg.decode,
        unit_views=unit_views,
        augmentation=cfg.augmentation,
        output=cfg.output,
    )
    return StreamingLoader(spec, n_workers if cfg.num_workers > 0 else 0, chosen if rank == 0 else None)


def _with_prefetch(source: _Source, cfg: LoaderConfig, samples: list[int]) -> _Source:
    """`source` set to fetch ahead as cfg says (prefetch.py); without a cache the object sizes and the
    sample index's bounds are read here, once, in the main process."""
    ahead = (4 if prefetch_default(source.shards) else 0) if cfg.prefetch is None else cfg.prefetch
    if type(ahead) is not int or ahead < 0:
        raise GeoSSLError(f"prefetch={cfg.prefetch!r}: slices ahead, an int >= 0 (0: off)")
    try:
        budget = parse_size(cfg.prefetch_bytes)
    except GeoSSLError:
        raise GeoSSLError(f"prefetch_bytes={cfg.prefetch_bytes!r}: not a size (examples: 256M, 1G)") from None
    if not ahead:
        return source
    layout = None if cfg.cache_dir else read_layout(source.shards, samples, cfg.storage_options)
    return replace(source, prefetch=ahead, prefetch_bytes=budget, layout=layout)


def pretrain_loader(cfg: LoaderConfig, rank: int = 0, world_size: int = 1) -> StreamingLoader:
    """MoCo pairs: dict items {"q", "k": float32 [B, 3, S, S], "geo_cluster", "category": int64 [B], "key"}
    (output="uint8": "q", "k" unnormalised uint8; decode="defer": "q_jpeg", "k_jpeg": list[bytes])."""
    return _train_loader(cfg, 2, rank, world_size, "pairs")


def views_loader(cfg: LoaderConfig, n_views: int, rank: int = 0, world_size: int = 1) -> StreamingLoader:
    """N views per location: dict items {"views": float32 [B, N, 3, S, S], "geo_cluster", "category", "key"}
    (output="uint8": "views" unnormalised uint8; decode="defer": "views_jpeg": list[list[bytes]])."""
    return _train_loader(cfg, n_views, rank, world_size, "views")


def eval_loader(
    urls: str | list[str],
    image_size: int = 224,
    batch_size: int = 256,
    num_workers: int = 4,
    split: str | None = None,
    all_views: bool = True,
    storage_options: dict | None = None,
    strict: bool = False,
    cache_dir: str | None = None,
    cache_limit: int | str = "20G",
    rank: int = 0,
    world_size: int = 1,
) -> EvalLoader:
    """Dict items {"image": float32 [B, 3, S, S], "category", "geo_cluster": int64 [B], "key"}; eval transform
    (Resize(S) + CenterCrop(S) + ImageNet normalisation). Keys are `{key}/{NN}` per view with
    all_views=True (every stored view), else the location key with its first (oldest) view. Skipped
    samples are counted in `.stats` (strict=True raises instead), with those of shards left out for not
    matching manifest.parquet (shard_list.select_shards; strict=True refuses them).

    rank/world_size: rank r reads shards r, r + world_size, ... of the split, a disjoint part (a rank may
    get none when there are fewer shards than ranks); the default reads the whole split. The trainer's
    kNN monitor does not split: it runs on rank 0 over the whole bank and query splits while the other
    ranks wait (training/trainer/loop.py)."""
    if not 0 <= rank < world_size:
        raise GeoSSLError(f"rank {rank} is outside world_size {world_size}")
    chosen = cached_shard_set(urls, split, storage_options, cache_dir, strict)  # the store may be down
    if rank == 0:
        _say_left_out(chosen)
    mine = range(rank, len(chosen.shards), world_size)
    return EvalLoader(
        [chosen.shards[i] for i in mine],
        storage_options,
        image_size,
        batch_size,
        num_workers,
        all_views,
        strict,
        cache_dir,
        cache_limit,
        counts=[chosen.counts[i] for i in mine],
        left_out=chosen if rank == 0 else None,
        sha256=[chosen.sha256[i] for i in mine] if chosen.sha256 else None,
    )
