"""`synth-fmow`: a small synthetic data set in the exact fMoW-rgb layout, for tests, demos and benchmarks.

Every location is planned from (seed, location index) alone, so a run is byte-identical whatever the
number of workers, and a larger `locations` keeps the first ones unchanged. Each location is one task:
its JPEGs are written first and its JSONs last, each file atomically, so a location whose files all
exist is complete and a rerun after a crash skips it. `OUT/.synth-fmow.json` records the settings, so a
rerun with another seed cannot mix two data sets in one folder (the indexer only reads split folders).
"""

from __future__ import annotations

import io
import json
import math
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

import numpy as np
from fsspec.implementations.memory import MemoryFileSystem
from PIL import Image

from geo_ssl.pipeline.common import executor, fsio
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.progress import Summary, progress
from geo_ssl.pipeline.fmow.layout import CATEGORIES, VIEWS_PER_LOCATION, relative_image_path
from geo_ssl.pipeline.fmow.synth_render import (
    Frame,
    Look,
    TerrainStyle,
    make_terrain_style,
    msrgb_from_rgb,
    render_view,
)

#: (name, lat, lon, ISO alpha-3, biome, spread in degrees, weight): where synthetic locations cluster.
CITIES: tuple[tuple[str, float, float, str, str, float, float], ...] = (
    ("zurich", 47.38, 8.54, "CHE", "temperate", 0.15, 1.0),
    ("ankara", 39.93, 32.86, "TUR", "steppe", 0.2, 1.0),
    ("paris", 48.86, 2.35, "FRA", "temperate", 0.2, 1.2),
    ("london", 51.51, -0.13, "GBR", "temperate", 0.2, 1.2),
    ("madrid", 40.42, -3.70, "ESP", "mediterranean", 0.2, 1.0),
    ("rome", 41.90, 12.50, "ITA", "mediterranean", 0.15, 0.8),
    ("berlin", 52.52, 13.40, "DEU", "temperate", 0.2, 1.0),
    ("moscow", 55.75, 37.62, "RUS", "boreal", 0.25, 1.0),
    ("cairo", 30.04, 31.24, "EGY", "arid", 0.2, 1.0),
    ("lagos", 6.52, 3.38, "NGA", "tropical", 0.15, 0.8),
    ("nairobi", -1.29, 36.82, "KEN", "steppe", 0.15, 0.7),
    ("johannesburg", -26.20, 28.05, "ZAF", "steppe", 0.2, 0.8),
    ("kinshasa", -4.32, 15.31, "COD", "tropical", 0.15, 0.5),
    ("addis_ababa", 9.03, 38.74, "ETH", "steppe", 0.15, 0.5),
    ("riyadh", 24.71, 46.68, "SAU", "arid", 0.25, 0.8),
    ("dubai", 25.20, 55.27, "ARE", "arid", 0.2, 0.8),
    ("tehran", 35.69, 51.39, "IRN", "arid", 0.2, 0.8),
    ("karachi", 24.86, 67.01, "PAK", "arid", 0.2, 0.7),
    ("delhi", 28.61, 77.21, "IND", "steppe", 0.25, 1.2),
    ("mumbai", 19.08, 72.88, "IND", "tropical", 0.15, 1.0),
    ("dhaka", 23.81, 90.41, "BGD", "tropical", 0.15, 0.7),
    ("beijing", 39.90, 116.41, "CHN", "steppe", 0.3, 1.2),
    ("shanghai", 31.23, 121.47, "CHN", "urban", 0.25, 1.2),
    ("tokyo", 35.68, 139.69, "JPN", "urban", 0.25, 1.2),
    ("seoul", 37.57, 126.98, "KOR", "temperate", 0.2, 0.9),
    ("manila", 14.60, 120.98, "PHL", "tropical", 0.15, 0.7),
    ("jakarta", -6.21, 106.85, "IDN", "tropical", 0.2, 0.8),
    ("bangkok", 13.76, 100.50, "THA", "tropical", 0.2, 0.8),
    ("sydney", -33.87, 151.21, "AUS", "mediterranean", 0.25, 1.0),
    ("perth", -31.95, 115.86, "AUS", "arid", 0.2, 0.6),
    ("auckland", -36.85, 174.76, "NZL", "temperate", 0.15, 0.6),
    ("suva", -18.14, 178.44, "FJI", "tropical", 0.1, 0.4),
    ("new_york", 40.71, -74.01, "USA", "urban", 0.3, 1.5),
    ("chicago", 41.88, -87.63, "USA", "temperate", 0.3, 1.2),
    ("houston", 29.76, -95.37, "USA", "temperate", 0.3, 1.2),
    ("los_angeles", 34.05, -118.24, "USA", "mediterranean", 0.3, 1.4),
    ("denver", 39.74, -104.99, "USA", "steppe", 0.3, 0.8),
    ("vancouver", 49.28, -123.12, "CAN", "boreal", 0.2, 0.7),
    ("toronto", 43.65, -79.38, "CAN", "temperate", 0.25, 0.8),
    ("anchorage", 61.22, -149.90, "USA", "tundra", 0.2, 0.3),
    ("mexico_city", 19.43, -99.13, "MEX", "steppe", 0.25, 1.0),
    ("havana", 23.11, -82.37, "CUB", "tropical", 0.15, 0.5),
    ("bogota", 4.71, -74.07, "COL", "tropical", 0.15, 0.7),
    ("lima", -12.05, -77.04, "PER", "arid", 0.15, 0.7),
    ("sao_paulo", -23.55, -46.63, "BRA", "tropical", 0.3, 1.2),
    ("buenos_aires", -34.60, -58.38, "ARG", "temperate", 0.25, 0.9),
    ("santiago", -33.45, -70.67, "CHL", "mediterranean", 0.2, 0.6),
    ("reykjavik", 64.15, -21.94, "ISL", "tundra", 0.15, 0.3),
    ("almaty", 43.24, 76.89, "KAZ", "steppe", 0.2, 0.5),
    ("ulaanbaatar", 47.89, 106.91, "MNG", "steppe", 0.2, 0.4),
    ("honolulu", 21.31, -157.86, "USA", "tropical", 0.12, 0.4),
)
#: Locations forced onto either side of the antimeridian in Fiji (index modulo 31 -> (lat range, lon range)).
ANTIMERIDIAN = {3: ((-17.0, -16.3), (179.55, 179.95)), 9: ((-17.3, -16.6), (-179.95, -179.55))}
_ANTIMERIDIAN_PERIOD = 31

