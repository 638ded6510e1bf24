"""PNG plots of a build: where the locations are and how they are clustered, views, categories, clusters.

Drawn offline with matplotlib's Agg canvas (no basemap tiles to download): the world map is a plain
equirectangular lat/lon frame with a 30-degree graticule.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
from matplotlib import colormaps
from matplotlib.figure import Figure

from geo_ssl.pipeline.common import fsio, tables
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.fmow.layout import CATEGORIES, SPLITS

#: Which stage writes each input, for the "file not found" message.
_MADE_BY = {"locations.parquet": "index-fmow", "clusters.parquet": "cluster", "centroids.parquet": "cluster"}
_DPI = 110
_GOLDEN = 0.618033988749895


def _read(folder: str, name: str, table_name: str) -> pa.Table:
    url = fsio.join(folder, name)
    if not fsio.exists(url):
        raise GeoSSLError(f"{url}: file not found; run `geo-build-dataset {_MADE_BY[name]}` first")
    return tables.read_table(url, table_name)


def _split_order(splits: set[str]) -> list[str]:
    return [s for s in SPLITS if s in splits] + sorted(splits - set(SPLITS))


def _split_colors(splits: list[str]) -> dict[str, tuple]:
    cmap = colormaps["tab10"]
    return {s: cmap(i % 10) for i, s in enumerate(splits)}


def _cluster_colors(cluster: np.ndarray) -> np.ndarray:
    """Golden-ratio hue steps: consecutive cluster ids get far-apart colours even for k = 100."""
    return colormaps["hsv"]((cluster * _GOLDEN) % 1.0)


def manifest_summary(out: str) -> str | None:
    """'written: train 1,234 samples / 5,678 views in 3 shards; ...' from OUT/manifest.parquet, if any."""
    url = fsio.join(out, "manifest.parquet")
    if not fsio.exists(url):
        return None
    rows = tables.read_table(url, "shard_manifest", columns=["split", "samples", "views"]).to_pylist()
    samples: Counter = Counter()
    views: Counter = Counter()
    shards: Counter = Counter()
    for row in rows:
        samples[row["split"]] += row["samples"]
        views[row["split"]] += row["views"]
        shards[row["split"]] += 1
    parts = [
        f"{s} {samples[s]:,} samples / {views[s]:,} views in {shards[s]} shard{'s' * (shards[s] != 1)}"
        for s in _split_order(set(samples))
    ]
    return "written: " + ("; ".join(parts) if parts else "no shards")


def _save(fig: Figure, url: str) -> str:
    with fsio.atomic_local_path(url) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
    return url


def _world_map(clusters: pa.Table, centroids: pa.Table, written: str | None, url: str) -> str:
    fig = Figure(figsize=(13, 7), layout="constrained")
    ax = fig.add_subplot()
    split = np.asarray(clusters.column("split").to_pylist(), dtype=object)
    lat = clusters.column("lat").to_numpy()
    lon = clusters.column("lon").to_numpy()
    label = clusters.column("cluster").to_numpy()
    train = split == "train"
    ax.scatter(
        lon[train],
        lat[train],
        s=4,
        c=_cluster_colors(label[train]),
        linewidths=0,
        rasterized=True,
        label=f"train locations ({int(train.sum()):,})",
    )
    if (~train).any():
        ax.scatter(
            lon[~train],
            lat[~train],
            s=9,
            marker="^",
            c=_cluster_colors(label[~train]),
            linewidths=0,
            alpha=0.7,
            rasterized=True,
            label=f"held-out locations ({int((~train).sum()):,})",
        )
    ax.scatter(
        centroids.column("lon").to_numpy(),
        centroids.column("lat").to_numpy(),
        s=40,
        marker="X",
        c="black",
        edgecolors="white",
        linewidths=0.6,
        label=f"centroids (k={centroids.num_rows})",
    )
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    ax.set_xticks(range(-180, 181, 30))
    ax.set_yticks(range(-90, 91, 30))
    ax.grid(True, color="0.8", linewidth=0.6)
    ax.axhline(0, color="0.6", linewidth=0.8)
    ax.set_xlabel("longitude (deg)")
    ax.set_ylabel("latitude (deg)")
    legend = ax.legend(loc="lower left", fontsize=8, markerscale=2)
    for handle in legend.legend_handles[: len(legend.legend_handles) - 1]:
        handle.set_color("0.45")  # location markers: shape means split, colour means cluster
    title = f"Locations by geo cluster ({clusters.num_rows:,} locations, k={centroids.num_rows})"
    ax.set_title(title + (f"\n{written}" if written else ""), fontsize=10)
    return _save(fig, url)


def _views_histogram(locations: pa.Table, splits: list[str], colors: dict, url: str) -> str:
    split = np.asarray(locations.column("split").to_pylist(), dtype=object)
    views = locations.column("n_views").to_numpy()
    top = int(views.max()) if len(views) else 1
    x = np.arange(1, top + 1)
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    bottom = np.zeros(top)
    for s in splits:
        counts = np.bincount(views[split == s], minlength=top + 1)[1:]
        ax.bar(
            x, counts, bottom=bottom, width=0.85, color=colors[s], label=f"{s} ({int((split == s).sum()):,})"
        )
        bottom += counts
    ax.set_xlabel("number of views (temporal images) per location")
    ax.set_ylabel("number of locations")
    ax.set_xlim(0.4, top + 0.6)
    if top <= 45:
        ax.set_xticks(x[:: 1 if top <= 25 else 2])
    ax.grid(True, axis="y", color="0.85")
    ax.legend(fontsize=9)
    median = float(np.median(views)) if len(views) else 0.0
    ax.set_title(
        f"Views per location (median {median:g}, max {top}, {int(views.sum()):,} views)", fontsize=10
    )
    return _save(fig, url)


def _per_category(locations: pa.Table, splits: list[str], colors: dict, written: str | None, url: str) -> str:
    split = locations.column("split").to_pylist()
    category = locations.column("category").to_pylist()
    counts = {s: Counter(c for c, sp in zip(category, split, strict=True) if sp == s) for s in splits}
    names = list(CATEGORIES) + sorted(set(category) - set(CATEGORIES))
    total = Counter(category)
    names.sort(key=lambda n: (-total[n], n))  # largest at the top
    y = np.arange(len(names))[::-1]
    fig = Figure(figsize=(10, max(4.0, 0.2 * len(names) + 1.5)), layout="constrained")
    ax = fig.add_subplot()
    left = np.zeros(len(names))
    for s in splits:
        widths = np.array([counts[s][n] for n in names], dtype=float)
        ax.barh(y, widths, left=left, height=0.8, color=colors[s], label=s)
        left += widths
    ax.set_yticks(y, names, fontsize=8)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel("number of locations (samples)")
    ax.grid(True, axis="x", color="0.85")
    ax.legend(fontsize=9, loc="lower right")
    empty = sum(1 for n in names if total[n] == 0)
    title = f"Locations per category ({len(names)} categories, {empty} empty)"
    ax.set_title(title + (f"\n{written}" if written else ""), fontsize=10)
    return _save(fig, url)


def _per_cluster(clusters: pa.Table, k: int, splits: list[str], colors: dict, url: str) -> str:
    split = np.asarray(clusters.column("split").to_pylist(), dtype=object)
    label = clusters.column("cluster").to_numpy()
    x = np.arange(k)
    fig = Figure(figsize=(max(8.0, 0.12 * k + 2), 5), layout="constrained")
    ax = fig.add_subplot()
    bottom = np.zeros(k)
    for s in splits:
        counts = np.bincount(label[split == s], minlength=k)[:k]
        ax.bar(x, counts, bottom=bottom, width=0.85, color=colors[s], label=s)
        bottom += counts
    train_sizes = np.bincount(label[split == "train"], minlength=k)[:k]
    if train_sizes.sum():
        ax.axhline(train_sizes.mean(), color="black", linewidth=0.8, linestyle="--", label="mean train size")
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_xlabel("geo cluster")
    ax.set_ylabel("number of locations (samples)")
    ax.grid(True, axis="y", color="0.85")
    ax.legend(fontsize=9)
    ax.set_title(
        f"Locations per geo cluster (k={k}; train min/median/max {int(train_sizes.min())}/"
        f"{float(np.median(train_sizes)):g}/{int(train_sizes.max())})",
        fontsize=10,
    )
    return _save(fig, url)


def report(out: str, index: str | None = None, plots: str | None = None) -> list[str]:
    """Write the four report PNGs; return their paths."""
    index = index or fsio.join(out, "index")
    plots = plots or fsio.join(out, "report")
    locations = _read(index, "locations.parquet", "locations")
    clusters = _read(index, "clusters.parquet", "clusters")
    centroids = _read(index, "centroids.parquet", "centroids")
    written = manifest_summary(out)
    splits = _split_order(
        set(locations.column("split").to_pylist()) | set(clusters.column("split").to_pylist())
    )
    colors = _split_colors(splits)
    fsio.makedirs(plots)
    return [
        _world_map(clusters, centroids, written, fsio.join(plots, "world_clusters.png")),
        _views_histogram(locations, splits, colors, fsio.join(plots, "views_per_location.png")),
        _per_category(locations, splits, colors, written, fsio.join(plots, "locations_per_category.png")),
        _per_cluster(
            clusters, centroids.num_rows, splits, colors, fsio.join(plots, "locations_per_cluster.png")
        ),
    ]
