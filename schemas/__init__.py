"""Arrow schemas for every table geo-ssl writes, and the validation helpers that guard them.

The schemas are the contract between stages (index -> cluster -> write-shards -> trainer) and with
outside tools (geopandas, DuckDB, QGIS read the image index as GeoParquet). Any change to a schema or to
the shard sample format (SAMPLE_FORMAT.md beside this file) must bump SCHEMA_VERSION.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1.1"  # 1.1: GeoParquet geometry on every coordinate table, views layout, sample index,
# box_clipped and category_index -1 (anonymised fMoW test/seq) in the image index
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
        pa.field("category_index", pa.int16(), nullable=False),  # index of the 62 names (-1: unknown)
        pa.field("location_id", pa.string(), nullable=False),  # "{category}_{loc}"; test/seq: "{id}"
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
        pa.field("box_clipped", pa.bool_()),  # fMoW: the JSON box crossed the image edge, `box` is clipped
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
        pa.field("geometry", pa.binary(), nullable=False),  # GeoParquet WKB point (lon, lat)
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
        pa.field("geometry", pa.binary(), nullable=False),  # GeoParquet WKB point (lon, lat)
    ]
)

CENTROIDS = pa.schema(
    [
        pa.field("cluster", pa.int32(), nullable=False),
        pa.field("lat", pa.float64(), nullable=False),
        pa.field("lon", pa.float64(), nullable=False),
        pa.field("n_train_locations", pa.int64(), nullable=False),
        pa.field("n_locations", pa.int64(), nullable=False),  # all splits
        pa.field("geometry", pa.binary(), nullable=False),  # GeoParquet WKB point (lon, lat)
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

#: Where each member of a sample lies inside its tar: name, byte offset of the data, size in bytes.
MEMBER = pa.struct(
    [
        pa.field("name", pa.string(), nullable=False),  # "jpg", "00.jpg", "json", "cls", ...
        pa.field("offset", pa.int64(), nullable=False),  # of the member's data (after its 512-byte header)
        pa.field("size", pa.int64(), nullable=False),
    ]
)

#: One row per shard sample (sample_index.parquet beside the shards): DuckDB filters, random access.
SAMPLE_INDEX = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # webdataset __key__
        pa.field("shard", pa.string(), nullable=False),  # tar file name beside the index
        pa.field("split", pa.string(), nullable=False),
        pa.field("location_key", pa.string(), nullable=False),
        pa.field("view_index", pa.int32()),  # views layout: the view's place in time order; else null
        pa.field("category", pa.string(), nullable=False),
        pa.field("category_index", pa.int16(), nullable=False),
        pa.field("lat", pa.float64(), nullable=False),
        pa.field("lon", pa.float64(), nullable=False),
        pa.field("cluster", pa.int32(), nullable=False),
        pa.field("views", pa.int32(), nullable=False),  # JPEG members in this sample
        pa.field("location_views", pa.int32(), nullable=False),  # views stored for the location
        pa.field("first_timestamp", UTC_MS, nullable=False),
        pa.field("last_timestamp", UTC_MS, nullable=False),
        pa.field("offset", pa.int64(), nullable=False),  # first header of the sample in the tar
        pa.field("size", pa.int64(), nullable=False),  # bytes from `offset` to the end of its last member
        pa.field("members", pa.list_(MEMBER), nullable=False),
        pa.field("geometry", pa.binary(), nullable=False),  # GeoParquet WKB point (lon, lat)
    ]
)

#: GeoImageNet: one row per Flickr photo answered (harvest-flickr), from the API or the YFCC100M join.
FLICKR_GEO = pa.schema(
    [
        pa.field("photo_id", pa.int64(), nullable=False),
        pa.field("wnid", pa.string(), nullable=False),  # first ImageNet synset the photo backs
        # ok | no_location | not_found | permission_denied | bad_location (a reply whose coordinates are out
        # of range: lat/lon left null, the reply's values in error_message); every status is final
        pa.field("status", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # api | yfcc
        pa.field("lat", pa.float64()),
        pa.field("lon", pa.float64()),
        pa.field("accuracy", pa.int16()),  # Flickr accuracy level, 1 (world) .. 16 (street)
        pa.field("context", pa.int8()),
        pa.field("neighbourhood", pa.string()),
        pa.field("locality", pa.string()),
        pa.field("county", pa.string()),
        pa.field("region", pa.string()),
        pa.field("country", pa.string()),
        pa.field("error_code", pa.int32()),  # Flickr error code of a photo-level answer
        pa.field("error_message", pa.string()),
        pa.field("attempts", pa.int16(), nullable=False),  # HTTP calls it took (0: from YFCC)
        pa.field("answered_at", UTC_MS, nullable=False),
        # GeoParquet WKB point (lon, lat), made from lat/lon by write_table; null where they are (every status
        # but ok). Part files of a harvest begun before it have no such column: the merge makes it
        pa.field("geometry", pa.binary()),
    ]
)

#: GeoImageNet: one row per local image with harvested coordinates (index-imagenet). GeoParquet.
GEOIMAGENET_IMAGES = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # "{wnid}_{index}", as in fall11_urls.txt
        pa.field("split", pa.string(), nullable=False),
        pa.field("wnid", pa.string(), nullable=False),
        pa.field("class_index", pa.int32(), nullable=False),  # position of the wnid in the sorted classes
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("photo_id", pa.int64(), nullable=False),
        pa.field("lat", pa.float64(), nullable=False),
        pa.field("lon", pa.float64(), nullable=False),
        pa.field("accuracy", pa.int16()),
        pa.field("country", pa.string()),
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("img_width", pa.int32(), nullable=False),
        pa.field("img_height", pa.int32(), nullable=False),
        pa.field("file_size", pa.int64(), nullable=False),
        pa.field("geometry", pa.binary(), nullable=False),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "image_index": IMAGE_INDEX,
    "locations": LOCATIONS,
    "clusters": CLUSTERS,
    "centroids": CENTROIDS,
    "rejects": REJECTS,
    "shard_manifest": SHARD_MANIFEST,
    "sample_index": SAMPLE_INDEX,
    "flickr_geo": FLICKR_GEO,
    "geoimagenet_images": GEOIMAGENET_IMAGES,
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
    # GeoImageNet (harvest-flickr URL lists, index-imagenet)
    "malformed_line": "the URL-list line is not `{wnid}_{index}<TAB>{url}`",
    "bad_key": "the URL-list key is not an ImageNet `{wnid}_{index}`",
    "not_flickr": "the URL is not on a Flickr host",
    "unrecognised_flickr_url": "a Flickr URL with no photo id in any known form",
    "bad_photo_id": "the photo id in the URL is beyond the 64-bit range of Flickr photo ids",
    "not_jpeg": "the image file is not a JPEG",
    "no_coordinates": "Flickr has no location for the photo behind the image",
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


#: Nullable columns added in a minor schema version; a table without them reads as null there.
LATER_COLUMNS: dict[str, tuple[str, ...]] = {"image_index": ("box_clipped",)}


def validate_table(table: pa.Table, table_name: str, source: str = "<table>") -> pa.Table:
    """Check columns, types and nullability; return the table cast to the canonical schema.

    Extra columns are an error: they would silently drift from the documented contract.
    """
    expected = TABLES[table_name]
    for name in LATER_COLUMNS.get(table_name, ()):  # a table written before the column existed: nulls
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, expected.field(name).type))
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