#: Typical ground size of each category relative to the median object (drives pixel sizes).
_LARGE = {"airport": 3.0, "runway": 2.5, "port": 2.2, "surface_mine": 2.2, "golf_course": 2.2, "shipyard": 2.0,
          "interchange": 2.0, "nuclear_powerplant": 2.0, "wind_farm": 2.0, "airport_terminal": 1.8, "dam": 1.8,
          "race_track": 1.8, "space_facility": 1.8, "crop_field": 1.6, "solar_farm": 1.6, "aquaculture": 1.6,
          "military_facility": 1.6, "lake_or_pond": 1.5, "zoo": 1.5, "prison": 1.4, "amusement_park": 1.4,
          "factory_or_powerplant": 1.4, "shopping_mall": 1.3, "oil_or_gas_facility": 1.3, "waste_disposal": 1.3,
          "water_treatment_facility": 1.3}  # fmt: skip
_SMALL = {"fountain": 0.45, "helipad": 0.5, "swimming_pool": 0.5, "smokestack": 0.6, "tower": 0.6,
          "lighthouse": 0.6, "barn": 0.6, "gas_station": 0.7, "fire_station": 0.7, "police_station": 0.7,
          "single-unit_residential": 0.7, "toll_booth": 0.8, "place_of_worship": 0.8, "office_building": 0.8,
          "tunnel_opening": 0.8, "debris_or_rubble": 0.8}  # fmt: skip
CATEGORY_SCALE: dict[str, float] = {c: _LARGE.get(c, _SMALL.get(c, 1.0)) for c in CATEGORIES}


@dataclass(frozen=True)
class Sensor:
    name: str
    first_day: date
    nadir_gsd: float  # metres per pan pixel at nadir
    catalog_prefix: str
    wavelengths: tuple[int, int, int]
    tint: tuple[float, float, float]


SENSORS: tuple[Sensor, ...] = (
    Sensor("QUICKBIRD02", date(2001, 10, 18), 0.61, "101", (660, 545, 480), (1.0, 0.98, 1.04)),
    Sensor("GEOEYE01", date(2008, 9, 6), 0.46, "105", (661, 545, 477), (1.03, 1.0, 0.96)),
    Sensor("WORLDVIEW02", date(2009, 10, 8), 0.46, "103", (660, 545, 480), (1.0, 1.0, 1.0)),
    Sensor("WORLDVIEW03_VNIR", date(2014, 8, 13), 0.31, "104", (660, 545, 480), (0.98, 1.01, 1.02)),
)
_SENSOR_WEIGHT = {"QUICKBIRD02": 1.0, "GEOEYE01": 1.0, "WORLDVIEW02": 1.5, "WORLDVIEW03_VNIR": 1.2}
_QUICKBIRD_LAST_DAY = date(2014, 12, 31)
FIRST_DAY, LAST_DAY = date(2002, 1, 1), date(2017, 12, 31)
JPEG_QUALITY = 75  # the real files use the standard quality-75 tables with 4:2:0 chroma
#: Base sensor noise and fine texture (DN); they set how JPEG sizes scale with pixels (about 0.3 B/px).
_NOISE_DN, _TEXTURE_DN = 14.0, 20.0
#: Rates of the real JSON quirks, on top of the views that always carry them (see _quirk).
_QUIRK_RATE = {"dict_box": 0.01, "ground_truth": 0.02}
_QUIRK_PERIOD = 29

