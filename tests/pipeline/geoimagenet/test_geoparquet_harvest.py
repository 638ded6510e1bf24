"""harvest-flickr's flickr_geo.parquet is GeoParquet (it was plain Parquet with lat/lon columns): points in
WGS84 lon/lat where the photo has a location, null geometry where it has none, and a harvest resumed from
part files written before the geometry column still ends in one GeoParquet file."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import geopandas
import pyarrow.parquet as pq
from pyproj import CRS

from geo_ssl.pipeline.geoimagenet.harvest import HarvestOptions, harvest_flickr
from geo_ssl.pipeline.geoimagenet.store import PARTS_DIR, ResultStore, rows_table
from geo_ssl.schemas import schema_for
from tests.pipeline.geoimagenet.conftest import make_photos, write_urls


def _check_geoparquet(path) -> geopandas.GeoDataFrame:
    gdf = geopandas.read_parquet(path)
    assert gdf.crs == CRS("OGC:CRS84")  # WGS84 (EPSG:4326's datum) in GeoParquet's lon/lat order
    assert json.loads(pq.read_schema(path).metadata[b"geo"])["primary_column"] == "geometry"
    located = gdf[gdf["status"] == "ok"]
    assert len(located) and not located.geometry.isna().any()
    assert (located.geometry.x == located["lon"]).all() and (located.geometry.y == located["lat"]).all()
    assert gdf[gdf["status"] != "ok"].geometry.isna().all()
    return gdf


def test_harvest_writes_geoparquet(tmp_path, standin_factory, flickr_env) -> None:
    photos = make_photos(12)
    write_urls(tmp_path / "urls.txt", photos)
    server = standin_factory(photos)
    opts = HarvestOptions(api_url=server.url, rate_limit=3600 * 200, concurrency=4, batch=5, retry_base=0.01)
    harvest_flickr(str(tmp_path / "urls.txt"), str(tmp_path / "out"), opts)
    gdf = _check_geoparquet(tmp_path / "out" / "flickr_geo.parquet")
    assert set(gdf["status"]) > {"ok"}  # the null-geometry rows are there too


def _row(photo_id: int, lat: float | None, lon: float | None) -> dict:
    status = "ok" if lat is not None else "no_location"
    return {"photo_id": photo_id, "wnid": "n01440764", "status": status, "source": "api", "lat": lat, "lon": lon,
            "attempts": 1, "answered_at": datetime(2026, 1, 1, tzinfo=UTC)}  # fmt: skip


def test_a_part_from_before_the_geometry_column_gets_its_points(tmp_path) -> None:
    store = ResultStore(str(tmp_path))
    old = rows_table([_row(1, 10.5, -20.25), _row(2, None, None)])  # as harvests wrote parts before
    old = old.replace_schema_metadata(schema_for("flickr_geo").metadata)
    pq.write_table(old, tmp_path / PARTS_DIR / "part-000000.parquet")
    store = ResultStore(str(tmp_path))  # a resumed harvest
    store.append([_row(3, -33.0, 151.0)])
    assert len(store.answered_ids()) == 3
    store.merge()
    gdf = _check_geoparquet(tmp_path / "flickr_geo.parquet")
    assert sorted(gdf["photo_id"]) == [1, 2, 3]
    assert json.loads(pq.read_schema(tmp_path / "flickr_geo.parquet").metadata[b"geo"])["columns"][
        "geometry"
    ]["bbox"] == [-20.25, -33.0, 151.0, 10.5]
