"""Prefetch: the bytes a loader worker will read this epoch, fetched ahead of it on a few threads.

A bucket answers each request after tens of milliseconds and paces each connection; read one shard after
another, a worker waits for the network most of the time. But a worker knows its whole epoch up front:
its block of (shard, start, stop) slices, in order (epoch_plan.worker_block). So the bytes behind the
next slices are fetched in that exact order on a small thread pool while the reader works on the current
one, and the reader gets each slice as a stream over parts already in memory (or arriving).

- Byte ranges: with `sample_index.parquet` beside the shards (write-shards writes it), a slice is the
  bytes from its first sample's first header to its last sample's last member: a worker fetches only
  its part of a shard. Without an index (or one that disagrees with the manifest's counts), the whole
  object, whose size comes with the folder listing.
- Parts: a range is cut into parts fetched in parallel (a bandwidth cap is per connection): at least
  1 MiB each, at most 8 MiB (smaller under a small budget), and up to one per thread for a small range,
  so the first slice arrives soon.
- Bounds: at most `ahead` slices past the one being read, and bytes requested but not yet consumed stay
  within `budget` (one part may exceed it when nothing else is held). A part is let go as soon as the
  reader has passed it.
- Through a cache (`cache_dir`): whole shards are fetched ahead into the ShardCache (its size cap,
  ETag and sha256 checks unchanged) and the reader opens the cached file.
- Retries: each part as a shard read (shard_io.read_range, the loader's policy); a part that keeps
  failing raises ShardReadError in the reader, as a read of the stream would.
- Threads start with the first slice of the epoch (inside the worker process, after the fork) and are
  joined by `close()`, which the loader calls when an epoch ends or its iterator is abandoned: none is
  left running when a later loader forks its workers (CPython gh-112275, see loader._join_feeders).
"""

from __future__ import annotations

import itertools
import logging
import math
import posixpath
import threading
from array import array
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import fsspec

from geo_ssl.pipeline.common.storage import options_for
from geo_ssl.training.data.epoch_plan import Slice
from geo_ssl.training.data.shard_list import is_local, join_url

log = logging.getLogger(__name__)

INDEX_NAME = "sample_index.parquet"  # = pipeline.shards.sample_index.SAMPLE_INDEX (not imported here)
THREADS = 4  # requests in flight per worker: 4 x 8 MiB parts at 50 MB/s each hide 100 ms
_PART_MIN = 1 << 20  # fewer, larger requests: each costs the store and the client CPU
_PART_MAX = 8 << 20


@dataclass(frozen=True)
class Layout:
    """Where the samples lie in the objects: `sizes[s]` bytes of shard s (0: unknown) and, for an indexed
    shard, `bounds[s][i]` the byte of sample i's first header (`bounds[s][n]`: the end of its last)."""

    sizes: list[int]
    bounds: list[array | None]

    def byte_range(self, sl: Slice) -> tuple[int, int | None, int]:
        """(first byte, end or None for the object's end, samples of the shard before the range)."""
        b, size = self.bounds[sl.shard], self.sizes[sl.shard] or None
        if b is not None and sl.stop <= len(b) - 1:
            return b[sl.start], b[sl.stop], sl.start
        return 0, size, 0


