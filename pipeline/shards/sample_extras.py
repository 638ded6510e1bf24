"""Extra json fields per location that a data set adds to its samples (GeoImageNet: wnid, class, Flickr id).

An index folder may hold sample_extras.parquet (location_key, extra: a JSON object as text); write-shards
then merges each location's object into its samples' json. Without the file nothing changes, so the fMoW
path and its fingerprints stay as they were.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from geo_ssl.pipeline.common import fsio
from geo_ssl.schemas.dataset_card import refuse_temporal

__all__ = ["attach", "card_fields", "extras_url", "read_extras", "refuse_temporal"]

EXTRAS = "sample_extras.parquet"
SCHEMA = pa.schema([pa.field("location_key", pa.string()), pa.field("extra", pa.string())])


def extras_url(index: str) -> str | None:
    url = fsio.join(index, EXTRAS)
    return url if fsio.exists(url) else None


def read_extras(index: str) -> dict[str, str] | None:
    """location_key -> JSON text of its extra fields, or None when the index has none."""
    url = extras_url(index)
    if url is None:
        return None
    fs, path = fsio.get_fs(url)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f, columns=["location_key", "extra"], use_threads=False, pre_buffer=False)
    return dict(zip(table.column("location_key").to_pylist(), table.column("extra").to_pylist(), strict=True))


def attach(locations: list[dict], extras: dict[str, str] | None) -> list[dict]:
    """Give each location task its `extra` dict (in place); returns the list."""
    if extras:
        for loc in locations:
            text = extras.get(loc["key"])
            if text:
                loc["extra"] = json.loads(text)
    return locations


def card_fields(extras: dict[str, str] | None) -> dict:
    """Dataset-card fields for a data set with extras: its name and whether temporal positives exist."""
    if not extras:
        return {}
    source = json.loads(next(iter(extras.values()))).get("source", "extras")
    return {
        "name": f"geo-ssl {source} single-view WebDataset",
        "dataset": source,
        "temporal_positives": False,  # one image per location: +tp methods do not apply
    }
