"""Bar charts of a build: views per location, locations per category, locations per geo cluster."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from geo_ssl.pipeline.report.common import cluster_colors, save

#: Hatches that tell the splits apart in the per-cluster chart, where colour means the cluster.
_SPLIT_HATCH = ("", "////", "....", "xxxx", "\\\\\\\\")


def views_histogram(locations: pa.Table, splits: list[str], colors: dict, url: str) -> str:
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
    return save(fig, url)


def per_category(
    locations: pa.Table,
    splits: list[str],
    colors: dict,
    written: str | None,
    url: str,
    listed: Iterable[str] = (),
) -> str:
    """One bar per category: those `listed` (the dataset card's, so an empty one shows) and any other the
    index holds; no data set's list is assumed."""
    split = locations.column("split").to_pylist()
    category = locations.column("category").to_pylist()
    counts = {s: Counter(c for c, sp in zip(category, split, strict=True) if sp == s) for s in splits}
    names = sorted(set(listed) | set(category))
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
    return save(fig, url)


def per_cluster(clusters: pa.Table, k: int, splits: list[str], url: str) -> str:
    """One bar per cluster id in the cluster's map colour; splits stacked, told apart by hatching."""
    split = np.asarray(clusters.column("split").to_pylist(), dtype=object)
    label = clusters.column("cluster").to_numpy()
    x = np.arange(k)
    colors = cluster_colors(x, k)
    fig = Figure(figsize=(max(8.0, 0.18 * k + 2), 5), layout="constrained")
    ax = fig.add_subplot()
    bottom = np.zeros(k)
    handles = []
    for i, s in enumerate(splits):
        counts = np.bincount(label[split == s], minlength=k)[:k]
        hatch = _SPLIT_HATCH[i % len(_SPLIT_HATCH)]
        alpha = 1.0 if i == 0 else 0.55
        ax.bar(x, counts, bottom=bottom, width=0.85, color=colors, alpha=alpha, hatch=hatch,
               edgecolor="0.25", linewidth=0.3)  # fmt: skip
        handles.append(Patch(facecolor="0.7", alpha=alpha, hatch=hatch, edgecolor="0.25", label=s))
        bottom += counts
    train_sizes = np.bincount(label[split == "train"], minlength=k)[:k]
    if train_sizes.sum():
        handles.append(ax.axhline(train_sizes.mean(), color="black", linewidth=0.8, linestyle="--",
                                  label="mean train size"))  # fmt: skip
    ax.set_xlim(-0.6, k - 0.4)
    size = 10 if k <= 10 else 8 if k <= 30 else 7 if k <= 100 else 6  # three-digit ids stand on end
    ax.set_xticks(x, [str(i) for i in x], fontsize=size, rotation=0 if k <= 100 else 90)
    for tick, c in zip(ax.get_xticklabels(), colors, strict=True):
        tick.set_bbox({"boxstyle": "round,pad=0.15", "facecolor": c, "edgecolor": "none"})
        tick.set_color("black" if c[:3] @ np.array([0.299, 0.587, 0.114]) > 0.55 else "white")
    ax.tick_params(axis="x", length=0, pad=3)
    ax.set_xlabel("geo cluster id (colour as on the world map)")
    ax.set_ylabel("number of locations (samples)")
    ax.grid(True, axis="y", color="0.85")
    ax.legend(handles=handles, fontsize=9)
    ax.set_title(
        f"Locations per geo cluster (k={k}; train min/median/max {int(train_sizes.min())}/"
        f"{float(np.median(train_sizes)):g}/{int(train_sizes.max())})",
        fontsize=10,
    )
    return save(fig, url)
