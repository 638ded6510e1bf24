"""The self-describing part of the dataset card (dataset.json): what a trainer and a user need without
the index folder, so shards copied to a bucket on their own (tars, manifest, card) can be trained on.

- `k` and the geo-cluster centroids (lat/lon) the `cls` labels refer to,
- the category names and their ids (the `category_index` of every sample),
- the sample format version,
- input locations relative to the output folder, or as URLs, never this machine's absolute paths.
Split sizes are in the card's `splits` section, written by write-shards.
"""

from __future__ import annotations

import json
import os
import posixpath

import numpy as np
import pyarrow as pa
from fsspec.core import split_protocol

from geo_ssl.pipeline.common import fsio, tables
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.shards.options import LAYOUTS
from geo_ssl.schemas import SCHEMA_VERSION


def portable_location(url: str, out: str) -> str:
    """An input location as the card records it: a URL as is; a local path relative to a local `out`;
    a local input of a remote `out` as `local:NAME` (its folder name only: the machine's path is no use
    to a reader of the bucket, and may name a user)."""
    if not _is_local(url):
        url, base = str(url).rstrip("/"), str(out).rstrip("/") + "/"
        return url[len(base) :] if url.startswith(base) else url  # OUT/index -> "index"
    path = os.path.abspath(split_protocol(str(url))[1])
    if _is_local(out):
        rel = os.path.relpath(path, os.path.abspath(split_protocol(str(out))[1]))
        return rel.replace(os.sep, "/")
    return "local:" + posixpath.basename(path.rstrip("/"))


def _is_local(url: str) -> bool:
    """A plain path or file:// URL (told by the scheme alone: no filesystem is opened)."""
    return split_protocol(str(url))[0] in (None, "file", "local")


def geo_clusters(clusters_dir: str, clusters: pa.Table) -> dict:
    """k and the centroids: from `cluster`'s centroids.parquet and cluster_stats.json when present
    (k counts empty clusters too), else k = the largest cluster id + 1 of clusters.parquet."""
    stats: dict = {}
    stats_url = fsio.join(clusters_dir, "cluster_stats.json")
    if fsio.exists(stats_url):
        try:
            stats = json.loads(fsio.read_bytes(stats_url))
        except ValueError:
            stats = {}
    centroids = None
    centroids_url = fsio.join(clusters_dir, "centroids.parquet")
    if fsio.exists(centroids_url):
        table = tables.read_table(centroids_url, "centroids", columns=["cluster", "lat", "lon"])
        table = table.sort_by("cluster")
        centroids = [
            {"cluster": int(c), "lat": float(lat), "lon": float(lon)}
            for c, lat, lon in zip(
                table.column("cluster").to_pylist(),
                table.column("lat").to_pylist(),
                table.column("lon").to_pylist(),
                strict=True,
            )
        ]
    ids = clusters.column("cluster").to_numpy(zero_copy_only=False)
    k = stats.get("k") if isinstance(stats.get("k"), int) else None
    if k is None:
        k = len(centroids) if centroids else (int(np.max(ids)) + 1 if len(ids) else 0)
    return {
        "k": k,
        "seed": stats.get("seed"),
        "algorithm": stats.get("algorithm"),
        "space": "lat/lon in degrees (WGS84); K-means on unit vectors of the geocentric positions",
        "centroids": centroids,
    }


def categories(views: pa.Table) -> list[dict]:
    """The (id, name) pairs of the categories in the shards, by id."""
    pairs = (
        views.select(["category_index", "category"]).group_by(["category_index", "category"]).aggregate([])
    )
    rows = sorted(
        zip(pairs.column("category_index").to_pylist(), pairs.column("category").to_pylist(), strict=True)
    )
    return [{"id": int(i), "name": str(n)} for i, n in rows]


def describe(out: str, index: str, clusters_dir: str, clusters: dict, views: pa.Table, inputs: dict) -> dict:
    """The card fields that make the shards self-describing (merged over write-shards' card)."""
    return {
        "k": clusters["k"],
        "geo_clusters": clusters,
        "categories": categories(views),
        "sample_format_version": SCHEMA_VERSION,
        "inputs": {
            "index": portable_location(index, out),
            "clusters": portable_location(clusters_dir, out),
            **inputs,
        },
    }


