"""`index-fmow`: walk an fMoW tree, read every view in worker processes, write the GeoParquet index.

Work is cut into parts, one per `{split}/{category}` folder. A finished part is written atomically to
`INDEX/_parts/{kind}/{split}/{category}.{rejects,images}.parquet`, so a run killed at any point resumes by
redoing only the parts without files. Location folders go to the workers in small chunks, so one large
category does not hold up the pool, and a part's rows stay in memory only until that part is on disk.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO

import fsspec
import numpy as np
import pyarrow as pa
import shapely
from fsspec.implementations.local import LocalFileSystem

from geo_ssl.pipeline.common import executor, fsio, tables
from geo_ssl.pipeline.common import sphere as geo
from geo_ssl.pipeline.common.errors import GeoSSLError, RejectError
from geo_ssl.pipeline.common.outlock import output_lock
from geo_ssl.pipeline.common.progress import Summary, progress
from geo_ssl.pipeline.common.retry import RetryingReader, StorageError, retry_io
from geo_ssl.pipeline.fmow import records as fmow_meta
from geo_ssl.pipeline.fmow.layout import (
    CATEGORY_INDEX,
    anonymised_part,
    is_anonymised_folder,
    location_key,
    match_view_path,
)
from geo_ssl.schemas import IMAGE_INDEX, LOCATIONS, REJECTS

STAGE = "index-fmow"
PARTS_DIR = "_parts"
#: Written in INDEX/_parts/ before the first part: which root the parts were read from.
SOURCE_FILE = "source.json"
KINDS = ("rgb", "msrgb")
#: `{stem}_{kind}.{ext}`: the files that make up a view; everything else in a folder is ignored.
_VIEW_FILE_RE = re.compile(r"^(?P<stem>.+)_(?P<kind>rgb|msrgb)\.(?P<ext>jpg|json)$")
#: Reasons whose offending file is the image (the others point at the JSON).
_IMAGE_REASONS = frozenset({"unreadable_image", "truncated_image", "bad_path"})
_MAX_CHUNK_LOCATIONS = 32
_TASKS_IN_FLIGHT_PER_WORKER = 4
_LISTING_THREADS = 8
#: Read size for remote files: enough for a JPEG header or a JSON, not a whole multi-MB image.
_REMOTE_BLOCK = 1 << 16
_SORT_IMAGES = [("location_key", "ascending"), ("view_id", "ascending"), ("image_path", "ascending")]
_SORT_REJECTS = [("path", "ascending"), ("reason", "ascending")]


@dataclass(frozen=True)
class Part:
    """One `{split}/{category}` folder: its location folders, and view files lying loose in it."""

    split: str
    category: str
    locations: tuple[str, ...]
    strays: tuple[str, ...] = ()
    anonymised: bool = False  # test/seq: `{split}/{id}/` folders, a block of ids per part (layout.py)


@dataclass(frozen=True)
class _Chunk:
    root: str
    kind: str
    part: int
    split: str
    category: str
    locations: tuple[str, ...]
    strays: tuple[str, ...]
    anonymised: bool = False


@dataclass
class _ChunkResult:
    part: int
    n_locations: int
    images: pa.Table
    rejects: pa.Table
    error: str | None = None  # storage kept failing: the part is not written, the rerun redoes it


@dataclass
class _PartBuffer:
    chunks_left: int
    images: list[pa.Table] = field(default_factory=list)
    rejects: list[pa.Table] = field(default_factory=list)


def index_fmow(root: str, out: str, workers: int | None = None, kind: str = "rgb") -> Summary:
    """Index every `*_{kind}` view under `root` into `out` (images, locations, rejects, summary).

    OUT is locked for the run (common/outlock.py): a second run into it stops with exit 2."""
    if kind not in KINDS:
        raise GeoSSLError(f"unknown image kind {kind!r}; use one of {', '.join(KINDS)}")
    fsio.check_output_dir(out, "--out")
    with output_lock(out, STAGE):
        return _index_fmow(root, out, workers, kind)


def _index_fmow(root: str, out: str, workers: int | None, kind: str) -> Summary:
    workers = _worker_count(workers)
    root_url = _normalize_root(root)
    parts = plan_parts(root_url, kind)
    parts_dir = fsio.join(out, PARTS_DIR, kind)
    _claim_parts_dir(out, root_url)
    for split in sorted({_printable(p.split) for p in parts}):
        fsio.makedirs(fsio.join(parts_dir, split))
        fsio.remove_stale_temps(fsio.join(parts_dir, split))
    fsio.remove_stale_temps(out)

    summary = Summary(STAGE, "images")
    todo = [i for i, p in enumerate(parts) if not _part_done(parts_dir, p)]
    _index_parts(root_url, kind, parts, todo, parts_dir, workers, summary)

    images, rejects, skipped = _combine_parts(parts_dir, parts, set(todo))
    summary.skipped += skipped
    summary.inputs = summary.written + summary.rejected + summary.skipped
    if summary.inputs == 0:
        raise GeoSSLError(f"{root}: no *_{kind}.jpg or *_{kind}.json files in the fMoW layout were found")
    locations = locations_table(images)
    tables.write_table(images, fsio.join(out, "images.parquet"), "image_index")
    tables.write_table(rejects, fsio.join(out, "rejects.parquet"), "rejects")
    tables.write_table(locations, fsio.join(out, "locations.parquet"), "locations")
    summary.extra.update(
        root=root_url,
        kind=kind,
        workers=workers,
        parts=len(parts),
        parts_reused=len(parts) - len(todo),
        locations=locations.num_rows,
        rejects_in_index=dict(sorted(Counter(rejects.column("reason").to_pylist()).items())),
    )
    fsio.atomic_write_text(
        fsio.join(out, "index_summary.json"), json.dumps(summary.as_dict(), indent=2) + "\n"
    )
    return summary


def plan_parts(root_url: str, kind: str = "rgb") -> list[Part]:
    """List `{split}/{category}` folders and their location folders (three levels; no file is opened)."""
    splits, _ = _list_dir(root_url)
    pairs = []
    anonymised: dict[tuple[str, str], list[str]] = {}  # anonymised test/seq location folders by id block
    for split in sorted(splits):
        categories, _ = _list_dir(fsio.join(root_url, split))
        for name in categories:
            if is_anonymised_folder(name):
                anonymised.setdefault((split, anonymised_part(name)), []).append(name)
        pairs.extend((split, c) for c in sorted(categories) if not is_anonymised_folder(c))
    with ThreadPoolExecutor(_LISTING_THREADS) as pool:
        listings = pool.map(lambda sc: _list_dir(fsio.join(root_url, *sc)), pairs)
        parts = []
        for (split, category), (folders, files) in zip(pairs, listings, strict=True):
            strays = tuple(sorted(n for n in files if _view_file_kind(n) == kind))
            if folders or strays:
                parts.append(Part(split, category, tuple(sorted(folders)), strays))
    parts += [Part(s, name, tuple(sorted(ids)), anonymised=True) for (s, name), ids in anonymised.items()]
    parts.sort(key=lambda p: (p.split, p.category))
    expected = f"{{split}}/{{category}}/{{category}}_{{loc}}/{{category}}_{{loc}}_{{view}}_{kind}.jpg"
    if parts and all(p.split in CATEGORY_INDEX for p in parts):
        raise GeoSSLError(
            f"{root_url}: looks like a split folder (expected {expected} below it); pass its parent"
        )
    if not parts:
        raise GeoSSLError(f"{root_url}: holds no fMoW-layout files (expected {expected})")
    return parts


def locations_table(images: pa.Table) -> pa.Table:
    """One row per location: the spherical mean of its views' centroids, view count, first/last time.

    `images` must be sorted by location_key (as images.parquet is)."""
    n = images.num_rows
    if n == 0:
        return tables.empty_table("locations")
    keys = images.column("location_key").to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    if len(np.unique(keys[starts])) != len(starts):
        raise ValueError("images must be sorted by location_key")
    unit = geo.latlon_to_unit(images.column("lat").to_numpy(), images.column("lon").to_numpy())
    lat, lon = geo.unit_to_latlon(np.add.reduceat(unit, starts, axis=0))
    ts = images.column("timestamp").cast(pa.int64()).to_numpy()
    first = images.take(pa.array(starts))
    return pa.table(
        {
            "location_key": first.column("location_key"),
            "split": first.column("split"),
            "category": first.column("category"),
            "category_index": first.column("category_index"),
            "location_id": first.column("location_id"),
            "lat": pa.array(lat, pa.float64()),
            "lon": pa.array(lon, pa.float64()),
            "n_views": pa.array(np.diff(np.r_[starts, n]), pa.int32()),
            "first_timestamp": pa.array(np.minimum.reduceat(ts, starts)).cast(
                LOCATIONS.field("first_timestamp").type
            ),
            "last_timestamp": pa.array(np.maximum.reduceat(ts, starts)).cast(
                LOCATIONS.field("last_timestamp").type
            ),
        }
    )


# --- running the parts ------------------------------------------------------------------------------


def _index_parts(
    root_url: str,
    kind: str,
    parts: list[Part],
    todo: list[int],
    parts_dir: str,
    workers: int,
    summary: Summary,
) -> None:
    """Process the parts in `todo`, writing each one as soon as its last chunk is back."""
    total = sum(len(parts[i].locations) for i in todo)
    size = max(1, min(_MAX_CHUNK_LOCATIONS, math.ceil(total / (workers * _TASKS_IN_FLIGHT_PER_WORKER))))
    chunks = [c for i in todo for c in _chunks_of(root_url, kind, i, parts[i], size)]
    buffers: dict[int, _PartBuffer] = {}
    for c in chunks:
        buffers.setdefault(c.part, _PartBuffer(0)).chunks_left += 1

    failed: dict[int, str] = {}

    def finished() -> Iterator[None]:
        for result in _run_chunks(chunks, workers):
            buf = buffers[result.part]
            buf.images.append(result.images)
            buf.rejects.append(result.rejects)
            buf.chunks_left -= 1
            if result.error is not None:
                failed.setdefault(result.part, result.error)
            if buf.chunks_left == 0 and result.part in failed:
                del buffers[result.part]  # nothing recorded: the rerun indexes this part again
            elif buf.chunks_left == 0:
                images, rejects = _write_part(parts_dir, parts[result.part], buf)
                del buffers[result.part]
                summary.written += images
                summary.rejected += rejects.num_rows
                summary.reasons.update(rejects.column("reason").to_pylist())
            yield from (None for _ in range(result.n_locations))

    for _ in progress(finished(), total=total, desc=STAGE, unit="locations"):
        pass
    if failed:
        names = ", ".join(f"{parts[i].split}/{_printable(parts[i].category)}" for i in sorted(failed))
        raise StorageError(
            f"{STAGE}: {len(failed)} part(s) not indexed because storage kept failing ({names}; first: "
            f"{failed[min(failed)]}); nothing was recorded for them; rerun the same command to finish"
        )


def _chunks_of(root_url: str, kind: str, index: int, part: Part, size: int) -> list[_Chunk]:
    groups = [part.locations[i : i + size] for i in range(0, len(part.locations), size)] or [()]
    return [
        _Chunk(root_url, kind, index, part.split, part.category, locs, (), part.anonymised)
        if j
        else _Chunk(root_url, kind, index, part.split, part.category, locs, part.strays, part.anonymised)
        for j, locs in enumerate(groups)
    ]


def _run_chunks(chunks: list[_Chunk], workers: int) -> Iterator[_ChunkResult]:
    """Results in completion order from the executor; at most a few tasks per worker are queued."""
    yield from executor.run_tasks(
        _index_chunk,
        chunks,
        min(workers, len(chunks)),
        stage=STAGE,
        in_flight=_TASKS_IN_FLIGHT_PER_WORKER,
        start_method="forkserver",  # workers fork with pyarrow, shapely, Pillow already imported
        preload=[__name__],
    )


def _index_chunk(chunk: _Chunk) -> _ChunkResult:
    """Worker: index one chunk; storage that keeps failing fails the chunk (and so its part), not a view."""
    try:
        return _read_chunk(chunk)
    except StorageError as exc:
        empty = _rejects_table([])
        return _ChunkResult(chunk.part, len(chunk.locations), records_table([]), empty, error=str(exc))


def _read_chunk(chunk: _Chunk) -> _ChunkResult:
    """List each location folder and read its views."""
    fs, _ = fsio.get_fs(chunk.root)
    open_file = _opener(fs)
    category_url = fsio.join(chunk.root, chunk.split, *(() if chunk.anonymised else (chunk.category,)))
    records: list[fmow_meta.ViewRecord] = []
    rejects: list[dict] = []
    folders = [(chunk.category, chunk.strays)] if chunk.strays else []
    for name in chunk.locations:
        _, files = _list_dir(fsio.join(category_url, name))
        folders.append((name if chunk.anonymised else f"{chunk.category}/{name}", tuple(files)))
    for folder, files in folders:
        folder_url = fsio.join(chunk.root, chunk.split, folder)
        views: dict[str, dict[str, str]] = {}
        for name in files:
            m = _VIEW_FILE_RE.match(name)
            if m and m["kind"] == chunk.kind:
                views.setdefault(m["stem"], {})[m["ext"]] = fsio.join(folder_url, name)
        for stem in sorted(views):
            rel = f"{chunk.split}/{folder}/{stem}_{chunk.kind}.jpg"
            image_url, json_url = views[stem].get("jpg"), views[stem].get("json")
            if not _is_utf8(rel):
                bad = RejectError("bad_path", "the path is not valid UTF-8 (bytes shown as \\xNN)")
                rejects.append(_reject_row(bad, rel, image_url, json_url))
                continue
            try:
                records.append(fmow_meta.read_view(rel, image_url, json_url, open_file))
            except RejectError as exc:
                rejects.append(_reject_row(exc, rel, image_url, json_url))
    return _ChunkResult(chunk.part, len(chunk.locations), records_table(records), _rejects_table(rejects))


def _opener(fs: fsspec.AbstractFileSystem) -> Callable[[str], IO[bytes]]:
    """Readers whose reads are retried: an outage raises StorageError, never a reject (see common.retry)."""
    if isinstance(fs, LocalFileSystem):
        return lambda url: RetryingReader(lambda u: open(u, "rb"), url)
    return lambda url: RetryingReader(lambda u: fs.open(u, "rb", block_size=_REMOTE_BLOCK), url)


def _is_utf8(text: str) -> bool:
    """False for names holding bytes that are not UTF-8 (os.scandir keeps them as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(text: str | None) -> str | None:
    """A name that Parquet can store: undecodable bytes of a file name become \\xNN."""
    if text is None or _is_utf8(text):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _reject_row(exc: RejectError, rel: str, image_url: str | None, json_url: str | None) -> dict:
    first, second = (image_url, json_url) if exc.reason in _IMAGE_REASONS else (json_url, image_url)
    m = match_view_path(rel)
    return {
        "stage": STAGE,
        "path": _printable(first or second),
        "reason": exc.reason,
        "detail": _printable(" ".join(exc.detail.split())),
        "split": _printable(rel.split("/", 1)[0]),
        "location_key": _printable(location_key(m["split"], m["location_id"]) if m else None),
    }


def records_table(records: list[fmow_meta.ViewRecord]) -> pa.Table:
    """ViewRecords -> an IMAGE_INDEX table with the WKB point geometry (lon lat) added."""
    if not records:
        return IMAGE_INDEX.empty_table()
    cols = {
        name: [getattr(r, name) for r in records] for name in IMAGE_INDEX.names if hasattr(records[0], name)
    }
    cols["timestamp"] = pa.array([r.timestamp_ms for r in records], pa.int64()).cast(
        IMAGE_INDEX.field("timestamp").type
    )
    cols["geometry"] = shapely.to_wkb(shapely.points(cols["lon"], cols["lat"])).tolist()
    return pa.table(
        {name: pa.array(cols[name], IMAGE_INDEX.field(name).type) for name in IMAGE_INDEX.names}, IMAGE_INDEX
    )


def _rejects_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, REJECTS) if rows else REJECTS.empty_table()


