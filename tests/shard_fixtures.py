"""Tiny shards in the exact sample format of schemas/SAMPLE_FORMAT.md, for loader and trainer tests.

The images are synthetic but structured like fMoW: every view of a location shows the same object
(a coloured block at a location-specific place on a location-specific texture) and views differ in
brightness and seasonal tint, so a temporal positive pair is the same place at another time. The
object's colour follows the category, which gives a linear probe something real to find.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
from PIL import Image

from geo_ssl.pipeline.common.tables import write_table
from geo_ssl.pipeline.fmow.layout import CATEGORIES, location_key
from geo_ssl.schemas import SCHEMA_VERSION


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth random ground texture, float in [0, 1], shape (h, w, 3)."""
    coarse = rng.random((max(2, h // 8), max(2, w // 8), 3)).astype(np.float32)
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _category_colour(category_index: int, n_categories: int) -> np.ndarray:
    hue = category_index / max(1, n_categories)
    # A simple hue wheel, so categories have clearly different object colours.
    return np.clip(np.abs((hue * 6 + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1).astype(np.float32)


def _render_view(
    base: np.ndarray, obj: tuple[int, int, int, int], colour: np.ndarray, brightness: float, tint: np.ndarray
) -> bytes:
    img = base.copy()
    x, y, w, h = obj
    img[y : y + h, x : x + w] = 0.25 * img[y : y + h, x : x + w] + 0.75 * colour
    img = np.clip(img * brightness * tint, 0, 1)
    buf = io.BytesIO()
    Image.fromarray((img * 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _views_per_location(rng: random.Random, n_locations: int, max_views: int) -> list[int]:
    """1..max_views views; the first location has one view and the second max_views (tests rely on both)."""
    counts = [rng.randint(1, max_views) for _ in range(n_locations)]
    if n_locations >= 1:
        counts[0] = 1
    if n_locations >= 2:
        counts[1] = max_views
    return counts


def _shard_sizes(n_locations: int, n_shards: int, uneven: bool) -> list[int]:
    if not uneven:
        base, extra = divmod(n_locations, n_shards)
        return [base + (1 if i < extra else 0) for i in range(n_shards)]
    # Shard i gets a weight of i + 1 (later shards larger), at least one sample each.
    weights = [i + 1 for i in range(n_shards)]
    sizes = [max(1, n_locations * w // sum(weights)) for w in weights]
    sizes[-1] += n_locations - sum(sizes)
    return sizes


def make_sample(
    split: str,
    index: int,
    n_views: int,
    image_size: int,
    category_index: int,
    n_categories: int,
    cluster: int,
    rng: random.Random,
) -> dict:
    """One webdataset sample dict (location `index`), members encoded to bytes."""
    category = CATEGORIES[category_index]
    location_id = f"{category}_{index}"
    key = location_key(split, location_id)
    np_rng = np.random.default_rng(rng.getrandbits(32))
    aspect = rng.choice([1.0, 1.0, 1.25, 1.5])
    h, w = image_size, round(image_size * aspect)
    if rng.random() < 0.5:
        h, w = w, h
    base = _texture(np_rng, h, w)
    ow, oh = max(2, w // 3), max(2, h // 3)
    obj = (rng.randrange(0, w - ow + 1), rng.randrange(0, h - oh + 1), ow, oh)
    colour = _category_colour(category_index, n_categories)
    start = datetime(2002, 1, 1, tzinfo=UTC) + timedelta(days=rng.randrange(0, 3000))
    sample: dict = {"__key__": key}
    views = []
    for v in range(n_views):
        brightness = 0.6 + 0.8 * v / max(1, n_views - 1) if n_views > 1 else 1.0
        season = (v * 0.37) % 1.0
        tint = np.array([1.0 - 0.2 * season, 1.0, 0.8 + 0.2 * season], dtype=np.float32)
        field = f"{v:02d}.jpg"
        sample[field] = _render_view(base, obj, colour, brightness, tint)
        ts = start + timedelta(days=90 * v + rng.randrange(0, 60), hours=rng.randrange(0, 24))
        views.append(
            {
                "field": field,
                "view_id": v,
                "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "gsd": round(rng.uniform(0.3, 2.5), 3),
                "cloud_cover": 0.0,
                "box": list(obj),
                "orig_box": list(obj),
                "crop": [0, 0, w, h],
                "orig_size": [w, h],
                "size": [w, h],
            }
        )
    lat, lon = rng.uniform(-60, 70), rng.uniform(-180, 180)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "key": key,
        "location_id": location_id,
        "split": split,
        "category": category,
        "category_index": category_index,
        "lat": round(lat, 6),
        "lon": round(lon, 6),
        "cluster": cluster,
        "country_code": "XXX",
        "n_views": n_views,
        "views": views,
    }
    sample["json"] = json.dumps(meta, sort_keys=True).encode("utf-8")
    sample["cls"] = str(cluster).encode("ascii")
    return sample


def write_shard(path: str, samples: list[dict]) -> None:
    """Write samples with the reproducible member headers the format asks for."""
    import webdataset as wds

    with open(path, "wb") as f:
        writer = wds.TarWriter(f, user="", group="", mode=0o444, mtime=0, encoder=False)
        for s in samples:
            writer.write(s)
        writer.close()


def make_tiny_shards(
    folder: str | os.PathLike,
    n_locations: int = 24,
    n_shards: int = 3,
    split: str = "train",
    image_size: int = 64,
    max_views: int = 5,
    n_clusters: int = 4,
    n_categories: int = 6,
    seed: int = 0,
    uneven: bool = False,
) -> list[str]:
    """Write `{split}-{i:06d}.tar` shards and `manifest.parquet` into `folder`; return the shard paths.

    `image_size` is the shorter side of every stored view. The first location has one view, the
    second `max_views`; others 1..max_views. Clusters and categories cycle over the locations, so
    every label occurs. `uneven=True` gives shard i a share proportional to i + 1.
    """
    if n_shards < 1 or n_locations < n_shards:
        raise ValueError("need n_locations >= n_shards >= 1")
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(seed)
    counts = _views_per_location(rng, n_locations, max_views)
    samples = [
        make_sample(
            split,
            i,
            counts[i],
            image_size,
            category_index=i % n_categories,
            n_categories=n_categories,
            cluster=(i * 7 + 3) % n_clusters,
            rng=rng,
        )
        for i in range(n_locations)
    ]
    paths, rows = [], []
    start = 0
    for shard_index, size in enumerate(_shard_sizes(n_locations, n_shards, uneven)):
        chunk = samples[start : start + size]
        start += size
        name = f"{split}-{shard_index:06d}.tar"
        path = os.path.join(folder, name)
        write_shard(path, chunk)
        with open(path, "rb") as f:
            data = f.read()
        rows.append(
            {
                "shard": name,
                "split": split,
                "shard_index": shard_index,
                "samples": len(chunk),
                "views": sum(json.loads(s["json"])["n_views"] for s in chunk),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "first_key": chunk[0]["__key__"],
                "last_key": chunk[-1]["__key__"],
            }
        )
        paths.append(path)
    manifest = os.path.join(folder, "manifest.parquet")
    if os.path.exists(manifest):  # several splits in one folder: keep the other splits' rows
        from geo_ssl.pipeline.common.tables import read_table

        old = read_table(manifest, "shard_manifest").to_pylist()
        rows = [r for r in old if r["split"] != split] + rows
    write_table(pa.Table.from_pylist(rows), manifest, "shard_manifest")
    return paths


def make_train_val_shards(folder, n_train: int = 12, n_val: int = 6, n_clusters: int = 3) -> str:
    """A train split (2 shards) and a val split (1 shard) of tiny 40 px shards in `folder`, for evaluations."""
    make_tiny_shards(
        folder, n_locations=n_train, n_shards=2, split="train", image_size=40, n_clusters=n_clusters
    )
    make_tiny_shards(
        folder, n_locations=n_val, n_shards=1, split="val", image_size=40, n_clusters=n_clusters, seed=1
    )
    return str(folder)
