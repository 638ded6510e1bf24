"""One fMoW view (a `*_rgb.json` plus its JPEG) -> one typed record, or a RejectError saying why not.

Real fMoW JSONs are messy in known ways, and these are accepted: `bounding_boxes` is sometimes a dict
instead of a list, ground-truth JSONs put a whole-image entry with `ID: -1` before the object box,
`abs_cal_factors` is absent in some files, and unknown extra fields are ignored.

Location is the area centroid of the `raw_location` footprint (WKT, lon lat). It is not the mean of
the ring's vertices as in WILDS, whose repeated closing vertex pulls the point towards the first corner.

A required field that is absent from the JSON is `missing_field`; one that is present but null, empty
or invalid gets the specific code (bad_polygon, bad_coordinates, bad_timestamp, bad_box).

Paths follow either the labelled layout `{split}/{category}/{category}_{loc}/{category}_{loc}_{view}_rgb.jpg`
or the anonymised test/seq layout `{split}/{id}/{id}_{view}_rgb.jpg`; an anonymised view has no category
(`category` "unknown", `category_index` -1) and its location id is the folder's number.

A box that crosses the image edge is clipped to the image and flagged (`box_clipped`), as the fMoW
baseline clamps its crop to the image; only a box with no area inside the image is rejected (bad_box).
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import numpy as np
import shapely
import shapely.wkt
from PIL import JpegImagePlugin
from shapely.errors import ShapelyError
from shapely.validation import explain_validity

from geo_ssl.pipeline.common.errors import RejectError
from geo_ssl.pipeline.fmow.layout import (
    ANON_PATH_RE,
    CATEGORIES,
    CATEGORY_INDEX,
    PATH_RE,
    UNKNOWN_CATEGORY,
    UNKNOWN_CATEGORY_INDEX,
    location_key,
)

#: Fields without which a view cannot be indexed.
REQUIRED_FIELDS = ("raw_location", "timestamp", "bounding_boxes")
#: How many bytes at the end of a JPEG are searched for the end-of-image marker (padding is allowed).
_EOI_TAIL = 64
_EOI = b"\xff\xd9"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNWRAP = np.array([360.0, 0.0])  # shifts western longitudes east across the antimeridian
#: Tokens that WKT may hold in coordinate position, non-finite ones included (GEOS refuses NaN rings
#: with a confusing "not closed" message, so they are caught before parsing).
_NUMBER_RE = re.compile(r"[-+]?(?:nan|inf(?:inity)?|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)", re.I)


@dataclass(frozen=True, slots=True)
class LayoutPath:
    """What the fMoW path grammar says about a file: `{split}/{category}/{category}_{loc}/..._{view}_{kind}`."""

    split: str
    category: str
    category_index: int
    location_id: str
    view_id: int
    kind: str

    @property
    def location_key(self) -> str:
        return location_key(self.split, self.location_id)


@dataclass(frozen=True, slots=True)
class FmowMetadata:
    """The fields geo-ssl uses from one fMoW JSON, validated but not yet checked against the image."""

    timestamp_ms: int  # UTC milliseconds since the epoch
    lat: float
    lon: float
    box: tuple[int, int, int, int]  # x, y, w, h
    gsd: float | None
    cloud_cover: float | None
    country_code: str | None
    sensor: str | None
    off_nadir_deg: float | None


@dataclass(frozen=True, slots=True)
class JpegInfo:
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class ViewRecord:
    """One row of the image index (geo_ssl.schemas.IMAGE_INDEX), before the WKB geometry is added."""

    location_key: str
    split: str
    category: str
    category_index: int
    location_id: str
    view_id: int
    image_path: str
    json_path: str
    timestamp_ms: int
    lat: float
    lon: float
    box: tuple[int, int, int, int]
    gsd: float | None
    cloud_cover: float | None
    country_code: str | None
    sensor: str | None
    off_nadir_deg: float | None
    img_width: int
    img_height: int
    file_size: int
    box_clipped: bool = False  # the JSON's box crossed the image edge; `box` is its part inside


def parse_layout_path(path: str) -> LayoutPath:
    """Parse a path ending in `{split}/{category}/{category}_{loc}/{category}_{loc}_{view}_{kind}.{ext}`,
    or in the anonymised `{split}/{id}/{id}_{view}_{kind}.{ext}` (category unknown)."""
    m = PATH_RE.search(path)
    if not m:
        anon = ANON_PATH_RE.search(path)
        if anon:
            return LayoutPath(
                split=anon["split"],
                category=UNKNOWN_CATEGORY,
                category_index=UNKNOWN_CATEGORY_INDEX,
                location_id=anon["location_id"],
                view_id=int(anon["view"]),
                kind=anon["kind"],
            )
        raise RejectError(
            "bad_path",
            f"{path} does not follow {{split}}/{{category}}/{{category}}_{{loc}}/... "
            "nor the anonymised {split}/{id}/{id}_{view}_...",
        )
    category = m["category"]
    if category not in CATEGORY_INDEX:
        raise RejectError(
            "bad_path", f"category folder {category!r} is not one of the {len(CATEGORIES)} fMoW names"
        )
    return LayoutPath(
        split=m["split"],
        category=category,
        category_index=CATEGORY_INDEX[category],
        location_id=m["location_id"],
        view_id=int(m["view"]),
        kind=m["kind"],
    )


def load_json(data: bytes) -> dict[str, Any]:
    """Decode a JSON document that must be a non-empty object."""
    if not data.strip():
        raise RejectError("bad_json", "the JSON file is empty")
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RejectError("bad_json", f"malformed JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise RejectError("bad_json", f"the JSON holds a {type(obj).__name__}, not an object")
    return obj


def footprint_centroid(wkt: Any) -> tuple[float, float]:
    """(lat, lon) of the area centroid of a WKT footprint in (lon lat) order.

    A footprint that crosses the antimeridian (longitudes spanning more than 180 degrees) is unwrapped
    before the centroid is taken, so it lands near +-180 rather than near 0.
    """
    if not isinstance(wkt, str) or not wkt.strip():
        raise RejectError("bad_polygon", f"raw_location is {_short(wkt)}, not a WKT polygon")
    numbers = [float(t) for t in _NUMBER_RE.findall(wkt)]
    if any(not math.isfinite(v) for v in numbers):
        raise RejectError("bad_coordinates", f"raw_location holds non-finite coordinates: {_short(wkt)}")
    try:
        geom = shapely.wkt.loads(wkt)
    except ShapelyError as exc:
        raise RejectError("bad_polygon", f"raw_location is not valid WKT ({exc}): {_short(wkt)}") from None
    if geom.geom_type not in ("Polygon", "MultiPolygon") or geom.is_empty:
        what = f"an empty {geom.geom_type}" if geom.is_empty else f"a {geom.geom_type}"
        raise RejectError("bad_polygon", f"raw_location is {what}, not a polygon")
    coords = shapely.get_coordinates(geom)
    lon, lat = coords[:, 0], coords[:, 1]
    if (abs(lat) > 90).any() or (abs(lon) > 180).any():
        raise RejectError(
            "bad_coordinates", f"raw_location is outside lat [-90, 90] / lon [-180, 180]: {_short(wkt)}"
        )
    if lon.max() - lon.min() > 180:
        geom = shapely.transform(geom, lambda xy: np.where(xy[:, :1] < 0, xy + _UNWRAP, xy))
    if not geom.is_valid:
        raise RejectError("bad_polygon", f"raw_location is not a valid polygon ({explain_validity(geom)})")
    if geom.area <= 0:
        raise RejectError("bad_polygon", "raw_location has zero area")
    c = geom.centroid
    return float(c.y), float((c.x + 180.0) % 360.0 - 180.0)


def parse_timestamp(value: Any) -> int:
    """ISO 8601 date and time -> UTC milliseconds since the epoch. A time without offset is taken as UTC."""
    if not isinstance(value, str) or not value.strip():
        raise RejectError("bad_timestamp", f"timestamp is {_short(value)}, not an ISO 8601 string")
    text = value.strip()
    if "T" not in text.upper() and " " not in text:
        raise RejectError("bad_timestamp", f"timestamp {text!r} has no time of day")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise RejectError("bad_timestamp", f"timestamp {text!r} is not ISO 8601") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def object_box(bounding_boxes: Any) -> tuple[int, int, int, int]:
    """The object's [x, y, w, h]: the first entry whose ID is not -1 (ground-truth files put a whole-image
    entry with ID -1 first); a bare dict counts as a one-entry list."""
    entries = [bounding_boxes] if isinstance(bounding_boxes, dict) else bounding_boxes
    if not isinstance(entries, list) or not entries:
        raise RejectError("bad_box", f"bounding_boxes is {_short(bounding_boxes)}, not a list of boxes")
    for entry in entries:
        if not isinstance(entry, dict):
            raise RejectError("bad_box", f"bounding_boxes entry is {_short(entry)}, not an object")
        if str(entry.get("ID")) == "-1":
            continue
        box = entry.get("box")
        if not isinstance(box, list | tuple) or len(box) != 4:
            raise RejectError("bad_box", f"box is {_short(box)}, not [x, y, w, h]")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in box):
            raise RejectError("bad_box", f"box {_short(box)} holds non-numbers")
        if any(v != int(v) for v in box):
            raise RejectError("bad_box", f"box {_short(box)} holds fractional pixels")
        x, y, w, h = (int(v) for v in box)
        if w <= 0 or h <= 0:
            raise RejectError("bad_box", f"box {[x, y, w, h]} has no area")
        return x, y, w, h
    raise RejectError("bad_box", "bounding_boxes holds only whole-image entries (ID -1), no object box")


def clip_box(
    box: tuple[int, int, int, int], width: int, height: int
) -> tuple[tuple[int, int, int, int], bool]:
    """(the box's part inside the width x height image, whether it had to be clipped); a box with no area
    inside the image is rejected."""
    x, y, w, h = box
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        raise RejectError("bad_box", f"box {list(box)} has no area inside the {width}x{height} image")
    clipped = (x0, y0, x1 - x0, y1 - y0)
    return clipped, clipped != tuple(box)


def parse_metadata(meta: dict[str, Any]) -> FmowMetadata:
    """Validate the fields of one fMoW JSON object (no I/O); optional fields that are unusable become None."""
    for name in REQUIRED_FIELDS:
        if name not in meta:
            raise RejectError("missing_field", f"required field {name!r} is missing")
    lat, lon = footprint_centroid(meta["raw_location"])
    return FmowMetadata(
        timestamp_ms=parse_timestamp(meta["timestamp"]),
        lat=lat,
        lon=lon,
        box=object_box(meta["bounding_boxes"]),
        gsd=_float_or_none(meta.get("gsd")),
        cloud_cover=_float_or_none(meta.get("cloud_cover")),
        country_code=_str_or_none(meta.get("country_code")),
        sensor=_str_or_none(meta.get("sensor_platform_name")),
        off_nadir_deg=_float_or_none(meta.get("off_nadir_angle_dbl")),
    )


def probe_jpeg(f: IO[bytes], file_size: int) -> JpegInfo:
    """Pixel size from the JPEG header, and a truncation check on the last bytes; nothing is decoded."""
    if file_size == 0:
        raise RejectError("unreadable_image", "the image file is empty")
    try:
        im = JpegImagePlugin.JpegImageFile(f)
        width, height = im.size
    except (SyntaxError, OSError, ValueError, EOFError, struct.error, IndexError) as exc:
        raise RejectError("unreadable_image", f"not a readable JPEG header ({exc})") from None
    if width <= 0 or height <= 0:
        raise RejectError("unreadable_image", f"JPEG header gives size {width}x{height}")
    f.seek(max(0, file_size - _EOI_TAIL))
    tail = f.read().rstrip(b"\x00\r\n\t ")
    if not tail.endswith(_EOI):
        raise RejectError(
            "truncated_image", f"the JPEG ({file_size} bytes) does not end with the FFD9 marker"
        )
    return JpegInfo(width=width, height=height)


def read_view(
    rel_path: str,
    image_url: str | None,
    json_url: str | None,
    open_file: Callable[[str], IO[bytes]],
) -> ViewRecord:
    """Read one view: `rel_path` is the image path relative to the fMoW root (it carries split, category,
    location and view); the URLs are None for a file that is absent; `open_file` opens a URL for reading."""
    layout = parse_layout_path(rel_path)
    if json_url is None:
        raise RejectError("bad_json", f"no JSON file beside the image (expected {rel_path[:-4]}.json)")
    if image_url is None:
        raise RejectError("missing_image", f"no image beside the JSON (expected {rel_path})")
    try:
        with open_file(json_url) as f:
            data = f.read()
    except OSError as exc:
        raise RejectError("bad_json", f"cannot read the JSON file ({exc})") from None
    meta = parse_metadata(load_json(data))
    try:
        with open_file(image_url) as f:
            size = f.seek(0, 2)
            f.seek(0)
            info = probe_jpeg(f, size)
    except OSError as exc:
        raise RejectError("unreadable_image", f"cannot read the image file ({exc})") from None
    box, box_clipped = clip_box(meta.box, info.width, info.height)
    return ViewRecord(
        location_key=layout.location_key,
        split=layout.split,
        category=layout.category,
        category_index=layout.category_index,
        location_id=layout.location_id,
        view_id=layout.view_id,
        image_path=image_url,
        json_path=json_url,
        timestamp_ms=meta.timestamp_ms,
        lat=meta.lat,
        lon=meta.lon,
        box=box,
        gsd=meta.gsd,
        cloud_cover=meta.cloud_cover,
        country_code=meta.country_code,
        sensor=meta.sensor,
        off_nadir_deg=meta.off_nadir_deg,
        img_width=info.width,
        img_height=info.height,
        file_size=size,
        box_clipped=box_clipped,
    )


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        out = float(value)
    except ValueError:
        return None
    return out if math.isfinite(out) else None


def _str_or_none(value: Any) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
