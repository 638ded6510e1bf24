"""Streaming loaders over geo-ssl shards: MoCo pairs, N views per location for other SSL methods, eval.

One shard sample is one location with all its views (schemas/SAMPLE_FORMAT.md). The training stream:

    shard URLs  -- shuffled per pass with a seed shared by all ranks, split by rank, then by worker
    tar members -- read with webdataset's tar expander + grouper, opened through fsspec (s3:// etc.)
    select      -- parse the json, pick the views, keep only their JPEG bytes (not decoded)
    shuffle     -- webdataset shuffle buffer of these encoded samples
    render      -- draw crop/jitter/blur/flip, decode only the chosen views in the DCT domain
    batch       -- stack, then colour + normalise the whole batch at once (training.augment)

Every rank yields exactly `len(loader)` batches per epoch: each worker repeats its shards for as
long as asked (shards are replicated when there are fewer than ranks x workers), and the loader
stops after `len()` batches, so DDP never waits on a rank that ran out of uneven shards. Seeds
derive from (cfg.seed, epoch, rank, worker); call `set_epoch(epoch)` before each epoch (a loader
iterated again without it moves to the next epoch by itself).

Corrupt samples (bad tar member, undecodable JPEG, bad json, missing view) are skipped and counted
in `loader.stats` without sleeping; `strict=True` raises `CorruptSampleError` naming shard and key.

Other SSL methods (SimCLR, BYOL, multi-crop, ...) ask the same shards for N views per location:

    from training.loader import LoaderConfig, views_loader
    cfg = LoaderConfig(urls="shards/train-{000000..000041}.tar", batch_size=256, image_size=224)
    loader = views_loader(cfg, n_views=4, rank=rank, world_size=world_size)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for views, geo, category, keys in loader:   # views: float32 [B, 4, 3, 224, 224]
            ...

With `temporal=True` the N views come from distinct timestamps while the location has enough (then
repeat), each with its own MoCo-v2 augmentation; `temporal=False` augments one random view N times;
`augment=False` only resizes, centre-crops and normalises. Plain webdataset reads the shards too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import posixpath
import random
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import braceexpand
import fsspec
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.errors import GeoSSLError
from training.augment import MocoV2Augment, ViewParams, eval_params, finish_views, spatial
from training.decode import decode_crops, jpeg_size

_MAX_ERRORS_KEPT = 20
_MAX_CORRUPT_IN_A_ROW = 1000


class CorruptSampleError(GeoSSLError):
    """strict=True: a sample could not be read; the message names the shard and the key."""


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


@dataclass
class LoaderStats:
    """What the loader read; `corrupt` samples were skipped (first messages kept in `errors`)."""

    samples: int = 0  # samples (locations, or views in eval with all_views) delivered in batches
    views_decoded: int = 0
    corrupt: int = 0
    shards_opened: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: LoaderStats) -> None:
        self.samples += other.samples
        self.views_decoded += other.views_decoded
        self.corrupt += other.corrupt
        self.shards_opened += other.shards_opened
        room = _MAX_ERRORS_KEPT - len(self.errors)
        if room > 0:
            self.errors.extend(other.errors[:room])

    def take(self) -> LoaderStats:
        """Return the counts so far and reset (workers ship deltas with each batch)."""
        out = replace(self, errors=list(self.errors))
        self.samples = self.views_decoded = self.corrupt = self.shards_opened = 0
        self.errors.clear()
        return out


# --------------------------------------------------------------------------------------------- shards


def resolve_shards(
    urls: str | Sequence[str], split: str | None = None, storage_options: dict | None = None
) -> list[str]:
    """Expand brace patterns, list folders (all *.tar, or `{split}-*.tar` when split is given)."""
    items = [urls] if isinstance(urls, str | os.PathLike) else list(urls)
    out: list[str] = []
    for item in items:
        for url in braceexpand.braceexpand(os.fspath(item)):
            if url.endswith(".tar"):
                out.append(url)
                continue
            fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
            if not fs.isdir(path):
                raise GeoSSLError(f"{url}: not a .tar shard nor a folder of shards")
            prefix = f"{split}-" if split else ""
            names = sorted(
                posixpath.basename(p)
                for p in fs.ls(path, detail=False)
                if p.endswith(".tar") and posixpath.basename(p).startswith(prefix)
            )
            out.extend(_join(url, name) for name in names)
    if not out:
        raise GeoSSLError(f"no shards found at {urls!r}" + (f" for split {split!r}" if split else ""))
    return out


def _join(folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _open(url: str, storage_options: dict | None):
    if _is_local(url):
        return open(url.removeprefix("file://"), "rb", buffering=1 << 20)
    return fsspec.open(url, "rb", **(storage_options or {})).open()


def shard_counts(shards: Sequence[str], storage_options: dict | None = None) -> list[tuple[int, int]]:
    """(samples, views) per shard: from manifest.parquet beside the shards when it lists them, else by
    reading the tar headers once."""
    known: dict[str, tuple[int, int]] = {}
    for folder in sorted({posixpath.dirname(s) for s in shards}):
        known.update({_join(folder, k): v for k, v in _manifest_counts(folder, storage_options).items()})
    return [known[s] if s in known else _scan_counts(s, storage_options) for s in shards]


def _manifest_counts(folder: str, storage_options: dict | None) -> dict[str, tuple[int, int]]:
    import pyarrow.parquet as pq

    from schemas import SchemaError, check_metadata

    url = _join(folder, "manifest.parquet") if folder else "manifest.parquet"
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        if not fs.exists(path):
            return {}
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            check_metadata(pf.schema_arrow, "shard_manifest", url)
            rows = pf.read(columns=["shard", "samples", "views"]).to_pylist()
    except (SchemaError, OSError, ValueError) as exc:
        raise GeoSSLError(f"{url}: unreadable shard manifest ({exc})") from exc
    return {r["shard"]: (int(r["samples"]), int(r["views"])) for r in rows}


def _scan_counts(url: str, storage_options: dict | None) -> tuple[int, int]:
    samples = views = 0
    try:
        with _open(url, storage_options) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                name = posixpath.basename(member.name)
                samples += name.endswith(".json")
                views += name.endswith(".jpg")
    except (OSError, tarfile.TarError) as exc:
        raise GeoSSLError(f"{url}: cannot read shard ({exc})") from exc
    return samples, views


# ---------------------------------------------------------------------------------------- sample steps


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


@dataclass
class _Picked:
    """A sample after view selection: only the chosen views' JPEG bytes, nothing decoded."""

    key: str
    url: str
    geo: int
    category: int
    fields: tuple[str, ...]  # chosen view members, one per output view (may repeat)
    data: dict[str, bytes]


