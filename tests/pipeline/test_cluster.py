"""cluster: K-means on the sphere, train-only fit, nearest-centroid labels for held-out splits."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest
from sklearn.cluster import KMeans

from geo_ssl.pipeline import cli
from geo_ssl.pipeline.cluster import cluster
from geo_ssl.pipeline.common import sphere as geo
from geo_ssl.pipeline.common import tables
from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.schemas import validate_table


def write_locations(folder, points: list[tuple[str, float, float]]) -> str:
    """points: (split, lat, lon) -> INDEX/locations.parquet with one row per location."""
    n = len(points)
    ts = datetime(2016, 1, 1, tzinfo=UTC)
    ids = [f"airport_{i}" for i in range(n)]
    table = pa.table(
        {
            "location_key": [f"{s}-{loc}" for (s, _, _), loc in zip(points, ids, strict=True)],
            "split": [p[0] for p in points],
            "category": ["airport"] * n,
            "category_index": [0] * n,
            "location_id": ids,
            "lat": [p[1] for p in points],
            "lon": [p[2] for p in points],
            "n_views": [3] * n,
            "first_timestamp": [ts] * n,
            "last_timestamp": [ts] * n,
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    tables.write_table(table, str(folder / "locations.parquet"), "locations")
    return str(folder)


def read_clusters(folder) -> dict[str, int]:
    t = tables.read_table(str(folder / "clusters.parquet"), "clusters")
    return dict(zip(t.column("location_key").to_pylist(), t.column("cluster").to_pylist(), strict=True))


def random_points(n: int, seed: int, split: str = "train") -> list[tuple[str, float, float]]:
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    lon = rng.uniform(-180, 180, n)
    return [(split, float(a), float(b)) for a, b in zip(lat, lon, strict=True)]


# Fiji straddles the antimeridian: half of this group sits at lon +179.9, half at -179.9.
FIJI = [("train", lat, lon) for lat in (-17.0, -16.5, -17.5) for lon in (179.9, -179.9)]
# A second group on the Gulf of Guinea, far from both sides of the date line.
GUINEA = [("train", lat, lon) for lat in (2.0, 3.0, 4.0) for lon in (-1.0, 1.0)]


def test_antimeridian_neighbours_share_a_cluster(tmp_path):
    index = write_locations(tmp_path / "index", FIJI + GUINEA)
    stats = cluster(index, k=2, seed=0)
    labels = read_clusters(tmp_path / "index")
    fiji = {labels[f"train-airport_{i}"] for i in range(len(FIJI))}
    guinea = {labels[f"train-airport_{i}"] for i in range(len(FIJI), len(FIJI) + len(GUINEA))}
    assert len(fiji) == 1 and len(guinea) == 1 and fiji != guinea
    assert stats["splits"]["train"]["median_distance_km"] < 100

    # The same points in raw degrees put lon 179.9 and -179.9 in different clusters.
    raw = np.array([[lat, lon] for _, lat, lon in FIJI + GUINEA])
    raw_labels = KMeans(n_clusters=2, random_state=0, n_init=4).fit_predict(raw)
    east = {raw_labels[i] for i, (_, _, lon) in enumerate(FIJI) if lon > 0}
    west = {raw_labels[i] for i, (_, _, lon) in enumerate(FIJI) if lon < 0}
    assert east.isdisjoint(west)


def test_centroid_of_symmetric_groups(tmp_path):
    date_line = [("train", 0.0, 179.0), ("train", 0.0, -179.0), ("train", 1.0, 180.0), ("train", -1.0, 180.0)]
    pole = [("train", 89.0, lon) for lon in (0.0, 90.0, 180.0, -90.0)]
    index = write_locations(tmp_path / "index", date_line + pole)
    cluster(index, k=2, seed=3)
    cents = tables.read_table(str(tmp_path / "index" / "centroids.parquet"), "centroids").to_pylist()
    by_lat = sorted(cents, key=lambda c: c["lat"])
    assert by_lat[0]["lat"] == pytest.approx(0.0, abs=1e-9)
    assert abs(by_lat[0]["lon"]) == pytest.approx(180.0, abs=1e-9)
    assert by_lat[1]["lat"] == pytest.approx(90.0, abs=1e-9)
    assert [c["n_train_locations"] for c in by_lat] == [4, 4]


def test_deterministic_for_a_seed(tmp_path):
    index = write_locations(tmp_path / "index", random_points(400, seed=1) + random_points(80, 2, "val"))
    a = cluster(index, k=7, seed=5, out=str(tmp_path / "a"))
    b = cluster(index, k=7, seed=5, out=str(tmp_path / "b"))
    assert a == b
    for name, kind in (("clusters.parquet", "clusters"), ("centroids.parquet", "centroids")):
        ta = tables.read_table(str(tmp_path / "a" / name), kind)
        tb = tables.read_table(str(tmp_path / "b" / name), kind)
        assert ta.equals(tb)


def test_val_locations_get_the_nearest_centroid(tmp_path):
    centres = [(40.0, -100.0), (50.0, 10.0), (-30.0, 140.0)]
    rng = np.random.default_rng(0)
    train = [("train", la + rng.normal(0, 2), lo + rng.normal(0, 2)) for la, lo in centres for _ in range(20)]
    val = [("val", la + 3.0, lo - 3.0) for la, lo in centres] + [("test", 45.0, -20.0)]
    index = write_locations(tmp_path / "index", train + val)
    cluster(index, k=3, seed=0)
    labels = read_clusters(tmp_path / "index")
    cents = tables.read_table(str(tmp_path / "index" / "centroids.parquet"), "centroids")
    c_xyz = geo.latlon_to_unit(cents.column("lat").to_numpy(), cents.column("lon").to_numpy())
    rows = tables.read_table(str(tmp_path / "index" / "clusters.parquet"), "clusters").to_pylist()
    for row in rows:
        xyz = geo.latlon_to_unit(np.array([row["lat"]]), np.array([row["lon"]]))
        dist = geo.great_circle_km(np.repeat(xyz, len(c_xyz), axis=0), c_xyz)
        assert row["cluster"] == int(np.argmin(dist)), row
        assert row["distance_km"] == pytest.approx(dist.min(), rel=1e-9, abs=1e-6)
    # Each val point sits beside one training group and gets that group's label.
    for i, _ in enumerate(centres):
        assert labels[f"val-airport_{len(train) + i}"] == labels[f"train-airport_{i * 20}"]


def test_tables_sizes_and_stats(tmp_path):
    index = write_locations(tmp_path / "index", random_points(300, 4) + random_points(50, 5, "val"))
    out = tmp_path / "labels"
    stats = cluster(index, k=10, seed=0, out=str(out))
    assert (out / "cluster_stats.json").exists() and not (tmp_path / "index" / "clusters.parquet").exists()
    assert json.loads((out / "cluster_stats.json").read_text()) == stats
    clusters_t = tables.read_table(str(out / "clusters.parquet"), "clusters")
    centroids_t = tables.read_table(str(out / "centroids.parquet"), "centroids")
    validate_table(clusters_t, "clusters")
    validate_table(centroids_t, "centroids")
    keys = clusters_t.column("location_key").to_pylist()
    assert keys == sorted(keys) and len(keys) == 350
    assert centroids_t.column("cluster").to_pylist() == list(range(10))
    assert sum(centroids_t.column("n_train_locations").to_pylist()) == 300
    assert sum(centroids_t.column("n_locations").to_pylist()) == 350
    labels = np.array(clusters_t.column("cluster").to_pylist())
    assert np.array_equal(np.bincount(labels, minlength=10), centroids_t.column("n_locations").to_numpy())
    assert stats["algorithm"] == "kmeans" and stats["k"] == 10
    assert stats["splits"]["train"]["locations"] == 300 and stats["splits"]["val"]["locations"] == 50
    size = stats["train_cluster_size"]
    assert size["min"] <= size["median"] <= size["max"] and size["mean"] == pytest.approx(30.0)
    assert stats["summary"]["inputs"] == stats["summary"]["written"] == 350
    assert "[ok]" in stats["line"] and "k=10" in stats["line"]
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_minibatch_above_threshold(tmp_path):
    index = write_locations(tmp_path / "index", random_points(300, 6))
    stats = cluster(index, k=5, seed=0, minibatch_threshold=100)
    assert stats["algorithm"] == "minibatch_kmeans" and stats["batch_size"] > 0
    assert set(read_clusters(tmp_path / "index").values()) <= set(range(5))
    cents = tables.read_table(str(tmp_path / "index" / "centroids.parquet"), "centroids")
    assert sum(cents.column("n_train_locations").to_pylist()) == 300


def test_errors_are_one_line(tmp_path):
    with pytest.raises(GeoSSLError, match=r"locations\.parquet"):
        cluster(str(tmp_path / "nowhere"), k=2)
    only_val = write_locations(tmp_path / "val_only", random_points(10, 0, "val"))
    with pytest.raises(GeoSSLError, match="no train split"):
        cluster(only_val, k=2)
    index = write_locations(tmp_path / "index", random_points(12, 0) + [("train", 0.0, 0.0)] * 3)
    with pytest.raises(GeoSSLError, match="at least 1"):
        cluster(index, k=0)
    with pytest.raises(GeoSSLError) as err:
        cluster(index, k=20)
    assert "k=20" in str(err.value) and "13 distinct train locations" in str(err.value)
    assert "--k 13" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "index" / "clusters.parquet").exists()


def test_cli(tmp_path, capsys):
    index = write_locations(tmp_path / "index", random_points(60, 7))
    assert cli.run(["cluster", "--index", index, "--k", "4", "--seed", "1"]) == 0
    assert "k=4 kmeans seed=1" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["cluster", "--index", index, "--k", "61"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geo-build-dataset: error:") and "--k 60" in err and "\n" not in err
