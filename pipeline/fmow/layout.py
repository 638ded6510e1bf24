"""Facts about the fMoW-rgb on-disk layout: the 62 categories, path grammars (labelled train/val and the
anonymised test/seq), views per location."""

from __future__ import annotations

import re

#: The 62 fMoW categories in alphabetical order; the position is the label (as in WILDS and SatMAE,
#: not the fMoW baseline's 63-name order that starts with false_detection).
CATEGORIES: tuple[str, ...] = (
    "airport", "airport_hangar", "airport_terminal", "amusement_park", "aquaculture", "archaeological_site",
    "barn", "border_checkpoint", "burial_site", "car_dealership", "construction_site", "crop_field", "dam",
    "debris_or_rubble", "educational_institution", "electric_substation", "factory_or_powerplant",
    "fire_station", "flooded_road", "fountain", "gas_station", "golf_course", "ground_transportation_station",
    "helipad", "hospital", "impoverished_settlement", "interchange", "lake_or_pond", "lighthouse",
    "military_facility", "multi-unit_residential", "nuclear_powerplant", "office_building",
    "oil_or_gas_facility", "park", "parking_lot_or_garage", "place_of_worship", "police_station", "port",
    "prison", "race_track", "railway_bridge", "recreational_facility", "road_bridge", "runway", "shipyard",
    "shopping_mall", "single-unit_residential", "smokestack", "solar_farm", "space_facility", "stadium",
    "storage_tank", "surface_mine", "swimming_pool", "toll_booth", "tower", "tunnel_opening",
    "waste_disposal", "water_treatment_facility", "wind_farm", "zoo",
)  # fmt: skip
CATEGORY_INDEX: dict[str, int] = {name: i for i, name in enumerate(CATEGORIES)}

SPLITS: tuple[str, ...] = ("train", "val", "test", "seq")

#: Views per location in the public fMoW-rgb val sample v1.1.0 (1,559 locations, 7,445 views).
VIEWS_PER_LOCATION: dict[int, int] = {
    1: 287, 2: 250, 3: 232, 4: 163, 5: 120, 6: 77, 7: 79, 8: 98, 9: 84, 10: 82, 11: 5, 12: 13, 13: 18,
    14: 8, 15: 7, 16: 9, 17: 7, 18: 3, 19: 6, 20: 7, 24: 1, 25: 2, 28: 1,
}  # fmt: skip

#: `{split}/{category}/{category}_{loc}/{category}_{loc}_{view}_{kind}.{ext}`
PATH_RE = re.compile(
    r"(?:^|/)(?P<split>[^/]+)/(?P<category>[^/]+)/(?P<location_id>(?P=category)_(?P<loc>\d+))/"
    r"(?P=location_id)_(?P<view>\d+)_(?P<kind>rgb|msrgb)\.(?P<ext>jpg|json)$"
)


#: The anonymised test and seq layouts: `{split}/{id}/{id}_{view}_{kind}.{ext}`, e.g.
#: `test/0011978/0011978_0_rgb.jpg`. The location id is the folder's number; the category is unknown.
ANON_PATH_RE = re.compile(
    r"(?:^|/)(?P<split>[^/]+)/(?P<location_id>[0-9]+)/"
    r"(?P=location_id)_(?P<view>\d+)_(?P<kind>rgb|msrgb)\.(?P<ext>jpg|json)$"
)
#: What a view without a category (the anonymised layouts) stores: the schema's columns are not
#: nullable, so the name is "unknown" and the index -1 (no class of a category classifier).
UNKNOWN_CATEGORY = "unknown"
UNKNOWN_CATEGORY_INDEX = -1
#: Anonymised location folders are indexed in parts of up to this many consecutive ids.
ANON_PART_SIZE = 1000


def match_view_path(path: str) -> re.Match | None:
    """The fMoW path grammar's match (groups split, location_id, view, kind, ext), either layout."""
    return PATH_RE.search(path) or ANON_PATH_RE.search(path)


def is_anonymised_folder(name: str) -> bool:
    """An anonymised location folder (`0011978`): ASCII digits only, never an fMoW category name."""
    return name.isascii() and name.isdigit()


def anonymised_part(name: str) -> str:
    """The index part that holds anonymised location folder `name`: ids by blocks of ANON_PART_SIZE."""
    return f"{UNKNOWN_CATEGORY}-{int(name) // ANON_PART_SIZE:05d}"


def location_key(split: str, location_id: str) -> str:
    """The unique, dot-free id of a location across splits; also the shard sample `__key__`."""
    return f"{split}-{location_id}".replace(".", "_")


def relative_image_path(
    split: str, category: str, loc: int, view: int, kind: str = "rgb", ext: str = "jpg"
) -> str:
    location_id = f"{category}_{loc}"
    return f"{split}/{category}/{location_id}/{location_id}_{view}_{kind}.{ext}"
