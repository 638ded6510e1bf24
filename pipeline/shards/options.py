"""Options of write-shards, shared by the CLI, the build config file and the dataset card."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field

from geo_ssl.pipeline.common.checks import check_seed
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.schemas.dataset_card import LAYOUTS  # the card's names of layouts, re-exported here

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1024, "m": 1e6, "mb": 1e6, "mib": 1024**2,
          "g": 1e9, "gb": 1e9, "gib": 1024**3, "t": 1e12, "tb": 1e12, "tib": 1024**4}  # fmt: skip


def parse_size(text: str | int) -> int:
    """'256MB' -> 256_000_000; plain integers are bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise GeoSSLError(f"invalid size {text!r}; use e.g. 256MB, 1GiB or 50000000")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_context(text: str | float | None) -> str | float | None:
    """'auto' (fMoW baseline's size-dependent margin), 'none' (whole image, no crop) or a fraction."""
    if text is None or (isinstance(text, str) and text.lower() == "none"):
        return None
    if isinstance(text, str) and text.lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise GeoSSLError(
            f"invalid --context {text!r}; use auto, none, or a margin fraction like 0.5"
        ) from None
    if not 0 <= value <= 10:
        raise GeoSSLError(f"--context {value} out of range; a margin fraction of the box size in [0, 10]")
    return value


@dataclass
class ShardOptions:
    """How views are cropped, resized and packed. Every field is recorded in dataset.json."""

    resize: int = 448  # shorter side of stored views, px (never upscaled unless upscale=True)
    context: str | float | None = "auto"  # margin around the box: "auto", None (no crop) or a fraction
    quality: int = 90  # JPEG quality of stored views
    shard_bytes: int = 256_000_000  # target shard size
    seed: int = 0  # shuffles locations across shards
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    upscale: bool = False
    dct: bool = True  # decode large JPEGs at 1/2, 1/4, 1/8 scale when the result still exceeds the target
    splits: tuple[str, ...] | None = None  # None = every split in the index
    layout: str = "locations"  # "locations": one sample per location; "views": one sample per view

    def __post_init__(self) -> None:
        self.context = parse_context(self.context)
        self.shard_bytes = parse_size(self.shard_bytes)
        if not 16 <= int(self.resize) <= 16384:
            raise GeoSSLError(f"--resize {self.resize} out of range [16, 16384]")
        if not 1 <= int(self.quality) <= 100:
            raise GeoSSLError(f"--quality {self.quality} out of range [1, 100]")
        if self.shard_bytes < 1:
            raise GeoSSLError("--shard-bytes must be positive")
        if int(self.workers) < 1:
            raise GeoSSLError("--workers must be at least 1")
        check_seed(self.seed)
        if self.splits is not None:
            if isinstance(self.splits, str):
                raise GeoSSLError(f"splits must be a list of split names, not the string {self.splits!r}")
            self.splits = tuple(self.splits)
            if not self.splits or not all(isinstance(s, str) and s.strip() for s in self.splits):
                raise GeoSSLError(f"splits {list(self.splits)!r} names no split; give e.g. train,val")
        if self.layout not in LAYOUTS:
            raise GeoSSLError(f"--layout {self.layout!r} unknown; use one of: {', '.join(LAYOUTS)}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["splits"] = list(self.splits) if self.splits is not None else None
        d.pop("workers")  # does not change the bytes written
        return d
