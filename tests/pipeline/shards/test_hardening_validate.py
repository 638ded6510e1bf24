"""validate checks labels against the dataset card and view bytes against their name (issue 7, items 5, 22)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from geo_ssl.pipeline.common.tables import write_table
from geo_ssl.pipeline.shards.manifest import file_digest, manifest_table
from geo_ssl.pipeline.shards.options import ShardOptions
from geo_ssl.pipeline.shards.write import write_shards
from tests.index_factory import make_index


def _members(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, _, field = m.name.partition(".")
            samples.setdefault(key, {})[field] = tar.extractfile(m).read()
    return samples


def test_out_of_range_labels_and_png_views_are_found(tmp_path: Path) -> None:
    tiny = make_index(tmp_path, n_locations=8, splits=("train",), views=(1, 2), size=(64, 48), seed=4)
    out = tmp_path / "shards"
    write_shards(str(tiny.index), str(out), options=ShardOptions(workers=1, resize=32, shard_bytes="10MB"))
    card = json.loads((out / "dataset.json").read_text())
    assert card["k"] == 3  # clusters 0..2 in the tiny index
    ok = subprocess.run(
        [sys.executable, "-m", "geo_ssl.pipeline.cli", "validate", str(out)], capture_output=True
    )
    assert ok.returncode == 0, ok.stdout

    shard = out / "train-000000.tar"
    samples = _members(shard)  # in tar order
    keys = list(samples)
    assert len(keys) >= 4
    edits = {
        keys[0]: {"cluster": 999},  # k is 3
        keys[1]: {"category_index": 500},
        keys[2]: {"category": "zoo" if json.loads(samples[keys[2]]["json"])["category"] != "zoo" else "dam"},
    }
    for key, change in edits.items():
        meta = {**json.loads(samples[key]["json"]), **change}
        samples[key]["json"] = json.dumps(meta).encode()
        samples[key]["cls"] = str(meta["cluster"]).encode()
    png = io.BytesIO()
    Image.open(io.BytesIO(samples[keys[3]]["00.jpg"])).save(png, format="PNG")
    samples[keys[3]]["00.jpg"] = png.getvalue()  # decodes, but is not JPEG

    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key in keys:
            for field in sorted(samples[key]):
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size = len(samples[key][field])
                tar.addfile(info, io.BytesIO(samples[key][field]))
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    rows[0]["bytes"], rows[0]["sha256"] = file_digest(str(shard))
    write_table(manifest_table(rows), str(out / "manifest.parquet"), "shard_manifest")
    (out / "sample_index.parquet").unlink(missing_ok=True)  # member offsets changed; not under test here

    proc = subprocess.run(
        [sys.executable, "-m", "geo_ssl.pipeline.cli", "validate", str(out), "--workers", "1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1
    from geo_ssl.pipeline.shards.validate import validate

    problems = validate(str(out), workers=1).by_shard()["train-000000.tar"]
    assert any(f"{keys[0]}: cluster 999 is outside 0..2 (k=3" in p for p in problems), problems
    assert any(f"{keys[1]}: category_index 500 is not a category id" in p for p in problems), problems
    assert any(
        f"{keys[2]}: category {edits[keys[2]]['category']!r} but category_index" in p for p in problems
    )
    assert any(f"{keys[3]}.00.jpg holds PNG bytes, not JPEG" in p for p in problems), problems
    assert len(problems) == 4, problems