def _read_meta(sample: dict) -> tuple[dict, list[str], int, int]:
    try:
        meta = json.loads(sample["json"])
        fields = [str(v["field"]) for v in meta["views"]]
        category = int(meta["category_index"])
        cluster = int(meta["cluster"])
    except KeyError as exc:
        raise ValueError(f"member or json field {exc} missing") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad json ({exc})") from exc
    if not fields:
        raise ValueError("json lists no views")
    try:
        geo = int(sample["cls"])
    except KeyError:
        raise ValueError("cls member missing") from None
    except ValueError:
        raise ValueError(f"cls is not an integer: {sample['cls'][:20]!r}") from None
    if geo != cluster:
        raise ValueError(f"cls {geo} disagrees with json cluster {cluster}")
    return meta, fields, geo, category


def choose_views(rng: random.Random, n_stored: int, n_views: int, temporal: bool) -> list[int]:
    """Indices of the stored views to use, one per output view.

    temporal: distinct views (timestamps) drawn uniformly while there are enough, then uniform repeats;
    for n_views=2 that is GASSL's rule (key = another timestamp, the anchor itself if it is alone).
    Otherwise one random view, used n_views times.
    """
    if not temporal or n_stored == 1:
        return [rng.randrange(n_stored)] * n_views
    if n_views <= n_stored:
        return rng.sample(range(n_stored), n_views)
    picked = rng.sample(range(n_stored), n_stored)
    return picked + [rng.randrange(n_stored) for _ in range(n_views - n_stored)]


def _pick(sample: dict, fields_of: Callable[[list[str]], tuple[str, ...]]) -> _Picked:
    _, fields, geo, category = _read_meta(sample)
    chosen = fields_of(fields)
    data = {}
    for f in set(chosen):
        if f not in sample:
            raise ValueError(f"view member {f} listed in json is missing")
        data[f] = sample[f]
    return _Picked(sample["__key__"], sample.get("__url__", "?"), geo, category, chosen, data)


