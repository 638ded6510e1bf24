"""--layout views and the sample index: shards that Hugging Face datasets, webdataset and DuckDB read as is."""

from __future__ import annotations

import collections
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from geo_ssl.pipeline.cli import main as cli_main
from geo_ssl.pipeline.shards.options import ShardOptions
from geo_ssl.pipeline.shards.sample_index import read_member, read_sample
from geo_ssl.pipeline.shards.validate import validate
from geo_ssl.pipeline.shards.write import write_shards
from tests.index_factory import TinyIndex, make_index

REPO = Path(__file__).resolve().parents[3]
OPTS = {"resize": 64, "shard_bytes": 20_000, "seed": 1, "workers": 1}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyIndex:
    # one split, so unknown (None) and known country codes alternate between locations of the same shards
    return make_index(tmp_path_factory.mktemp("tiny"), n_locations=10, splits=("train",), unclustered=(4,))


@pytest.fixture(scope="module")
def views_build(tiny: TinyIndex, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("views")
    summary = write_shards(str(tiny.index), str(out), options=ShardOptions(layout="views", **OPTS))
    return out, summary


def _wds_samples(out: Path) -> list[dict]:
    import webdataset as wds

    shards = sorted(str(p) for p in out.glob("*.tar"))
    return list(wds.WebDataset(shards, shardshuffle=False))


def test_views_layout_is_one_sample_per_view_with_fixed_members(tiny: TinyIndex, views_build) -> None:
    out, summary = views_build
    # the summary still counts locations: 10 in = 9 written + 1 without a cluster
    assert summary.reconciles and (summary.inputs, summary.written, summary.rejected) == (10, 9, 1)
    samples = _wds_samples(out)
    n_views = sum(len(tiny.images[k]) for i, k in enumerate(tiny.keys) if i != 4)
    assert len(samples) == n_views == summary.extra["views_written"]
    by_location = collections.defaultdict(list)
    for s in samples:
        assert {k for k in s if not k.startswith("__")} == {"jpg", "json", "cls"}
        meta = json.loads(s["json"])
        assert "." not in s["__key__"] and meta["key"] == s["__key__"]
        assert s["__key__"] == f"{meta['location_key']}-v{meta['view_index']:02d}"
        assert int(s["cls"]) == meta["cluster"]  # cls is the geo cluster, not the category
        assert None not in (meta["country_code"], meta["gsd"], meta["cloud_cover"])  # no nulls: same types
        with Image.open(io.BytesIO(s["jpg"])) as im:
            assert list(im.size) == meta["size"] and min(im.size) <= 64
        by_location[meta["location_key"]].append(meta)
    for key, metas in by_location.items():
        assert [m["view_index"] for m in metas] == list(range(len(metas)))  # contiguous, in time order
        assert [m["timestamp"] for m in metas] == [
            t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in sorted(tiny.times[key])
        ]
        assert {m["n_views"] for m in metas} == {len(tiny.images[key])}
    card = json.loads((out / "dataset.json").read_text())
    assert card["layout"] == "views" and card["parameters"]["layout"] == "views"
    assert card["sample_index"] == "sample_index.parquet"
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert sum(r["samples"] for r in manifest) == sum(r["views"] for r in manifest) == n_views
    report = validate(str(out), workers=1)
    assert report.ok, report.line()
    assert (report.samples, report.views) == (n_views, n_views)


def test_hugging_face_datasets_loads_a_views_build(views_build, tmp_path) -> None:
    """datasets' webdataset builder, streaming and not, offline, in a child process (its own HF config)."""
    out, _ = views_build
    script = textwrap.dedent(
        """
        import json, sys
        import datasets
        cache_dir, files = sys.argv[1], sorted(sys.argv[2:])
        result = {}
        for streaming in (True, False):
            ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train",
                                       streaming=streaming, cache_dir=cache_dir)
            rows = list(ds)
            result[str(streaming)] = {
                "n": len(rows), "fields": sorted(rows[0]),
                "image": [type(rows[0]["jpg"]).__name__, list(rows[0]["jpg"].size)],
                "keys": [r["__key__"] for r in rows], "cls": [r["cls"] for r in rows],
                "category_index": [r["json"]["category_index"] for r in rows],
                "size": [r["json"]["size"] for r in rows],
            }
        print(json.dumps(result))
        """
    )
    env = {
        **os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }  # fmt: skip
    shards = sorted(str(p) for p in out.glob("*.tar"))
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "cache"), *shards],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = [s for s in _wds_samples(out)]
    for streaming in ("True", "False"):
        got = result[streaming]
        assert got["n"] == len(expected)
        assert got["fields"] == ["__key__", "__url__", "cls", "jpg", "json"]
        assert got["image"][0].endswith("ImageFile") or got["image"][0] == "Image"
        assert got["keys"] == [s["__key__"] for s in expected]
        assert got["cls"] == [int(s["cls"]) for s in expected]
        assert got["category_index"] == [json.loads(s["json"])["category_index"] for s in expected]
        assert got["size"] == [json.loads(s["json"])["size"] for s in expected]