# --- parts on disk ----------------------------------------------------------------------------------


def _part_urls(parts_dir: str, part: Part) -> tuple[str, str]:
    base = fsio.join(parts_dir, _printable(part.split), _printable(part.category))
    return base + ".images.parquet", base + ".rejects.parquet"


def _part_done(parts_dir: str, part: Part) -> bool:
    return all(fsio.exists(url) for url in _part_urls(parts_dir, part))


def _write_part(parts_dir: str, part: Part, buf: _PartBuffer) -> tuple[int, pa.Table]:
    """Rejects first, images last: a part counts as done only when both files exist."""
    images_url, rejects_url = _part_urls(parts_dir, part)
    rejects = pa.concat_tables(buf.rejects).sort_by(_SORT_REJECTS)
    images = pa.concat_tables(buf.images).sort_by(_SORT_IMAGES)
    tables.write_table(rejects, rejects_url, "rejects")
    tables.write_table(images, images_url, "image_index")
    return images.num_rows, rejects


def _combine_parts(parts_dir: str, parts: list[Part], fresh: set[int]) -> tuple[pa.Table, pa.Table, int]:
    """All parts concatenated and sorted; also the number of rows that came from reused parts."""
    images, rejects, skipped = [], [], 0
    for i, part in enumerate(parts):
        images_url, rejects_url = _part_urls(parts_dir, part)
        part_images = tables.read_table(images_url, "image_index")
        part_rejects = tables.read_table(rejects_url, "rejects")
        if i not in fresh:
            skipped += part_images.num_rows + part_rejects.num_rows
        images.append(part_images)
        rejects.append(part_rejects)
    images_table = (
        pa.concat_tables(images).sort_by(_SORT_IMAGES) if images else tables.empty_table("image_index")
    )
    rejects_table = (
        pa.concat_tables(rejects).sort_by(_SORT_REJECTS) if rejects else tables.empty_table("rejects")
    )
    return images_table, rejects_table, skipped


