"""One sample's json to the views a loader uses: parse, choose (temporal or not), keep their encoded bytes,
then decode and crop only those."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from geo_ssl.training.data.augment import ViewParams, spatial
from geo_ssl.training.data.decode import decode_crops, jpeg_size


def seed_of(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


@dataclass
class Picked:
    """A sample after view selection: only the chosen views' JPEG bytes, nothing decoded."""

    key: str
    url: str
    geo: int
    category: int
    fields: tuple[str, ...]  # chosen view members, one per output view (may repeat)
    data: dict[str, bytes]


def read_meta(sample: dict) -> tuple[dict, list[str], int, int]:
    try:
        meta = json.loads(sample["json"])
        # --layout views (schemas/SAMPLE_FORMAT.md): each sample is one view, its image the `jpg` member
        views = meta["views"] if "views" in meta or "view_index" not in meta else [{"field": "jpg"}]
        fields = [str(v["field"]) for v in views]
        category = int(meta["category_index"])
        cluster = int(meta["cluster"])
    except KeyError as exc:
        raise ValueError(f"member or json field {exc} missing") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad json ({exc})") from exc
    if not fields:
        raise ValueError("json lists no views")
    try:
        geo = int(sample["cls"])
    except KeyError:
        raise ValueError("cls member missing") from None
    except ValueError:
        raise ValueError(f"cls is not an integer: {sample['cls'][:20]!r}") from None
    if geo != cluster:
        raise ValueError(f"cls {geo} disagrees with json cluster {cluster}")
    return meta, fields, geo, category


def choose_views(rng: random.Random, n_stored: int, n_views: int, temporal: bool) -> list[int]:
    """Indices of the stored views to use, one per output view.

    temporal: distinct views (timestamps) drawn uniformly while there are enough, then uniform repeats;
    for n_views=2 that is GASSL's rule (key = another timestamp, the anchor itself if it is alone).
    Otherwise one random view, used n_views times.
    """
    if not temporal or n_stored == 1:
        return [rng.randrange(n_stored)] * n_views
    if n_views <= n_stored:
        return rng.sample(range(n_stored), n_views)
    picked = rng.sample(range(n_stored), n_stored)
    return picked + [rng.randrange(n_stored) for _ in range(n_views - n_stored)]


def pick_views(sample: dict, fields_of: Callable[[list[str]], tuple[str, ...]]) -> Picked:
    _, fields, geo, category = read_meta(sample)
    chosen = fields_of(fields)
    data = {}
    for f in set(chosen):
        if f not in sample:
            raise ValueError(f"view member {f} listed in json is missing")
        data[f] = sample[f]
    return Picked(sample["__key__"], sample.get("__url__", "?"), geo, category, chosen, data)


def render_views(
    picked: Picked,
    size: int,
    params_for: Callable[[int, int], ViewParams],
    outs: Sequence[np.ndarray] | None = None,
) -> tuple[list, list]:
    """Decode each distinct chosen view once and return its crops (uint8, flipped/blurred) and params.

    `outs`: per output view, a (size, size, 3) uint8 slot of the batch that receives the crop (written by
    the resize or by the last augmentation op, not copied afterwards); the crops are then views of them.
    """
    sizes = {f: jpeg_size(b) for f, b in picked.data.items()}
    params = [params_for(*sizes[f]) for f in picked.fields]
    crops: list[torch.Tensor | None] = [None] * len(picked.fields)
    for f in picked.data:
        idx = [i for i, g in enumerate(picked.fields) if g == f]
        w, h = sizes[f]
        slots = [None if outs is None else outs[i] for i in idx]
        augmented = [_augments(params[i]) for i in idx]
        # an unaugmented view's resize writes its slot; an augmented one's last op does
        plain = [None if aug else slot for aug, slot in zip(augmented, slots, strict=True)]
        boxes = [params[i].box for i in idx]
        decoded = decode_crops(picked.data[f], boxes, size, w, h, plain)
        for i, slot, aug, crop in zip(idx, slots, augmented, decoded, strict=True):
            crops[i] = spatial(crop, params[i], out=slot if aug else None)
    return crops, params


def _augments(params: ViewParams) -> bool:
    return bool(params.jitter or params.gray or params.blur_sigma > 0 or params.flip)
