"""synth-fmow: real files in the fMoW-rgb layout, read back with plain json, PIL and shapely."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import fsspec
import numpy as np
import pytest
import shapely
import shapely.wkt
from PIL import Image

from geo_ssl.pipeline.cli import main as cli_main
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.fmow.layout import CATEGORIES, PATH_RE, VIEWS_PER_LOCATION
from geo_ssl.pipeline.fmow.synth import STAMP, plan_locations, synth_fmow, utm_zone
from geo_ssl.pipeline.fmow.synth_render import object_colour_matrix

REPO = Path(__file__).resolve().parents[1]
LOCATIONS, SEED = 64, 5  # 64 >= 62: every category present
FIVE = ("dbl", "start_dbl", "end_dbl", "min_dbl", "max_dbl")
NUMBER_FIELDS = (
    ["gsd", "mean_pixel_height", "mean_pixel_width"]
    + [
        f"{p}_{s}"
        for p in ("multi_resolution", "off_nadir_angle", "pan_resolution", "target_azimuth")
        for s in FIVE
    ]
    + [f"{p}_{s}" for p in ("sun_azimuth", "sun_elevation") for s in ("dbl", "min_dbl", "max_dbl")]
)
STRING_FIELDS = ("catalog_id", "country_code", "epsg", "img_filename", "raw_location", "scan_direction",
                 "sensor_platform_name", "spatial_reference", "timestamp", "utm")  # fmt: skip
TIMESTAMP_RE = re.compile(r"^(\d{4})-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != STAMP
    }


def object_entry(meta: dict) -> dict:
    boxes = meta["bounding_boxes"]
    entries = [boxes] if isinstance(boxes, dict) else boxes
    return next(e for e in entries if e["ID"] != -1)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("synth") / "fmow"
    summary = synth_fmow(str(root), locations=LOCATIONS, seed=SEED, workers=2)
    return root, summary


@pytest.fixture(scope="module")
def metas(tree) -> dict[Path, dict]:
    root, _ = tree
    return {p: json.loads(p.read_text()) for p in sorted(root.glob("*/*/*/*.json"))}


def test_layout_file_names_and_splits(tree) -> None:
    root, summary = tree
    assert summary.reconciles and summary.written == LOCATIONS and summary.skipped == 0
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != STAMP]
    matches = [PATH_RE.search(f) for f in files]
    assert all(matches), [f for f, m in zip(files, matches, strict=True) if not m][:5]
    by_location: dict[tuple[str, str], Counter] = {}
    for m in matches:
        by_location.setdefault((m["split"], m["location_id"]), Counter())[m["view"]] += 1
    assert len(by_location) == LOCATIONS
    assert all(set(c.values()) == {4} for c in by_location.values())  # rgb+msrgb, jpg+json per view
    assert all(sorted(int(v) for v in c) == list(range(len(c))) for c in by_location.values())
    assert {m["category"] for m in matches} == set(CATEGORIES)
    splits = Counter(split for split, _ in by_location)
    assert set(splits) == {"train", "val"} and abs(splits["val"] - 0.2 * LOCATIONS) <= 1
    for split in splits:  # loc numbers count up from 0 per (split, category), as in real fMoW
        for category in CATEGORIES:
            locs = sorted(
                int(loc.rsplit("_", 1)[1])
                for s, loc in by_location
                if s == split and loc.rsplit("_", 1)[0] == category
            )
            assert locs == list(range(len(locs)))
    assert summary.extra["views"] == sum(len(c) for c in by_location.values())


def test_every_json_field_present_with_sane_types(metas) -> None:
    for path, meta in metas.items():
        kind = "msrgb" if path.name.endswith("_msrgb.json") else "rgb"
        for name in NUMBER_FIELDS:
            assert isinstance(meta[name], float) and math.isfinite(meta[name]), (path.name, name)
        for name in STRING_FIELDS:
            assert isinstance(meta[name], str) and meta[name], (path.name, name)
        assert len(meta["abs_cal_factors"]) == 3 and all(
            isinstance(v, float) for v in meta["abs_cal_factors"]
        )
        assert len(meta["approximate_wavelengths"]) == 3
        assert isinstance(meta["cloud_cover"], int) and 0 <= meta["cloud_cover"] <= 100
        assert isinstance(meta["img_width"], int) and isinstance(meta["img_height"], int)
        assert meta["img_filename"] == path.name.replace(".json", ".tif") and kind in meta["img_filename"]
        assert meta["epsg"] == "4326" and meta["spatial_reference"] == "GCS_WGS_1984"
        assert meta["scan_direction"] in ("Forward", "Reverse") and len(meta["country_code"]) == 3
        assert len(meta["catalog_id"]) == 16
        m = TIMESTAMP_RE.match(meta["timestamp"])
        assert m and 2002 <= int(m[1]) <= 2017, meta["timestamp"]
        for prefix in ("multi_resolution", "off_nadir_angle", "pan_resolution", "target_azimuth"):
            assert meta[f"{prefix}_min_dbl"] <= meta[f"{prefix}_dbl"] <= meta[f"{prefix}_max_dbl"]
        entry = object_entry(meta)
        assert isinstance(entry["ID"], int) and entry["category"] == path.parent.parent.name
        assert entry["visible"] == "True"
        assert 0 < meta["sun_elevation_dbl"] < 90 and 0 <= meta["sun_azimuth_dbl"] < 360


def test_raw_location_is_a_consistent_footprint(metas) -> None:
    for path, meta in metas.items():
        poly = shapely.wkt.loads(meta["raw_location"])
        ring = shapely.get_coordinates(poly.exterior)
        assert (
            poly.geom_type == "Polygon" and poly.is_valid and len(ring) == 5 and (ring[0] == ring[-1]).all()
        )
        c = poly.centroid
        assert -90 <= c.y <= 90 and -180 <= c.x <= 180
        assert utm_zone(c.x, c.y) == meta["utm"]
        lon_span, lat_span = np.ptp(ring[:, 0]), np.ptp(ring[:, 1])
        assert lon_span == pytest.approx(meta["img_width"] * meta["mean_pixel_width"], rel=1e-5)
        assert lat_span == pytest.approx(meta["img_height"] * meta["mean_pixel_height"], rel=1e-5)
        # ground size in metres = pixels x gsd
        width_m = lon_span * 111320 * math.cos(math.radians(c.y))
        assert width_m == pytest.approx(meta["img_width"] * meta["gsd"], rel=0.01), path.name


def test_views_of_a_location_share_a_point_but_differ_in_time_and_footprint(metas) -> None:
    by_location: dict[Path, list[dict]] = {}
    for path, meta in metas.items():
        if path.name.endswith("_rgb.json"):
            by_location.setdefault(path.parent, []).append(meta)
    multi = 0
    for views in by_location.values():
        stamps = [v["timestamp"] for v in views]
        assert len(set(stamps)) == len(stamps)
        centres = np.array([shapely.wkt.loads(v["raw_location"]).centroid.coords[0] for v in views])
        assert np.ptp(centres[:, 0]) < 0.02 and np.ptp(centres[:, 1]) < 0.02  # within ~2 km
        if len(views) > 1:
            multi += 1
            assert len({v["raw_location"] for v in views}) == len(views)
    assert multi > 10


def test_boxes_inside_and_sizes_equal_the_jpegs(metas) -> None:
    for path, meta in metas.items():
        with Image.open(path.with_suffix(".jpg")) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert im.size == (meta["img_width"], meta["img_height"]), path.name
        x, y, w, h = object_entry(meta)["box"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= meta["img_width"] and y + h <= meta["img_height"], path.name
        if path.name.endswith("_msrgb.json"):
            rgb = metas[path.with_name(path.name.replace("_msrgb", "_rgb"))]
            assert abs(meta["img_width"] - rgb["img_width"] / 4) <= 1
            assert abs(meta["img_height"] - rgb["img_height"] / 4) <= 1
    sides = [m["img_width"] for p, m in metas.items() if p.name.endswith("_rgb.json")]
    assert 96 <= min(sides) and max(sides) <= 256


def test_real_json_quirks_present(metas) -> None:
    kinds = Counter()
    for meta in metas.values():
        boxes = meta["bounding_boxes"]
        if isinstance(boxes, dict):
            kinds["dict"] += 1
        elif boxes[0]["ID"] == -1:
            kinds["ground_truth"] += 1
            whole = boxes[0]
            assert {"raw_category", "crowd_rank", "raw_location", "epsg", "spatial_reference"} <= set(whole)
            assert shapely.wkt.loads(whole["raw_location"]).within(
                shapely.wkt.loads(meta["raw_location"]).buffer(1e-9)
            )
            assert boxes[1]["ID"] != -1 and boxes[1]["category"] == whole["category"]
        else:
            kinds["list"] += 1
    assert kinds["dict"] >= 2 and kinds["ground_truth"] >= 2
    assert kinds["list"] > 0.9 * sum(kinds.values())


def test_views_per_location_follow_the_real_distribution() -> None:
    plans = plan_locations(3000, seed=1)
    counts = Counter(p.n_views for p in plans)
    assert set(counts) <= set(VIEWS_PER_LOCATION)
    total = sum(VIEWS_PER_LOCATION.values())
    tv = 0.5 * sum(abs(counts[k] / len(plans) - VIEWS_PER_LOCATION[k] / total) for k in VIEWS_PER_LOCATION)
    assert tv < 0.05, tv
    real_mean = sum(k * v for k, v in VIEWS_PER_LOCATION.items()) / total
    assert np.mean([p.n_views for p in plans]) == pytest.approx(real_mean, rel=0.05)


def test_planned_views_are_the_written_views(tree) -> None:
    root, _ = tree
    for plan in plan_locations(LOCATIONS, SEED):
        folder = root / plan.split / plan.category / plan.location_id
        assert len(list(folder.glob("*_rgb.jpg"))) == plan.n_views


def test_locations_spread_worldwide_and_straddle_the_antimeridian(metas) -> None:
    centres = np.array([shapely.wkt.loads(m["raw_location"]).centroid.coords[0] for m in metas.values()])
    assert (centres[:, 0] > 179).any() and (centres[:, 0] < -179).any()
    assert np.ptp(centres[:, 0]) > 200 and (centres[:, 1] > 20).any() and (centres[:, 1] < -10).any()


def test_views_of_one_location_look_alike(metas) -> None:
    """Object box crops at 8x8, in grey and standardised (each view has its own colour cast and haze, so
    only the pattern persists): a view's nearest neighbour is mostly another view of the same place."""
    feats, locs, cats = [], [], []
    for path, meta in metas.items():
        if not path.name.endswith("_rgb.json"):
            continue
        x, y, w, h = object_entry(meta)["box"]
        with Image.open(path.with_suffix(".jpg")) as im:
            crop = im.convert("RGB").crop((x, y, x + w, y + h)).resize((8, 8), Image.Resampling.BOX)
        grey = np.asarray(crop, dtype=np.float32).mean(axis=2).ravel()
        feats.append((grey - grey.mean()) / (grey.std() + 1e-3) / 8)
        locs.append(path.parent.name)
        cats.append(path.parent.parent.name)
    f, loc, cat = np.array(feats), np.array(locs), np.array(cats)
    dist = np.linalg.norm(f[:, None] - f[None], axis=2)
    same = (loc[:, None] == loc[None]) & ~np.eye(len(loc), dtype=bool)
    other_category = cat[:, None] != cat[None]
    assert dist[same].mean() < 0.6 * dist[other_category].mean()
    np.fill_diagonal(dist, np.inf)
    has_sibling = same.any(axis=1)
    nearest = dist.argmin(axis=1)
    assert (loc[nearest] == loc)[has_sibling].mean() > 0.6


