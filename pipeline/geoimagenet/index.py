"""`geo-build-dataset index-imagenet`: harvested coordinates + an ImageNet tree -> a GeoParquet image index.

Writes, in the same family as fMoW's index (so `cluster` and `write-shards` run on it unchanged):
- geoimagenet_images.parquet: one row per located image (key, wnid, class index and name, Flickr id,
  lat, lon, accuracy, path, size, geometry);
- images.parquet / locations.parquet: the fMoW-family tables, one location per image (location_id is
  the ImageNet key, category the class name, category_index the ImageNet class index, box the whole image);
- sample_extras.parquet: per location, what write-shards adds to each sample's json (wnid, class name,
  Flickr id, accuracy);
- rejects.parquet: images missing, truncated or not JPEG; index_summary.json.
Images whose photo has no coordinates (or that the harvest never listed) are skipped, with counts.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely
from PIL import Image

from geo_ssl.pipeline.common import fsio, tables
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.progress import Summary, progress
from geo_ssl.pipeline.geoimagenet.harvest import ENTRIES, read_entries
from geo_ssl.pipeline.geoimagenet.store import FINAL
from geo_ssl.pipeline.geoimagenet.synth import read_words
from geo_ssl.pipeline.shards.sample_extras import EXTRAS
from geo_ssl.pipeline.shards.sample_extras import SCHEMA as EXTRAS_SCHEMA
from geo_ssl.schemas import GEOIMAGENET_IMAGES, IMAGE_INDEX

STAGE = "index-imagenet"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # capture time unknown: GeoImageNet samples are single views


def _split(key: str, seed: int, val_fraction: float) -> str:
    return "val" if (zlib.crc32(f"{seed}:{key}".encode()) % 10_000) < val_fraction * 10_000 else "train"


def check_val_fraction(value: float, name: str = "--val-fraction") -> float:
    """The share of images held out: in [0, 1) (1 would leave nothing to train on; NaN is refused)."""
    if not 0 <= value < 1:
        raise GeoSSLError(f"{name} must be in [0, 1) (got {value})")
    return value


def _check_image(fs, path: str) -> tuple[str | None, str, tuple[int, int], int]:
    """(reject reason or None, detail, (w, h), bytes) from the file's head and tail."""
    with fs.open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b"\xff\xd8"):
        return "not_jpeg", f"starts with {data[:4].hex() or 'nothing'}", (0, 0), len(data)
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "truncated_image", "no JPEG end-of-image marker", (0, 0), len(data)
    try:
        import io

        with Image.open(io.BytesIO(data)) as im:
            return None, "", im.size, len(data)
    except OSError as exc:
        return "unreadable_image", str(exc)[:200], (0, 0), len(data)


def _list_tree(root: str) -> dict[str, str]:
    """key -> image URL for every {wnid}/{wnid}_{index}.JPEG under root."""
    fs, base = fsio.get_fs(root)
    if not fs.isdir(base):
        raise GeoSSLError(f"--root {root}: not a folder")
    out = {}
    for path in sorted(fs.glob(f"{base.rstrip('/')}/n*/n*_*.[Jj][Pp][Ee][Gg]")):
        name = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        out[name] = fsio.join(root, *path[len(base.rstrip("/")) + 1 :].split("/"))
    return out


