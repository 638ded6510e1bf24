"""The harvest's results on disk: Parquet part files appended atomically, merged into one table at the end.

A part is written to a temp name and renamed, so after `kill -9` a part is either whole or absent: a
rerun loses at most the rows not yet flushed (the batch in flight), never duplicates a row, and reads
every answered photo id back so that no answered photo is called again.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pyarrow as pa

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.tables import read_table, write_table
from geo_ssl.schemas import FLICKR_GEO

PARTS_DIR = "results"
FINAL = "flickr_geo.parquet"
_PART_RE = re.compile(r"^part-(\d{6,})\.parquet$")


def rows_table(rows: list[dict]) -> pa.Table:
    cols = {f.name: [r.get(f.name) for r in rows] for f in FLICKR_GEO}
    return pa.table({f.name: pa.array(cols[f.name], f.type) for f in FLICKR_GEO})


class ResultStore:
    """Part files under OUT/results/, one per flushed batch (local folders; the harvest runs on one host)."""

    def __init__(self, out: str) -> None:
        self.dir = fsio.join(out, PARTS_DIR)
        self.final = fsio.join(out, FINAL)
        fsio.makedirs(self.dir)
        fsio.remove_stale_temps(self.dir)
        self._seq = max((int(m.group(1)) for m in map(_PART_RE.match, self._names()) if m), default=-1) + 1

    def _names(self) -> list[str]:
        return sorted(os.listdir(self.dir)) if os.path.isdir(self.dir) else []

    def parts(self) -> list[str]:
        return [fsio.join(self.dir, n) for n in self._names() if _PART_RE.match(n)]

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        seq, self._seq = self._seq, self._seq + 1  # never reuse a number, even if this write is interrupted
        write_table(rows_table(rows), fsio.join(self.dir, f"part-{seq:06d}.parquet"), "flickr_geo")

    def read_all(self, columns: list[str] | None = None) -> pa.Table:
        tables = [read_table(p, "flickr_geo", columns=columns) for p in self.parts()]
        if not tables:
            schema = FLICKR_GEO if columns is None else pa.schema([FLICKR_GEO.field(c) for c in columns])
            return schema.empty_table()
        return pa.concat_tables(tables)

    def answered_ids(self) -> np.ndarray:
        """Sorted photo ids already answered (from the API or the YFCC join)."""
        return np.unique(self.read_all(["photo_id"]).column("photo_id").to_numpy())

    def merge(self) -> pa.Table:
        """Write OUT/flickr_geo.parquet: every part, sorted by photo id; returns it."""
        table = self.read_all().sort_by([("photo_id", "ascending")])
        write_table(table, self.final, "flickr_geo")
        return table