def test_rerun_skips_every_complete_location(tree) -> None:
    root, _ = tree
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")}
    summary = synth_fmow(str(root), locations=LOCATIONS, seed=SEED, workers=1)
    assert (summary.skipped, summary.written, summary.inputs) == (
        LOCATIONS,
        0,
        LOCATIONS,
    ) and summary.reconciles
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")} == before


def _subset(full: dict[str, str], locations: int, seed: int) -> dict[str, str]:
    folders = {f"{p.split}/{p.category}/{p.location_id}/" for p in plan_locations(locations, seed)}
    return {k: v for k, v in full.items() if k[: k.rindex("/") + 1] in folders}


def test_same_seed_same_bytes_with_one_worker(tree, tmp_path: Path) -> None:
    """workers=1 vs the fixture's workers=2; a shorter run also equals the start of a longer one."""
    root, _ = tree
    synth_fmow(str(tmp_path / "a"), locations=20, seed=SEED, workers=1)
    assert digests(tmp_path / "a") == _subset(digests(root), 20, SEED)


def test_other_seed_other_bytes(tmp_path: Path) -> None:
    synth_fmow(str(tmp_path / "a"), locations=6, seed=1, workers=1)
    synth_fmow(str(tmp_path / "b"), locations=6, seed=2, workers=1)
    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert not set(a.values()) & set(b.values())


