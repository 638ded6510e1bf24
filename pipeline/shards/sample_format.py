"""A checker for one shard sample against schemas/SAMPLE_FORMAT.md, shared by validate, tests and loaders."""

from __future__ import annotations

import re
from collections.abc import Iterable

from geo_ssl.schemas import SCHEMA_VERSION

NUMBER = (int, float)
#: Top-level keys of a sample's json and the types they may hold (None = JSON null allowed).
SAMPLE_KEYS: dict[str, tuple] = {
    "schema_version": (str,),
    "key": (str,),
    "location_id": (str,),
    "split": (str,),
    "category": (str,),
    "category_index": (int,),
    "lat": NUMBER,
    "lon": NUMBER,
    "cluster": (int,),
    "country_code": (str, type(None)),
    "n_views": (int,),
    "views": (list,),
}
VIEW_KEYS: dict[str, tuple] = {
    "field": (str,),
    "view_id": (int,),
    "timestamp": (str,),
    "gsd": (*NUMBER, type(None)),
    "cloud_cover": (*NUMBER, type(None)),
    "box": (list,),
    "orig_box": (list,),
    "crop": (list,),
    "orig_size": (list,),
    "size": (list,),
}
#: The json of one sample in the views layout: the location's keys (no `views` list), the view's record
#: (no `field`: the image is always the `jpg` member), and where the view sits in its location.
VIEW_SAMPLE_KEYS: dict[str, tuple] = {
    **{k: t for k, t in SAMPLE_KEYS.items() if k != "views"},
    "location_key": (str,),
    "view_index": (int,),
    **{k: t for k, t in VIEW_KEYS.items() if k != "field"},
}
#: The members of every sample in the views layout.
VIEW_MEMBERS = ("cls", "jpg", "json")
_LENGTHS = {"box": 4, "orig_box": 4, "crop": 4, "orig_size": 2, "size": 2}
FIELD_RE = re.compile(r"^\d{2,}\.jpg$")
TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z$")


def _type_ok(value: object, types: tuple) -> bool:
    if isinstance(value, bool):  # bool is an int in Python, never in the format
        return False
    return isinstance(value, types)


def _header_problems(meta: object, keys: dict) -> tuple[list[str], bool]:
    """(problems, fields_ok): the checks every layout shares. fields_ok is False when the json is not an
    object or lacks or mistypes a field, and then only those problems are listed."""
    if not isinstance(meta, dict):
        return ["json is not an object"], False
    problems = _missing_or_mistyped(meta, keys, "json")
    if problems:
        return problems, False
    if meta["schema_version"].split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        problems.append(f"schema_version {meta['schema_version']} is not compatible with {SCHEMA_VERSION}")
    if "." in meta["key"]:
        problems.append(f"key {meta['key']!r} contains a dot")
    return problems, True


def check_sample(
    meta: object, fields: Iterable[str] | None = None, cls: bytes | str | None = None
) -> list[str]:
    """Problems of one sample (empty when it conforms).

    meta: the parsed json member; fields: the sample's member names without the key (e.g. "00.jpg");
    cls: the raw cls member. Member checks are skipped when they are not given.
    """
    problems, fields_ok = _header_problems(meta, SAMPLE_KEYS)
    if not fields_ok:
        return problems
    if not (-90 <= meta["lat"] <= 90 and -180 <= meta["lon"] <= 180):
        problems.append(f"lat/lon {meta['lat']}, {meta['lon']} out of range")
    views = meta["views"]
    if meta["n_views"] != len(views) or not views:
        problems.append(f"n_views {meta['n_views']} but {len(views)} view record(s)")
    last_time = ""
    for i, view in enumerate(views):
        problems += _check_view(i, view)
        if isinstance(view, dict) and isinstance(view.get("timestamp"), str):
            if view["timestamp"] < last_time:
                problems.append(f"view {i} is older than view {i - 1} (views must be sorted by time)")
            last_time = view["timestamp"]
    if fields is not None:
        jpgs = sorted(f for f in fields if f.endswith(".jpg"))
        named = sorted(
            v.get("field") for v in views if isinstance(v, dict) and isinstance(v.get("field"), str)
        )
        if jpgs != named:
            problems.append(f"jpg members {jpgs} do not match the views' fields {named}")
        if meta["n_views"] != len(jpgs):
            problems.append(f"n_views {meta['n_views']} but {len(jpgs)} jpg member(s)")
        if missing := {"json", "cls"} - set(fields):
            problems.append(f"missing member(s) {', '.join(sorted(missing))}")
    if cls is not None:
        text = cls.decode("ascii", "replace") if isinstance(cls, bytes) else str(cls)
        if text.strip() != str(meta["cluster"]):
            problems.append(f"cls {text!r} differs from json cluster {meta['cluster']}")
    return problems


def _missing_or_mistyped(obj: dict, spec: dict, label: str) -> list[str]:
    """Required keys absent from `obj`, then present keys of the wrong type, as problem lines."""
    problems = [f"{label} lacks {k!r}" for k in spec if k not in obj]
    problems += [
        f"{label} {k!r} has type {type(obj[k]).__name__}"
        for k, types in spec.items()
        if k in obj and not _type_ok(obj[k], types)
    ]
    return problems


def _check_view(i: int, view: object) -> list[str]:
    if not isinstance(view, dict):
        return [f"view {i} is not an object"]
    problems = _missing_or_mistyped(view, VIEW_KEYS, f"view {i}")
    if problems:
        return problems
    for k, n in _LENGTHS.items():
        if len(view[k]) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in view[k]):
            problems.append(f"view {i} {k!r} is not {n} integers")
    if not FIELD_RE.match(view["field"]):
        problems.append(f"view {i} field {view['field']!r} is not NN.jpg")
    if not TIMESTAMP_RE.match(view["timestamp"]):
        problems.append(f"view {i} timestamp {view['timestamp']!r} is not ISO 8601 UTC")
    return problems


def check_view_sample(
    meta: object, fields: Iterable[str] | None = None, cls: bytes | str | None = None
) -> list[str]:
    """Problems of one sample of the views layout (one view per sample; empty when it conforms)."""
    problems, fields_ok = _header_problems(meta, VIEW_SAMPLE_KEYS)
    if not fields_ok:
        return problems
    if meta["key"] != f"{meta['location_key']}-v{meta['view_index']:02d}":
        problems.append(f"key {meta['key']!r} is not location_key-vNN for view {meta['view_index']}")
    if not (-90 <= meta["lat"] <= 90 and -180 <= meta["lon"] <= 180):
        problems.append(f"lat/lon {meta['lat']}, {meta['lon']} out of range")
    if not 0 <= meta["view_index"] < meta["n_views"]:
        problems.append(f"view_index {meta['view_index']} outside 0..n_views-1 (n_views {meta['n_views']})")
    for k, n in _LENGTHS.items():
        if len(meta[k]) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in meta[k]):
            problems.append(f"json {k!r} is not {n} integers")
    if not TIMESTAMP_RE.match(meta["timestamp"]):
        problems.append(f"timestamp {meta['timestamp']!r} is not ISO 8601 UTC")
    if fields is not None and sorted(fields) != list(VIEW_MEMBERS):
        problems.append(f"members {sorted(fields)}, the views layout has exactly {list(VIEW_MEMBERS)}")
    if cls is not None:
        text = cls.decode("ascii", "replace") if isinstance(cls, bytes) else str(cls)
        if text.strip() != str(meta["cluster"]):
            problems.append(f"cls {text!r} differs from json cluster {meta['cluster']}")
    return problems
