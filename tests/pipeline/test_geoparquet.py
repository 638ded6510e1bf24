"""Every table with coordinates is GeoParquet: geopandas opens it with CRS84 and the right points."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from geo_ssl.pipeline.cluster import cluster
from geo_ssl.pipeline.fmow.index import index_fmow
from geo_ssl.pipeline.fmow.synth import synth_fmow
from geo_ssl.pipeline.shards.options import ShardOptions
from geo_ssl.pipeline.shards.write import write_shards

#: file (relative to the build folder) -> the key column that names a row
TABLES = {
    "index/images.parquet": "image_path",
    "index/locations.parquet": "location_key",
    "index/clusters.parquet": "location_key",
    "index/centroids.parquet": "cluster",
    "sample_index.parquet": "key",
}


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    base = tmp_path_factory.mktemp("geo")
    synth_fmow(str(base / "fmow"), locations=10, seed=2, workers=1)
    index_fmow(str(base / "fmow"), str(base / "out" / "index"), workers=1)
    cluster(str(base / "out" / "index"), k=3, seed=0)
    write_shards(str(base / "out" / "index"), str(base / "out"), options=ShardOptions(resize=48, workers=1))
    return base / "out"


@pytest.mark.parametrize("name", sorted(TABLES))
def test_coordinate_tables_open_in_geopandas(build, name) -> None:
    import geopandas
    from pyproj import CRS

    path = build / name
    meta = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert meta["primary_column"] == "geometry" and meta["columns"]["geometry"]["encoding"] == "WKB"
    gdf = geopandas.read_parquet(path)
    assert len(gdf) > 0 and gdf.geometry.name == "geometry"
    assert gdf.crs == CRS("OGC:CRS84")  # lon/lat order, WGS84
    assert (gdf.geom_type == "Point").all()
    # each point is (lon, lat) of its row, and the file's bbox holds them all
    assert (gdf.geometry.x - gdf["lon"]).abs().max() < 1e-9
    assert (gdf.geometry.y - gdf["lat"]).abs().max() < 1e-9
    x0, y0, x1, y1 = meta["columns"]["geometry"]["bbox"]
    assert (
        x0 <= gdf["lon"].min()
        and gdf["lon"].max() <= x1
        and y0 <= gdf["lat"].min()
        and gdf["lat"].max() <= y1
    )
    assert gdf[TABLES[name]].is_unique