def test_resume_after_kill_9(tree, tmp_path: Path) -> None:
    root, _ = tree
    out = tmp_path / "fmow"
    code = f"from geo_ssl.pipeline.fmow.synth import synth_fmow; synth_fmow({str(out)!r}, locations=30, seed={SEED}, workers=1)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env={**os.environ, "GEO_SSL_PROGRESS": "0"}
    )
    deadline = time.monotonic() + 60
    while len(list(out.rglob("*_0_rgb.json"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    summary = synth_fmow(str(out), locations=30, seed=SEED, workers=1)
    assert summary.skipped >= 2 and summary.written >= 1 and summary.reconciles  # the 3rd may be partial
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")]
    assert digests(out) == _subset(digests(root), 30, SEED)


def test_writes_through_fsspec_urls(tree) -> None:
    root, _ = tree
    url = "memory://synth-fmow-test"
    summary = synth_fmow(url, locations=3, seed=SEED, workers=1)
    assert summary.written == 3
    fs = fsspec.filesystem("memory")
    got = {
        p[len("/synth-fmow-test/") :]: hashlib.sha256(fs.cat_file(p)).hexdigest()
        for p in fs.find("/synth-fmow-test")
        if not p.endswith(STAMP)
    }
    assert got == _subset(digests(root), 3, SEED)
    assert synth_fmow(url, locations=3, seed=SEED, workers=1).skipped == 3
    fs.rm("/synth-fmow-test", recursive=True)


def test_realistic_sizes(tmp_path: Path) -> None:
    synth_fmow(str(tmp_path), locations=3, seed=1, realistic_sizes=True, workers=1)
    sizes = []
    for path in tmp_path.rglob("*_rgb.jpg"):
        with Image.open(path) as im:
            sizes.append(im.size)
        assert 0.1 < path.stat().st_size / (im.size[0] * im.size[1]) < 1.0  # JPEG bytes per pixel
    assert min(min(s) for s in sizes) >= 120 and max(max(s) for s in sizes) <= 6000
    assert max(max(s) for s in sizes) >= 400


def test_refuses_to_mix_settings_or_foreign_trees(tmp_path: Path) -> None:
    out = tmp_path / "fmow"
    synth_fmow(str(out), locations=2, seed=1, workers=1)
    before = digests(out)
    with pytest.raises(GeoSSLError, match="seed 1 there, 2 now"):
        synth_fmow(str(out), locations=2, seed=2, workers=1)
    with pytest.raises(GeoSSLError, match="realistic_sizes"):
        synth_fmow(str(out), locations=2, seed=1, realistic_sizes=True, workers=1)
    assert digests(out) == before
    assert synth_fmow(str(out), locations=3, seed=1, workers=1).skipped == 2  # extending is fine
    (out / STAMP).unlink()
    with pytest.raises(GeoSSLError, match="did not write"):
        synth_fmow(str(out), locations=3, seed=1, workers=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"locations": 0}, "--locations"),
        ({"locations": 3, "val_fraction": 1.0}, "--val-fraction"),
        ({"locations": 3, "val_fraction": -0.1}, "--val-fraction"),
        ({"locations": 3, "seed": -1}, "--seed"),
        ({"locations": 3, "workers": 0}, "--workers"),
    ],
)
def test_bad_arguments_are_clear_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(GeoSSLError, match=message):
        synth_fmow(str(tmp_path / "x"), **kwargs)
    assert not (tmp_path / "x").exists()


