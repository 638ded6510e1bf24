"""Tiny image indexes for write-shards tests: real JPEG files plus images/locations/clusters Parquet.

Independent of index-fmow and cluster on purpose, so the shard writer is tested against the table
contracts in `geo_ssl.schemas` alone. View ids are numbered against time order, so tests see views get sorted.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import shapely
from PIL import Image

from geo_ssl.pipeline.common.tables import write_table
from geo_ssl.pipeline.fmow.layout import CATEGORY_INDEX, location_key, relative_image_path

CATEGORIES = ("airport", "dam", "port", "zoo")


@dataclass
class TinyIndex:
    root: Path  # fMoW-like image tree
    index: Path  # folder with images.parquet, locations.parquet, clusters.parquet
    keys: list[str] = field(default_factory=list)  # every location key
    images: dict[str, list[Path]] = field(default_factory=dict)  # key -> image paths by view id
    times: dict[str, list[dt.datetime]] = field(default_factory=dict)  # key -> timestamps by view id


def smooth_image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Blurry colour noise: compresses like a photo, cheap to make."""
    small = rng.integers(0, 256, size=(max(2, size[1] // 16), max(2, size[0] // 16), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    noise = rng.integers(-12, 13, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def make_index(
    base: Path,
    n_locations: int = 8,
    splits: tuple[str, ...] = ("train", "val"),
    views: tuple[int, int] = (1, 4),
    size: tuple[int, int] = (192, 144),
    seed: int = 0,
    unclustered: tuple[int, ...] = (),
) -> TinyIndex:
    """Write `n_locations` locations spread over `splits`; locations listed in `unclustered` get no cluster."""
    rng = np.random.default_rng(seed)
    tiny = TinyIndex(root=base / "fmow", index=base / "index")
    rows, loc_rows, cl_rows = [], [], []
    t0 = dt.datetime(2015, 1, 1, tzinfo=dt.UTC)
    for n in range(n_locations):
        split = splits[n % len(splits)]
        category = CATEGORIES[n % len(CATEGORIES)]
        loc_id = f"{category}_{n}"
        key = location_key(split, loc_id)
        lat, lon = float(rng.uniform(-60, 60)), float(rng.uniform(-170, 170))
        n_views = int(rng.integers(views[0], views[1] + 1))
        times = [t0 + dt.timedelta(days=int(d)) for d in rng.choice(3000, n_views, replace=False)]
        tiny.keys.append(key)
        tiny.images[key], tiny.times[key] = [], times
        for v in range(n_views):
            w = int(size[0] * rng.uniform(0.8, 1.2))
            h = int(size[1] * rng.uniform(0.8, 1.2))
            path = tiny.root / relative_image_path(split, category, n, v)
            path.parent.mkdir(parents=True, exist_ok=True)
            smooth_image(rng, (w, h)).save(path, quality=90)
            tiny.images[key].append(path)
            bw, bh = int(w * rng.uniform(0.1, 0.6)), int(h * rng.uniform(0.1, 0.6))
            bx, by = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            rows.append({
                "location_key": key, "split": split, "category": category,
                "category_index": CATEGORY_INDEX[category], "location_id": loc_id, "view_id": v,
                "image_path": str(path), "json_path": str(path.with_suffix(".json")), "timestamp": times[v],
                "lat": lat, "lon": lon, "box": [bx, by, bw, bh], "gsd": 0.5 + v / 10, "cloud_cover": 0.0,
                "country_code": "TUR" if n % 2 else None, "sensor": "WV03", "off_nadir_deg": 10.0,
                "img_width": w, "img_height": h, "file_size": path.stat().st_size, "box_clipped": False,
                "geometry": shapely.to_wkb(shapely.Point(lon, lat)),
            })  # fmt: skip
        loc_rows.append({
            "location_key": key, "split": split, "category": category,
            "category_index": CATEGORY_INDEX[category], "location_id": loc_id, "lat": lat, "lon": lon,
            "n_views": n_views, "first_timestamp": min(times), "last_timestamp": max(times),
        })  # fmt: skip
        if n not in unclustered:
            cl_rows.append({"location_key": key, "split": split, "lat": lat, "lon": lon, "cluster": n % 3,
                            "distance_km": 1.0})  # fmt: skip
    tiny.index.mkdir(parents=True, exist_ok=True)
    write_table(pa.Table.from_pylist(rows), str(tiny.index / "images.parquet"), "image_index")
    write_table(pa.Table.from_pylist(loc_rows), str(tiny.index / "locations.parquet"), "locations")
    write_table(pa.Table.from_pylist(cl_rows), str(tiny.index / "clusters.parquet"), "clusters")
    return tiny
