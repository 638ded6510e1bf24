"""What one epoch counts: locations (geo-ssl's default) or images (GASSL's).

`location`: an epoch is one pass over the split's samples, one sample per location (epoch_plan).
`image`: an epoch holds every location once per stored view, as GASSL's loader, which walks a CSV with
one row per image: a location with 8 views is an anchor 8 times per epoch, one with 1 view once, so
locations are drawn in proportion to their view count and an epoch has as many anchors as the split has
images (about 4.8x the locations on fMoW-rgb: 7,445 views of 1,559 locations in the public val
sample).

It fits the exact-epoch plan (geo_ssl.training.data.epoch_plan) unchanged: the plan runs over per-shard
*view* counts instead of sample counts, so its positions are views, cut into per-rank, per-worker slices
in a (seed, epoch) order as before. `read_image_slice` turns a slice of view positions back into the
shard samples that hold them and yields each sample once per position, i.e. a location whose views all
fall inside the slice comes out once per view. The copies of one location leave the reader together;
the loader's shuffle buffer (seeded by seed and epoch) spreads them over the worker's batches. Copy c of a
location takes its view c as the anchor (query) and draws the key as usual (another timestamp for +tp,
the anchor again otherwise), so every stored image is the anchor exactly once per epoch, as in GASSL.

The per-sample view counts come from `sample_index.parquet` beside the shards (written by write-shards),
else from one pass over each shard's tar headers (names only, no image bytes).
"""

from __future__ import annotations

import posixpath
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.data.epoch_plan import Slice
from geo_ssl.training.data.selection import choose_views

EPOCH_UNITS = ("location", "image")


@dataclass(frozen=True)
class ShardViews:
    """The samples of one shard in tar order: their keys and stored view counts."""

    keys: tuple[str, ...]
    views: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.views)


def check_unit(unit: str) -> str:
    if unit not in EPOCH_UNITS:
        raise GeoSSLError(f"epoch_unit = {unit!r}; choose one of {', '.join(EPOCH_UNITS)}")
    return unit


def shard_views(
    shards: list[str], counts: list[tuple[int, int]], storage_options: dict | None = None
) -> list[ShardViews]:
    """Per shard, its samples' keys and view counts: from sample_index.parquet where it agrees with the
    manifest's (samples, views), else from the shard's tar headers."""
    indexed = _from_sample_index(shards, storage_options)
    out = []
    for url, (samples, views) in zip(shards, counts, strict=True):
        sv = indexed.get(url)
        if sv is None or len(sv.keys) != samples or sv.total != views:
            sv = _from_headers(url, storage_options)
        out.append(sv)
    return out


def _from_sample_index(shards: list[str], storage_options: dict | None) -> dict[str, ShardViews]:
    import fsspec
    import pyarrow.parquet as pq

    from geo_ssl.pipeline.common.storage import options_for  # the command's --storage-* settings
    from geo_ssl.training.data.shard_list import join_url

    found: dict[str, ShardViews] = {}
    for folder in sorted({posixpath.dirname(s) for s in shards}):
        url = join_url(folder, "sample_index.parquet") if folder else "sample_index.parquet"
        try:
            fs, path = fsspec.core.url_to_fs(url, **(storage_options or options_for(url)))
            if not fs.exists(path):
                continue
            with fs.open(path, "rb") as f:
                rows = pq.read_table(
                    f, columns=["shard", "key", "views", "offset"], use_threads=False, pre_buffer=False
                ).to_pylist()
        except (OSError, ValueError, KeyError):
            continue  # an unreadable or older index: the headers say the same, only slower
        by_shard: dict[str, list[dict]] = {}
        for r in rows:
            by_shard.setdefault(r["shard"], []).append(r)
        for name, rs in by_shard.items():
            rs.sort(key=lambda r: r["offset"])
            found[join_url(folder, name)] = ShardViews(
                tuple(r["key"] for r in rs), tuple(int(r["views"]) for r in rs)
            )
    return found


def _from_headers(url: str, storage_options: dict | None) -> ShardViews:
    from geo_ssl.training.data.shard_list import open_shard
    from geo_ssl.training.data.tar_stream import _KEY_EXT, tar_entries

    keys: list[str] = []
    views: list[int] = []
    try:
        with open_shard(url, storage_options) as f:
            for name, _ in tar_entries(f, url, lambda _name: False, lambda _msg: None):
                m = _KEY_EXT.match(name or "")
                base = posixpath.basename(name or "")
                if m is None or (base.startswith("__") and base.endswith("__")):
                    continue
                if not keys or keys[-1] != m.group(1):
                    keys.append(m.group(1))
                    views.append(0)
                views[-1] += name.endswith(".jpg")
    except OSError as exc:
        raise GeoSSLError(f"{url}: cannot read shard ({exc})") from exc
    return ShardViews(tuple(keys), tuple(views))


def unit_counts(per_shard: list[ShardViews]) -> list[int]:
    """Positions per shard of an `image` epoch (its views; a sample without views still counts once)."""
    return [sum(max(1, v) for v in sv.views) for sv in per_shard]


def samples_of(sv: ShardViews, start: int, stop: int) -> tuple[int, int, dict[str, range]]:
    """View positions [start, stop) of a shard as samples [first, last) and, per sample key, the copies
    (view numbers of the location) that fall inside; a location cut by the slice keeps its numbering."""
    copies: dict[str, range] = {}
    first, at = None, 0
    last = 0
    for i, (key, v) in enumerate(zip(sv.keys, sv.views, strict=True)):
        lo, hi = at, at + max(1, v)
        at = hi
        if hi <= start:
            continue
        if lo >= stop:
            break
        if first is None:
            first = i
        last = i + 1
        copies[key] = range(max(lo, start) - lo, min(hi, stop) - lo)
    return (first or 0), last, copies


def read_image_slice(
    read: Callable[[Slice, object], Iterator[dict]], sl: Slice, sv: ShardViews, errors: object
) -> Iterator[dict]:
    """The samples behind view positions `sl`, each yielded once per position it holds there (shallow
    copies; `__copy__` is the view number the copy stands for, its anchor). A sample the reader skips as
    corrupt takes its copies with it."""
    first, last, copies = samples_of(sv, sl.start, sl.stop)
    if last <= first:
        return
    for sample in read(Slice(sl.shard, first, last), errors):
        for c in copies.get(sample.get("__key__"), range(1)):
            yield {**sample, "__copy__": c}


def anchored_views(
    rng: random.Random, n_stored: int, n_views: int, temporal: bool, copy: int | None
) -> list[int]:
    """The stored views for one sample: copy c of an `image` epoch takes view c as its anchor (GASSL:
    every image is the anchor once per epoch) and draws the others as `choose_views` does (temporal: other
    timestamps, uniformly; else the anchor again). Without a copy number it is `choose_views`."""
    if copy is None or n_stored <= 1:
        return choose_views(rng, n_stored, n_views, temporal)
    anchor = copy % n_stored
    if not temporal:
        return [anchor] * n_views
    others = [i for i in range(n_stored) if i != anchor]
    rest = rng.sample(others, min(n_views - 1, len(others)))
    return [anchor, *rest, *(rng.randrange(n_stored) for _ in range(n_views - 1 - len(rest)))]


def location_draws(per_shard: list[ShardViews]) -> dict[str, int]:
    """How often each location key comes in one `image` epoch over the whole split (its view count)."""
    return {k: max(1, v) for sv in per_shard for k, v in zip(sv.keys, sv.views, strict=True)}
