"""Offline first: coordinates of ImageNet's Flickr photos from a YFCC100M metadata dump, before any call.

The dump is the 25-column tab-separated file of the AWS / Multimedia Commons release, one photo per line:
 1 line number, 2 photo id, 3 hash, 4 user NSID, 5 user nickname, 6 date taken, 7 date uploaded,
 8 capture device, 9 title, 10 description, 11 user tags, 12 machine tags, 13 longitude, 14 latitude,
 15 accuracy, 16 page URL, 17 download URL, 18 licence name, 19 licence URL, 20 server, 21 farm,
 22 secret, 23 original secret, 24 original extension, 25 video marker.
Longitude comes BEFORE latitude. Empty coordinates mean "not geotagged in 2014": such photos are still
asked through the API (their owner may have geotagged them since), so the join only saves calls.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np

from geo_ssl.pipeline.geoimagenet.urls import iter_lines, photo_id

COL_ID, COL_LON, COL_LAT, COL_ACCURACY = 1, 12, 13, 14  # 0-based positions in a line
N_COLUMNS = 25


def _matches(batch: list[tuple], wanted: np.ndarray) -> Iterator[tuple]:
    ids = np.fromiter((b[0] for b in batch), dtype=np.int64, count=len(batch))
    pos = np.searchsorted(wanted, ids).clip(0, max(len(wanted) - 1, 0))
    hit = wanted[pos] == ids if len(wanted) else np.zeros(len(ids), bool)
    for i in np.flatnonzero(hit):
        yield batch[i]


def join_yfcc(
    path: str, wanted: np.ndarray, batch_lines: int = 200_000, unused: Counter | None = None
) -> Iterator[dict]:
    """Geotagged YFCC rows whose photo id is in `wanted` (sorted int64): dicts of photo_id, lat, lon, accuracy.

    Streams the dump; memory is the `wanted` array plus one batch of candidate lines. Lines that cannot
    give coordinates are counted by reason in `unused` (short_line, not_geotagged, bad_photo_id,
    bad_coordinates): one odd line (an id beyond int64, say) is passed over, never stops the join.
    """
    unused = Counter() if unused is None else unused
    seen: set[int] = set()
    batch: list[tuple] = []
    for raw in iter_lines(path):  # streamed; .bz2/.gz dumps are decompressed on the fly
        cols = raw.rstrip(b"\r\n").split(b"\t")
        if len(cols) < COL_ACCURACY + 1:
            unused["short_line"] += 1
            continue
        if not cols[COL_LON].strip() or not cols[COL_LAT].strip():
            unused["not_geotagged"] += 1
            continue
        try:
            pid = photo_id(cols[COL_ID])
        except ValueError:
            unused["bad_photo_id"] += 1
            continue
        try:
            lon, lat = float(cols[COL_LON]), float(cols[COL_LAT])
        except ValueError:
            lon = lat = float("nan")
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            unused["bad_coordinates"] += 1
            continue
        try:
            acc = int(cols[COL_ACCURACY])
        except ValueError:
            acc = None
        batch.append((pid, lat, lon, acc))
        if len(batch) >= batch_lines:
            yield from _rows(_matches(batch, wanted), seen)
            batch = []
    if batch:
        yield from _rows(_matches(batch, wanted), seen)


def _rows(matches: Iterator[tuple], seen: set[int]) -> Iterator[dict]:
    for pid, lat, lon, acc in matches:
        if pid not in seen:  # a dump with a repeated id gives one row
            seen.add(pid)
            yield {"photo_id": pid, "lat": lat, "lon": lon, "accuracy": acc}
