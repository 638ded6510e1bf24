"""The shard list of a data set kept in --cache-dir beside the cached shards.

Why: the cached copy of a shard is only useful if the run can start without the store. Before a loader
reads a shard it lists the folder and reads manifest.parquet (which shards, how many samples each), and
with the store down that listing failed before the cache was consulted. Each successful listing is
written to `listing-{hash of URLs and split}.json` in the cache folder; when the store does not answer
(a StorageError with exit 3, or a transient client error), the last one is used, with one line. The
shards themselves then come from the cache (ShardCache falls back to its copy the same way); a shard not
in it still fails the run with exit 3.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence

from geo_ssl.pipeline.common.logs import get_logger
from geo_ssl.pipeline.common.retry import EXIT_STORAGE, is_transient
from geo_ssl.training.data.shard_cache import ShardCache
from geo_ssl.training.data.shard_list import ShardSet, is_local, select_shards

log = get_logger(__name__)
_SAID: set[str] = set()


def listing_path(cache_dir: str, urls: str | Sequence[str], split: str | None) -> str:
    """Where the listing of `urls` (one split) is kept in `cache_dir`."""
    items = [os.fspath(urls)] if isinstance(urls, str | os.PathLike) else [os.fspath(u) for u in urls]
    key = hashlib.sha256(json.dumps([items, split]).encode()).hexdigest()[:16]
    return os.path.join(os.fspath(cache_dir), f"listing-{key}.json")


def _store_down(exc: BaseException) -> bool:
    """The store did not answer (worth using the kept listing), as opposed to refusing or a user error."""
    return getattr(exc, "exit_code", None) == EXIT_STORAGE or is_transient(exc)


def cached_shard_set(
    urls: str | Sequence[str],
    split: str | None,
    storage_options: dict | None = None,
    cache_dir: str | None = None,
    strict: bool = False,
) -> ShardSet:
    """`select_shards(...)`; with a cache_dir and remote shards its answer is also kept there, and the kept
    one is used (one line on stderr) when the store does not answer."""
    items = [urls] if isinstance(urls, str | os.PathLike) else list(urls)
    if not cache_dir or all(is_local(os.fspath(u)) for u in items):
        return select_shards(urls, split, storage_options, strict)
    path = listing_path(cache_dir, urls, split)
    try:
        found = select_shards(urls, split, storage_options, strict)
    except Exception as exc:
        if not _store_down(exc) or not os.path.exists(path):
            raise
        with open(path, encoding="utf-8") as f:
            kept = json.load(f)
        if path not in _SAID:  # preflight and the loader both ask: one line per run
            _SAID.add(path)
            log.warning("geo-ssl loader: %s; using the shard list cached in %s", exc, path)
        ShardCache.store_down()  # the shards' own checks: one try each
        counts = [tuple(c) for c in kept["counts"]]
        found = ShardSet(kept["shards"], counts, kept["left_out"], kept["lost"], kept.get("sha256", []))
        if strict:
            found.refuse()
        return found
    with contextlib.suppress(OSError):  # a cache folder that cannot be written is reported by ShardCache
        _write_json(path, dataclasses.asdict(found))
    return found


def _write_json(path: str, value: object) -> None:
    """Whole or not at all (temp name, then rename; ShardCache skips .tmp- names)."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f)
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
