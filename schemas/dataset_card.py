"""The dataset card (dataset.json beside the shards): its checks and the readings every consumer shares.

Neutral ground between the writer (`geo_ssl.pipeline.shards`, which writes the card and validates it) and
the readers (the trainer's preflight, the methods, `validate`, `report`), so that a reader never imports
the shard-writing code and a card one side accepts is never refused by the other. Imports only the
standard library and `geo_ssl.pipeline.common`.
"""

from __future__ import annotations

import json

from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.retry import StorageError

#: The card's file name in a build or shard folder.
DATASET_CARD = "dataset.json"
#: Sample layouts of write-shards (SAMPLE_FORMAT.md): one sample per location, or per view.
LAYOUTS = ("locations", "views")

#: Hub licence fields of each data set (the card's `dataset`; fMoW when absent), shared by the shard folder's
#: README.md and the model card of weights trained on it (neither is a standard licence: Hub `license: other`).
DATA_LICENCES: dict[str, dict[str, str]] = {
    "fmow": {
        "license_name": "fmow-challenge-public-license",
        "license_link": "https://github.com/fMoW/dataset/blob/master/LICENSE",
        "source": "fMoW-rgb (Functional Map of the World)",
    },
    "geoimagenet": {
        "license_name": "imagenet-terms-and-flickr-photo-licences",
        "license_link": "https://image-net.org/download.php",
        "source": "ImageNet images with Flickr coordinates (GeoImageNet)",
    },
}


def data_licence(dataset: object) -> dict[str, str]:
    """Hub licence fields for a card's `dataset` (None: fMoW); an unknown one gets a name and no link."""
    key = str(dataset or "fmow").lower()
    return DATA_LICENCES.get(key, {"license_name": "see-data-source", "license_link": "", "source": key})


#: Types of the card's fields (when present); `splits` is required (every write-shards card has it).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "dataset": (str,), "schema_version": (str,), "sample_format_version": (str,),
    "sample_format": (str,), "sample_index": (str,), "fingerprint": (str,), "layout": (str,), "seed": (int,),
    "k": (int,), "parameters": (dict,), "inputs": (dict,), "splits": (dict,), "geo_clusters": (dict,),
    "categories": (list,), "temporal_positives": (bool,), "versions": (dict,),
}  # fmt: skip
_COUNTS = ("shards", "samples", "views", "bytes", "rejected_locations")


def _is(value: object, types: tuple[type, ...]) -> bool:
    """isinstance, with bool never passing for an int (true is not a count) and ints passing for floats."""
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types) or (float in types and isinstance(value, int))


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def card_problems(card: object) -> list[str]:
    """What is wrong with a dataset card (dataset.json as loaded), one text per problem; [] when sound.

    Shared by `validate` (which reports them) and the readers of a card (check_card), so a card one of
    them accepts is never refused by the other."""
    if not isinstance(card, dict):
        return [f"is a JSON {type(card).__name__}, not an object"]
    problems = []
    if "splits" not in card:
        problems.append("has no splits")
    for key, types in _FIELD_TYPES.items():
        if key in card and not _is(card[key], types):
            problems.append(
                f"{key} must be {' or '.join(t.__name__ for t in types)}, got {card[key]!r}"[:200]
            )
    k = card.get("k")
    if _is(k, (int,)) and k < 1:
        problems.append(f"k must be at least 1, got {k}")
    if _is(card.get("layout"), (str,)) and card["layout"] not in LAYOUTS:
        problems.append(f"layout {card['layout']!r} is not one of {', '.join(LAYOUTS)}")
    if isinstance(card.get("splits"), dict):
        for split, counts in card["splits"].items():
            if not isinstance(counts, dict):
                problems.append(f"splits.{split} must be an object, got {counts!r}"[:200])
                continue
            problems += [f"splits.{split}.{c} must be a count, got {counts[c]!r}"
                         for c in _COUNTS if c in counts and not _count(counts[c])]  # fmt: skip
    if isinstance(card.get("categories"), list):
        problems += _category_problems(card["categories"])
    if isinstance(card.get("geo_clusters"), dict):
        problems += _cluster_problems(card["geo_clusters"], k if _is(k, (int,)) else None)
    return problems


