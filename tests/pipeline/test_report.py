"""report: four PNG plots from the index tables, manifest counts, one-line errors for missing inputs."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from geo_ssl.pipeline import cli
from geo_ssl.pipeline.common import tables
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.fmow.layout import CATEGORIES
from geo_ssl.pipeline.report import manifest_summary, report

K = 4


def make_build(root, n: int = 120, manifest: bool = True) -> None:
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
    label = (np.arange(n) % K).astype(np.int32)
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
    centroids = pa.table(
        {"cluster": np.arange(K, dtype=np.int32), "lat": [10.0, -20.0, 45.0, 0.0], "lon": [0.0, 120.0, -90.0, 179.0],
         "n_train_locations": np.bincount(label[is_train], minlength=K), "n_locations": np.bincount(label, minlength=K)}
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
