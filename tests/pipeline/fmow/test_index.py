"""index-fmow end to end on a small real-format tree: rows, rejects, tables, resume, parallelism, CLI."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import geopandas
import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import shapely

from geo_ssl.pipeline.common import sphere as geo
from geo_ssl.pipeline.common import tables
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.fmow.index import PARTS_DIR, index_fmow
from geo_ssl.pipeline.fmow.layout import CATEGORIES
from geo_ssl.schemas import REJECT_REASONS, validate_table
from tests.pipeline.fmow.test_records import fountain_meta, jpeg_bytes, noisy_jpeg_bytes

REPO = Path(__file__).resolve().parents[1]


def footprint(lon: float, lat: float, d: float = 0.004) -> str:
    ring = [(lon, lat), (lon + d, lat), (lon + d, lat + d), (lon, lat + d), (lon, lat)]
    return "POLYGON ((" + ", ".join(f"{x!r} {y!r}" for x, y in ring) + "))"


def write_view(
    root: Path,
    split: str,
    category: str,
    loc: int,
    view: int,
    meta: dict | None = None,
    *,
    kind: str = "rgb",
    image: bytes | None = None,
    raw_json: bytes | None = None,
    with_image: bool = True,
    with_json: bool = True,
) -> Path:
    folder = root / split / category / f"{category}_{loc}"
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{category}_{loc}_{view}_{kind}"
    if with_json:
        data = raw_json if raw_json is not None else json.dumps(meta or fountain_meta()).encode()
        stem.with_suffix(".json").write_bytes(data)
    if with_image:
        stem.with_suffix(".jpg").write_bytes(image if image is not None else jpeg_bytes((48, 32)))
    return stem.with_suffix(".jpg")


def meta_at(lon: float, lat: float, timestamp: str = "2015-06-01T08:00:00Z", **extra) -> dict:
    meta = fountain_meta()
    meta.update(raw_location=footprint(lon, lat), timestamp=timestamp, **extra)
    return meta


GOOD = 8
EXPECTED_REJECTS = {
    "bad_box": 1,
    "bad_coordinates": 2,
    "bad_json": 2,
    "bad_path": 1,
    "bad_polygon": 1,
    "bad_timestamp": 1,
    "missing_field": 1,
    "missing_image": 1,
    "truncated_image": 1,
    "unreadable_image": 1,
}


def build_tree(root: Path) -> Path:
    """8 good views and 12 rejects (one per problem), plus msrgb siblings that must be ignored."""
    # train/fountain_514: three good views; GT-style boxes, a dict box, a +02:00 timestamp.
    write_view(root, "train", "fountain", 514, 0, meta_at(8.58, 47.44, "2012-04-02T10:32:22Z"))
    dict_box = meta_at(8.581, 47.441, "2013-05-03T12:00:00.250+02:00")
    dict_box["bounding_boxes"] = {"ID": 9, "box": [2, 3, 10, 8], "category": "fountain"}
    write_view(root, "train", "fountain", 514, 1, dict_box)
    write_view(root, "train", "fountain", 514, 2, meta_at(8.582, 47.442, "2016-01-01T00:00:00+00:00"))
    for view in range(3):
        write_view(root, "train", "fountain", 514, view, fountain_meta(), kind="msrgb")
    # train/airport_3: good, truncated JPEG, empty JSON.
    write_view(root, "train", "airport", 3, 0, meta_at(32.68, 39.94))
    noisy = noisy_jpeg_bytes()
    write_view(root, "train", "airport", 3, 1, meta_at(32.68, 39.94), image=noisy[: len(noisy) // 2])
    write_view(root, "train", "airport", 3, 2, raw_json=b"")
    # train/zoo_7: one good view among eight different problems.
    nan_meta = meta_at(0, 0)
    nan_meta["raw_location"] = "POLYGON ((nan 1, 2 1, 2 2, 1 2, nan 1))"
    write_view(root, "train", "zoo", 7, 0, nan_meta)
    write_view(root, "train", "zoo", 7, 1, meta_at(-70.1, -33.4), with_image=False)
    outside = meta_at(-70.1, -33.4)
    outside["bounding_boxes"][1]["box"] = [
        48,
        20,
        20,
        20,
    ]  # no area inside the 48x32 JPEG (edge boxes: clipped)
    write_view(root, "train", "zoo", 7, 2, outside)
    write_view(root, "train", "zoo", 7, 3, meta_at(-70.1, 89.999))  # ring reaches lat 90.003
    write_view(root, "train", "zoo", 7, 4, meta_at(-70.1, -33.4, "04/02/2012 10:32"))
    write_view(root, "train", "zoo", 7, 5, with_json=False)
    write_view(root, "train", "zoo", 7, 6, meta_at(-70.1, -33.4))
    bowtie = meta_at(0, 0)
    bowtie["raw_location"] = "POLYGON ((0 0, 1 1, 1 0, 0 1, 0 0))"
    write_view(root, "train", "zoo", 7, 7, bowtie)
    no_time = meta_at(-70.1, -33.4)
    del no_time["timestamp"]
    write_view(root, "train", "zoo", 7, 8, no_time)
    write_view(root, "train", "zoo", 7, 9, meta_at(-70.1, -33.4), image=b"this is not a jpeg")
    # Not in the layout: an unknown category folder. The anonymised test layout is indexed (no category).
    write_view(root, "train", "castle", 1, 0, meta_at(1, 1))
    anonymized = root / "test" / "0011978"
    anonymized.mkdir(parents=True)
    (anonymized / "0011978_0_rgb.jpg").write_bytes(jpeg_bytes())
    (anonymized / "0011978_0_rgb.json").write_text(json.dumps(meta_at(1, 1)))
    # val/fountain_9: two good views.
    write_view(root, "val", "fountain", 9, 0, meta_at(-122.4, 37.7, "2014-01-01T00:00:00Z"))
    write_view(root, "val", "fountain", 9, 1, meta_at(-122.4, 37.7, "2014-02-01T00:00:00Z"))
    write_view(root, "val", "fountain", 9, 1, fountain_meta(), kind="msrgb")
    (root / "README.txt").write_text("not part of the layout\n")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return build_tree(tmp_path_factory.mktemp("fmow"))


@pytest.fixture(scope="module")
def indexed(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("index")
    summary = index_fmow(str(tree), str(out), workers=1)
    return summary, out


def read_all(out: Path) -> dict:
    return {
        "images": tables.read_table(str(out / "images.parquet"), "image_index"),
        "rejects": tables.read_table(str(out / "rejects.parquet"), "rejects"),
        "locations": tables.read_table(str(out / "locations.parquet"), "locations"),
    }


def test_counts_reconcile_and_every_problem_is_a_reject(indexed):
    summary, out = indexed
    assert summary.reconciles
    assert (summary.inputs, summary.written, summary.rejected, summary.skipped) == (20, GOOD, 12, 0)
    assert dict(summary.reasons) == EXPECTED_REJECTS
    assert "bad_box=1" in summary.line() and "[ok]" in summary.line()
    t = read_all(out)
    assert t["images"].num_rows == GOOD
    by_name = {Path(r["path"]).name: r["reason"] for r in t["rejects"].to_pylist()}
    assert by_name == {
        "airport_3_1_rgb.jpg": "truncated_image",
        "airport_3_2_rgb.json": "bad_json",
        "zoo_7_0_rgb.json": "bad_coordinates",
        "zoo_7_1_rgb.json": "missing_image",
        "zoo_7_2_rgb.json": "bad_box",
        "zoo_7_3_rgb.json": "bad_coordinates",
        "zoo_7_4_rgb.json": "bad_timestamp",
        "zoo_7_5_rgb.jpg": "bad_json",
        "zoo_7_7_rgb.json": "bad_polygon",
        "zoo_7_8_rgb.json": "missing_field",
        "zoo_7_9_rgb.jpg": "unreadable_image",
        "castle_1_0_rgb.jpg": "bad_path",
    }
    rejects = t["rejects"].to_pylist()
    assert all(r["stage"] == "index-fmow" and r["reason"] in REJECT_REASONS for r in rejects)
    assert all(r["detail"] and "\n" not in r["detail"] for r in rejects)
    zoo = [r for r in rejects if "zoo_7" in r["path"]]
    assert {(r["split"], r["location_key"]) for r in zoo} == {("train", "train-zoo_7")}
    assert "JSON" in next(r["detail"] for r in rejects if r["path"].endswith("zoo_7_5_rgb.jpg"))
    stored = json.loads((out / "index_summary.json").read_text())
    assert stored["inputs"] == 20 and stored["reasons"] == EXPECTED_REJECTS
    assert stored["rejects_in_index"] == EXPECTED_REJECTS


def test_image_rows(indexed, tree):
    images = read_all(indexed[1])["images"]
    rows = images.to_pylist()
    assert [r["location_key"] for r in rows] == sorted(r["location_key"] for r in rows)
    assert all(r["image_path"].endswith("_rgb.jpg") and os.path.isabs(r["image_path"]) for r in rows)
    by_key = {(r["location_key"], r["view_id"]): r for r in rows}
    assert set(by_key) == {
        ("train-airport_3", 0), ("train-fountain_514", 0), ("train-fountain_514", 1), ("train-fountain_514", 2),
        ("train-zoo_7", 6), ("val-fountain_9", 0), ("val-fountain_9", 1), ("test-0011978", 0),
    }  # fmt: skip
    r0 = by_key[("train-fountain_514", 0)]
    assert r0["image_path"] == str(tree / "train/fountain/fountain_514/fountain_514_0_rgb.jpg")
    assert r0["json_path"] == r0["image_path"][:-4] + ".json"
    assert (r0["split"], r0["category"], r0["category_index"], r0["location_id"]) == (
        "train", "fountain", 19, "fountain_514",
    )  # fmt: skip
    assert r0["box"] == [12, 6, 20, 14]  # object box of the GT-style list, after the ID -1 entry
    assert (r0["img_width"], r0["img_height"]) == (48, 32)  # JPEG header, not the JSON's 977x663
    assert r0["file_size"] == os.path.getsize(r0["image_path"])
    assert (r0["lat"], r0["lon"]) == pytest.approx((47.442, 8.582), abs=1e-9)
    assert r0["timestamp"].isoformat() == "2012-04-02T10:32:22+00:00"
    assert (r0["gsd"], r0["cloud_cover"], r0["country_code"], r0["sensor"]) == (
        0.468074887991,
        0.0,
        "CHE",
        "GEOEYE01",
    )
    assert r0["off_nadir_deg"] == pytest.approx(21.8978748322)
    r1 = by_key[("train-fountain_514", 1)]
    assert r1["box"] == [2, 3, 10, 8]  # the dict form
    assert r1["timestamp"].isoformat() == "2013-05-03T10:00:00.250000+00:00"
    point = shapely.from_wkb(r0["geometry"])
    assert (point.x, point.y) == (r0["lon"], r0["lat"])


def test_tables_are_valid_geoparquet(indexed):
    out = indexed[1]
    t = read_all(out)
    for name, table_name in [("images", "image_index"), ("rejects", "rejects"), ("locations", "locations")]:
        validate_table(t[name], table_name)
    meta = json.loads(pq.read_schema(out / "images.parquet").metadata[b"geo"])
    assert meta["primary_column"] == "geometry"
    gdf = geopandas.read_parquet(out / "images.parquet")
    assert isinstance(gdf, geopandas.GeoDataFrame) and len(gdf) == GOOD
    assert set(gdf.geometry.geom_type) == {"Point"}
    assert gdf.crs is not None and gdf.crs.equals("OGC:CRS84")  # lon/lat WGS84, not "unknown"
    assert np.allclose(gdf.geometry.x, gdf["lon"]) and np.allclose(gdf.geometry.y, gdf["lat"])


def test_locations_table(indexed):
    t = read_all(indexed[1])
    locs = {r["location_key"]: r for r in t["locations"].to_pylist()}
    assert set(locs) == {
        "train-airport_3",
        "train-fountain_514",
        "train-zoo_7",
        "val-fountain_9",
        "test-0011978",
    }
    f = locs["train-fountain_514"]
    assert f["n_views"] == 3
    assert f["first_timestamp"].isoformat() == "2012-04-02T10:32:22+00:00"
    assert f["last_timestamp"].isoformat() == "2016-01-01T00:00:00+00:00"
    views = [r for r in t["images"].to_pylist() if r["location_key"] == "train-fountain_514"]
    expected = geo.spherical_mean(np.array([r["lat"] for r in views]), np.array([r["lon"] for r in views]))
    assert (f["lat"], f["lon"]) == pytest.approx(expected, abs=1e-9)
    assert (locs["train-zoo_7"]["n_views"], locs["val-fountain_9"]["n_views"]) == (1, 2)
    assert sum(r["n_views"] for r in locs.values()) == GOOD


def test_resume_redoes_only_missing_parts(indexed, tree, tmp_path):
    _, first_out = indexed
    out = tmp_path / "index"
    shutil.copytree(first_out, out)
    for name in ("images.parquet", "rejects.parquet", "locations.parquet", "index_summary.json"):
        (out / name).unlink()
    zoo_part = out / PARTS_DIR / "rgb" / "train" / "zoo.images.parquet"
    zoo_part.unlink()
    (zoo_part.parent / ".tmp-abc-zoo.images.parquet").write_bytes(b"left by a killed run")
    summary = index_fmow(str(tree), str(out), workers=1)
    assert summary.reconciles
    assert summary.written + summary.rejected == 10  # zoo_7: 1 good + 9 rejects, redone
    assert summary.skipped == 10 and summary.inputs == 20
    assert not (zoo_part.parent / ".tmp-abc-zoo.images.parquet").exists()
    before, after = read_all(first_out), read_all(out)
    for name in before:
        assert after[name].equals(before[name]), name


def test_parallel_equals_serial(indexed, tree, tmp_path):
    summary = index_fmow(str(tree), str(tmp_path), workers=2)
    assert (summary.inputs, summary.written, summary.rejected) == (20, GOOD, 12)
    serial, parallel = read_all(indexed[1]), read_all(tmp_path)
    for name in serial:
        assert parallel[name].equals(serial[name]), name


def test_real_fmow_jpeg_indexed_as_msrgb(shared_dir, tmp_path):
    root = tmp_path / "fmow"
    meta = meta_at(32.68, 39.94, "2002-02-07T08:16:10Z", gsd=2.45)
    meta["bounding_boxes"] = [{"ID": -1, "box": [0, 0, 2050, 1578]}, {"ID": 1, "box": [700, 500, 640, 580]}]
    real = (shared_dir / "data" / "airport_0_0_msrgb.jpg").read_bytes()
    write_view(root, "train", "airport", 0, 0, meta, kind="msrgb", image=real)
    write_view(root, "train", "airport", 0, 0, meta)  # the rgb sibling is ignored with --kind msrgb
    summary = index_fmow(str(root), str(tmp_path / "index"), workers=1, kind="msrgb")
    assert (summary.inputs, summary.written) == (1, 1)
    row = tables.read_table(str(tmp_path / "index" / "images.parquet"), "image_index").to_pylist()[0]
    assert (row["img_width"], row["img_height"], row["file_size"]) == (2050, 1578, 860_426)
    assert row["image_path"].endswith("airport_0_0_msrgb.jpg") and row["gsd"] == 2.45


def test_root_errors(tmp_path):
    with pytest.raises(GeoSSLError, match="not found"):
        index_fmow(str(tmp_path / "missing"), str(tmp_path / "out"))
    (tmp_path / "empty" / "docs").mkdir(parents=True)
    with pytest.raises(GeoSSLError, match="holds no fMoW-layout files"):
        index_fmow(str(tmp_path / "empty"), str(tmp_path / "out"))
    split_only = tmp_path / "fmow"
    write_view(split_only, "train", "zoo", 1, 0, meta_at(1, 1))
    with pytest.raises(GeoSSLError, match="split folder"):
        index_fmow(str(split_only / "train"), str(tmp_path / "out"))
    index_fmow(str(split_only), str(tmp_path / "out"), workers=1)
    other = tmp_path / "other"
    shutil.copytree(split_only, other)
    with pytest.raises(GeoSSLError, match="already holds an index"):
        index_fmow(str(other), str(tmp_path / "out"), workers=1)


def test_cli_missing_root_is_one_line_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "geo_ssl.pipeline.cli", "index-fmow", "--root", str(tmp_path / "missing"),
         "--out", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "missing" in lines[0] and lines[0].startswith("geo-build-dataset: error:")


def test_cli_indexes_a_tree(tmp_path):
    root = tmp_path / "fmow"
    write_view(root, "val", "zoo", 1, 0, meta_at(1, 1))
    write_view(root, "val", "zoo", 1, 1, copy.deepcopy(meta_at(1, 1)), with_image=False)
    proc = subprocess.run(
        [sys.executable, "-m", "geo_ssl.pipeline.cli", "index-fmow", "--root", str(root), "--out", str(tmp_path / "ix"),
         "--workers", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "GEO_SSL_PROGRESS": "0"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "2 images in = 1 written + 1 rejected + 0 skipped [ok]" in proc.stdout
    assert "missing_image=1" in proc.stdout


def test_url_root_and_url_output(tree, indexed):
    """The same tree behind an fsspec URL (in-memory filesystem) gives the same rows, with URL paths."""
    fs = fsspec.filesystem("memory")
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        fs.pipe_file(f"/fmow-url-test/{path.relative_to(tree).as_posix()}", path.read_bytes())
    try:
        summary = index_fmow("memory://fmow-url-test", "memory://fmow-url-index", workers=1)
        assert (summary.inputs, summary.written, summary.rejected) == (20, GOOD, 12)
        images = tables.read_table("memory://fmow-url-index/images.parquet", "image_index")
        assert all(p.startswith("memory://fmow-url-test/") for p in images["image_path"].to_pylist())
        local = read_all(indexed[1])["images"]
        for name in ("location_key", "view_id", "lat", "lon", "box", "timestamp", "img_width", "file_size"):
            assert images[name].equals(local[name]), name
        rejects = tables.read_table("memory://fmow-url-index/rejects.parquet", "rejects")
        assert rejects["reason"].to_pylist() == read_all(indexed[1])["rejects"]["reason"].to_pylist()
    finally:
        fs.rm("/fmow-url-test", recursive=True)
        fs.rm("/fmow-url-index", recursive=True)


def finished_parts(folder: Path) -> list[Path]:
    """Part files renamed into place (not the .tmp- files of a write in progress)."""
    return (
        [p for p in folder.glob("*.images.parquet") if not p.name.startswith(".")] if folder.is_dir() else []
    )


def test_kill_9_then_rerun_loses_and_duplicates_nothing(tmp_path):
    """SIGKILL the CLI as soon as its first part is on disk; workers must go too, and a rerun must give
    the same tables as one uninterrupted run."""
    root = tmp_path / "fmow"
    for i, category in enumerate(CATEGORIES):
        for view in range(2):
            write_view(root, "train", category, 0, view, meta_at(i - 31.0, view * 0.01))
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "geo_ssl.pipeline.cli",
        "index-fmow",
        "--root",
        str(root),
        "--out",
        str(out),
        "--workers",
        "2",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / PARTS_DIR / "rgb" / "train"
    try:
        deadline = time.monotonic() + 60
        while not finished_parts(parts) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs(children, timeout=20)
        assert not alive, f"workers outlived the killed run: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = len(finished_parts(parts))
    assert 0 < done_before < len(CATEGORIES)
    assert not (out / "images.parquet").exists()
    resumed = index_fmow(str(root), str(out), workers=1)
    assert resumed.reconciles and resumed.inputs == len(CATEGORIES) * 2
    assert resumed.skipped == done_before * 2 and resumed.written == resumed.inputs - resumed.skipped
    clean = tmp_path / "clean"
    index_fmow(str(root), str(clean), workers=1)
    assert not [p for p in parts.iterdir() if p.name.startswith(".tmp-")]  # a killed write leaves these
    after, reference = read_all(out), read_all(clean)
    for name in reference:
        assert after[name].equals(reference[name]), name
