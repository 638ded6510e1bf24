"""Parquet in and out for geo-ssl tables: schema-checked, atomic, fsspec-backed, GeoParquet-aware."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.retry import retry_io
from geo_ssl.schemas import SchemaError, check_metadata, schema_for, validate_table

#: GeoParquet 1.0 metadata for the point column of every table with coordinates.
_GEO_META = {
    "version": "1.0.0",
    "primary_column": "geometry",
    "columns": {
        "geometry": {
            "encoding": "WKB",
            "geometry_types": ["Point"],
            # no "crs" key: GeoParquet then means OGC:CRS84 (lon, lat); an explicit null would mean "unknown"
        }
    },
}


def point_geometry(lon, lat) -> pa.Array:
    """WKB points (lon, lat) for a GeoParquet `geometry` column; null where a coordinate is missing (NaN)."""
    import shapely

    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    wkb = shapely.to_wkb(shapely.points(lon, lat)).tolist()
    known = np.isfinite(lon) & np.isfinite(lat)
    return pa.array([w if ok else None for w, ok in zip(wkb, known.tolist(), strict=True)], type=pa.binary())


def _geo_meta(table: pa.Table) -> dict:
    """GeoParquet metadata, with the bounding box of the points when there are any."""
    meta = json.loads(json.dumps(_GEO_META))
    if table.num_rows and {"lon", "lat"} <= set(table.column_names):
        lon = table.column("lon").to_numpy().astype(np.float64)  # nulls (no location) are NaN: left out
        lat = table.column("lat").to_numpy().astype(np.float64)
        known = np.isfinite(lon) & np.isfinite(lat)
        if known.any():
            lon, lat = lon[known], lat[known]
            bbox = [float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())]
            meta["columns"]["geometry"]["bbox"] = bbox
    return meta


def write_table(table: pa.Table, url: str, table_name: str) -> None:
    """Validate against the named schema and write atomically (temp file, then rename/PUT).

    A table whose schema has a `geometry` column is written as GeoParquet 1.0; when the caller gives
    only `lat`/`lon`, the WKB points are made here, so every table with coordinates opens in geopandas.
    """
    if (
        "geometry" in schema_for(table_name).names
        and "geometry" not in table.column_names
        and {"lat", "lon"} <= set(table.column_names)
    ):
        table = table.append_column(
            "geometry", point_geometry(table.column("lon").to_numpy(), table.column("lat").to_numpy())
        )
    table = validate_table(table, table_name, source=url)
    if "geometry" in table.column_names:
        meta = dict(table.schema.metadata or {})
        meta[b"geo"] = json.dumps(_geo_meta(table)).encode()
        table = table.replace_schema_metadata(meta)
    with fsio.atomic_local_path(url) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_table(url: str, table_name: str, columns: list[str] | None = None) -> pa.Table:
    """Read a geo-ssl table, refusing a file of another kind or schema version with a one-line error."""
    fs, path = fsio.get_fs(url)
    if not retry_io(lambda: fs.exists(path), f"reading {url}"):
        raise GeoSSLError(f"{url}: file not found (run the stage that writes the {table_name} table first)")

    def read() -> pa.Table:
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f, pre_buffer=False)
            check_metadata(pf.schema_arrow, table_name, url)
            return pf.read(columns=columns, use_threads=False)  # see shard_list._manifest_rows

    try:  # storage errors are retried, then raise retry.StorageError (exit 3), never "not Parquet"
        return retry_io(read, f"reading {url}")
    except SchemaError as exc:
        raise GeoSSLError(str(exc)) from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise GeoSSLError(f"{url}: not a readable Parquet file ({exc})") from exc


def empty_table(table_name: str) -> pa.Table:
    return schema_for(table_name).empty_table()
