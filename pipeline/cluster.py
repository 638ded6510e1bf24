"""Geo pseudo-labels: K-means over unique locations on the unit sphere, fitted on the train split only.

Points are clustered as 3-D unit vectors (pyproj geocentric directions), never as raw degrees, so
lon 179.9 and -179.9 are neighbours and high latitudes are not stretched. Held-out splits get the
nearest fitted centroid; they never move the centroids, so val/test labels cannot leak into training.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
from sklearn.cluster import KMeans, MiniBatchKMeans
from threadpoolctl import threadpool_limits

from geo_ssl.pipeline.common import fsio, tables
from geo_ssl.pipeline.common import sphere as geo
from geo_ssl.pipeline.common.checks import check_seed
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.logs import get_logger
from geo_ssl.pipeline.common.outlock import output_lock
from geo_ssl.pipeline.common.progress import Summary

#: Locations closer than about this are one location when counting distinct ones (unit-vector grid step).
DISTINCT_UNIT = 1e-6
DISTINCT_M = DISTINCT_UNIT * 6_371_000
#: Restarts of full K-means; fixed so a seed names exactly one result.
KMEANS_N_INIT = 4
#: MiniBatchKMeans settings used above the threshold (fMoW train has tens of thousands of locations).
MINIBATCH_SIZE = 4096
MINIBATCH_N_INIT = 3

log = get_logger(__name__)


def _note(message: str) -> None:
    """A progress note on stderr, left out like the bars when GEO_SSL_PROGRESS=0 (--quiet, tests)."""
    if os.environ.get("GEO_SSL_PROGRESS", "1") != "0":
        log.info(message)


def _read_locations(url: str) -> dict[str, np.ndarray]:
    table = tables.read_table(url, "locations", columns=["location_key", "split", "lat", "lon"])
    cols = {
        "location_key": np.asarray(table.column("location_key").to_pylist(), dtype=object),
        "split": np.asarray(table.column("split").to_pylist(), dtype=object),
        "lat": table.column("lat").to_numpy().astype(np.float64),
        "lon": table.column("lon").to_numpy().astype(np.float64),
    }
    lat, lon = cols["lat"], cols["lon"]
    bad = ~(np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180))
    if bad.any():
        first = cols["location_key"][np.flatnonzero(bad)[0]]
        raise GeoSSLError(
            f"{url}: {int(bad.sum())} location(s) have invalid lat/lon (first: {first}); re-run index-fmow"
        )
    if len(set(cols["location_key"])) != len(lat):
        raise GeoSSLError(f"{url}: location_key is not unique; re-run index-fmow")
    return cols


def distinct_locations(lat: np.ndarray, lon: np.ndarray) -> int:
    """Number of distinct points, counting points within a few metres as one.

    Exact float comparison would count one site seen with float noise as many (and suggest a k that
    leaves clusters empty); unit vectors rounded to 1e-6 (about 6 m on Earth) are compared instead."""
    if len(lat) == 0:
        return 0
    cells = np.round(geo.latlon_to_unit(lat, lon) / DISTINCT_UNIT).astype(np.int64)
    return len(np.unique(cells, axis=0))


def _fit(
    xyz: np.ndarray, k: int, seed: int, minibatch_threshold: int
) -> tuple[KMeans | MiniBatchKMeans, str]:
    if len(xyz) > minibatch_threshold:
        model = MiniBatchKMeans(
            n_clusters=k, random_state=seed, batch_size=MINIBATCH_SIZE, n_init=MINIBATCH_N_INIT
        )
        algorithm = "minibatch_kmeans"
    else:
        model = KMeans(n_clusters=k, random_state=seed, n_init=KMEANS_N_INIT)
        algorithm = "kmeans"
    # One OpenMP thread: sklearn's multi-threaded centre sums are reduced in thread order, which can
    # change the last bits of the centroids between runs. 3-D data is cheap enough to fit serially.
    with threadpool_limits(limits=1):
        model.fit(xyz)
    return model, algorithm


def _size_stats(sizes: np.ndarray) -> dict:
    return {
        "min": int(sizes.min()),
        "median": float(np.median(sizes)),
        "mean": float(sizes.mean()),
        "max": int(sizes.max()),
    }


def cluster(
    index: str, k: int = 100, seed: int = 0, out: str | None = None, minibatch_threshold: int = 50_000
) -> dict:
    """Fit K-means on train locations, label every location, write clusters/centroids/stats; return stats."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise GeoSSLError(f"--k must be an integer of at least 1, got {k!r}")
    check_seed(seed)
    fsio.check_output_dir(out or index, "--out" if out else "--index")
    out = out or index
    src = fsio.join(index, "locations.parquet")
    loc = _read_locations(src)
    n = len(loc["lat"])
    is_train = loc["split"] == "train"
    n_train = int(is_train.sum())
    if n_train == 0:
        found = ", ".join(sorted(set(loc["split"]))) or "no locations at all"
        raise GeoSSLError(f"{src}: no train split to fit clusters on (found: {found})")
    n_distinct = distinct_locations(loc["lat"][is_train], loc["lon"][is_train])
    if k > n_distinct:
        raise GeoSSLError(
            f"{src}: k={k} is more than the {n_distinct} distinct train locations (points within about"
            f" {DISTINCT_M:.0f} m count as one); use --k {n_distinct} or less"
        )

    xyz = geo.latlon_to_unit(loc["lat"], loc["lon"])
    _note(f"cluster: fitting k={k} on {n_train} train locations (seed {seed})")
    model, algorithm = _fit(xyz[is_train], k, seed, minibatch_threshold)

    # One assignment rule for every split (the fitted model's nearest centre), so train labels and
    # held-out labels mean the same thing.
    with threadpool_limits(limits=1):
        labels = model.predict(xyz).astype(np.int32)
    centre_unit = model.cluster_centers_ / np.linalg.norm(model.cluster_centers_, axis=1, keepdims=True)
    centre_lat, centre_lon = geo.unit_to_latlon(centre_unit)
    distance_km = geo.great_circle_km(xyz, centre_unit[labels])

    order = np.argsort(loc["location_key"].astype(str), kind="stable")
    clusters_table = pa.table(
        {
            "location_key": loc["location_key"][order].tolist(),
            "split": loc["split"][order].tolist(),
            "lat": loc["lat"][order],
            "lon": loc["lon"][order],
            "cluster": labels[order],
            "distance_km": distance_km[order],
        }
    )
    train_sizes = np.bincount(labels[is_train], minlength=k)
    all_sizes = np.bincount(labels, minlength=k)
    centroids_table = pa.table(
        {
            "cluster": np.arange(k, dtype=np.int32),
            "lat": centre_lat,
            "lon": centre_lon,
            "n_train_locations": train_sizes.astype(np.int64),
            "n_locations": all_sizes.astype(np.int64),
        }
    )

    splits = {}
    for split in sorted(set(loc["split"])):
        mask = loc["split"] == split
        splits[split] = {
            "locations": int(mask.sum()),
            "median_distance_km": float(np.median(distance_km[mask])),
        }
    summary = Summary(stage="cluster", unit="locations", inputs=n, written=n)
    size_stats = _size_stats(train_sizes)
    empty = int((train_sizes == 0).sum())
    stats = {
        "k": k,
        "seed": seed,
        "algorithm": algorithm,
        "n_init": MINIBATCH_N_INIT if algorithm == "minibatch_kmeans" else KMEANS_N_INIT,
        "batch_size": MINIBATCH_SIZE if algorithm == "minibatch_kmeans" else None,
        "minibatch_threshold": minibatch_threshold,
        "space": "unit vectors of EPSG:4978 (geocentric) positions",
        "source": src,
        "train_locations": n_train,
        "distinct_train_locations": n_distinct,
        "inertia": float(model.inertia_),  # sum of squared chord lengths on the unit sphere, train only
        "train_cluster_size": size_stats,
        "empty_clusters": empty,
        "splits": splits,
        "median_distance_km": float(np.median(distance_km[is_train])),
        "summary": summary.as_dict(),
    }
    stats["line"] = (
        f"{summary.line()} | k={k} {algorithm} seed={seed} | train cluster size"
        f" min/median/mean/max {size_stats['min']}/{size_stats['median']:g}/{size_stats['mean']:.1f}/"
        f"{size_stats['max']}, {empty} empty | median distance to centroid"
        f" {stats['median_distance_km']:.0f} km | "
        + ", ".join(f"{s} {v['locations']}" for s, v in splits.items())
    )

    if empty:  # not silent even with progress output off: the geo head would have dead classes
        log.warning(
            f"cluster: WARNING: {empty} of {k} clusters got no train location; "
            f"the data have {n_distinct} distinct train locations, consider a smaller --k"
        )
    with output_lock(out, "cluster"):
        fsio.remove_stale_temps(out)
        tables.write_table(clusters_table, fsio.join(out, "clusters.parquet"), "clusters")
        tables.write_table(centroids_table, fsio.join(out, "centroids.parquet"), "centroids")
        # Written last: its presence means the two tables above belong to this run.
        fsio.atomic_write_text(fsio.join(out, "cluster_stats.json"), json.dumps(stats, indent=2) + "\n")
    return stats
