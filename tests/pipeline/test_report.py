"""report: PNG plots from the index tables (map over land, charts, contact sheet), one-line errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from geo_ssl.pipeline import cli
from geo_ssl.pipeline.common import tables
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.fmow.layout import CATEGORIES
from geo_ssl.pipeline.report import manifest_summary, report
from geo_ssl.pipeline.report.contact_sheet import draw_contact_sheet

K = 4
LAND = (217, 214, 204)  # the map's land and ocean fill colours (world_map._LAND, _OCEAN)
OCEAN = (232, 241, 248)


def make_build(root, n: int = 120, manifest: bool = True, k: int = K) -> None:
    """OUT/index/{locations,clusters,centroids}.parquet (+ OUT/manifest.parquet) with n locations."""
    rng = np.random.default_rng(0)
    index = root / "index"
    index.mkdir(parents=True)
    split = ["train" if i % 5 else "val" for i in range(n)]
    category = [CATEGORIES[i % 7] for i in range(n)]
    loc_id = [f"{c}_{i}" for i, c in enumerate(category)]
    key = [f"{s}-{loc}" for s, loc in zip(split, loc_id, strict=True)]
    lat = rng.uniform(-60, 70, n)
    lon = rng.uniform(-180, 180, n)
    label = (np.arange(n) % k).astype(np.int32)
    ts = datetime(2017, 3, 1, tzinfo=UTC)
    locations = pa.table(
        {
            "location_key": key, "split": split, "category": category,
            "category_index": [CATEGORIES.index(c) for c in category], "location_id": loc_id,
            "lat": lat, "lon": lon, "n_views": rng.integers(1, 21, n).astype(np.int32),
            "first_timestamp": [ts] * n, "last_timestamp": [ts] * n,
        }
    )  # fmt: skip
    tables.write_table(locations, str(index / "locations.parquet"), "locations")
    clusters = pa.table(
        {"location_key": key, "split": split, "lat": lat, "lon": lon, "cluster": label,
         "distance_km": rng.uniform(0, 500, n)}
    )  # fmt: skip
    tables.write_table(clusters, str(index / "clusters.parquet"), "clusters")
    is_train = np.array(split) == "train"
    c_lat = [10.0, -20.0, 45.0, 0.0] if k == K else [float(lat[label == c].mean()) for c in range(k)]
    c_lon = [0.0, 120.0, -90.0, 179.0] if k == K else [float(lon[label == c].mean()) for c in range(k)]
    centroids = pa.table(
        {"cluster": np.arange(k, dtype=np.int32), "lat": c_lat, "lon": c_lon,
         "n_train_locations": np.bincount(label[is_train], minlength=k), "n_locations": np.bincount(label, minlength=k)}
    )  # fmt: skip
    tables.write_table(centroids, str(index / "centroids.parquet"), "centroids")
    if manifest:
        rows = [("train-000000.tar", "train", 0, 60, 300), ("train-000001.tar", "train", 1, 36, 150),
                ("val-000000.tar", "val", 0, 24, 99)]  # fmt: skip
        table = pa.table(
            {"shard": [r[0] for r in rows], "split": [r[1] for r in rows], "shard_index": [r[2] for r in rows],
             "samples": [r[3] for r in rows], "views": [r[4] for r in rows], "bytes": [1000] * 3,
             "sha256": ["0" * 64] * 3, "first_key": [None] * 3, "last_key": [None] * 3}
        )  # fmt: skip
        tables.write_table(table, str(root / "manifest.parquet"), "shard_manifest")


def test_report_writes_four_valid_pngs(tmp_path):
    make_build(tmp_path)
    card = {"splits": {}, "categories": [{"id": i, "name": c} for i, c in enumerate(CATEGORIES)]}
    (tmp_path / "dataset.json").write_text(json.dumps(card))  # the report charts the card's categories
    paths = report(str(tmp_path))
    names = [p.rsplit("/", 1)[1] for p in paths]
    assert names == [
        "world_clusters.png", "views_per_location.png", "locations_per_category.png", "locations_per_cluster.png"
    ]  # fmt: skip
    for path in paths:
        with Image.open(path) as im:
            assert im.format == "PNG"
            im.load()  # decodes the whole file: a truncated PNG fails here
            assert im.width >= 600 and im.height >= 400
    with Image.open(paths[0]) as world:
        assert world.width > world.height  # equirectangular frame is wider than tall
    with Image.open(paths[2]) as cats:
        assert cats.height > cats.width  # 62 horizontal bars stacked top to bottom
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(names)  # no temp files left


def test_manifest_summary_and_cli(tmp_path, capsys):
    make_build(tmp_path)
    assert manifest_summary(str(tmp_path)) == (
        "written: train 96 samples / 450 views in 2 shards; val 24 samples / 99 views in 1 shard"
    )
    build = tmp_path / "no_manifest"
    make_build(build, n=40, manifest=False)
    assert manifest_summary(str(build)) is None
    plots = tmp_path / "plots"
    assert cli.run(["report", str(build), "--index", str(build / "index"), "--plots", str(plots)]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 4 and all(p.startswith(str(plots)) and p.endswith(".png") for p in printed)
    for path in printed:
        with Image.open(path) as im:
            assert im.format == "PNG"
    assert not (build / "report").exists()


def test_missing_inputs_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(
        GeoSSLError, match=r"locations\.parquet: file not found; run `geo-build-dataset index-fmow`"
    ):
        report(str(tmp_path))
    make_build(tmp_path / "b")
    (tmp_path / "b" / "index" / "clusters.parquet").unlink()
    with pytest.raises(
        GeoSSLError, match=r"clusters\.parquet: file not found; run `geo-build-dataset cluster`"
    ):
        report(str(tmp_path / "b"))
    assert not (tmp_path / "b" / "report").exists()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "index-fmow" in err


def _colour_share(path, rgb) -> float:
    with Image.open(path) as im:
        px = np.asarray(im.convert("RGB")).reshape(-1, 3)
    return float((px == np.array(rgb)).all(axis=1).mean())


@pytest.mark.parametrize("k", [4, 100])
def test_world_map_draws_land_and_sea(tmp_path, k) -> None:
    make_build(tmp_path, n=400 if k == 100 else 120, manifest=False, k=k)
    world = report(str(tmp_path))[0]
    # about 29% of the globe is land: both fills cover a large share of the picture
    land, ocean = _colour_share(world, LAND), _colour_share(world, OCEAN)
    assert land > 0.12 and ocean > 0.25 and ocean > land


def test_tags_never_overlap_and_stay_off_the_rings() -> None:
    from geo_ssl.pipeline.report.world_map import _overlap, _tag_size, place_tags

    rng = np.random.default_rng(1)
    points = np.c_[rng.uniform(400, 700, 100), rng.uniform(300, 450, 100)]  # 100 centroids, crowded
    sizes = [_tag_size(str(i), 6.5) for i in range(100)]
    centres = place_tags(points, sizes, (0, 0, 1500, 800), ring=5.0)
    boxes = np.array(
        [
            [c[0] - w / 2, c[1] - h / 2, c[0] + w / 2, c[1] + h / 2]
            for c, (w, h) in zip(centres, sizes, strict=True)
        ]
    )
    for i in range(100):
        assert _overlap(boxes[i], np.delete(boxes, i, axis=0)) == 0  # no tag on another
    rings = np.c_[points - 5, points + 5]
    assert sum(_overlap(b, rings) > 0 for b in boxes) <= 5  # nearly all clear of every ring
    assert (np.linalg.norm(centres - points, axis=1) <= 146).all()  # each stays near its centroid


def test_cluster_colours_are_distinct_and_shared() -> None:
    from geo_ssl.pipeline.report import charts, world_map
    from geo_ssl.pipeline.report.common import cluster_colors

    assert charts.cluster_colors is world_map.cluster_colors is cluster_colors
    for k in (4, 20, 100):
        colours = cluster_colors(np.arange(k), k)[:, :3]
        assert len({tuple(np.round(c, 3)) for c in colours}) == k
        assert np.array_equal(cluster_colors(np.array([k - 1]), k)[0], cluster_colors(np.arange(k), k)[k - 1])


def test_contact_sheet_from_shards_source_and_stored(tmp_path) -> None:
    from geo_ssl.pipeline.report.contact_sheet import _from_shards, _source_tile, _stored_tile
    from geo_ssl.pipeline.shards.options import ShardOptions
    from geo_ssl.pipeline.shards.write import write_shards
    from tests.index_factory import make_index

    tiny = make_index(tmp_path / "t", n_locations=6, views=(2, 4))
    out = tmp_path / "build"
    write_shards(str(tiny.index), str(out), options=ShardOptions(resize=48, workers=1))
    locations = _from_shards(str(out), pq.read_table(tiny.index / "images.parquet"), n=3, seed=0)
    assert len(locations) == 3
    for loc in locations:
        views = loc["views"]
        assert len(views) == len(tiny.images[loc["location_key"]])
        assert [v["timestamp"] for v in views] == sorted(v["timestamp"] for v in views)  # oldest first
        tile = _source_tile(views[0]["path"], views[0]["crop"], views[0]["box"])
        assert tile is not None and max(tile.size) == 200
        assert (np.asarray(tile)[..., 0] >= 220).any()  # the red box and yellow crop are drawn on it
    missing = locations[0]["views"][0]
    Path(missing["path"]).unlink()
    assert _source_tile(missing["path"], missing["crop"], missing["box"]) is None
    assert _stored_tile(missing["stored"], missing["stored_box"]) is not None
    # before any shards: the sheet comes from the image index alone
    assert (
        draw_contact_sheet(str(tmp_path / "nothing"), str(tmp_path / "none"), str(tmp_path / "x.png")) is None
    )
    early = draw_contact_sheet(str(tmp_path / "no_shards"), str(tiny.index), str(tmp_path / "early.png"), n=2)
    with Image.open(early) as im:
        assert im.height >= 2 * 200
    sheet = draw_contact_sheet(str(out), str(tiny.index), str(tmp_path / "sheet.png"), n=3)
    with Image.open(sheet) as im:
        im.load()
        assert im.width >= 1000 and im.height >= 3 * 200
