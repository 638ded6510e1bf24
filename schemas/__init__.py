"""Arrow schemas for every table geo-ssl writes, and the validation helpers that guard them.

The schemas are the contract between stages (index -> cluster -> write-shards -> trainer) and with
outside tools (geopandas, DuckDB, QGIS read the image index as GeoParquet). Any change to a schema or to
the shard sample format (SAMPLE_FORMAT.md beside this file) must bump SCHEMA_VERSION.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1.0"
#: Parquet key-value metadata keys written on every table.
META_VERSION = b"geo_ssl_schema_version"
META_TABLE = b"geo_ssl_table"

UTC_MS = pa.timestamp("ms", tz="UTC")
BOX = pa.list_(pa.int32(), 4)  # [x, y, w, h] in pixels of the original image (fMoW convention)

#: One row per image (view). GeoParquet: `geometry` is a WKB point (lon, lat) in EPSG:4326.
IMAGE_INDEX = pa.schema(
    [
        pa.field("location_key", pa.string(), nullable=False),  # "{split}-{location_id}", unique
        pa.field("split", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("category_index", pa.int16(), nullable=False),  # alphabetical index of the 62 names
        pa.field("location_id", pa.string(), nullable=False),  # "{category}_{loc}", as in fMoW
        pa.field("view_id", pa.int32(), nullable=False),
        pa.field("image_path", pa.string(), nullable=False),  # fsspec URL or local path
        pa.field("json_path", pa.string(), nullable=False),
        pa.field("timestamp", UTC_MS, nullable=False),
        pa.field("lat", pa.float64(), nullable=False),  # centroid of raw_location footprint
        pa.field("lon", pa.float64(), nullable=False),
        pa.field("box", BOX, nullable=False),
        pa.field("gsd", pa.float64()),
        pa.field("cloud_cover", pa.float64()),  # percent, as in fMoW JSON
        pa.field("country_code", pa.string()),
        pa.field("sensor", pa.string()),
        pa.field("off_nadir_deg", pa.float64()),
        pa.field("img_width", pa.int32(), nullable=False),
        pa.field("img_height", pa.int32(), nullable=False),
        pa.field("file_size", pa.int64(), nullable=False),
        pa.field("geometry", pa.binary(), nullable=False),
    ]
)

#: One row per location (derived from the image index).
LOCATIONS = pa.schema(
    [
        pa.field("location_key", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("category_index", pa.int16(), nullable=False),
        pa.field("location_id", pa.string(), nullable=False),
        pa.field("lat", pa.float64(), nullable=False),  # spherical mean of the view centroids
        pa.field("lon", pa.float64(), nullable=False),
        pa.field("n_views", pa.int32(), nullable=False),
        pa.field("first_timestamp", UTC_MS, nullable=False),
        pa.field("last_timestamp", UTC_MS, nullable=False),
    ]
)

#: Geo pseudo-label per location.
CLUSTERS = pa.schema(
    [
        pa.field("location_key", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("lat", pa.float64(), nullable=False),
        pa.field("lon", pa.float64(), nullable=False),
        pa.field("cluster", pa.int32(), nullable=False),
        pa.field("distance_km", pa.float64(), nullable=False),  # great-circle distance to the centroid
    ]
)

CENTROIDS = pa.schema(
    [
        pa.field("cluster", pa.int32(), nullable=False),
        pa.field("lat", pa.float64(), nullable=False),
        pa.field("lon", pa.float64(), nullable=False),
        pa.field("n_train_locations", pa.int64(), nullable=False),
        pa.field("n_locations", pa.int64(), nullable=False),  # all splits
    ]
)

#: Items a stage refused, with the reason. `reason` is a short code, `detail` a human sentence.
REJECTS = pa.schema(
    [
        pa.field("stage", pa.string(), nullable=False),  # index-fmow | write-shards
        pa.field("path", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("split", pa.string()),
        pa.field("location_key", pa.string()),
    ]
)

#: One row per finished shard; a shard is listed only after its tar was renamed into place.
SHARD_MANIFEST = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),  # file name, "{split}-{index:06d}.tar"
        pa.field("split", pa.string(), nullable=False),
        pa.field("shard_index", pa.int32(), nullable=False),
        pa.field("samples", pa.int32(), nullable=False),
        pa.field("views", pa.int32(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("first_key", pa.string()),
        pa.field("last_key", pa.string()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "image_index": IMAGE_INDEX,
    "locations": LOCATIONS,
    "clusters": CLUSTERS,
    "centroids": CENTROIDS,
    "rejects": REJECTS,
    "shard_manifest": SHARD_MANIFEST,
}

#: Reject reason codes (the closed set; tests and reports rely on it).
REJECT_REASONS = {
    "bad_json": "JSON file is empty, malformed, or not an object",
    "missing_field": "a required JSON field is missing",
    "missing_image": "the image file next to the JSON does not exist",
    "unreadable_image": "the image header cannot be read",
    "truncated_image": "the JPEG ends before its end-of-image marker",
    "bad_polygon": "raw_location is missing or not a valid WKT polygon",
    "bad_coordinates": "coordinates are NaN or out of range",
    "bad_timestamp": "timestamp is missing or not ISO 8601",
    "bad_box": "bounding box missing, malformed, or outside the image",
    "bad_path": "file name does not follow the fMoW layout",
    "decode_error": "the image could not be decoded while writing shards",
    "no_cluster": "the location has no geo cluster",
    "no_views": "every view of the location was rejected",
}


class SchemaError(ValueError):
    """A table does not match the schema it claims; the message names the file and the mismatch."""


def schema_for(table_name: str) -> pa.Schema:
    """The schema of a named table, with geo-ssl metadata attached."""
    if table_name not in TABLES:
        raise SchemaError(f"unknown table {table_name!r}; known: {', '.join(sorted(TABLES))}")
    return TABLES[table_name].with_metadata(
        {META_VERSION: SCHEMA_VERSION.encode(), META_TABLE: table_name.encode()}
    )


def validate_table(table: pa.Table, table_name: str, source: str = "<table>") -> pa.Table:
    """Check columns, types and nullability; return the table cast to the canonical schema.

    Extra columns are an error: they would silently drift from the documented contract.
    """
    expected = TABLES[table_name]
    have = set(table.column_names)
    want = set(expected.names)
    if missing := sorted(want - have):
        raise SchemaError(f"{source}: {table_name} table is missing column(s) {', '.join(missing)}")
    if extra := sorted(have - want):
        raise SchemaError(f"{source}: {table_name} table has unexpected column(s) {', '.join(extra)}")
    table = table.select(expected.names)
    for field in expected:
        col = table.column(field.name)
        if not col.type.equals(field.type):
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(
                    f"{source}: column {field.name!r} has type {col.type}, expected {field.type}"
                ) from exc
            table = table.set_column(expected.get_field_index(field.name), field.name, col)
        if not field.nullable and col.null_count:
            raise SchemaError(f"{source}: column {field.name!r} has {col.null_count} null value(s)")
    return table.cast(schema_for(table_name))


def check_metadata(schema: pa.Schema, table_name: str, source: str) -> None:
    """Refuse files written by another table kind or another schema version."""
    meta = schema.metadata or {}
    kind = meta.get(META_TABLE, b"").decode()
    version = meta.get(META_VERSION, b"").decode()
    if kind != table_name:
        raise SchemaError(
            f"{source}: expected a geo-ssl {table_name} table, found {kind or 'no geo-ssl table'}"
        )
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise SchemaError(
            f"{source}: schema version {version or '?'} is not compatible with {SCHEMA_VERSION}; rebuild it"
        )
