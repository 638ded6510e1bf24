"""validate and report take the category names from the build's dataset card, whatever the data set
(issue 18, item 7): GeoImageNet's synsets are no "unknown category", and fMoW's list is never assumed."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geo_ssl.pipeline.common import tables
from geo_ssl.pipeline.report import charts, report
from geo_ssl.pipeline.shards.manifest import file_digest, manifest_table
from geo_ssl.pipeline.shards.options import ShardOptions
from geo_ssl.pipeline.shards.validate import validate
from geo_ssl.pipeline.shards.write import write_shards
from tests.index_factory import make_index
from tests.pipeline.test_report import make_build

SYNSETS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331")


def _as_synsets(table: pa.Table) -> pa.Table:
    """The same rows with GeoImageNet-like labels: category_index i % 6, named by its synset."""
    ids = [i % len(SYNSETS) for i in table.column("category_index").to_pylist()]
    for column, values in (("category_index", ids), ("category", [SYNSETS[i] for i in ids])):
        at = table.schema.get_field_index(column)
        table = table.set_column(at, table.schema.field(at), pa.array(values, table.schema.field(at).type))
    return table


@pytest.fixture
def synset_shards(tmp_path: Path) -> Path:
    """A write-shards build whose categories are synsets (its card lists them), sample index removed so
    that tar edits below are checked for labels only."""
    tiny = make_index(tmp_path, n_locations=8, splits=("train",), views=(1, 2), size=(64, 48), seed=4)
    for name, table_name in (("images.parquet", "image_index"), ("locations.parquet", "locations")):
        url = str(tiny.index / name)
        tables.write_table(_as_synsets(tables.read_table(url, table_name)), url, table_name)
    out = tmp_path / "shards"
    write_shards(str(tiny.index), str(out), options=ShardOptions(workers=1, resize=32, shard_bytes="10MB"))
    (out / "sample_index.parquet").unlink()
    return out


def _edit_first_sample(out: Path, change: dict) -> str:
    """Rewrite the first sample's json of train-000000.tar with `change` (manifest digest kept true)."""
    shard = out / "train-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    key = members[0][0].partition(".")[0]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            if name == f"{key}.json":
                data = json.dumps({**json.loads(data), **change}).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    rows[0]["bytes"], rows[0]["sha256"] = file_digest(str(shard))
    tables.write_table(manifest_table(rows), str(out / "manifest.parquet"), "shard_manifest")
    return key


def _drop_card_categories(out: Path) -> None:
    card = json.loads((out / "dataset.json").read_text())
    del card["categories"]
    (out / "dataset.json").write_text(json.dumps(card))


def test_synset_categories_validate_and_an_unlisted_id_is_reported(synset_shards: Path) -> None:
    card = json.loads((synset_shards / "dataset.json").read_text())
    assert {c["name"] for c in card["categories"]} <= set(SYNSETS)
    assert validate(str(synset_shards), workers=1).problems == []
    key = _edit_first_sample(synset_shards, {"category_index": 40})  # a real fMoW id, not one of the card's
    problems = validate(str(synset_shards), workers=1).problems
    top = max(c["id"] for c in card["categories"])
    assert [p for _, p in problems] == [f"{key}: category_index 40 is not a category id (0..{top})"]


def test_a_card_without_categories_assumes_no_data_set_list(synset_shards: Path) -> None:
    """No list in the card: synsets are not checked against fMoW's names; one name per id still is."""
    _drop_card_categories(synset_shards)
    assert validate(str(synset_shards), workers=1).problems == []  # was: 'n01...' but ... is 'airport'
    with tarfile.open(synset_shards / "train-000000.tar") as tar:
        names = {json.loads(tar.extractfile(m).read())["category"] for m in tar if m.name.endswith(".json")}
    other = next(s for s in SYNSETS if s not in names)
    key = _edit_first_sample(synset_shards, {"category": other})
    problems = validate(str(synset_shards), workers=1).problems
    assert len(problems) == 1 and problems[0][0] == "train-000000.tar", problems
    assert "but category_index" in problems[0][1] and key in problems[0][1] and repr(other) in problems[0][1]


def test_report_charts_the_cards_categories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-category chart has a bar for each category of the card (an empty one too) and none of
    fMoW's; without a card, the index's categories only."""
    make_build(tmp_path, n=60)
    url = str(tmp_path / "index" / "locations.parquet")
    tables.write_table(_as_synsets(tables.read_table(url, "locations")), url, "locations")
    listed = [
        {"id": i, "name": s} for i, s in enumerate(SYNSETS)
    ]  # category_index cycles 0..6: SYNSETS[0] twice
    (tmp_path / "dataset.json").write_text(json.dumps({"splits": {}, "categories": listed}))
    drawn: dict[str, tuple[list[str], str]] = {}

    def keep(fig, url: str) -> str:
        ax = fig.axes[0]
        drawn[url.rsplit("/", 1)[-1]] = ([t.get_text() for t in ax.get_yticklabels()], ax.get_title())
        return url

    monkeypatch.setattr(charts, "save", keep)
    report(str(tmp_path), plots=str(tmp_path / "plots"))
    names, title = drawn["locations_per_category.png"]
    assert sorted(names) == sorted(SYNSETS) and title.startswith(
        "Locations per category (6 categories, 0 empty)"
    )

    (tmp_path / "dataset.json").write_text(
        json.dumps({"splits": {}, "categories": [*listed, {"id": 9, "name": "n09999999"}]})
    )
    report(str(tmp_path), plots=str(tmp_path / "plots"))
    names, title = drawn["locations_per_category.png"]
    assert "n09999999" in names and title.startswith("Locations per category (7 categories, 1 empty)")

    (tmp_path / "dataset.json").unlink()
    report(str(tmp_path), plots=str(tmp_path / "plots"))
    names, title = drawn["locations_per_category.png"]
    assert sorted(names) == sorted(SYNSETS) and "0 empty" in title