def _category_problems(categories: list) -> list[str]:
    """Ids are category indexes, -1 for the unknown category (fMoW's anonymised test locations)."""
    ids = []
    for c in categories:
        if not (
            isinstance(c, dict)
            and _is(c.get("id"), (int,))
            and c["id"] >= -1
            and isinstance(c.get("name"), str)
        ):
            return [
                f"categories: every entry must be {{id: an integer >= -1, name: a string}}, got {c!r}"[:200]
            ]
        ids.append(c["id"])
    return ["categories: ids repeat"] if len(set(ids)) != len(ids) else []


def _cluster_problems(clusters: dict, k: int | None) -> list[str]:
    ck = clusters.get("k")
    if ck is not None and not (_is(ck, (int,)) and ck >= 1):
        return [f"geo_clusters.k must be an integer of at least 1, got {ck!r}"]
    if ck is not None and k is not None and ck != k:
        return [f"geo_clusters.k {ck} differs from k {k}"]
    centroids = clusters.get("centroids")
    if centroids is None:
        return []
    n = k or ck
    ok = isinstance(centroids, list) and all(
        isinstance(c, dict) and _count(c.get("cluster")) and (n is None or c["cluster"] < n)
        and _is(c.get("lat"), (float,)) and -90 <= c["lat"] <= 90
        and _is(c.get("lon"), (float,)) and -180 <= c["lon"] <= 180
        for c in centroids
    )  # fmt: skip
    if not ok:
        return [f"geo_clusters.centroids must be a list of {{cluster < k, lat, lon in degrees}} (k={n})"]
    return []


def check_card(card: object, url: str) -> dict:
    """The card when it is sound, else GeoSSLError naming URL and its first problem (for readers such as
    geo-pretrain, which must not start on a card `validate` would report)."""
    problems = card_problems(card)
    if problems:
        more = (
            f" (and {len(problems) - 1} more; `geo-build-dataset validate` lists them)"
            if problems[1:]
            else ""
        )
        raise GeoSSLError(f"{url}: bad dataset card: {problems[0]}{more}")
    assert isinstance(card, dict)  # card_problems reports anything else
    return card


def load_card(folder: str) -> dict | None:
    """FOLDER's card as a dict, or None when there is none a reader could use (missing, not a JSON
    object, or a store that does not answer: the shard listing reports that, not an optional reading)."""
    try:
        card = json.loads(fsio.read_bytes(fsio.join(str(folder), DATASET_CARD)))
    except (OSError, ValueError, StorageError):
        return None
    return card if isinstance(card, dict) else None


def category_names(card: object) -> dict[int, str] | None:
    """id -> name of the categories a card lists (any data set's: fMoW's 62, GeoImageNet's synsets);
    None when the card lists none usable, so the caller knows the names are unknown, not empty."""
    listed = card.get("categories") if isinstance(card, dict) else None
    if not isinstance(listed, list) or not listed or _category_problems(listed):
        return None
    return {c["id"]: c["name"] for c in listed}


def temporal_pairs_missing(card: object) -> str | None:
    """Why the shards of this card hold no temporal pairs (two dates of one place), or None when they
    may: --layout views (one image per sample) or a data set with one image per location (GeoImageNet)."""
    if not isinstance(card, dict):
        return None
    if card.get("layout") == "views":
        return 'layout "views": each sample is one image'
    if card.get("temporal_positives") is False:
        return f"{card.get('dataset', 'this data set')} has one image per location"
    return None


def refuse_temporal(data: str, method: str) -> None:
    """Stop a +tp method on shards whose card says they hold no temporal positives (GeoImageNet, views);
    no card, or an unreadable one, is no refusal here (geo-pretrain's preflight reports a bad card)."""
    why = temporal_pairs_missing(load_card(data))
    if why:
        url = fsio.join(str(data), DATASET_CARD)
        base = method.replace("+tp", "")
        raise GeoSSLError(
            f"--method {method}: temporal positives do not apply to {data} ({url}: {why}); use {base}"
        )
