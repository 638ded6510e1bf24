"""The world's land outline (Natural Earth 1:110m, public domain), shipped as package data.

Read from `data/ne_110m_land.parquet` beside this module (see data/README.md for source and licence),
so a report never downloads anything.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
import pyarrow.parquet as pq
import shapely
from matplotlib.path import Path

LAND_FILE = "ne_110m_land.parquet"


@lru_cache(maxsize=1)
def land_polygons() -> tuple:
    """The land polygons (lon/lat degrees), largest first."""
    ref = resources.files("geo_ssl.pipeline.report").joinpath("data", LAND_FILE)
    with ref.open("rb") as f:
        wkb = (
            pq.read_table(f, columns=["geometry"], use_threads=False, pre_buffer=False)
            .column("geometry")
            .to_pylist()
        )
    return tuple(shapely.from_wkb(wkb))


def _ring(coords: np.ndarray) -> tuple[np.ndarray, list[int]]:
    codes = [Path.MOVETO] + [Path.LINETO] * (len(coords) - 2) + [Path.CLOSEPOLY]
    return coords, codes


def land_path() -> Path:
    """One compound path of every land polygon, exteriors counter-clockwise and holes clockwise."""
    verts, codes = [], []
    for poly in land_polygons():
        poly = shapely.geometry.polygon.orient(poly, 1.0)
        for ring in (poly.exterior, *poly.interiors):
            v, c = _ring(np.asarray(ring.coords))
            verts.append(v)
            codes.extend(c)
    return Path(np.concatenate(verts), codes)
