"""The Hub dataset card (README.md) write-shards puts beside the shards: the folder loads as a dataset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from geo_ssl.pipeline.shards.options import ShardOptions
from geo_ssl.pipeline.shards.write import write_shards
from tests.index_factory import TinyIndex, make_index

OPTS = {"resize": 32, "shard_bytes": 12_000, "seed": 2, "workers": 1}
_LOAD = textwrap.dedent(
    """
    import json, sys
    import datasets
    folder, cache, streaming = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    ds = datasets.load_dataset(folder, cache_dir=cache, streaming=streaming)
    out = {}
    for split in sorted(ds):
        rows = list(ds[split])
        images = sorted(k for k in rows[0] if k.endswith("jpg"))
        out[split] = {
            "keys": [r["__key__"] for r in rows], "cls": [r["cls"] for r in rows],
            "category": [r["json"]["category"] for r in rows],
            "images": [sum(r[k] is not None for k in images) for r in rows],
            "image_type": type(rows[0][images[0]]).__name__,
        }
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> TinyIndex:
    return make_index(tmp_path_factory.mktemp("tiny"), n_locations=8, unclustered=(3,))


def _front_matter(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _load(folder: Path, tmp_path: Path, streaming: bool) -> dict:
    """datasets.load_dataset(folder) in a child process, offline, with its own HF home and cache."""
    env = {
        **os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }  # fmt: skip
    args = [sys.executable, "-c", _LOAD, str(folder), str(tmp_path / "cache"), "1" if streaming else "0"]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layout", ["locations", "views"])
def test_load_dataset_reads_a_shard_folder_and_ignores_the_side_files(
    tiny: TinyIndex, tmp_path: Path, layout: str
) -> None:
    out = tmp_path / "shards"
    write_shards(str(tiny.index), str(out), options=ShardOptions(layout=layout, **OPTS))
    card = json.loads((out / "dataset.json").read_text())
    meta = _front_matter(out)
    assert meta["license"] == "other" and meta["license_name"].startswith("fmow")
    assert {"image-classification", "image-feature-extraction"} <= set(meta["task_categories"])
    assert {"remote-sensing", "self-supervised", "webdataset", "geo"} <= set(meta["tags"])
    (config,) = meta["configs"]
    assert config["config_name"] == layout and config["default"] is True
    assert {f["split"]: f["path"] for f in config["data_files"]} == {s: f"{s}-*.tar" for s in card["splits"]}
    body = (out / "README.md").read_text()
    assert all(f"| {c['id']} | {c['name']} |" in body for c in card["categories"])
    # side files a plain folder load would try to read as data
    assert {"dataset.json", "manifest.parquet", "rejects.parquet", "sample_index.parquet"} <= {
        p.name for p in out.iterdir()
    }

    got = _load(out, tmp_path, streaming=False)
    assert sorted(got) == sorted(card["splits"])
    for split, counts in card["splits"].items():
        assert len(got[split]["keys"]) == counts["samples"]
        assert sum(got[split]["images"]) == counts["views"]
        assert got[split]["image_type"].endswith("ImageFile")
    if layout == "locations":  # samples of 1, 2, 3 views: datasets needs the declared features for them
        assert len({n for s in got.values() for n in s["images"]}) > 1


def test_a_hub_style_repository_streams_with_the_card(tiny: TinyIndex, tmp_path: Path) -> None:
    """The folder as uploaded to the Hub (no _done records), streamed the way a Hub repository is."""
    out = tmp_path / "shards"
    write_shards(str(tiny.index), str(out), options=ShardOptions(**OPTS))
    repo = tmp_path / "user__geo-ssl-shards"
    shutil.copytree(out, repo, ignore=shutil.ignore_patterns("_done"))
    got = _load(repo, tmp_path, streaming=True)
    card = json.loads((repo / "dataset.json").read_text())
    assert {s: len(v["keys"]) for s, v in got.items()} == {s: c["samples"] for s, c in card["splits"].items()}


def test_card_is_the_same_bytes_on_a_rerun_into_another_folder(tiny: TinyIndex, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "nested" / "b"
    for out in (a, b):
        write_shards(str(tiny.index), str(out), options=ShardOptions(**OPTS))
    assert (a / "README.md").read_bytes() == (b / "README.md").read_bytes()
    assert str(tmp_path) not in (a / "README.md").read_text()


def test_geoimagenet_shards_carry_imagenet_and_flickr_terms() -> None:
    from geo_ssl.pipeline.shards.hub_card import hub_card

    card = {
        "dataset": "geoimagenet", "layout": "views", "k": 2, "categories": [{"id": 0, "name": "tabby cat"}],
        "splits": {"train": {"shards": 1, "samples": 3, "views": 3}, "val": {"shards": 0, "samples": 0}},
    }  # fmt: skip
    text = hub_card(card, 1)
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["license_name"].startswith("imagenet") and "fMoW" not in text
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "train-*.tar"}]  # no empty split
    assert [f["name"] for f in meta["dataset_info"]["features"]] == [
        "jpg",
        "cls",
        "json",
        "__key__",
        "__url__",
    ]
    assert "| 0 | tabby cat |" in text