#: Settings of a run, kept in OUT/STAMP: a rerun must match them (a larger `locations` may extend a set).
#: Bump GENERATOR whenever the bytes written for the same settings change.
STAMP = ".synth-fmow.json"
#: Settings stamped only when not default, and what their absence means (for messages).
_UNSTAMPED = {"categories": "all", "scene": "fmow"}
GENERATOR = "geo-ssl synth-fmow 2"

_TAG_CATEGORY, _TAG_SPLIT, _TAG_PLAN, _TAG_LOCATION, _TAG_OBJECT, _TAG_VIEW, _TAG_NOISE = range(1, 8)
_TAG_REGION = 8  # the toy scene's shared ground per biome


@dataclass(frozen=True)
class Scene:
    """What the ground and the drawings look like; `fmow` is the default, `toy` the ablation's test.

    In the fMoW scene every location has its own ground pattern and roads. That is realistic, but at
    64 px it makes a bad test of what SSL learns: the ground is the strongest per-location signal, so
    instance discrimination learns it, and the thin object lines vanish when a view is shrunk to 64 px
    (supervised ResNet-18 training for 300 steps then barely beats random features). The toy scene
    shares one smooth ground pattern per biome (palette and colour still vary per location), draws no
    roads and no field parcels (their grid texture looks like the objects' own grids, and it covered
    most locations in a first toy data set, whose MoCo features then lost to random ones), and draws
    the objects with 2.5x wider strokes, so what tells locations apart is the object: its category's
    shape, laid out per location (BENCHMARKS.md, the ablation).
    """

    terrain: str = "local"  # "regional": every location of a biome shares one ground pattern
    roads: bool = True
    parcels: bool = True  # field parcels on some of the ground (a grid of shades)
    stroke: float = 1.0  # width factor of the objects' lines and outlines


SCENES = {"fmow": Scene(), "toy": Scene(terrain="regional", roads=False, parcels=False, stroke=2.5)}


@dataclass(frozen=True)
class LocationPlan:
    """Everything decided about a location before rendering; a function of (seed, index) only."""

    index: int
    split: str
    category: str
    loc: int
    n_views: int
    lat: float
    lon: float
    country_code: str
    biome: str

    @property
    def location_id(self) -> str:
        return f"{self.category}_{self.loc}"

    def file_names(self) -> list[str]:
        """Every file of this location, JPEGs before JSONs (the order they are written in)."""
        views = range(self.n_views)
        jpgs = [f"{self.location_id}_{v}_{kind}.jpg" for v in views for kind in ("rgb", "msrgb")]
        jsons = [f"{self.location_id}_{v}_{kind}.json" for v in views for kind in ("msrgb", "rgb")]
        return jpgs + jsons


@dataclass(frozen=True)
class _Result:
    index: int
    skipped: bool
    views: int = 0
    files: int = 0
    bytes: int = 0


def _rng(seed: int, tag: int, index: int, sub: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, tag, index, sub])