#: Types of the card's fields (when present); `splits` is required (every write-shards card has it).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "dataset": (str,), "schema_version": (str,), "sample_format_version": (str,),
    "sample_format": (str,), "sample_index": (str,), "fingerprint": (str,), "layout": (str,), "seed": (int,),
    "k": (int,), "parameters": (dict,), "inputs": (dict,), "splits": (dict,), "geo_clusters": (dict,),
    "categories": (list,), "temporal_positives": (bool,), "versions": (dict,),
}  # fmt: skip
_COUNTS = ("shards", "samples", "views", "bytes", "rejected_locations")


def _is(value: object, types: tuple[type, ...]) -> bool:
    """isinstance, with bool never passing for an int (true is not a count) and ints passing for floats."""
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types) or (float in types and isinstance(value, int))


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def card_problems(card: object) -> list[str]:
    """What is wrong with a dataset card (dataset.json as loaded), one text per problem; [] when sound.

    Shared by `validate` (which reports them) and the readers of a card (check_card), so a card one of
    them accepts is never refused by the other."""
    if not isinstance(card, dict):
        return [f"is a JSON {type(card).__name__}, not an object"]
    problems = []
    if "splits" not in card:
        problems.append("has no splits")
    for key, types in _FIELD_TYPES.items():
        if key in card and not _is(card[key], types):
            problems.append(
                f"{key} must be {' or '.join(t.__name__ for t in types)}, got {card[key]!r}"[:200]
            )
    k = card.get("k")
    if _is(k, (int,)) and k < 1:
        problems.append(f"k must be at least 1, got {k}")
    if _is(card.get("layout"), (str,)) and card["layout"] not in LAYOUTS:
        problems.append(f"layout {card['layout']!r} is not one of {', '.join(LAYOUTS)}")
    if isinstance(card.get("splits"), dict):
        for split, counts in card["splits"].items():
            if not isinstance(counts, dict):
                problems.append(f"splits.{split} must be an object, got {counts!r}"[:200])
                continue
            problems += [f"splits.{split}.{c} must be a count, got {counts[c]!r}"
                         for c in _COUNTS if c in counts and not _count(counts[c])]  # fmt: skip
    if isinstance(card.get("categories"), list):
        problems += _category_problems(card["categories"])
    if isinstance(card.get("geo_clusters"), dict):
        problems += _cluster_problems(card["geo_clusters"], k if _is(k, (int,)) else None)
    return problems


def _category_problems(categories: list) -> list[str]:
    """Ids are category indexes, -1 for the unknown category (fMoW's anonymised test locations)."""
    ids = []
    for c in categories:
        if not (
            isinstance(c, dict)
            and _is(c.get("id"), (int,))
            and c["id"] >= -1
            and isinstance(c.get("name"), str)
        ):
            return [
                f"categories: every entry must be {{id: an integer >= -1, name: a string}}, got {c!r}"[:200]
            ]
        ids.append(c["id"])
    return ["categories: ids repeat"] if len(set(ids)) != len(ids) else []


def _cluster_problems(clusters: dict, k: int | None) -> list[str]:
    ck = clusters.get("k")
    if ck is not None and not (_is(ck, (int,)) and ck >= 1):
        return [f"geo_clusters.k must be an integer of at least 1, got {ck!r}"]
    if ck is not None and k is not None and ck != k:
        return [f"geo_clusters.k {ck} differs from k {k}"]
    centroids = clusters.get("centroids")
    if centroids is None:
        return []
    n = k or ck
    ok = isinstance(centroids, list) and all(
        isinstance(c, dict) and _count(c.get("cluster")) and (n is None or c["cluster"] < n)
        and _is(c.get("lat"), (float,)) and -90 <= c["lat"] <= 90
        and _is(c.get("lon"), (float,)) and -180 <= c["lon"] <= 180
        for c in centroids
    )  # fmt: skip
    if not ok:
        return [f"geo_clusters.centroids must be a list of {{cluster < k, lat, lon in degrees}} (k={n})"]
    return []


def check_card(card: object, url: str) -> dict:
    """The card when it is sound, else GeoSSLError naming URL and its first problem (for readers such as
    geo-pretrain, which must not start on a card `validate` would report)."""
    problems = card_problems(card)
    if problems:
        more = (
            f" (and {len(problems) - 1} more; `geo-build-dataset validate` lists them)"
            if problems[1:]
            else ""
        )
        raise GeoSSLError(f"{url}: bad dataset card: {problems[0]}{more}")
    assert isinstance(card, dict)  # card_problems reports anything else
    return card