def _claim_parts_dir(out: str, root_url: str) -> None:
    """Refuse to mix parts read from two different roots in one index folder."""
    url = fsio.join(out, PARTS_DIR, SOURCE_FILE)
    if fsio.exists(url):
        try:
            previous = json.loads(fsio.read_bytes(url)).get("root")
        except (ValueError, AttributeError):
            previous = None
        if previous is not None and previous != root_url:
            raise GeoSSLError(
                f"{out}: already holds an index of {previous}, not {root_url}; use another --out or delete it"
            )
        if previous is not None:
            return
    fsio.makedirs(fsio.join(out, PARTS_DIR))
    fsio.atomic_write_text(url, json.dumps({"root": root_url}) + "\n")


# --- listing ----------------------------------------------------------------------------------------


def _normalize_root(root: str) -> str:
    """Absolute local path or URL without trailing slash; a missing root is a user error."""
    try:
        fs, path = fsio.get_fs(root)
        is_dir = fs.isdir(path)
    except (OSError, ValueError) as exc:
        raise GeoSSLError(f"{root}: cannot open the fMoW root ({exc})") from None
    if not is_dir:
        raise GeoSSLError(f"{root}: fMoW root not found (no such folder)")
    return os.path.abspath(path) if isinstance(fs, LocalFileSystem) else str(root).rstrip("/")