def index_imagenet(
    root: str, harvest: str, out: str, val_fraction: float = 0.2, seed: int = 0, words: str | None = None
) -> Summary:
    """Join OUT of harvest-flickr with the ImageNet tree at ROOT into the index folder OUT."""
    for name in (ENTRIES, FINAL):
        if not fsio.exists(fsio.join(harvest, name)):
            raise GeoSSLError(f"--harvest {harvest}: no {name} (run harvest-flickr first)")
    check_val_fraction(val_fraction)
    names = read_words(words)
    files = _list_tree(root)
    fs, _ = fsio.get_fs(root)
    entries = read_entries(harvest, ["photo_id", "wnid", "index"])
    geo = tables.read_table(fsio.join(harvest, FINAL), "flickr_geo",
                            columns=["photo_id", "status", "lat", "lon", "accuracy", "country"])  # fmt: skip
    located = geo.filter(pc.equal(geo["status"], "ok"))
    by_pid = {r["photo_id"]: r for r in located.to_pylist()}
    answered = set(geo.column("photo_id").to_pylist())
    wnids = sorted({k.split("_")[0] for k in files} | set(entries.column("wnid").to_pylist()))
    class_index = {w: i for i, w in enumerate(wnids)}

    summary = Summary(STAGE, "images")
    skips: Counter = Counter()
    rows, rejects = [], []
    keyed = {}
    for pid, wnid, idx in zip(
        *(entries.column(c).to_pylist() for c in ("photo_id", "wnid", "index")), strict=True
    ):
        keyed.setdefault(f"{wnid}_{idx}", pid)
    for key in progress(sorted(set(files) | set(keyed)), total=None, desc=STAGE, unit="img"):
        summary.inputs += 1
        pid = keyed.get(key)
        if pid is None:
            skips["not_in_url_list"] += 1
            continue
        if pid not in by_pid:
            skips["no_coordinates" if pid in answered else "not_harvested"] += 1
            continue
        wnid = key.split("_")[0]
        url = files.get(key)
        if url is None:
            rejects.append(
                _reject(
                    fsio.join(root, wnid, f"{key}.JPEG"),
                    "missing_image",
                    "listed, located, not in the tree",
                    key,
                )
            )
            continue
        try:
            reason, detail, (w, h), size = _check_image(fs, fsio.get_fs(url)[1])
        except OSError as exc:
            reason, detail, w, h, size = "missing_image", f"{type(exc).__name__}: {exc}"[:200], 0, 0, 0
        if reason:
            rejects.append(_reject(url, reason, detail, key))
            continue
        g = by_pid[pid]
        split = _split(key, seed, val_fraction)
        rows.append({
            "key": key, "split": split, "wnid": wnid, "class_index": class_index[wnid],
            "class_name": names.get(wnid, wnid), "photo_id": pid, "lat": g["lat"], "lon": g["lon"],
            "accuracy": g["accuracy"], "country": g["country"], "image_path": url, "img_width": w,
            "img_height": h, "file_size": size,
        })  # fmt: skip
    summary.written = len(rows)
    summary.rejected = len(rejects)
    summary.reasons.update(r["reason"] for r in rejects)
    summary.skipped = sum(skips.values())
    if summary.inputs == 0:
        raise GeoSSLError(f"--root {root}: no {{wnid}}/{{wnid}}_{{index}}.JPEG images and an empty harvest")
    _write(out, rows, rejects)
    summary.extra.update(root=root, harvest=harvest, skipped_by_reason=dict(sorted(skips.items())),
                         classes=len({r["wnid"] for r in rows}))  # fmt: skip
    fsio.atomic_write_text(
        fsio.join(out, "index_summary.json"), json.dumps(summary.as_dict(), indent=2) + "\n"
    )
    return summary


def _reject(path: str, reason: str, detail: str, key: str) -> dict:
    return {
        "stage": STAGE,
        "path": path,
        "reason": reason,
        "detail": detail,
        "split": None,
        "location_key": key,
    }


def _write(out: str, rows: list[dict], rejects: list[dict]) -> None:
    rows.sort(key=lambda r: (r["split"], r["key"]))
    lat = np.array([r["lat"] for r in rows], np.float64)
    lon = np.array([r["lon"] for r in rows], np.float64)
    geom = shapely.to_wkb(shapely.points(lon, lat)).tolist() if rows else []
    gi = {f.name: [r.get(f.name) for r in rows] for f in GEOIMAGENET_IMAGES if f.name != "geometry"}
    gi["geometry"] = geom
    tables.write_table(pa.table(gi), fsio.join(out, "geoimagenet_images.parquet"), "geoimagenet_images")

    fmow_style = {
        "location_key": [f"{r['split']}-{r['key']}" for r in rows],
        "split": [r["split"] for r in rows],
        "category": [r["class_name"] for r in rows],
        "category_index": [r["class_index"] for r in rows],
        "location_id": [r["key"] for r in rows],
        "view_id": [0] * len(rows),
        "image_path": [r["image_path"] for r in rows],
        "json_path": [""] * len(rows),
        "timestamp": [_EPOCH] * len(rows),
        "lat": lat.tolist(),
        "lon": lon.tolist(),
        "box": [[0, 0, r["img_width"], r["img_height"]] for r in rows],
        "img_width": [r["img_width"] for r in rows],
        "img_height": [r["img_height"] for r in rows],
        "file_size": [r["file_size"] for r in rows],
        "geometry": geom,
    }
    images = pa.table(
        {f.name: pa.array(fmow_style.get(f.name, [None] * len(rows)), f.type) for f in IMAGE_INDEX}
    )
    images = images.sort_by([("location_key", "ascending")])
    from geo_ssl.pipeline.fmow.index import locations_table

    tables.write_table(images, fsio.join(out, "images.parquet"), "image_index")
    tables.write_table(locations_table(images), fsio.join(out, "locations.parquet"), "locations")
    cols = ["stage", "path", "reason", "detail", "split", "location_key"]
    tables.write_table(pa.table({c: [r[c] for r in rejects] for c in cols}, schema=_rejects_schema()),
                       fsio.join(out, "rejects.parquet"), "rejects")  # fmt: skip
    extras = [
        json.dumps(
            {
                "wnid": r["wnid"],
                "class_name": r["class_name"],
                "flickr_id": r["photo_id"],
                "accuracy": r["accuracy"],
                "source": "geoimagenet",
            },
            sort_keys=True,
        )
        for r in rows
    ]
    table = pa.table({"location_key": fmow_style["location_key"], "extra": extras}, schema=EXTRAS_SCHEMA)
    with fsio.atomic_local_path(fsio.join(out, EXTRAS)) as tmp:
        pq.write_table(table, tmp)


def _rejects_schema() -> pa.Schema:
    from geo_ssl.schemas import REJECTS

    return pa.schema([pa.field(f.name, f.type) for f in REJECTS])
