"""The contact sheet: a few sampled locations, one row each, all their views oldest first.

Each view is shown on its source image when that is readable (the path from images.parquet), with the
crop written to the shard drawn as a dashed yellow frame and the fMoW object box in red; otherwise the
stored view from the shard is shown (found through sample_index.parquet, one ranged read), with the
box in the stored pixels. A location with more than `columns` views continues on the next line.
The words follow the source: a GeoImageNet location is one photo with no object box (its index records
the whole photo as the box) and, mostly, no capture date (the index records 1970-01-01): neither is drawn.
Composed with Pillow, so the thumbnails are exact pixels, not resampled by a plotting library.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageDraw, ImageFont

from geo_ssl.pipeline.common import fsio, tables
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.report.common import cluster_colors, text_color
from geo_ssl.pipeline.shards.sample_index import SAMPLE_INDEX, read_sample

TILE = 200  # px, the square a view is fitted into
HEADER = 250  # px, the location column on the left
CAPTION = 34  # px of text under each tile
PAD = 8
_CROP = (255, 214, 0)
_BOX = (230, 30, 30)
_NO_DATE = "1970-01-01"  # what the indexes record for an unknown capture time (GeoImageNet, fMoW fallback)

#: The sheet's words per source (which one: `source_of`).
WORDING = {
    "fmow": {
        "legend": "red: the fMoW object box (on the source image unless marked 'stored')",
        "views": "{n} view(s), oldest first",
        "title": "every view oldest first",
    },
    "geoimagenet": {
        "legend": "GeoImageNet: one Flickr photo per location, no object box (the sample is the whole photo)",
        "views": "{n} photo(s)",
        "title": "one photo each",
    },
}


def source_of(index: str) -> str:
    """'geoimagenet' when the index folder is index-imagenet's (it writes geoimagenet_images.parquet), else 'fmow'."""
    return "geoimagenet" if fsio.exists(fsio.join(index, "geoimagenet_images.parquet")) else "fmow"


def view_date(timestamp: str) -> str:
    """The caption's date: YYYY-MM-DD, or 'date unknown' for the indexes' placeholder."""
    day = timestamp[:10]
    return "date unknown" if day == _NO_DATE else day


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _dashed_rect(draw: ImageDraw.ImageDraw, box: tuple, color: tuple, width: int = 2, dash: int = 7) -> None:
    x0, y0, x1, y1 = box
    for a, b, horizontal, fixed in (
        (x0, x1, True, y0),
        (x0, x1, True, y1),
        (y0, y1, False, x0),
        (y0, y1, False, x1),
    ):
        for s in np.arange(a, b, 2 * dash):
            e = min(s + dash, b)
            line = ((s, fixed), (e, fixed)) if horizontal else ((fixed, s), (fixed, e))
            draw.line(line, fill=color, width=width)


def _xywh(box: list, scale: float, dx: float = 0.0, dy: float = 0.0) -> tuple:
    x, y, w, h = box
    return ((x - dx) * scale, (y - dy) * scale, (x - dx + w) * scale, (y - dy + h) * scale)


def _fit(im: Image.Image) -> Image.Image:
    """Scaled (down or up) to fill the tile's longer side, aspect kept."""
    scale = min(TILE / im.width, TILE / im.height)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)


def _source_tile(path: str, crop: list | None, box: list | None) -> Image.Image | None:
    """The source image fitted to the tile with the crop (dashed) and box (unless None) drawn; None when
    unreadable."""
    try:
        fs, p = fsio.get_fs(path)
        with fs.open(p, "rb") as f:
            im = Image.open(io.BytesIO(f.read()))
            full = im.size
            im.draft("RGB", (TILE, TILE))  # decode large JPEGs at 1/2..1/8 scale
            im = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    im = _fit(im)
    scale = im.width / full[0]
    draw = ImageDraw.Draw(im)
    if crop is not None:
        _dashed_rect(draw, _xywh(crop, scale), _CROP)
    if box is not None:
        draw.rectangle(_xywh(box, scale), outline=_BOX, width=2)
    return im


def _stored_tile(jpeg: bytes, box: list | None) -> Image.Image | None:
    try:
        im = Image.open(io.BytesIO(jpeg)).convert("RGB")
    except (OSError, ValueError):
        return None
    scale = min(TILE / im.width, TILE / im.height)
    im = _fit(im)
    if box is not None:
        ImageDraw.Draw(im).rectangle(_xywh(box, scale), outline=_BOX, width=2)
    return im


