"""PNG plots of a build: where the locations are and how they are clustered, views, categories,
clusters, and a contact sheet of sampled locations.

Drawn offline with matplotlib's Agg canvas and Pillow; the world map's land outline is package data
(Natural Earth, public domain; data/README.md), so nothing is downloaded.
"""

from __future__ import annotations

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.report.charts import per_category, per_cluster, views_histogram
from geo_ssl.pipeline.report.common import manifest_summary, read, split_colors, split_order
from geo_ssl.pipeline.report.contact_sheet import draw_contact_sheet
from geo_ssl.pipeline.report.world_map import draw_world_map
from geo_ssl.schemas.dataset_card import category_names, load_card

__all__ = ["manifest_summary", "report"]


def report(out: str, index: str | None = None, plots: str | None = None, samples: int = 4) -> list[str]:
    """Write the report PNGs (world map, three charts, contact sheet); return their paths.

    The contact sheet needs the index's images.parquet or a shard build; it is left out when neither is there.
    """
    index = index or fsio.join(out, "index")
    plots = plots or fsio.join(out, "report")
    locations = read(index, "locations.parquet", "locations")
    clusters = read(index, "clusters.parquet", "clusters")
    centroids = read(index, "centroids.parquet", "centroids")
    written = manifest_summary(out)
    splits = split_order(
        set(locations.column("split").to_pylist()) | set(clusters.column("split").to_pylist())
    )
    colors = split_colors(splits)
    listed = (category_names(load_card(out)) or {}).values()  # the card's categories (none without a card)
    fsio.makedirs(plots)
    paths = [
        draw_world_map(clusters, centroids, written, fsio.join(plots, "world_clusters.png")),
        views_histogram(locations, splits, colors, fsio.join(plots, "views_per_location.png")),
        per_category(
            locations, splits, colors, written, fsio.join(plots, "locations_per_category.png"), listed
        ),
        per_cluster(clusters, centroids.num_rows, splits, fsio.join(plots, "locations_per_cluster.png")),
    ]
    sheet = draw_contact_sheet(out, index, fsio.join(plots, "contact_sheet.png"), n=samples)
    if sheet is not None:
        paths.append(sheet)
    return paths