def read_layout(shards: list[str], counts: list[int], storage_options: dict | None) -> Layout | None:
    """Sizes from one listing per folder and sample bounds from its sample_index.parquet, when there is one
    and it counts a shard's samples as the manifest does; None when the store cannot be listed (the
    loader then reads without prefetch)."""
    import pyarrow.parquet as pq

    sizes = [0] * len(shards)
    bounds: list[array | None] = [None] * len(shards)
    by_folder: dict[str, list[int]] = {}
    for i, url in enumerate(shards):
        by_folder.setdefault(posixpath.dirname(url), []).append(i)
    for folder, members in by_folder.items():
        try:
            fs, path = fsspec.core.url_to_fs(folder, **(storage_options or options_for(folder)))
            listed = {posixpath.basename(e["name"].rstrip("/")): e for e in fs.ls(path, detail=True)}
        except Exception as exc:  # the loader's own reads will say what is wrong
            log.info("prefetch off: cannot list %s (%s)", folder, exc)
            return None
        for i in members:
            sizes[i] = int(listed.get(posixpath.basename(shards[i]), {}).get("size") or 0)
        if INDEX_NAME not in listed:
            continue
        try:
            with fs.open(join_url(path, INDEX_NAME), "rb") as f:
                table = pq.ParquetFile(f, pre_buffer=False).read(
                    columns=["shard", "offset", "size"], use_threads=False
                )
        except Exception as exc:
            log.info("prefetch reads whole shards: %s/%s unreadable (%s)", folder, INDEX_NAME, exc)
            continue
        rows: dict[str, list[tuple[int, int]]] = {}
        columns = (table.column(c).to_pylist() for c in ("shard", "offset", "size"))
        for name, offset, size in zip(*columns, strict=True):
            rows.setdefault(name, []).append((offset, size))
        for i in members:
            mine = sorted(rows.get(posixpath.basename(shards[i]), []))
            end = mine[-1][0] + mine[-1][1] if mine else 0
            # else another build's index, or an object cut short: whole objects, the reader counts the rest
            if mine and len(mine) == counts[i] and end <= (sizes[i] or end):
                bounds[i] = array("q", [o for o, _ in mine] + [end])
    return Layout(sizes, bounds)


