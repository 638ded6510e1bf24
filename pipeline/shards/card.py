"""The self-describing part of the dataset card (dataset.json): what a trainer and a user need without
the index folder, so shards copied to a bucket on their own (tars, manifest, card) can be trained on.

- `k` and the geo-cluster centroids (lat/lon) the `cls` labels refer to,
- the category names and their ids (the `category_index` of every sample),
- the sample format version,
- input locations relative to the output folder, or as URLs, never this machine's absolute paths.
Split sizes are in the card's `splits` section, written by write-shards. The card's checks live in
`geo_ssl.schemas.dataset_card` (its readers, the trainer among them, import them from there).
"""

from __future__ import annotations

import json
import os
import posixpath

import numpy as np
import pyarrow as pa
from fsspec.core import split_protocol

from geo_ssl.pipeline.common import fsio, tables
from geo_ssl.schemas import SCHEMA_VERSION
from geo_ssl.schemas.dataset_card import card_problems, check_card

__all__ = ["card_problems", "categories", "check_card", "describe", "geo_clusters", "portable_location"]


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
