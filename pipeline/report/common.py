"""What every report plot shares: reading the index tables, split and cluster colours, saving a PNG."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
from matplotlib import colormaps
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure

from geo_ssl.pipeline.common import fsio, tables
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.fmow.layout import SPLITS

#: Which stage writes each input, for the "file not found" message.
MADE_BY = {
    "locations.parquet": "index-fmow",
    "images.parquet": "index-fmow",
    "clusters.parquet": "cluster",
    "centroids.parquet": "cluster",
}
DPI = 110
_GOLDEN = 0.618033988749895


def read(folder: str, name: str, table_name: str) -> pa.Table:
    url = fsio.join(folder, name)
    if not fsio.exists(url):
        raise GeoSSLError(f"{url}: file not found; run `geo-build-dataset {MADE_BY[name]}` first")
    return tables.read_table(url, table_name)


def split_order(splits: set[str]) -> list[str]:
    return [s for s in SPLITS if s in splits] + sorted(splits - set(SPLITS))


def split_colors(splits: list[str]) -> dict[str, tuple]:
    cmap = colormaps["tab10"]
    return {s: cmap(i % 10) for i, s in enumerate(splits)}


def cluster_colors(cluster: np.ndarray, k: int) -> np.ndarray:
    """RGBA per cluster id, the same in the world map and the per-cluster chart.

    Up to 20 clusters: matplotlib's qualitative tab10/tab20. Beyond: golden-ratio hue steps, so
    consecutive ids get far-apart hues, with saturation and brightness cycling over three levels, so
    ids whose hues come close again still differ.
    """
    cluster = np.asarray(cluster, dtype=np.int64)
    if k <= 10:
        return colormaps["tab10"](cluster % 10)
    if k <= 20:
        return colormaps["tab20"](cluster % 20)
    hue = (cluster * _GOLDEN) % 1.0
    sat = np.array([0.85, 0.55, 1.0])[cluster % 3]
    val = np.array([0.9, 0.75, 0.6])[(cluster // 3) % 3]
    rgb = hsv_to_rgb(np.stack([hue, sat, val], axis=-1))
    return np.concatenate([rgb, np.ones((*rgb.shape[:-1], 1))], axis=-1)


def text_color(rgba: np.ndarray) -> str:
    """Black or white, whichever reads better on this background colour."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


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
        for s in split_order(set(samples))
    ]
    return "written: " + ("; ".join(parts) if parts else "no shards")


def save(fig: Figure, url: str) -> str:
    with fsio.atomic_local_path(url) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return url
