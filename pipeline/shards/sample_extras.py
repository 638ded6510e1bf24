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
        table = pq.read_table(f, columns=["location_key", "extra"])
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


def refuse_temporal(data: str, method: str) -> None:
    """Stop a +tp method on shards whose card says they hold no temporal positives (GeoImageNet)."""
    from geo_ssl.pipeline.common.errors import GeoSSLError
    from geo_ssl.pipeline.common.retry import StorageError

    url = fsio.join(str(data), "dataset.json")
    try:
        card = json.loads(fsio.read_bytes(url))
    except (OSError, ValueError, StorageError):  # no card, or the store is down (the loader says so)
        return
    if not isinstance(card, dict):  # geo-pretrain's preflight refuses such a card (check_card)
        return
    views = card.get("layout") == "views"  # write-shards --layout views: one image per sample
    if card.get("temporal_positives") is False or views:
        base = method.replace("+tp", "")
        why = (
            'layout "views": each sample is one image'
            if views
            else f"{card.get('dataset', 'this data set')} has one image per location"
        )
        raise GeoSSLError(
            f"--method {method}: temporal positives do not apply to {data} ({url}: {why}); use {base}"
        )
