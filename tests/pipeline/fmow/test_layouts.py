"""The anonymised fMoW test/seq layouts and edge boxes, from index-fmow through write-shards to the loader.

`test/0011978/0011978_0_rgb.jpg` is indexed with no category (category "unknown", category_index -1) and
the folder's number as location id; a box that crosses the image edge is clipped and flagged
(`box_clipped`); only a box with no area inside the image is rejected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geo_ssl.pipeline.common import tables
from geo_ssl.pipeline.fmow.index import PARTS_DIR, index_fmow, plan_parts
from tests.pipeline.fmow.test_index import meta_at, write_view
from tests.pipeline.fmow.test_records import jpeg_bytes

SIZE = (96, 64)  # every JPEG here


def _anon_view(root: Path, split: str, ident: str, view: int, meta: dict) -> None:
    folder = root / split / ident
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{ident}_{view}_rgb.jpg").write_bytes(jpeg_bytes(SIZE))
    (folder / f"{ident}_{view}_rgb.json").write_text(json.dumps(meta))


def _boxed(meta: dict, box: list[int]) -> dict:
    meta["bounding_boxes"][1]["box"] = box
    return meta


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmow_anon")
    for view, box in enumerate([[10, 10, 30, 30], [80, 50, 40, 40], [-5, 0, 20, 20], [96, 0, 10, 10]]):
        # inside; crosses right+bottom; crosses left; no area inside (x = width)
        meta = _boxed(meta_at(32.68, 39.94, f"2015-0{view + 1}-01T08:00:00Z"), box)
        write_view(root, "train", "airport", 1, view, meta, image=jpeg_bytes(SIZE))
    for view in range(2):
        write_view(root, "val", "dam", 4, view, meta_at(8.5, 47.4), image=jpeg_bytes(SIZE))
    _anon_view(root, "test", "0011978", 0, meta_at(-70.1, -33.4, "2016-03-01T10:00:00Z"))
    _anon_view(
        root, "test", "0011978", 1, _boxed(meta_at(-70.1, -33.4, "2016-05-01T10:00:00Z"), [90, 60, 9, 9])
    )
    _anon_view(root, "test", "0000002", 0, meta_at(2.35, 48.85))
    _anon_view(root, "seq", "0000007", 3, meta_at(139.7, 35.7))
    return root


@pytest.fixture(scope="module")
def indexed(tree, tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("index_anon")
    summary = index_fmow(str(tree), str(out), workers=1)
    images = tables.read_table(str(out / "images.parquet"), "image_index").to_pylist()
    rejects = tables.read_table(str(out / "rejects.parquet"), "rejects").to_pylist()
    locations = tables.read_table(str(out / "locations.parquet"), "locations").to_pylist()
    return summary, out, images, rejects, locations


def test_anonymised_layout_is_indexed_without_category(indexed):
    summary, out, images, _, locations = indexed
    assert summary.reconciles and (summary.inputs, summary.written, summary.rejected) == (10, 9, 1)
    anon = {(r["location_key"], r["view_id"]): r for r in images if r["split"] in ("test", "seq")}
    assert set(anon) == {("test-0011978", 0), ("test-0011978", 1), ("test-0000002", 0), ("seq-0000007", 3)}
    for r in anon.values():
        assert (r["category"], r["category_index"]) == ("unknown", -1)
        assert r["location_id"] == r["location_key"].split("-", 1)[1]
    labelled = [r for r in images if r["split"] in ("train", "val")]
    assert {(r["category"], r["category_index"]) for r in labelled} == {("airport", 0), ("dam", 12)}
    by_key = {r["location_key"]: r for r in locations}
    assert by_key["test-0011978"]["n_views"] == 2 and by_key["test-0011978"]["category_index"] == -1
    assert by_key["seq-0000007"]["location_id"] == "0000007"
    # anonymised ids are indexed in parts of 1000 consecutive ids, not one part per location
    parts = sorted(p.name for p in (out / PARTS_DIR / "rgb" / "test").iterdir())
    assert parts == ["unknown-00000.images.parquet", "unknown-00000.rejects.parquet",
                     "unknown-00011.images.parquet", "unknown-00011.rejects.parquet"]  # fmt: skip


def test_plan_groups_anonymised_folders(tree):
    parts = {(p.split, p.category): p for p in plan_parts(str(tree))}
    assert parts[("test", "unknown-00011")].locations == ("0011978",)
    assert parts[("test", "unknown-00011")].anonymised and not parts[("train", "airport")].anonymised


def test_edge_boxes_are_clipped_and_flagged(indexed):
    _, _, images, rejects, _ = indexed
    boxes = {(r["location_key"], r["view_id"]): (r["box"], r["box_clipped"]) for r in images}
    assert boxes[("train-airport_1", 0)] == ([10, 10, 30, 30], False)
    assert boxes[("train-airport_1", 1)] == ([80, 50, 16, 14], True)
    assert boxes[("train-airport_1", 2)] == ([0, 0, 15, 20], True)
    assert boxes[("test-0011978", 1)] == ([90, 60, 6, 4], True)
    assert [(Path(r["path"]).name, r["reason"]) for r in rejects] == [("airport_1_3_rgb.json", "bad_box")]
    assert "no area inside the 96x64 image" in rejects[0]["detail"]


def test_unknown_category_goes_through_shards_and_loader(tree, tmp_path):
    """build writes the anonymised locations (category_index -1) and validate accepts them; the
    training loader yields category -1 for them."""
    out = tmp_path / "build"
    env = {**os.environ, "GEO_SSL_PROGRESS": "0"}
    cli = [sys.executable, "-m", "geo_ssl.pipeline.cli"]
    args = ["build", "--root", str(tree), "--out", str(out), "--k", "1", "--workers", "1", "--resize", "32"]
    proc = subprocess.run([*cli, *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([*cli, "validate", str(out)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader

    cfg = LoaderConfig(str(out), split="test", batch_size=2, image_size=32, num_workers=0, decode="defer")
    batch = next(iter(pretrain_loader(cfg)))
    assert sorted(batch["key"]) == ["test-0000002", "test-0011978"]
    assert batch["category"].tolist() == [-1, -1]
