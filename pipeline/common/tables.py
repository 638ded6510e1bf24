"""Parquet in and out for geo-ssl tables: schema-checked, atomic, fsspec-backed, GeoParquet-aware."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.schemas import SchemaError, check_metadata, schema_for, validate_table

#: GeoParquet 1.0 metadata for the image index's point column.
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


def write_table(table: pa.Table, url: str, table_name: str) -> None:
    """Validate against the named schema and write atomically (temp file, then rename/PUT)."""
    table = validate_table(table, table_name, source=url)
    if "geometry" in table.column_names:
        meta = dict(table.schema.metadata or {})
        meta[b"geo"] = json.dumps(_GEO_META).encode()
        table = table.replace_schema_metadata(meta)
    with fsio.atomic_local_path(url) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_table(url: str, table_name: str, columns: list[str] | None = None) -> pa.Table:
    """Read a geo-ssl table, refusing a file of another kind or schema version with a one-line error."""
    fs, path = fsio.get_fs(url)
    if not fs.exists(path):
        raise GeoSSLError(f"{url}: file not found (run the stage that writes the {table_name} table first)")
    try:
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            check_metadata(pf.schema_arrow, table_name, url)
            return pf.read(columns=columns)
    except SchemaError as exc:
        raise GeoSSLError(str(exc)) from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise GeoSSLError(f"{url}: not a readable Parquet file ({exc})") from exc


def empty_table(table_name: str) -> pa.Table:
    return schema_for(table_name).empty_table()
