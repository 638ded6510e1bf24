"""The world map: locations coloured by geo cluster over a land outline, centroids tagged with their id.

Drawn offline with matplotlib's Agg canvas in a plain equirectangular lon/lat frame. Centroids are hollow
rings drawn *under* the locations, so they never hide one; each carries a small tag with its cluster id
in the cluster's colour (the colour of its bar in locations_per_cluster.png). Tags are placed greedily in
pixel space: at the centroid's side when free, else further out on a leader line, never on another tag.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import PathPatch

from geo_ssl.pipeline.report.common import DPI, cluster_colors, save, text_color
from geo_ssl.pipeline.report.land import land_path

_OCEAN = "#e8f1f8"
_LAND = "#d9d6cc"
_COAST = "#9a968a"
_ANGLES = np.deg2rad([45, 135, 225, 315, 0, 90, 180, 270, 22, 67, 112, 157, 202, 247, 292, 337])
_RADII = (10, 17, 26, 38, 52, 70, 90, 115, 145)  # px from the centroid to the tag's centre


def _tag_size(text: str, fontsize: float) -> tuple[float, float]:
    """Pixel width, height of a tag (text plus its rounded box), from the font size."""
    pt = DPI / 72
    return (0.62 * fontsize * len(text) + 0.9 * fontsize) * pt, 1.75 * fontsize * pt


def _overlap(a: np.ndarray, boxes: np.ndarray) -> float:
    if not len(boxes):
        return 0.0
    w = np.clip(np.minimum(a[2], boxes[:, 2]) - np.maximum(a[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(a[3], boxes[:, 3]) - np.maximum(a[1], boxes[:, 1]), 0, None)
    return float((w * h).sum())


def place_tags(
    points: np.ndarray,
    sizes: list[tuple[float, float]],
    frame: tuple[float, float, float, float],
    ring: float,
) -> np.ndarray:
    """Tag centres (pixels) for centroids at `points`: no tag on another, rings avoided, inside `frame`.

    Greedy, densest neighbourhoods first, trying ever wider circles of candidate positions; a tag that
    finds no free spot takes the candidate with the least overlap.
    """
    n = len(points)
    centres = np.zeros((n, 2))
    rings = np.c_[points - ring, points + ring]
    d = np.linalg.norm(points[:, None] - points[None], axis=-1) if n else np.zeros((0, 0))
    order = np.argsort(-(d < 60).sum(axis=1), kind="stable")
    placed: list[np.ndarray] = []
    for i in order:
        w, h = sizes[i]
        best, best_cost = None, np.inf
        for r in _RADII:
            for a in _ANGLES:
                c = points[i] + r * np.array([np.cos(a), np.sin(a)])
                box = np.array([c[0] - w / 2, c[1] - h / 2, c[0] + w / 2, c[1] + h / 2])
                if box[0] < frame[0] or box[1] < frame[1] or box[2] > frame[2] or box[3] > frame[3]:
                    continue
                cost = 10 * _overlap(box, np.array(placed).reshape(-1, 4)) + _overlap(box, rings)
                if cost < best_cost:
                    best, best_cost = (c, box), cost
                if cost == 0:
                    break
            if best_cost == 0:
                break
        if best is None:  # no candidate inside the frame: stay at the centroid
            c = points[i]
            best = (c, np.array([c[0] - w / 2, c[1] - h / 2, c[0] + w / 2, c[1] + h / 2]))
        centres[i] = best[0]
        placed.append(best[1])
    return centres


def draw_world_map(clusters: pa.Table, centroids: pa.Table, written: str | None, url: str) -> str:
    k = centroids.num_rows
    fig = Figure(figsize=(14, 7.7))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.045, 0.07, 0.94, 0.83))
    ax.set_facecolor(_OCEAN)
    ax.add_patch(PathPatch(land_path(), facecolor=_LAND, edgecolor=_COAST, linewidth=0.4, zorder=1))
    split = np.asarray(clusters.column("split").to_pylist(), dtype=object)
    lat = clusters.column("lat").to_numpy()
    lon = clusters.column("lon").to_numpy()
    label = clusters.column("cluster").to_numpy()
    train = split == "train"
    dot = 5 if clusters.num_rows < 20_000 else 2
    ax.scatter(lon[train], lat[train], s=dot, c=cluster_colors(label[train], k), linewidths=0,
               rasterized=True, zorder=4)  # fmt: skip
    if (~train).any():
        ax.scatter(lon[~train], lat[~train], s=2.2 * dot, marker="^", c=cluster_colors(label[~train], k),
                   edgecolors="0.15", linewidths=0.25, rasterized=True, zorder=4)  # fmt: skip
    c_id = centroids.column("cluster").to_numpy()
    c_lon, c_lat = centroids.column("lon").to_numpy(), centroids.column("lat").to_numpy()
    c_col = cluster_colors(c_id, k)
    ring_px = 5.0
    ax.scatter(c_lon, c_lat, s=(2 * ring_px * 72 / DPI) ** 2, facecolors="none", edgecolors="0.1",
               linewidths=1.0, zorder=3)  # fmt: skip
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    ax.set_xticks(range(-180, 181, 30))
    ax.set_yticks(range(-90, 91, 30))
    ax.tick_params(labelsize=8)
    ax.grid(True, color="white", linewidth=0.6, zorder=0)
    ax.set_axisbelow(True)
    ax.set_xlabel("longitude (deg)", fontsize=9)
    ax.set_ylabel("latitude (deg)", fontsize=9)
    title = f"Locations by geo cluster ({clusters.num_rows:,} locations, k={k})"
    ax.set_title(title + (f"\n{written}" if written else ""), fontsize=10)

    fig.draw_without_rendering()  # fixes the axes box, so data -> pixel transforms are final
    to_px = ax.transData.transform
    points = to_px(np.c_[c_lon, c_lat]) if k else np.zeros((0, 2))
    fontsize = 7.5 if k <= 30 else 6.5
    texts = [str(int(i)) for i in c_id]
    sizes = [_tag_size(t, fontsize) for t in texts]
    bb = ax.get_window_extent()
    centres = place_tags(points, sizes, (bb.x0 + 1, bb.y0 + 1, bb.x1 - 1, bb.y1 - 1), ring_px)
    to_data = ax.transData.inverted().transform
    for text, p, c, colour in zip(texts, points, centres, c_col, strict=True):
        x, y = to_data(c)
        if np.linalg.norm(c - p) > 13:  # away from its ring: a leader line back to it
            ax.add_line(Line2D(*to_data(np.array([p, c])).T, color="0.15", linewidth=0.5, zorder=5))
        ax.text(x, y, text, fontsize=fontsize, fontweight="bold", ha="center", va="center",
                color=text_color(colour), zorder=6,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": colour, "edgecolor": "0.15",
                      "linewidth": 0.5, "alpha": 0.9})  # fmt: skip

    handles = [
        Line2D([], [], marker="o", linestyle="", markersize=4, color="0.45", label=f"train locations ({int(train.sum()):,})"),
        Line2D([], [], marker="o", linestyle="", markersize=7, markerfacecolor="none", markeredgecolor="0.1",
               label=f"cluster centroids (k={k}), tagged with the cluster id"),
    ]  # fmt: skip
    if (~train).any():
        handles.insert(1, Line2D([], [], marker="^", linestyle="", markersize=5, color="0.45",
                                 label=f"held-out locations ({int((~train).sum()):,})"))  # fmt: skip
    legend = ax.legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.9)
    legend.set_zorder(7)
    fig.text(0.985, 0.012, "colour = geo cluster, as in locations_per_cluster.png.  Land: Natural Earth 1:110m",
             ha="right", va="bottom", fontsize=7, color="0.35")  # fmt: skip
    return save(fig, url)
