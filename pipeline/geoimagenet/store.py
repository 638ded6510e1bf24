"""The harvest's results on disk: Parquet part files appended atomically, merged into one table at the end.

A part is written to a temp name and renamed (or uploaded whole to object storage), so after `kill -9`
a part is either whole or absent: a rerun loses at most the rows not yet flushed (the batch in flight),
and reads every answered photo id back so that no answered photo is called again. Parts written by two
runs that overlapped before the harvest took OUT's lock may answer a photo twice: the merge keeps the
first answer saved.
"""

from __future__ import annotations

import posixpath
import re

import numpy as np
import pyarrow as pa
import shapely  # noqa: F401  (the parts' points: imported now, not in the flush after Ctrl-C while calls go on)

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.retry import retry_io
from geo_ssl.pipeline.common.tables import read_table, write_table
from geo_ssl.schemas import FLICKR_GEO

PARTS_DIR = "results"
FINAL = "flickr_geo.parquet"
_PART_RE = re.compile(r"^part-(\d{6,})\.parquet$")


def rows_table(rows: list[dict]) -> pa.Table:
    """The answers as a table; its GeoParquet geometry is made from lat/lon by write_table."""
    fields = [f for f in FLICKR_GEO if f.name != "geometry"]
    return pa.table({f.name: pa.array([r.get(f.name) for r in rows], f.type) for f in fields})


def first_answers(table: pa.Table) -> pa.Table:
    """One row per photo id, sorted by id: the first of its rows in `table` (rows in the order saved)."""
    order = pa.array(np.arange(table.num_rows, dtype=np.int64))
    table = table.append_column("_order", order).sort_by([("photo_id", "ascending"), ("_order", "ascending")])
    ids = table.column("photo_id").to_numpy()
    keep = np.ones(len(ids), dtype=bool)
    keep[1:] = ids[1:] != ids[:-1]
    return table.filter(pa.array(keep)).drop_columns(["_order"])


class ResultStore:
    """Part files under OUT/results/, one per flushed batch, in a local folder or on object storage."""

    def __init__(self, out: str) -> None:
        self.dir = fsio.join(out, PARTS_DIR)
        self.final = fsio.join(out, FINAL)
        fsio.makedirs(self.dir)
        fsio.remove_stale_temps(self.dir)
        self._seq = max((int(m.group(1)) for m in map(_PART_RE.match, self._names()) if m), default=-1) + 1

    def _names(self) -> list[str]:
        fs, path = fsio.get_fs(self.dir)

        def listing() -> list[str]:
            try:  # refresh: s3fs would otherwise answer from a listing cached before our own uploads
                return fs.ls(path, detail=False, refresh=True)
            except FileNotFoundError:
                return []

        return sorted(posixpath.basename(p.rstrip("/")) for p in retry_io(listing, f"listing {self.dir}"))

    def parts(self) -> list[str]:
        """Part files in the order they were saved (by number: part-1000000 comes after part-999999)."""
        numbered = sorted((int(m.group(1)), m.group(0)) for m in map(_PART_RE.match, self._names()) if m)
        return [fsio.join(self.dir, name) for _, name in numbered]

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
        return pa.concat_tables(tables, promote_options="default")  # parts from before `geometry`: nulls

    def answered_ids(self) -> np.ndarray:
        """Sorted photo ids already answered (from the API or the YFCC join)."""
        return np.unique(self.read_all(["photo_id"]).column("photo_id").to_numpy())

    def merge(self) -> pa.Table:
        """Write OUT/flickr_geo.parquet: every answered photo once, sorted by photo id; returns it."""
        table = first_answers(self.read_all())
        # the points again from lat/lon (write_table), so that parts written before `geometry` get theirs
        plain = [c for c in table.column_names if c != "geometry"]
        write_table(table.select(plain), self.final, "flickr_geo")
        return table
