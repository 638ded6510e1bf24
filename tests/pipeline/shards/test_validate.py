"""validate: a good build passes; damaged, missing, extra or duplicated shards and bad samples do not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.tables import write_table
from geo_ssl.pipeline.shards.manifest import manifest_table, read_records
from geo_ssl.pipeline.shards.options import ShardOptions
from geo_ssl.pipeline.shards.sample_format import check_sample
from geo_ssl.pipeline.shards.validate import validate
from geo_ssl.pipeline.shards.write import write_shards
from tests.index_factory import make_index


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("validate")
    tiny = make_index(base, n_locations=8, views=(1, 3), seed=11)
    out = base / "shards"
    write_shards(str(tiny.index), str(out), options=ShardOptions(workers=1, resize=48, shard_bytes=15_000))
    return out


@pytest.fixture
def copy(good: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good, tmp_path / "copy"))


def shards(folder: Path) -> list[str]:
    return [r["shard"] for r in pq.read_table(folder / "manifest.parquet").to_pylist()]


def test_good_build_is_ok(good: Path) -> None:
    report = validate(str(good), workers=2)
    assert report.ok, report.line()
    assert report.shards == len(shards(good)) >= 3 and report.samples == 8
    assert report.line().endswith("[ok]")


def test_one_corrupted_byte_is_found(copy: Path) -> None:
    name = shards(copy)[1]
    with open(copy / name, "r+b") as f:
        f.seek(1500)
        byte = f.read(1)
        f.seek(1500)
        f.write(bytes([byte[0] ^ 0xFF]))
    report = validate(str(copy), workers=1)
    assert not report.ok
    assert set(report.by_shard()) == {name} and "sha256 differs" in report.line()


def test_missing_and_unlisted_shards_are_found(copy: Path) -> None:
    names = shards(copy)
    (copy / names[0]).unlink()
    shutil.copy(copy / names[1], copy / "train-999999.tar")
    report = validate(str(copy), workers=1)
    problems = report.by_shard()
    assert problems[names[0]] == ["listed in the manifest but missing"]
    assert problems["train-999999.tar"] == ["tar file on disk is not in the manifest"]
    assert not report.ok and report.samples < 8


def test_duplicate_key_across_shards_is_found(copy: Path) -> None:
    a, b = shards(copy)[:2]
    shutil.copy(copy / a, copy / b)  # b now repeats a's samples; make the manifest agree with the files
    records = read_records(str(copy))
    records[b] = {
        **records[a],
        "shard": b,
        "shard_index": records[b]["shard_index"],
        "split": records[b]["split"],
    }
    write_table(manifest_table(list(records.values())), str(copy / "manifest.parquet"), "shard_manifest")
    report = validate(str(copy), workers=1)
    assert any("is also in" in p for p in report.by_shard().get(b, [])), report.line()


def test_not_a_shard_folder(tmp_path: Path) -> None:
    with pytest.raises(GeoSSLError, match="no shard manifest"):
        validate(str(tmp_path))


def sample() -> dict:
    view = {"field": "00.jpg", "view_id": 3, "timestamp": "2016-01-02T03:04:05Z", "gsd": 0.5, "cloud_cover": 0.0,
            "box": [1, 2, 3, 4], "orig_box": [1, 2, 3, 4], "crop": [0, 0, 9, 9], "orig_size": [9, 9], "size": [9, 9]}  # fmt: skip
    return {"schema_version": "1.0", "key": "train-dam_1", "location_id": "dam_1", "split": "train",
            "category": "dam", "category_index": 12, "lat": 1.0, "lon": 2.0, "cluster": 7, "country_code": None,
            "n_views": 1, "views": [view]}  # fmt: skip


def test_sample_checker() -> None:
    assert check_sample(sample(), ["00.jpg", "cls", "json"], b"7") == []
    assert any("cls" in p for p in check_sample(sample(), ["00.jpg", "cls", "json"], b"8"))
    assert any("n_views" in p for p in check_sample(sample(), ["00.jpg", "01.jpg", "cls", "json"], b"7"))
    bad = sample()
    del bad["lat"]
    assert check_sample(bad) == ["json lacks 'lat'"]
    two = sample()
    later = {**two["views"][0], "field": "01.jpg", "timestamp": "2015-01-01T00:00:00Z"}
    two["views"].append(later)
    two["n_views"] = 2
    assert any("sorted by time" in p for p in check_sample(two))
    wrong = sample()
    wrong["views"][0]["box"] = [1, 2, 3]
    wrong["cluster"] = True
    assert len(check_sample(wrong)) == 1  # the bool cluster is reported before per-view details


def test_bad_sample_contents_are_found(good: Path, tmp_path: Path) -> None:
    """A shard that matches its manifest row but breaks the sample format."""
    import io
    import json
    import tarfile

    from geo_ssl.pipeline.shards.manifest import file_digest

    with tarfile.open(good / shards(good)[0]) as tar:
        jpg = next(tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg"))
    members = {
        "00.jpg": jpg,
        "01.jpg": jpg[: len(jpg) // 2],
        "cls": b"7",
        "json": json.dumps(sample()).encode(),
    }
    out = tmp_path / "bad"
    out.mkdir()
    with tarfile.open(out / "train-000000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for field in sorted(members):
            info = tarfile.TarInfo(f"train-dam_1.{field}")
            info.size = len(members[field])
            tar.addfile(info, io.BytesIO(members[field]))
    size, sha = file_digest(str(out / "train-000000.tar"))
    row = {"shard": "train-000000.tar", "split": "train", "shard_index": 0, "samples": 1, "views": 2,
           "bytes": size, "sha256": sha, "first_key": "train-dam_1", "last_key": "train-dam_1"}  # fmt: skip
    write_table(manifest_table([row]), str(out / "manifest.parquet"), "shard_manifest")
    report = validate(str(out), workers=1)
    problems = report.by_shard()["train-000000.tar"]
    assert any("01.jpg does not decode" in p for p in problems)
    assert any("n_views 1 but 2 jpg member(s)" in p for p in problems)
    assert report.by_shard()["dataset.json"] == ["missing"]
