"""The task a write-shards worker runs: one shard, where storage that keeps failing fails that shard only.

`write_shard` lets a `retry.StorageError` (reads of the views retried with backoff, then given up) escape
before the shard's completion record is written; here it becomes a `failed` result, so the other shards
still finish and the run can name every shard it could not write. A rerun writes exactly those.
"""

from __future__ import annotations

from geo_ssl.pipeline.common.retry import StorageError
from geo_ssl.pipeline.shards.writer import write_shard


def write_shard_or_fail(task: dict) -> dict:
    """`write_shard(task)`, or {shard, split, locations, status: "failed", error} after a storage outage."""
    try:
        return write_shard(task)
    except StorageError as exc:
        return {
            "shard": task["shard"],
            "split": task["split"],
            "locations": len(task["locations"]),
            "status": "failed",
            "error": str(exc),
            "exit_code": exc.exit_code,
        }
