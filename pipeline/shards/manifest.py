"""Per-shard completion records, the manifest and rejects tables built from them, and shard checks.

A shard counts as done only when its completion record `OUT/_done/{shard}.json` exists and its tar still
has the recorded size and sha256. The record is written after the tar was renamed into place, so a
killed run leaves either no record (the shard is redone) or a complete shard.

Worker processes import this module, so pyarrow is imported only inside the table builders.
"""

from __future__ import annotations

import hashlib
import json
import posixpath

from geo_ssl.pipeline.common import fsio

DONE_DIR = "_done"
MANIFEST = "manifest.parquet"
REJECTS = "rejects.parquet"
DATASET_CARD = "dataset.json"
_CHUNK = 1 << 20


def record_url(out: str, shard: str) -> str:
    return fsio.join(out, DONE_DIR, posixpath.splitext(shard)[0] + ".json")


def dumps(obj: dict) -> str:
    """Deterministic JSON for records and the dataset card."""
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def write_record(out: str, record: dict) -> None:
    fsio.makedirs(fsio.join(out, DONE_DIR))
    fsio.atomic_write_text(record_url(out, record["shard"]), dumps(record))


def read_record(out: str, shard: str) -> dict | None:
    """The completion record of one shard, or None when it is missing or unreadable."""
    fs, path = fsio.get_fs(record_url(out, shard))
    try:
        with fs.open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def read_records(out: str) -> dict[str, dict]:
    """Every completion record in OUT, by shard name; unreadable records are ignored (redone)."""
    fs, path = fsio.get_fs(fsio.join(out, DONE_DIR))
    if not fs.exists(path):
        return {}
    records = {}
    for name in sorted(fs.ls(path, detail=False)):
        base = posixpath.basename(name)
        if not base.endswith(".json") or base.startswith("."):
            continue
        try:
            with fs.open(name, "rb") as f:
                rec = json.loads(f.read())
            records[rec["shard"]] = rec
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return records


def file_digest(url: str) -> tuple[int, str]:
    """(size, sha256 hex) of a file, streamed."""
    fs, path = fsio.get_fs(url)
    h, n = hashlib.sha256(), 0
    with fs.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def shard_matches(out: str, record: dict) -> bool:
    """The shard file exists with the recorded size and sha256 (size first: it is free)."""
    fs, path = fsio.get_fs(fsio.join(out, record["shard"]))
    try:
        if fs.size(path) != record["bytes"]:
            return False
        return file_digest(fsio.join(out, record["shard"])) == (record["bytes"], record["sha256"])
    except (FileNotFoundError, OSError):
        return False


def manifest_table(records: list[dict]):
    """The shard_manifest table, one row per record, sorted by shard name."""
    import pyarrow as pa

    from geo_ssl.schemas import schema_for

    cols = [f.name for f in schema_for("shard_manifest")]
    rows = [{c: r[c] for c in cols} for r in sorted(records, key=lambda r: r["shard"])]
    return pa.Table.from_pylist(rows, schema=schema_for("shard_manifest"))


def rejects_table(rows: list[dict]):
    """The rejects table, sorted so that equal builds write equal bytes."""
    import pyarrow as pa

    from geo_ssl.schemas import schema_for

    def order(r: dict) -> tuple:
        return (r.get("split") or "", r.get("location_key") or "", r["path"], r["reason"])

    cols = [f.name for f in schema_for("rejects")]
    rows = [{c: r.get(c) for c in cols} for r in sorted(rows, key=order)]
    return pa.Table.from_pylist(rows, schema=schema_for("rejects"))