def _render(picked: _Picked, size: int, params_for: Callable[[int, int], ViewParams]) -> tuple[list, list]:
    """Decode each distinct chosen view once and return its crops (uint8, flipped/blurred) and params."""
    sizes = {f: jpeg_size(b) for f, b in picked.data.items()}
    params = [params_for(*sizes[f]) for f in picked.fields]
    crops: list[torch.Tensor | None] = [None] * len(picked.fields)
    for f in picked.data:
        idx = [i for i, g in enumerate(picked.fields) if g == f]
        w, h = sizes[f]
        for i, crop in zip(
            idx, decode_crops(picked.data[f], [params[i].box for i in idx], size, w, h), strict=True
        ):
            crops[i] = spatial(crop, params[i])
    return crops, params


class _Errors:
    """Our handler: count, remember, raise when strict. No sleep (webdataset's warn_and_continue sleeps 0.5 s)."""

    def __init__(self, stats: LoaderStats, strict: bool):
        self.stats, self.strict, self.in_a_row = stats, strict, 0

    def record(self, where: str, exc: BaseException) -> None:
        msg = f"{where}: {exc}"
        if self.strict:
            raise CorruptSampleError(f"corrupt sample: {msg}") from exc
        self.stats.corrupt += 1
        if len(self.stats.errors) < _MAX_ERRORS_KEPT:
            self.stats.errors.append(msg)
        self.in_a_row += 1
        if self.in_a_row >= _MAX_CORRUPT_IN_A_ROW:
            raise GeoSSLError(f"{self.in_a_row} corrupt samples in a row, last: {msg}")

    def ok(self) -> None:
        self.in_a_row = 0

    def wds_handler(self, exn: Exception) -> bool:
        """For webdataset's tar stages: the shard URL is the last string webdataset appended to args."""
        url = next((a for a in reversed(exn.args) if isinstance(a, str) and a.endswith(".tar")), "?")
        self.record(f"shard {url}", exn)
        return True


def _tar_files(stream, url: str) -> Iterator[dict]:
    """Members of a POSIX tar as webdataset file dicts, then webdataset's end-of-shard marker `{}`.

    A lean replacement for webdataset's tarfile-based expander (about 20x less Python per member, which
    matters at several thousand members per second per core). Reads ustar, GNU long names and pax
    paths; checks header checksums, so a damaged shard fails loudly instead of yielding garbage.
    """
    long_name: bytes | None = None
    while True:
        header = stream.read(512)
        if len(header) < 512:
            if header:
                raise tarfile.ReadError(f"{url}: truncated tar header")
            break  # end of file without end-of-archive blocks: accepted, as tar does
        if header.count(0) == 512:
            break
        stored = header[148:156].split(b"\0", 1)[0].strip()
        if not stored or int(stored, 8) != sum(header) - sum(header[148:156]) + 256:
            raise tarfile.ReadError(f"{url}: bad tar header checksum")
        size_field = header[124:136]
        if size_field[0] & 0x80:
            size = int.from_bytes(size_field[1:], "big")
        else:
            size = int(size_field.split(b"\0", 1)[0].strip() or b"0", 8)
        data = stream.read(size)
        pad = -size % 512
        if len(data) < size or len(stream.read(pad)) < pad:
            raise tarfile.ReadError(f"{url}: truncated tar member")
        kind = header[156:157]
        if kind == b"L":
            long_name = data.rstrip(b"\0")
            continue
        if kind == b"x":
            for record in data.split(b"\n"):
                if b" path=" in record:
                    long_name = record.split(b" path=", 1)[1]
            continue
        if kind not in (b"0", b"\0", b"7"):
            long_name = None
            continue
        name = header[:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
        fname = (long_name or (prefix + b"/" + name if prefix else name)).decode("utf-8", "replace")
        long_name = None
        base = posixpath.basename(fname)
        if base.startswith("__") and base.endswith("__"):
            continue
        yield {"fname": fname, "data": data, "__url__": url}
    yield {}


def _tar_samples(
    urls: Iterator[str], storage_options: dict | None, stats: LoaderStats, errors: _Errors, forever: bool
):
    """Samples of each shard in turn, files closed after each shard. With `forever`, `urls` is endless
    and 1000 shard opens in a row without a sample is an error (otherwise the stream would spin)."""
    empty_run = 0
    for url in urls:
        got = 0
        try:
            with _open(url, storage_options) as stream:
                stats.shards_opened += 1
                for sample in wds.tariterators.group_by_keys(
                    _tar_files(stream, url), handler=errors.wds_handler
                ):
                    got += 1
                    yield sample
        except (OSError, tarfile.TarError, UnicodeError) as exc:
            errors.record(f"shard {url}", exc)
        empty_run = 0 if got else empty_run + 1
        if forever and empty_run >= 1000:
            raise GeoSSLError(f"no readable samples in the last {empty_run} shard opens (last: {url})")


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
        random.Random(_seed(spec.seed, spec.epoch, p, "shards")).shuffle(order)
        yield from order[spec.rank :: spec.world_size][worker::n_workers]


class _TrainStream(IterableDataset):
    def __init__(self, spec: _Spec):
        self.spec = spec

    def __iter__(self):
        spec = self.spec
        worker, n_workers = _worker()
        stats = LoaderStats()
        errors = _Errors(stats, spec.strict)
        rng_pick = random.Random(_seed(spec.seed, spec.epoch, spec.rank, worker, "pick"))
        rng_aug = random.Random(_seed(spec.seed, spec.epoch, spec.rank, worker, "augment"))
        rng_buf = random.Random(_seed(spec.seed, spec.epoch, spec.rank, worker, "shuffle"))
        aug = MocoV2Augment(image_size=spec.image_size)

        def params_for(w: int, h: int) -> ViewParams:
            return aug.sample(rng_aug, w, h) if spec.augment else eval_params(w, h)

        def fields_of(fields: list[str]) -> tuple[str, ...]:
            return tuple(fields[i] for i in choose_views(rng_pick, len(fields), spec.n_views, spec.temporal))

        def pick(src):
            for sample in src:
                try:
                    yield _pick(sample, fields_of)
                except Exception as exc:
                    errors.record(f"shard {sample.get('__url__')} key {sample.get('__key__')}", exc)

        def render(src):
            for picked in src:
                try:
                    crops, params = _render(picked, spec.image_size, params_for)
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
            lambda urls: _tar_samples(urls, spec.storage_options, stats, errors, forever=True),
            pick,
        ]
        if spec.shuffle_buffer > 0:
            stages.append(
                wds.shuffle(spec.shuffle_buffer, initial=min(100, spec.shuffle_buffer), rng=rng_buf)
            )
        stages += [render, wds.batched(spec.batch_size, collation_fn=collate, partial=False)]
        return iter(wds.DataPipeline(*stages))