def test_cli_reports_a_user_mistake_on_one_line(tmp_path: Path, capsys) -> None:
    target = tmp_path / "file"
    target.write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        cli_main(["synth-fmow", "--out", str(target), "--locations", "2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(target) in err[0] and "Traceback" not in err[0]


def test_a_subset_of_categories_for_toy_benchmarks(tmp_path: Path) -> None:
    subset = ("stadium", "solar_farm", "tower")
    plans = plan_locations(30, seed=2, categories=subset)
    counts = Counter(p.category for p in plans)
    assert set(counts) == set(subset) and set(counts.values()) == {10}  # shuffled blocks of the subset
    assert [p.split for p in plans] == [p.split for p in plan_locations(30, seed=2)]  # splits unchanged
    out = tmp_path / "fmow"
    synth_fmow(str(out), locations=3, seed=2, workers=1, categories=subset)
    assert json.loads((out / STAMP).read_text())["categories"] == sorted(subset, key=CATEGORIES.index)
    assert {p.parent.parent.name for p in out.glob("*/*/*/*_rgb.jpg")} == set(subset)
    with pytest.raises(GeoSSLError, match="categories"):  # another subset in the same folder
        synth_fmow(str(out), locations=3, seed=2, workers=1, categories=("tower",))
    with pytest.raises(GeoSSLError, match="categories"):  # all categories where a subset was written
        synth_fmow(str(out), locations=3, seed=2, workers=1)
    with pytest.raises(GeoSSLError, match=r"--categories.*unknown castle"):
        plan_locations(3, categories=("tower", "castle"))
    with pytest.raises(GeoSSLError, match="--categories"):
        plan_locations(3, categories=())


def test_object_colour_is_any_hue_so_only_shape_names_the_category() -> None:
    """The per-location recolouring keeps greys grey, and sends one paint colour all round the hue circle."""
    mats = [object_colour_matrix(np.random.default_rng(i)) for i in range(200)]
    grey = np.array([100.0, 100.0, 100.0])
    for m in mats:
        out = m @ grey
        assert np.ptp(out) < 1e-3 and 70 <= out[0] <= 125
    red = np.array([200.0, 40.0, 40.0])
    hues = []
    for m in mats:
        r, g, b = m @ red
        hues.append(math.degrees(math.atan2(math.sqrt(3) * (g - b), 2 * r - g - b)) % 360)
    assert np.histogram(hues, bins=6, range=(0, 360))[0].min() >= 15  # every sextant of the circle


def test_toy_scene_shares_the_ground_per_biome_draws_no_roads_and_wider_strokes(tmp_path: Path) -> None:
    """The ablation's scene: the object, not the ground, tells locations apart (synth.Scene says why)."""
    from geo_ssl.pipeline.fmow.synth import SCENES, _view_specs
    from geo_ssl.pipeline.fmow.synth_render import render_view

    plans = plan_locations(40, seed=3)
    by_biome: dict[str, list] = {}
    for plan in plans:
        by_biome.setdefault(plan.biome, []).append(plan)
    a, b = next(group for group in by_biome.values() if len(group) >= 2)[:2]
    other = next(group[0] for biome, group in by_biome.items() if biome != a.biome)

    def first(plan, scene):
        return next(iter(_view_specs(plan, 3, False, SCENES[scene])))

    ta, tb, to = (first(p, "toy").style for p in (a, b, other))
    assert all(
        np.array_equal(x, y)
        for x, y in zip(map(np.asarray, ta.lattices), map(np.asarray, tb.lattices), strict=True)
    )
    assert not np.array_equal(np.asarray(ta.lattices[0]), np.asarray(to.lattices[0]))  # per biome, not global
    assert not np.array_equal(ta.palette, tb.palette)  # the palette still varies per location
    assert ta.roads == () and any(first(p, "fmow").style.roads for p in plans[:20])
    assert ta.parcels is None and any(first(p, "fmow").style.parcels is not None for p in plans[:20])
    fa = first(a, "fmow").style
    assert not np.array_equal(np.asarray(fa.lattices[0]), np.asarray(first(b, "fmow").style.lattices[0]))
    assert np.array_equal(fa.object_colour, ta.object_colour)  # the object is the location's own
    spec = first(a, "toy")
    thin, wide = (
        np.asarray(render_view("crop_field", spec.style, spec.look, spec.frame, np.random.default_rng(0), s))
        for s in (1.0, 2.5)
    )
    changed = (np.abs(thin.astype(int) - wide).max(axis=2) > 16).mean()
    assert changed > 0.02, changed  # wider lines cover more of the view
    out = tmp_path / "toy"
    synth_fmow(str(out), locations=2, seed=3, workers=1, scene="toy")
    assert json.loads((out / STAMP).read_text())["scene"] == "toy"
    with pytest.raises(GeoSSLError, match="scene 'toy' there, 'fmow' now"):  # the default scene, same folder
        synth_fmow(str(out), locations=2, seed=3, workers=1)
    with pytest.raises(GeoSSLError, match="--scene 'cartoon' unknown"):
        synth_fmow(str(tmp_path / "x"), locations=2, scene="cartoon")
