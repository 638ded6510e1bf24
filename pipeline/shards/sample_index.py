"""The sample index of a build: one row per shard sample with the byte offsets of its members.

`OUT/sample_index.parquet` (GeoParquet) lets outside tools work on shards without reading them through:
DuckDB or pandas filter samples by category, cluster, split or place, and a plain file seek reads one
member (`offset`, `size` of the member's data inside its tar), locally or on object storage by a range
request. It is rebuilt from the shards' completion records at the end of every write-shards run, so it
always lists exactly the shards of the manifest.
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.tables import write_table
from geo_ssl.schemas import schema_for

SAMPLE_INDEX = "sample_index.parquet"


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def sample_index_table(records: list[dict]) -> pa.Table:
    """Rows of every record's `index` entries, in shard order and tar order within a shard."""
    names = [f.name for f in schema_for("sample_index") if f.name != "geometry"]
    rows = []
    for rec in sorted(records, key=lambda r: r["shard"]):
        for entry in rec.get("index", []):
            row = {k: entry.get(k) for k in names}
            row["shard"] = rec["shard"]
            row["first_timestamp"] = _time(entry["first_timestamp"])
            row["last_timestamp"] = _time(entry["last_timestamp"])
            row["members"] = [{"name": n, "offset": o, "size": s} for n, o, s in entry["members"]]
            rows.append(row)
    schema = pa.schema([f for f in schema_for("sample_index") if f.name != "geometry"])
    return pa.Table.from_pylist(rows, schema=schema)


def write_sample_index(records: list[dict], url: str) -> None:
    """Write the sample index of these completion records as GeoParquet."""
    write_table(sample_index_table(records), url, "sample_index")


def read_member(shard_url: str, offset: int, size: int) -> bytes:
    """The bytes of one member: a seek and a read (a range request on object storage)."""
    fs, path = fsio.get_fs(shard_url)
    with fs.open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"{shard_url}: {size} bytes expected at offset {offset}, got {len(data)}")
    return data


def read_sample(out: str, row: dict) -> dict[str, bytes]:
    """All members of one sample-index row, by member name, read with one ranged read."""
    fs, path = fsio.get_fs(fsio.join(out, row["shard"]))
    with fs.open(path, "rb") as f:
        f.seek(row["offset"])
        blob = f.read(row["size"])
    base = row["offset"]
    return {m["name"]: blob[m["offset"] - base : m["offset"] - base + m["size"]] for m in row["members"]}
