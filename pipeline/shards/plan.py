"""The shard plan: which location goes to which shard, decided before any pixel is encoded.

Deciding first lets every shard be written by an independent worker, in any order, and still come out
the same on every run. Per split, locations (sorted by key) are shuffled with a generator seeded by
(seed, split), then packed greedily into shards of about `shard_bytes`, using an *estimate* of each
location's output size: the stored pixel count of every view (known from the box, the context rule and
`resize`) times a bytes-per-pixel figure for the JPEG quality, plus tar headers and the json. Real shard
sizes therefore differ from the target by the estimate's error (typically tens of percent, depending on
image content); the manifest records the real sizes.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from geo_ssl.pipeline.common.errors import GeoSSLError, RejectError
from geo_ssl.pipeline.shards import imageops
from geo_ssl.pipeline.shards.options import ShardOptions

#: Bump when the packing or shuffling rule changes, so old output folders are not resumed with it.
PLAN_VERSION = 1

VIEW_COLUMNS = [
    "location_key", "split", "category", "category_index", "location_id", "view_id", "image_path",
    "timestamp", "box", "gsd", "cloud_cover", "country_code", "img_width", "img_height",
]  # fmt: skip

#: Bytes per stored pixel of a baseline JPEG of satellite imagery, by quality (linear in between).
_BPP_QUALITY = (1, 50, 75, 90, 95, 100)
_BPP_VALUE = (0.03, 0.12, 0.2, 0.35, 0.5, 1.1)
TAR_MEMBER_OVERHEAD = 768  # 512-byte header plus half a block of padding on average
JSON_BYTES = (300, 260)  # fixed part, per view


def bytes_per_pixel(quality: int) -> float:
    return float(np.interp(quality, _BPP_QUALITY, _BPP_VALUE))


def estimate_view_bytes(box: list[int], image_size: tuple[int, int], options: ShardOptions) -> int:
    try:
        crop = imageops.crop_region(box, image_size, options.context)
    except RejectError:
        return TAR_MEMBER_OVERHEAD
    w, h = imageops.output_size(crop[2:], options.resize, options.upscale)
    return int(w * h * bytes_per_pixel(options.quality)) + TAR_MEMBER_OVERHEAD + JSON_BYTES[1]


@dataclass(frozen=True)
class PlannedShard:
    name: str  # "{split}-{index:06d}.tar"
    split: str
    index: int
    locations: tuple[int, ...]  # positions in Plan.starts, in the order they are written
    est_bytes: int


@dataclass
class Plan:
    """The packing of every clustered location into shards, plus the locations refused up front."""

    views: pa.Table  # one row per view, sorted by (split, location_key, timestamp, view_id)
    starts: np.ndarray  # location i is views[starts[i]:starts[i + 1]]
    clusters: dict[str, tuple[int, float, float]]  # location_key -> (cluster, lat, lon)
    shards: list[PlannedShard]
    rejects: list[dict]  # REJECTS rows (no_cluster), sorted by location key
    n_locations: int  # all locations of the selected splits, rejected ones included

    def shard_locations(self, shard: PlannedShard) -> list[dict]:
        """What the worker needs for one shard: plain dicts, views sorted by time (no Arrow objects)."""
        idx = np.concatenate([np.arange(self.starts[i], self.starts[i + 1]) for i in shard.locations])
        rows = self.views.take(pa.array(idx)).to_pylist()
        out, pos = [], 0
        for i in shard.locations:
            n = int(self.starts[i + 1] - self.starts[i])
            out.append(_location_task(rows[pos : pos + n], self.clusters[rows[pos]["location_key"]]))
            pos += n
        return out


def _iso(ts) -> str:
    text = ts.strftime("%Y-%m-%dT%H:%M:%S")
    ms = ts.microsecond // 1000
    return f"{text}.{ms:03d}Z" if ms else f"{text}Z"


def _location_task(rows: list[dict], cluster: tuple[int, float, float]) -> dict:
    first = rows[0]
    country = next((r["country_code"] for r in rows if r["country_code"]), None)
    return {
        "key": first["location_key"],
        "location_id": first["location_id"],
        "split": first["split"],
        "category": first["category"],
        "category_index": int(first["category_index"]),
        "cluster": int(cluster[0]),
        "lat": float(cluster[1]),
        "lon": float(cluster[2]),
        "country_code": country,
        "views": [
            {
                "view_id": int(r["view_id"]),
                "image_path": r["image_path"],
                "timestamp": _iso(r["timestamp"]),
                "box": [int(v) for v in r["box"]],
                "gsd": r["gsd"],
                "cloud_cover": r["cloud_cover"],
            }
            for r in rows
        ],
    }


def _split_rng(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(split.encode())]))


def make_plan(images: pa.Table, clusters: pa.Table, options: ShardOptions) -> Plan:
    """Sort, shuffle per split and pack; locations without a cluster become `no_cluster` rejects."""
    views = images.select(VIEW_COLUMNS)
    present = sorted(set(pc.unique(views["split"]).to_pylist()))
    if options.splits is not None:
        if missing := [s for s in options.splits if s not in present]:
            raise GeoSSLError(
                f"split(s) {', '.join(missing)} not in the image index (it has: {', '.join(present) or 'none'})"
            )
        views = views.filter(pc.is_in(views["split"], value_set=pa.array(list(options.splits))))
    views = views.sort_by(
        [
            ("split", "ascending"),
            ("location_key", "ascending"),
            ("timestamp", "ascending"),
            ("view_id", "ascending"),
        ]
    ).combine_chunks()

    keys = np.asarray(views["location_key"].to_pylist(), dtype=object)
    change = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    starts = (
        np.concatenate([[0], change, [len(keys)]]).astype(np.int64) if len(keys) else np.zeros(1, np.int64)
    )
    n_loc = len(starts) - 1

    cl = clusters.select(["location_key", "cluster", "lat", "lon"]).to_pydict()
    cluster_of = {
        k: (c, la, lo)
        for k, c, la, lo in zip(cl["location_key"], cl["cluster"], cl["lat"], cl["lon"], strict=True)
    }

    boxes = views["box"].to_pylist()
    widths = views["img_width"].to_pylist()
    heights = views["img_height"].to_pylist()
    paths = views["image_path"].to_pylist()
    splits = views["split"].to_pylist()
    fixed = JSON_BYTES[0] + 2 * TAR_MEMBER_OVERHEAD  # json and cls members

    by_split: dict[str, list[tuple[int, int]]] = {}
    rejects, kept = [], {}
    for i in range(n_loc):
        a, b = int(starts[i]), int(starts[i + 1])
        key = keys[a]
        if key not in cluster_of:
            rejects.append({
                "stage": "write-shards", "path": posixpath.dirname(paths[a]), "reason": "no_cluster",
                "detail": "location has no row in clusters.parquet (rerun `cluster` on this index)",
                "split": splits[a], "location_key": key,
            })  # fmt: skip
            continue
        est = fixed * (b - a if options.layout == "views" else 1) + sum(
            estimate_view_bytes(boxes[j], (widths[j], heights[j]), options) for j in range(a, b)
        )  # the views layout has a json and cls member per view
        by_split.setdefault(splits[a], []).append((i, est))
        kept[key] = cluster_of[key]

    shards: list[PlannedShard] = []
    for split in sorted(by_split):
        shards.extend(_pack(split, by_split[split], _split_rng(options.seed, split), options.shard_bytes))
    return Plan(views=views, starts=starts, clusters=kept, shards=shards, rejects=rejects, n_locations=n_loc)


def _pack(
    split: str, locs: list[tuple[int, int]], rng: np.random.Generator, limit: int
) -> list[PlannedShard]:
    """Shuffle (location, estimated bytes) pairs and cut them greedily into shards of about `limit` bytes."""
    groups: list[tuple[list[int], int]] = []
    current: list[int] = []
    size = 0
    for j in rng.permutation(len(locs)):
        i, est = locs[j]
        if current and size + est > limit:
            groups.append((current, size))
            current, size = [], 0
        current.append(i)
        size += est
    if current:
        groups.append((current, size))
    return [
        PlannedShard(f"{split}-{n:06d}.tar", split, n, tuple(g), size) for n, (g, size) in enumerate(groups)
    ]


def fingerprint(input_digests: dict[str, str], options: ShardOptions) -> str:
    """Identity of a build: the input tables' bytes, the options that change output, the plan rule."""
    from geo_ssl.schemas import SCHEMA_VERSION

    blob = json.dumps(
        {"inputs": input_digests, "options": options.as_dict(), "plan_version": PLAN_VERSION,
         "schema_version": SCHEMA_VERSION},
        sort_keys=True,
    )  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