def _list_dir(url: str) -> tuple[list[str], list[str]]:
    """Names of the sub-folders and of the files in one folder (local: os.scandir, no stat calls).

    Folders whose names start with '.' or '_' (checkpoints, an index folder kept inside the root) are
    not part of the fMoW layout and are left out."""
    fs, path = fsio.get_fs(url)
    folders, files = [], []
    try:
        if isinstance(fs, LocalFileSystem):
            with os.scandir(path) as entries:
                for entry in entries:
                    (folders if entry.is_dir() else files).append(entry.name)
        else:
            for info in retry_io(lambda: fs.ls(path, detail=True), f"listing {url}"):
                name = info["name"].rstrip("/").rsplit("/", 1)[-1]
                (folders if info["type"] == "directory" else files).append(name)
    except NotADirectoryError:
        return [], []
    except OSError as exc:
        raise GeoSSLError(f"{url}: cannot list the folder ({exc})") from None
    return [f for f in folders if not f.startswith((".", "_"))], files


def _view_file_kind(name: str) -> str | None:
    m = _VIEW_FILE_RE.match(name)
    return m["kind"] if m else None


def _worker_count(workers: int | None) -> int:
    if workers is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers < 1:
        raise GeoSSLError(f"--workers must be at least 1, got {workers}")
    return workers