def _pick(keys: list[str], n_views: list[int], n: int, seed: int) -> list[str]:
    """n locations at random, preferring ones with 2 to 8 views (a row that shows time passing)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(keys))
    good = [keys[i] for i in order if 2 <= n_views[i] <= 8]
    rest = [keys[i] for i in order if not 2 <= n_views[i] <= 8]
    return (good + rest)[:n]


def _pick_from(table: pa.Table, views: str, how: str, n: int, seed: int) -> tuple[list[str], pa.Table]:
    """Pick locations by their view counts (aggregated in Arrow), then only their rows as Python objects."""
    per_loc = table.group_by("location_key").aggregate([(views, how)]).sort_by("location_key")
    keys = per_loc.column("location_key").to_pylist()
    picked = _pick(keys, per_loc.column(f"{views}_{how}").to_pylist(), n, seed)
    mask = pc.is_in(table.column("location_key"), value_set=pa.array(picked, pa.string()))
    return picked, table.filter(mask)


def _from_shards(out: str, index_rows: pa.Table | None, n: int, seed: int) -> list[dict]:
    """Locations from the sample index: per view the stored JPEG, the crop and box, the source path."""
    table = tables.read_table(fsio.join(out, SAMPLE_INDEX), "sample_index").drop_columns(["geometry"])
    picked, table = _pick_from(table, "location_views", "max", n, seed)
    images = {}
    if index_rows is not None:
        mask = pc.is_in(index_rows.column("location_key"), value_set=pa.array(picked, pa.string()))
        for r in index_rows.filter(mask).select(["location_key", "view_id", "image_path"]).to_pylist():
            images[(r["location_key"], r["view_id"])] = r["image_path"]
    by_loc: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        by_loc.setdefault(row["location_key"], []).append(row)
    locations = []
    for key in picked:
        views = []
        for row in sorted(by_loc[key], key=lambda r: r["view_index"] or 0):
            views += _stored_views(out, row, images)
        first = by_loc[key][0]
        locations.append(
            {k: first[k] for k in ("location_key", "category", "cluster", "lat", "lon")} | {"views": views}
        )
    return locations


def _stored_views(out: str, row: dict, images: dict) -> list[dict]:
    """The views of one sample-index row, read from its shard; a row whose bytes are not that sample
    (the index is stale: another build's, or the shards were rewritten since) is a one-line GeoSSLError."""
    why = "the bytes at its recorded offset are not that sample"
    try:
        members = read_sample(out, row)
        meta = json.loads(members["json"])
        if isinstance(meta, dict) and meta.get("key") == row["key"]:
            return [
                {
                    "timestamp": v["timestamp"], "view_id": v["view_id"], "box": v["orig_box"],
                    "crop": v["crop"], "stored": members[v["field"]], "stored_box": v["box"],
                    "path": images.get((row["location_key"], v["view_id"])),
                }
                for v in (meta["views"] if "views" in meta else [{**meta, "field": "jpg"}])
            ]  # fmt: skip
    except FileNotFoundError:
        why = "no such shard"
    except (KeyError, TypeError, ValueError):  # UnicodeDecodeError is a ValueError
        pass
    raise GeoSSLError(
        f"{fsio.join(out, SAMPLE_INDEX)}: does not match the shards ({row['shard']}, {row['key']}: {why}); it is"
        f" stale: rerun write-shards into {out} to rewrite it, or delete it to sample the image index"
    )


def _from_index(index_rows: pa.Table, clusters: dict, n: int, seed: int) -> list[dict]:
    """Locations from images.parquet alone (no shards yet): source images with their boxes."""
    picked, rows = _pick_from(index_rows, "view_id", "count", n, seed)
    rows = rows.sort_by([("location_key", "ascending"), ("timestamp", "ascending"), ("view_id", "ascending")])
    by_loc: dict[str, list[dict]] = {}
    for row in rows.to_pylist():
        by_loc.setdefault(row["location_key"], []).append(row)
    return [
        {
            "location_key": k,
            "category": by_loc[k][0]["category"],
            "cluster": clusters.get(k),
            "lat": by_loc[k][0]["lat"],
            "lon": by_loc[k][0]["lon"],
            "views": [
                {
                    "timestamp": r["timestamp"].strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "view_id": r["view_id"],
                    "box": r["box"],
                    "crop": None,
                    "stored": None,
                    "stored_box": None,
                    "path": r["image_path"],
                }
                for r in by_loc[k]
            ],
        }
        for k in picked
    ]


def _render(locations: list[dict], k: int, columns: int, title: str, source: str = "fmow") -> Image.Image:
    lines = [max(1, -(-len(loc["views"]) // columns)) for loc in locations]
    width = HEADER + columns * (TILE + PAD) + PAD
    row_h = TILE + CAPTION + PAD
    top = 56
    sheet = Image.new("RGB", (width, top + sum(lines) * row_h + 30), "white")
    draw = ImageDraw.Draw(sheet)
    big, small, tiny = _font(17), _font(13), _font(12)
    draw.text((PAD, 10), title, fill="black", font=big)
    words = WORDING[source]
    legend = words["legend"]
    boxed = source != "geoimagenet"  # GeoImageNet's "box" is the whole photo: drawing it says nothing
    if any(v["crop"] for loc in locations for v in loc["views"]):
        legend = "dashed yellow: the crop stored in the shard   " + legend
    draw.text((PAD, 34), legend, fill=(80, 80, 80), font=tiny)
    y = top
    for loc, n_lines in zip(locations, lines, strict=True):
        draw.line(((0, y - 3), (width, y - 3)), fill=(200, 200, 200))
        draw.text((PAD, y + 4), loc["location_key"], fill="black", font=small)
        draw.text((PAD, y + 24), f"category: {loc['category']}", fill=(40, 40, 40), font=small)
        if loc["cluster"] is not None:
            rgba = cluster_colors(np.array([loc["cluster"]]), k)[0]
            fill = tuple(int(255 * c) for c in rgba[:3])
            draw.rounded_rectangle((PAD, y + 46, PAD + 118, y + 66), radius=4, fill=fill)
            draw.text((PAD + 5, y + 48), f"geo cluster {loc['cluster']}", fill=text_color(rgba), font=small)
        draw.text((PAD, y + 72), f"lat {loc['lat']:.3f}  lon {loc['lon']:.3f}", fill=(40, 40, 40), font=small)
        draw.text((PAD, y + 92), words["views"].format(n=len(loc["views"])), fill=(40, 40, 40), font=small)
        for i, view in enumerate(loc["views"]):
            box = view["box"] if boxed else None
            tile = _source_tile(view["path"], view["crop"], box) if view["path"] else None
            kind = "source"
            if tile is None and view["stored"] is not None:
                tile, kind = _stored_tile(view["stored"], view["stored_box"] if boxed else None), "stored"
            line, col = divmod(i, columns)
            x0 = HEADER + PAD + col * (TILE + PAD)
            y0 = y + line * row_h
            if tile is None:
                draw.rectangle((x0, y0, x0 + TILE, y0 + TILE), outline=(180, 180, 180))
                draw.text((x0 + 8, y0 + TILE // 2), "image unavailable", fill=(150, 0, 0), font=tiny)
            else:
                sheet.paste(tile, (x0 + (TILE - tile.width) // 2, y0 + (TILE - tile.height) // 2))
            draw.text((x0, y0 + TILE + 3), f"{i + 1}. {view_date(view['timestamp'])}  view {view['view_id']}",
                      fill="black", font=tiny)  # fmt: skip
            draw.text(
                (x0, y0 + TILE + 17), kind, fill=(0, 90, 170) if kind == "source" else (170, 90, 0), font=tiny
            )
        y += n_lines * row_h
    return sheet


def draw_contact_sheet(
    out: str, index: str, url: str, n: int = 4, seed: int = 0, columns: int = 8
) -> str | None:
    """Write the contact sheet PNG; None when there is neither a shard build nor an image index."""
    images_url = fsio.join(index, "images.parquet")
    has_index = fsio.exists(images_url)
    has_shards = fsio.exists(fsio.join(out, SAMPLE_INDEX))
    if not (has_index or has_shards):
        return None
    cols = ["location_key", "view_id", "image_path", "category", "timestamp", "box", "lat", "lon"]
    index_rows = tables.read_table(images_url, "image_index", columns=cols) if has_index else None
    clusters_url = fsio.join(index, "clusters.parquet")
    clusters: dict = {}
    k = 1
    if fsio.exists(clusters_url):
        cl = tables.read_table(clusters_url, "clusters", columns=["location_key", "cluster"])
        clusters = dict(
            zip(cl.column("location_key").to_pylist(), cl.column("cluster").to_pylist(), strict=True)
        )
        k = int(pc.max(cl.column("cluster")).as_py() or 0) + 1 if cl.num_rows else 1
    centroids_url = fsio.join(index, "centroids.parquet")
    if fsio.exists(centroids_url):
        k = tables.read_table(centroids_url, "centroids", columns=["cluster"]).num_rows or k
    if has_shards:
        locations = _from_shards(out, index_rows, n, seed)
        where = "sampled from the shards"
    else:
        locations = _from_index(index_rows, clusters, n, seed)
        where = "sampled from the image index (no shards yet)"
    if not locations:
        return None
    source = source_of(index)
    title = f"Contact sheet: {len(locations)} locations {where}, {WORDING[source]['title']}"
    sheet = _render(locations, k, columns, title, source)
    with fsio.atomic_local_path(url) as tmp:
        sheet.save(tmp, format="PNG", optimize=False)
    return url