def part_bounds(lo: int, hi: int | None, budget: int, threads: int = THREADS) -> list[tuple[int, int | None]]:
    """A range cut into parts fetched in parallel: up to one per thread for a small range (1 MiB or more
    each), at most 8 MiB (a quarter of the budget when that is less) each."""
    if hi is None:
        return [(lo, None)]
    if hi <= lo:
        return []
    largest = max(64 << 10, min(_PART_MAX, budget // 4))
    n = max(1, math.ceil((hi - lo) / largest), min(threads, (hi - lo) // min(_PART_MIN, largest)))
    cuts = [lo + (hi - lo) * k // n for k in range(n + 1)]
    return list(itertools.pairwise(cuts))


class Prefetcher:
    """Fetches the parts of `slices` (in that order) ahead of the reader. `fetch(slice_index, lo, hi)`
    returns a part's bytes (through a cache: the shard's local path) and runs on the pool's threads.
    `take(sl)` gives the part numbers of the next planned slice when `sl` is it, else None (read it
    directly); `result(part)` waits for one; `done(parts)` lets them go."""

    def __init__(
        self,
        slices: list[Slice],
        ranges: list[list[tuple[int, int | None]]],
        fetch: Callable[[int, int, int | None], object],
        ahead: int,
        budget: int,
        threads: int = THREADS,
    ):
        self.slices, self._fetch = slices, fetch
        self.ahead, self.budget, self.threads = max(1, ahead), max(1, budget), threads
        self._parts = [(s, lo, hi) for s, parts in enumerate(ranges) for lo, hi in parts]
        self._first = [0]
        for parts in ranges:
            self._first.append(self._first[-1] + len(parts))
        self._futures: dict[int, Future] = {}
        self._sizes: dict[int, int] = {}  # bytes counted against the budget, per part submitted, not let go
        self._submitted = 0  # parts are submitted in order: those below this one are (or were skipped)
        self._next = 0  # the next slice take() hands out
        self.held = self.peak_held = 0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def _size(self, part: int) -> int:
        _, lo, hi = self._parts[part]
        return (hi - lo) if hi is not None else _PART_MAX

    def _pump(self, upto: int = -1) -> None:
        """Submit parts in order while within `ahead` slices and the byte budget; parts up to `upto`
        (the one the reader waits for) whatever the bounds."""
        with self._lock:
            while not self._closed and self._submitted < len(self._parts):
                p = self._submitted
                size = self._size(p)
                too_far = self._parts[p][0] >= self._next + self.ahead
                if p > upto and (too_far or (self.held and self.held + size > self.budget)):
                    return
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="geo-ssl-prefetch")
                self._futures[p] = self._pool.submit(self._fetch, *self._parts[p])
                self._sizes[p] = size
                self.held += size
                self.peak_held = max(self.peak_held, self.held)
                self._submitted += 1

    def take(self, sl: Slice) -> list[int] | None:
        """The parts of the next planned slice, or None when `sl` is not it (a refill's read)."""
        if self._closed or self._next >= len(self.slices) or self.slices[self._next] != sl:
            return None
        s = self._next
        self._next += 1
        with self._lock:
            self._submitted = max(self._submitted, self._first[s])
        self._pump()
        return list(range(self._first[s], self._first[s + 1]))

    def result(self, part: int) -> object:
        """A part's bytes (or path), waiting for it; the fetch's error is raised here."""
        self._pump(upto=part)
        future = self._futures.get(part)
        if future is None:
            raise RuntimeError("prefetcher closed")
        return future.result()

    def done(self, parts: list[int]) -> None:
        """The reader is done with `parts` (one slice's, in order): their bytes leave the budget, the ones
        not started are cancelled, and later parts may start."""
        if not parts:
            return
        with self._lock:
            for part in parts:
                future = self._futures.pop(part, None)
                if future is not None:
                    future.cancel()
                self.held -= self._sizes.pop(part, 0)
            self._submitted = max(self._submitted, parts[-1] + 1)
        self._pump()

    def close(self) -> None:
        """Cancel what has not started and join the threads (idempotent)."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            self._futures.clear()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class PartStream:
    """A forward-only, seekable read stream over one slice's parts; positions count from the range's first
    byte. Parts are awaited as the reader reaches them and let go once passed."""

    def __init__(self, owner: Prefetcher, parts: list[int]):
        self._owner, self._parts = owner, parts
        self._k = 0  # index into parts of the current one
        self._data: bytes | memoryview = b""
        self._base = 0  # position of _data[0]
        self.pos = 0

    def _load(self) -> bool:
        """Make the next part current; False at the end of the range."""
        if self._k >= len(self._parts):
            return False
        if self._k:
            self._owner.done([self._parts[self._k - 1]])
        data = self._owner.result(self._parts[self._k])
        self._base += len(self._data)
        self._data = memoryview(data)  # type: ignore[arg-type]
        self._k += 1
        return True

    def read(self, n: int = -1) -> bytes:
        out = []
        want = math.inf if n is None or n < 0 else n
        while want > 0:
            at = self.pos - self._base
            if at >= len(self._data):
                if not self._load():
                    break
                continue
            chunk = self._data[at : at + want if want != math.inf else None]
            out.append(chunk)
            self.pos += len(chunk)
            want -= len(chunk)
        return b"".join(out)

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < self.pos:
            raise ValueError("a prefetched stream only seeks forward")
        self.pos = pos  # parts before it are let go when the next read loads past them
        return pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        """Let go of every part of this slice (those not reached are cancelled when not started)."""
        parts, self._parts = self._parts, []
        self._owner.done(parts[max(0, self._k - 1) :])
        self._data = b""

    def __enter__(self) -> PartStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(url: str, storage_options: dict | None) -> None:
    """Make this process's storage client for `url` before the pool's threads share it: fetches that
    start at once would each build one (s3fs builds its session on first use, without a lock)."""
    fs, _ = fsspec.core.url_to_fs(url, **(storage_options or options_for(url)))
    try:
        getattr(fs, "connect", lambda: None)()
    except Exception as exc:  # the fetches retry and report it
        log.info("prefetch: connecting for %s failed (%s)", url, exc)


def prefetch_default(urls: list[str]) -> bool:
    """On by default for object storage, off for local disk (nothing to hide there)."""
    return bool(urls) and not all(is_local(u) for u in urls)


__all__ = ["Layout", "PartStream", "Prefetcher", "connect", "part_bounds", "prefetch_default", "read_layout"]