def plan_locations(
    locations: int, seed: int = 0, val_fraction: float = 0.2, categories: Sequence[str] | None = None
) -> list[LocationPlan]:
    """Categories, splits, view counts and positions of `locations` locations.

    Categories come in shuffled blocks of 62 (or of `categories`, a subset of fMoW's names, e.g. for a
    toy benchmark with more locations per class), so every category is present from one block on.
    Location i goes to val when floor((i + 1) f + phase) > floor(i f + phase): exactly about f of any
    prefix. Loc numbers count up per (split, category), as in real fMoW.
    """
    _check_args(locations, seed, val_fraction, None)
    names = _check_categories(categories)
    phase = float(_rng(seed, _TAG_SPLIT, 0).random())
    weights = np.array([c[6] for c in CITIES])
    weights /= weights.sum()
    views = np.array(sorted(VIEWS_PER_LOCATION), dtype=np.int64)
    view_p = np.array([VIEWS_PER_LOCATION[v] for v in views], dtype=np.float64)
    view_p /= view_p.sum()
    counters: Counter = Counter()
    plans = []
    block: np.ndarray | None = None
    for i in range(locations):
        if i % len(names) == 0:
            block = _rng(seed, _TAG_CATEGORY, i // len(names)).permutation(len(names))
        category = names[int(block[i % len(names)])]  # type: ignore[index]
        split = (
            "val"
            if math.floor((i + 1) * val_fraction + phase) > math.floor(i * val_fraction + phase)
            else "train"
        )
        rng = _rng(seed, _TAG_PLAN, i)
        n_views = int(rng.choice(views, p=view_p))
        forced = ANTIMERIDIAN.get(i % _ANTIMERIDIAN_PERIOD)
        if forced is not None:
            (lat_lo, lat_hi), (lon_lo, lon_hi) = forced
            lat, lon, country, biome = (
                rng.uniform(lat_lo, lat_hi),
                rng.uniform(lon_lo, lon_hi),
                "FJI",
                "tropical",
            )
        else:
            _name, clat, clon, country, biome, spread, _w = CITIES[int(rng.choice(len(CITIES), p=weights))]
            lat = float(np.clip(clat + rng.normal(0, spread), -75, 75))
            lon = clon + rng.normal(0, spread) / math.cos(math.radians(lat))
            lon = float((lon + 180) % 360 - 180)
        lon = float(np.clip(lon, -179.95, 179.95))  # footprints (< 0.05 deg) never cross the antimeridian
        loc = counters[(split, category)]
        counters[(split, category)] += 1
        plans.append(LocationPlan(i, split, category, loc, n_views, float(lat), lon, country, biome))
    return plans


def synth_fmow(
    out: str,
    locations: int = 300,
    seed: int = 0,
    val_fraction: float = 0.2,
    realistic_sizes: bool = False,
    workers: int | None = None,
    categories: Sequence[str] | None = None,
    scene: str = "fmow",
) -> Summary:
    """Write `locations` synthetic locations under `out` as `{train,val}/{category}/{category}_{loc}/...`.

    `scene` is a name in SCENES: "fmow" (default) or "toy" (the ablation's data; see Scene)."""
    _check_args(locations, seed, val_fraction, workers)
    if scene not in SCENES:
        raise GeoSSLError(f"--scene {scene!r} unknown; use one of: {', '.join(SCENES)}")
    settings = {
        "generator": GENERATOR,
        "seed": seed,
        "val_fraction": val_fraction,
        "realistic_sizes": realistic_sizes,
    }
    if categories is not None:  # absent for the full set, so such stamps read as before
        settings["categories"] = list(_check_categories(categories))
    if scene != "fmow":  # likewise absent for the default scene
        settings["scene"] = scene
    try:
        _claim(out, settings)
    except OSError as exc:
        raise GeoSSLError(f"{out}: cannot write the synthetic data set ({exc})") from None
    plans = plan_locations(locations, seed, val_fraction, categories)
    workers = min(workers or os.cpu_count() or 1, locations)
    if isinstance(fsio.get_fs(out)[0], MemoryFileSystem):
        workers = 1  # a memory filesystem lives in one process; child processes would write to their own
    summary = Summary(stage="synth-fmow", unit="locations", inputs=locations)
    views = files = size = 0
    tasks = [(out, plan, seed, realistic_sizes, scene) for plan in plans]
    try:
        for result in progress(_run(tasks, workers), total=locations, desc="synth-fmow", unit="loc"):
            if result.skipped:
                summary.skipped += 1
            else:
                summary.written += 1
                views, files, size = views + result.views, files + result.files, size + result.bytes
    except OSError as exc:
        raise GeoSSLError(f"{out}: cannot write the synthetic data set ({exc})") from None
    split_counts = Counter(p.split for p in plans)
    summary.extra = {"views": views, "files": files, "bytes": size, "train": split_counts["train"],
                     "val": split_counts["val"], "views_total": sum(p.n_views for p in plans)}  # fmt: skip
    return summary


def _claim(out: str, settings: dict) -> None:
    """Refuse to mix two settings, or to write into a tree synth-fmow did not make; then stamp `out`."""
    fs, path = fsio.get_fs(out)
    if fs.isfile(path):
        raise GeoSSLError(f"{out}: is a file; synth-fmow needs a folder to write train/ and val/ into")
    stamp = fsio.join(out, STAMP)
    if fsio.exists(stamp):
        try:
            found = json.loads(fsio.read_bytes(stamp))
        except ValueError:
            raise GeoSSLError(f"{stamp}: unreadable; delete it only if {out} holds nothing else") from None
        # keys written only when not default (categories, scene) count as their default when absent
        keys = sorted(set(settings) | set(found))
        diff = [
            f"{k} {found.get(k, _UNSTAMPED.get(k))!r} there, {settings.get(k, _UNSTAMPED.get(k))!r} now"
            for k in keys
            if found.get(k) != settings.get(k)
        ]
        if diff:
            raise GeoSSLError(f"{out} was made with other settings ({'; '.join(diff)}); use a new folder")
        return
    if any(fs.exists(f"{path.rstrip('/')}/{split}") for split in ("train", "val")):
        raise GeoSSLError(
            f"{out} already holds train/ or val/ that synth-fmow did not write; use a new folder"
        )
    fsio.atomic_write_text(stamp, json.dumps(settings, sort_keys=True) + "\n")


def _check_args(locations: int, seed: int, val_fraction: float, workers: int | None) -> None:
    if isinstance(locations, bool) or not isinstance(locations, int) or locations < 1:
        raise GeoSSLError(f"--locations must be a whole number >= 1, got {locations!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise GeoSSLError(f"--seed must be a whole number >= 0, got {seed!r}")
    if not isinstance(val_fraction, int | float) or not 0 <= val_fraction < 1:
        raise GeoSSLError(f"--val-fraction must be in [0, 1), got {val_fraction!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise GeoSSLError(f"--workers must be a whole number >= 1, got {workers!r}")


def _check_categories(categories: Sequence[str] | None) -> tuple[str, ...]:
    """The category names to draw from, in fMoW's order: all 62, or a subset of them."""
    if categories is None:
        return CATEGORIES
    names = tuple(categories)
    unknown = sorted(set(names) - set(CATEGORIES))
    if unknown or not names or len(set(names)) != len(names):
        problem = f"unknown {', '.join(unknown)}" if unknown else "empty or repeated names"
        raise GeoSSLError(f"--categories must be distinct fMoW category names ({problem})")
    return tuple(c for c in CATEGORIES if c in set(names))


def _run(tasks: list[tuple], workers: int) -> Iterator[_Result]:
    """Results in completion order from the executor; at most a few tasks per worker in flight.

    One worker (also forced for an in-memory filesystem, which lives in this process) runs here."""
    yield from executor.run_tasks(
        _make_location, tasks, workers, stage="synth-fmow", in_flight=4, local_only=workers <= 1
    )


# ------------------------------------------------------------------------------------------------ worker


def _make_location(task: tuple[str, LocationPlan, int, bool, str]) -> _Result:
    out, plan, seed, realistic, scene = task
    folder = fsio.join(out, *relative_image_path(plan.split, plan.category, plan.loc, 0).split("/")[:3])
    names = plan.file_names()
    if set(names) <= _listing(folder):
        return _Result(plan.index, skipped=True)
    fsio.remove_stale_temps(folder)
    jsons: list[tuple[str, bytes]] = []
    total = 0
    for spec in _view_specs(plan, seed, realistic, SCENES[scene]):
        noise = _rng(seed, _TAG_NOISE, plan.index, spec.view)
        rgb = render_view(plan.category, spec.style, spec.look, spec.frame, noise, SCENES[scene].stroke)
        ms = msrgb_from_rgb(rgb, spec.ms_size, noise, spec.look.noise)
        for kind, image in (("rgb", rgb), ("msrgb", ms)):
            data = _jpeg(image)
            fsio.atomic_write_bytes(fsio.join(folder, f"{plan.location_id}_{spec.view}_{kind}.jpg"), data)
            total += len(data)
        for kind, meta in (("msrgb", spec.msrgb_meta), ("rgb", spec.rgb_meta)):
            jsons.append((f"{plan.location_id}_{spec.view}_{kind}.json", json.dumps(meta).encode()))
    for name, data in jsons:
        fsio.atomic_write_bytes(fsio.join(folder, name), data)
        total += len(data)
    return _Result(plan.index, skipped=False, views=plan.n_views, files=len(names), bytes=total)


def _listing(folder: str) -> set[str]:
    fs, path = fsio.get_fs(folder)
    try:
        return {name.rstrip("/").rsplit("/", 1)[-1] for name in fs.ls(path, detail=False)}
    except FileNotFoundError:
        return set()


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=2)
    return buf.getvalue()


@dataclass(frozen=True)
class _ViewSpec:
    view: int
    style: TerrainStyle
    look: Look
    frame: Frame
    ms_size: tuple[int, int]
    rgb_meta: dict
    msrgb_meta: dict


def _view_specs(
    plan: LocationPlan, seed: int, realistic: bool, scene: Scene = SCENES["fmow"]
) -> Iterable[_ViewSpec]:
    """Sizes, geometry, acquisition and metadata of each view, all from the location's and view's seeds."""
    rng = _rng(seed, _TAG_LOCATION, plan.index)
    style = make_terrain_style(rng, plan.biome, (seed, _TAG_OBJECT, plan.index, 0))
    if scene.terrain == "regional":
        ground = _regional_ground(seed, plan.biome)
        style = replace(style, lattices=ground.lattices, parcels=ground.parcels)
    if not scene.roads:
        style = replace(style, roads=())
    if not scene.parcels:
        style = replace(style, parcels=None)
    scale = CATEGORY_SCALE[plan.category]
    if realistic:
        # calibrated on the real rgb val sample: median ~150 KB, p90 ~500 KB, a tail of multi-MB scenes
        ref_long = 750 * scale**0.35 * math.exp(rng.normal(0, 0.15))
        tail = rng.random()
        if tail < 0.06:
            ref_long *= rng.uniform(3.0, 8.0)
        elif tail < 0.13:
            ref_long *= rng.uniform(1.5, 3.0)
        limits = (160, 120, 6000)  # min long side, min short side, max side
    else:
        ref_long = 150 * math.sqrt(scale) * math.exp(rng.normal(0, 0.2))
        limits = (96, 96, 256)
    aspect = rng.uniform(0.62, 1.0)
    landscape = rng.random() < 0.7
    box_frac = rng.uniform(0.4, 0.78, size=2)
    unit_m = ref_long * 0.5  # footprint units: the reference long side in metres (at 0.5 m gsd)
    texture = _TEXTURE_DN * rng.uniform(0.6, 1.4)
    object_id = 1000 + 37 * plan.index + int(rng.integers(0, 37))
    days = _sample_days(rng, plan.lat, plan.n_views)
    for view, day in enumerate(days):
        vr = _rng(seed, _TAG_VIEW, plan.index, view)
        acq = _acquisition(vr, plan, day)
        gsd = acq["gsd"]
        long = int(np.clip(round(ref_long * 0.5 / gsd * vr.uniform(0.96, 1.04)), limits[0], limits[2]))
        short = int(np.clip(round(long * aspect), limits[1], limits[2]))
        width, height = (long, short) if landscape else (short, long)
        bw = max(4, min(width, round(box_frac[0] * width * vr.uniform(0.97, 1.03))))
        bh = max(4, min(height, round(box_frac[1] * height * vr.uniform(0.97, 1.03))))
        bx = int(np.clip(round((width - bw) / 2 * (1 + vr.uniform(-0.35, 0.35))), 0, width - bw))
        by = int(np.clip(round((height - bh) / 2 * (1 + vr.uniform(-0.35, 0.35))), 0, height - bh))
        frame = Frame(width, height, (bx, by, bw, bh), gsd / unit_m, gsd)
        look = _look(vr, plan, acq, texture)
        ms_size = (max(8, round(width / 4)), max(8, round(height / 4)))
        quirk = _quirk(vr, plan.index, view)
        rgb_meta, ms_meta = _metadata(vr, plan, view, acq, frame, ms_size, object_id, quirk)
        yield _ViewSpec(view, style, look, frame, ms_size, rgb_meta, ms_meta)


@lru_cache(maxsize=16)
def _regional_ground(seed: int, biome: str) -> TerrainStyle:
    """The ground pattern that every location of `biome` shares in a regional scene."""
    rng = _rng(seed, _TAG_REGION, zlib.crc32(biome.encode()))
    return make_terrain_style(rng, biome, (seed, _TAG_REGION, 0, 0))


@lru_cache(maxsize=1)
def _calendar() -> tuple[np.ndarray, np.ndarray]:
    """Day of year and a weight growing with the year (more imagery later) for every day in range."""
    offsets = range((LAST_DAY - FIRST_DAY).days + 1)
    doy = np.array([(FIRST_DAY + timedelta(days=d)).timetuple().tm_yday for d in offsets])
    return doy, 1 + 0.25 * (np.arange(len(doy)) / 365.25)


def _sample_days(rng: np.random.Generator, lat: float, n: int) -> list[date]:
    """n distinct acquisition days in 2002-2017, more in later years, none with the sun too low at 10:30."""
    doy, growth = _calendar()
    count = len(doy)
    elevation = _sun_position(lat, doy, np.full(count, 10.5))[1]
    weights = growth * (elevation > 12)
    picked = rng.choice(count, size=n, replace=False, p=weights / weights.sum())
    return [FIRST_DAY + timedelta(days=int(d)) for d in picked]


def _sun_position(lat: float, doy: np.ndarray | int, solar_hour: np.ndarray | float) -> tuple:
    """(azimuth from north clockwise, elevation) in degrees from declination and hour angle."""
    phi = math.radians(lat)
    decl = np.radians(23.44 * np.sin(2 * np.pi * (284 + np.asarray(doy)) / 365))
    hour_angle = np.radians(15 * (np.asarray(solar_hour) - 12))
    sin_el = np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.cos(hour_angle)
    elevation = np.degrees(np.arcsin(np.clip(sin_el, -1, 1)))
    azimuth = np.degrees(
        np.arctan2(-np.sin(hour_angle), np.tan(decl) * np.cos(phi) - np.sin(phi) * np.cos(hour_angle))
    )
    return azimuth % 360, elevation


def _acquisition(rng: np.random.Generator, plan: LocationPlan, day: date) -> dict:
    """Sensor, time, sun, viewing geometry and cloud cover of one view."""
    active = [
        s for s in SENSORS if s.first_day <= day and (s.name != "QUICKBIRD02" or day <= _QUICKBIRD_LAST_DAY)
    ]
    w = np.array([_SENSOR_WEIGHT[s.name] for s in active])
    sensor = active[int(rng.choice(len(active), p=w / w.sum()))]
    solar_hour = float(np.clip(rng.normal(10.5, 0.35), 9.5, 11.75))
    utc = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(hours=solar_hour - plan.lon / 15)
    utc = utc.replace(microsecond=0)
    doy = day.timetuple().tm_yday
    azimuth, elevation = (float(v) for v in _sun_position(plan.lat, doy, solar_hour))
    off_nadir = float(rng.uniform(2, 32))
    gsd = sensor.nadir_gsd / math.cos(math.radians(off_nadir)) ** 0.9
    cloud = 0 if rng.random() < 0.7 else int(min(60, 1 + rng.exponential(10)))
    return {"sensor": sensor, "time": utc, "doy": doy, "sun_azimuth": azimuth, "sun_elevation": elevation,
            "off_nadir": off_nadir, "gsd": gsd, "cloud_cover": cloud}  # fmt: skip


def _look(rng: np.random.Generator, plan: LocationPlan, acq: dict, texture: float) -> Look:
    """Season (hemisphere-aware), sun, sensor tint, haze and clouds -> the view's appearance."""
    summer = math.cos(2 * math.pi * (acq["doy"] - 172) / 365) * (1 if plan.lat >= 0 else -1)
    strength = float(np.clip(abs(plan.lat) / 50, 0.2, 1.0))
    season = 1 + strength * summer * np.array([-0.05, 0.08, -0.03])
    light = float(np.clip(0.72 + 0.45 * math.sin(math.radians(acq["sun_elevation"])), 0.7, 1.15))
    light *= rng.uniform(0.95, 1.05)
    # a strong per-view colour cast (calibration, atmosphere, processing): what colour a site has in one
    # acquisition says little about the next, as in real archives; only the shapes persist
    cast = rng.uniform(0.75, 1.25, size=3)
    gain = (season * light * cast * np.array(acq["sensor"].tint)).astype(np.float32)
    snow = 0.0
    if abs(plan.lat) > 40 and summer < -0.5 and plan.biome not in ("arid", "tropical") and rng.random() < 0.6:
        snow = strength * float(rng.uniform(0.3, 0.8))
    return Look(
        gain=gain,
        snow=snow,
        haze=0.55 * float(rng.beta(1.3, 3.0)),
        cloud_cover=acq["cloud_cover"] / 100,
        noise=_NOISE_DN * float(rng.uniform(0.8, 1.2)),
        texture=texture * float(rng.uniform(0.9, 1.1)),
        sun_azimuth=acq["sun_azimuth"],
        sun_elevation=acq["sun_elevation"],
    )


def _quirk(rng: np.random.Generator, index: int, view: int) -> str | None:
    """Real-file oddities: the first view of some locations always has one, other views at low rates."""
    if view == 0 and index % _QUIRK_PERIOD == 1:
        return "dict_box"
    if view == 0 and index % _QUIRK_PERIOD == 2:
        return "ground_truth"
    u = rng.random()
    if u < _QUIRK_RATE["dict_box"]:
        return "dict_box"
    if u < _QUIRK_RATE["dict_box"] + _QUIRK_RATE["ground_truth"]:
        return "ground_truth"
    return None


# ---------------------------------------------------------------------------------------------- metadata


def utm_zone(lon: float, lat: float) -> str:
    """UTM zone number and latitude band, e.g. '32T' (no Norway/Svalbard exceptions)."""
    zone = int((lon + 180) // 6) % 60 + 1
    band = "CDEFGHJKLMNPQRSTUVWXX"[int(np.clip((lat + 80) // 8, 0, 20))]
    return f"{zone}{band}"


def _g(value: float) -> float:
    """12 significant digits, like the real files."""
    return float(f"{value:.12g}")


def _wkt(ring: list[tuple[float, float]]) -> str:
    return "POLYGON ((" + ", ".join(f"{lon:.12g} {lat:.12g}" for lon, lat in ring) + "))"


def _spread(
    rng: np.random.Generator, centre: float, half: float, suffixes: tuple[str, ...], name: str
) -> dict:
    """`name_dbl` and its start/end/min/max companions around `centre`."""
    start, end = centre + rng.uniform(-half, half), centre + rng.uniform(-half, half)
    values = {"dbl": centre, "start_dbl": start, "end_dbl": end, "min_dbl": min(start, end, centre),
              "max_dbl": max(start, end, centre)}  # fmt: skip
    return {f"{name}_{k}": _g(values[k]) for k in suffixes}


_FIVE = ("dbl", "start_dbl", "end_dbl", "min_dbl", "max_dbl")
_THREE = ("dbl", "min_dbl", "max_dbl")


def _metadata(rng: np.random.Generator, plan: LocationPlan, view: int, acq: dict, frame: Frame,
              ms_size: tuple[int, int], object_id: int, quirk: str | None) -> tuple[dict, dict]:  # fmt: skip
    """The `_rgb.json` and `_msrgb.json` objects of one view, with every field real files carry."""
    sensor: Sensor = acq["sensor"]
    x, y, w, h = frame.box
    gsd = frame.gsd
    # the object's ground position is the location point (plus a metre or two of registration error)
    lat_c = plan.lat + rng.normal(0, 2.0) / 110574
    lon_c = plan.lon + rng.normal(0, 2.0) / (111320 * math.cos(math.radians(plan.lat)))
    deg_w = gsd / (111320 * math.cos(math.radians(lat_c)))
    deg_h = gsd / 110574
    lon0 = lon_c - (x + w / 2) * deg_w
    lat1 = lat_c + (y + h / 2) * deg_h
    lon1, lat0 = lon0 + frame.width * deg_w, lat1 - frame.height * deg_h
    footprint = _wkt([(lon0, lat0), (lon1, lat0), (lon1, lat1), (lon0, lat1), (lon0, lat0)])
    ms_res = gsd * 4 * rng.uniform(0.99, 1.01)
    common = {
        "approximate_wavelengths": list(sensor.wavelengths),
        "catalog_id": sensor.catalog_prefix + "0" + f"{int(rng.integers(0, 16**10)):010X}" + "00",
        "cloud_cover": acq["cloud_cover"],
        "country_code": plan.country_code,
        "epsg": "4326",
        **_spread(rng, ms_res, 0.03 * ms_res, _FIVE, "multi_resolution"),
        **_spread(rng, acq["off_nadir"], 2.5, _FIVE, "off_nadir_angle"),
        **_spread(rng, gsd, 0.02 * gsd, _FIVE, "pan_resolution"),
        "raw_location": footprint,
        "scan_direction": "Forward" if rng.random() < 0.5 else "Reverse",
        "sensor_platform_name": sensor.name,
        "spatial_reference": "GCS_WGS_1984",
        **_spread(rng, acq["sun_azimuth"], 0.8, _THREE, "sun_azimuth"),
        **_spread(rng, acq["sun_elevation"], 0.15, _THREE, "sun_elevation"),
        **_spread(rng, float(rng.uniform(0, 360)), 15.0, _FIVE, "target_azimuth"),
        "timestamp": acq["time"].strftime("%Y-%m-%dT%H:%M:%SZ"),
        "utm": utm_zone(lon_c, lat_c),
    }
    cal = [_g(v) for v in rng.uniform(0.008, 0.02, size=3)]
    crowd_rank = _g(float(rng.uniform(0.3, 1.0)))
    box_wkt = _wkt([(lon0 + x * deg_w, lat1 - y * deg_h), (lon0 + (x + w) * deg_w, lat1 - y * deg_h),
                    (lon0 + (x + w) * deg_w, lat1 - (y + h) * deg_h), (lon0 + x * deg_w, lat1 - (y + h) * deg_h),
                    (lon0 + x * deg_w, lat1 - y * deg_h)])  # fmt: skip
    out = []
    for kind, (width, height) in (("rgb", (frame.width, frame.height)), ("msrgb", ms_size)):
        fx, fy = width / frame.width, height / frame.height
        bx0, by0 = min(width - 1, int(x * fx)), min(height - 1, int(y * fy))
        box = [bx0, by0, max(1, min(width - bx0, round(w * fx))), max(1, min(height - by0, round(h * fy)))]
        entry = {"ID": object_id, "box": box, "category": plan.category, "visible": "True"}
        if quirk == "dict_box":
            boxes: list | dict = entry
        elif quirk == "ground_truth":
            whole = {"ID": -1, "box": list(box), "category": plan.category, "crowd_rank": crowd_rank, "epsg": "4326",
                     "raw_category": plan.category.replace("_", " ").title(), "raw_location": box_wkt,
                     "spatial_reference": "GCS_WGS_1984"}  # fmt: skip
            boxes = [whole, entry]
        else:
            boxes = [entry]
        meta = {
            "abs_cal_factors": cal if kind == "rgb" else [_g(v * 1.07) for v in cal],
            **common,
            "bounding_boxes": boxes,
            "gsd": _g(gsd if kind == "rgb" else gsd * frame.width / width),
            "img_filename": f"{plan.location_id}_{view}_{kind}.tif",
            "img_height": height,
            "img_width": width,
            "mean_pixel_height": _g((lat1 - lat0) / height),
            "mean_pixel_width": _g((lon1 - lon0) / width),
        }
        out.append(dict(sorted(meta.items())))
    return out[0], out[1]