def test_sample_index_duckdb_filter_then_seek(tiny: TinyIndex, views_build) -> None:
    import duckdb

    out, _ = views_build
    by_key = {s["__key__"]: s for s in _wds_samples(out)}
    index = str(out / "sample_index.parquet")
    rows = duckdb.sql(
        f"SELECT key, shard, m.offset AS off, m.size AS size, category, cluster, lat, lon "
        f"FROM (SELECT *, unnest(members) AS m FROM read_parquet('{index}')) "
        f"WHERE category = 'dam' AND m.name = 'jpg' ORDER BY key"
    ).fetchall()
    dams = sorted(k for k, s in by_key.items() if json.loads(s["json"])["category"] == "dam")
    assert dams and [r[0] for r in rows] == dams
    key, shard, off, size, _, cluster, lat, lon = rows[-1]
    with open(out / shard, "rb") as f:  # a plain file seek, no tar parsing
        f.seek(off)
        data = f.read(size)
    assert data == by_key[key]["jpg"]
    with Image.open(io.BytesIO(data)) as im:
        im.load()
    meta = json.loads(by_key[key]["json"])
    assert (cluster, lat, lon) == (meta["cluster"], meta["lat"], meta["lon"])
    assert read_member(str(out / shard), off, size) == data
    # every row: all members at their offsets, the whole sample span in one ranged read
    table = pq.read_table(index).to_pylist()
    assert len(table) == len(by_key)
    for row in table:
        members = read_sample(str(out), row)
        sample = by_key[row["key"]]
        assert members == {k: sample[k] for k in ("jpg", "json", "cls")}
        assert row["views"] == 1 and row["view_index"] == json.loads(sample["json"])["view_index"]


def test_locations_layout_has_a_sample_index_and_validate_checks_it(tiny: TinyIndex, tmp_path) -> None:
    import webdataset as wds

    out = tmp_path / "locations"
    write_shards(str(tiny.index), str(out), options=ShardOptions(**OPTS))
    assert json.loads((out / "dataset.json").read_text())["layout"] == "locations"
    index = pq.read_table(out / "sample_index.parquet").to_pylist()
    samples = {
        s["__key__"]: s for s in wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False)
    }
    assert sorted(r["key"] for r in index) == sorted(samples)
    for row in index:
        assert row["view_index"] is None and row["views"] == row["location_views"] == len(
            tiny.images[row["key"]]
        )
        assert [m["name"] for m in row["members"]] == [f"{i:02d}.jpg" for i in range(row["views"])] + [
            "cls",
            "json",
        ]
        got = read_sample(str(out), row)
        assert all(got[n] == samples[row["key"]][n] for n in got)
    assert validate(str(out), workers=1).ok
    # a wrong offset in the index is found by validate
    table = pq.read_table(out / "sample_index.parquet")
    rows = table.to_pylist()
    rows[0]["members"][0]["offset"] += 512
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), out / "sample_index.parquet")
    report = validate(str(out), workers=1)
    assert not report.ok and "member offsets of" in report.line() and "sample_index.parquet" in report.line()


def test_loaders_read_a_views_build(views_build) -> None:
    from geo_ssl.training.data.loader import eval_loader

    out, _ = views_build
    samples = _wds_samples(out)
    batches = list(eval_loader(str(out), image_size=32, batch_size=8, num_workers=0, split="train"))
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) == len(samples)
    assert sorted(keys) == sorted(f"{s['__key__']}/jpg" for s in samples)  # each sample is one view
    assert batches[0]["image"].shape[1:] == (3, 32, 32)
    category = [int(c) for b in batches for c in b["category"]]
    assert sorted(category) == sorted(json.loads(s["json"])["category_index"] for s in samples)


def test_layout_flag_and_config(tiny: TinyIndex, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli_main(
            ["write-shards", "--index", str(tiny.index), "--out", str(tmp_path / "x"), "--layout", "tiles"]
        )
    assert exit_.value.code == 2 and "--layout" in capsys.readouterr().err
    from geo_ssl.pipeline.build import load_build_config

    cfg = tmp_path / "build.toml"
    cfg.write_text('root = "r"\n[shards]\nlayout = "views"\n')
    assert load_build_config(str(cfg)).shards.layout == "views"
    cfg.write_text('root = "r"\n[shards]\nlayout = "tiles"\n')
    from geo_ssl.pipeline.common.errors import GeoSSLError

    with pytest.raises(GeoSSLError, match="layout"):
        load_build_config(str(cfg))