def _collate_train(items: list, spec: _Spec) -> tuple:
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
        return out[0], out[1], geo, category, keys
    return out, geo, category, keys


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
        errors = _Errors(stats, strict=False)
        size = self.image_size

        def views(src):
            for sample in src:
                try:
                    _, fields, geo, category = _read_meta(sample)
                    chosen = fields if self.all_views else fields[:1]
                    data = {f: sample[f] for f in chosen}
                except Exception as exc:
                    errors.record(f"shard {sample.get('__url__')} key {sample.get('__key__')}", exc)
                    continue
                for f in chosen:
                    key = f"{sample['__key__']}/{f.split('.')[0]}" if self.all_views else sample["__key__"]
                    picked = _Picked(key, sample["__url__"], geo, category, (f,), {f: data[f]})
                    try:
                        crops, params = _render(picked, size, eval_params)
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
            return (images, category, geo, [it[0].key for it in items]), stats.take()

        return iter(
            wds.DataPipeline(
                lambda: iter(self.shards[worker::n_workers]),
                lambda urls: _tar_samples(urls, self.storage_options, stats, errors, forever=False),
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

    def __iter__(self) -> Iterator[tuple]:
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

    def __iter__(self) -> Iterator[tuple]:
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
    """MoCo pairs: items (q, k: float32 [B, 3, S, S], geo: int64 [B], category: int64 [B], keys)."""
    return _train_loader(cfg, 2, rank, world_size, "pairs")


def views_loader(cfg: LoaderConfig, n_views: int, rank: int = 0, world_size: int = 1) -> StreamingLoader:
    """N views per location: items (views: float32 [B, N, 3, S, S], geo, category, keys)."""
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
    """Items (images float32 [B, 3, S, S], category int64 [B], geo int64 [B], keys); eval transform
    (Resize(S) + CenterCrop(S) + ImageNet normalisation). Keys are `{key}/{NN}` per view with
    all_views=True (every stored view), else the location key with its first (oldest) view."""
    shards = resolve_shards(urls, split, storage_options)
    return EvalLoader(shards, storage_options, image_size, batch_size, num_workers, all_views)
