"""synth-imagenet -> build --source geoimagenet (harvest over HTTP, index, cluster, write-shards) -> loaders."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import geopandas
import pyarrow.parquet as pq
import pytest

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.geoimagenet.flickr_standin import load_photo_table
from geo_ssl.pipeline.geoimagenet.synth import synth_imagenet
from geo_ssl.pipeline.shards.sample_extras import refuse_temporal
from geo_ssl.pipeline.shards.sample_format import check_sample
from tests.pipeline.geoimagenet.conftest import KEY, SECRET


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_synth_is_deterministic_and_has_every_url_form(tmp_path) -> None:
    a = synth_imagenet(str(tmp_path / "a"), classes=3, per_class=9, seed=7)
    synth_imagenet(str(tmp_path / "b"), classes=3, per_class=9, seed=7)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    text = (tmp_path / "a" / "fall11_urls.txt").read_bytes()
    for host in (b"static.flickr.com/", b"://static.flickr.com", b"staticflickr.com/", b"://c", b"live.staticflickr",
                 b"://photos", b"www.flickr.com/photos/", b"?v=0", b"wikimedia", b"\xe9"):  # fmt: skip
        assert host in text, host
    behaviours = {p["behaviour"] for p in load_photo_table(a["photos"]).values()}
    assert behaviours == {"ok", "no_location", "geo_not_public", "not_found", "permission_denied"}
    yfcc = (tmp_path / "a" / "yfcc100m.tsv").read_text().splitlines()
    assert all(len(line.split("\t")) == 25 for line in yfcc)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One GeoImageNet build through the CLI, against a stand-in with injected faults."""
    from geo_ssl.pipeline.geoimagenet.flickr_standin import FlickrStandin

    tmp = tmp_path_factory.mktemp("geoimagenet")
    world = synth_imagenet(str(tmp / "synth"), classes=5, per_class=16, seed=3)
    creds = tmp / "creds"
    creds.write_text(f"{KEY}\n{SECRET}\n")
    server = FlickrStandin(load_photo_table(world["photos"]), KEY, SECRET, fault_rate=0.1, seed=1).start()
    args = [sys.executable, "-m", "geo_ssl.pipeline.cli", "build", "--source", "geoimagenet",
            "--root", world["root"], "--urls", world["urls"], "--yfcc", world["yfcc"], "--words", world["words"],
            "--credentials", str(creds), "--api-url", server.url, "--rate-limit", "720000", "--out", str(tmp / "out"),
            "--k", "4", "--resize", "48", "--workers", "1", "--shard-bytes", "100KB"]  # fmt: skip
    env = {**os.environ, "GEO_SSL_PROGRESS": "0"}
    try:
        first = subprocess.run(args, capture_output=True, env=env, timeout=120)
        calls_first = server.state.stats()["requests"]
        second = subprocess.run(args, capture_output=True, env=env, timeout=120)
        calls_second = server.state.stats()["requests"] - calls_first
    finally:
        server.stop()
    creds.unlink()
    return {"tmp": tmp, "world": world, "first": first, "second": second, "calls_second": calls_second}


def test_build_chain_makes_valid_single_view_samples(built) -> None:
    first = built["first"]
    assert first.returncode == 0, first.stderr.decode()[-2000:]
    text = first.stdout.decode()
    for stage in ("urls:", "harvest-flickr:", "index-imagenet:", "cluster:", "write-shards:"):
        line = next(ln for ln in text.splitlines() if ln.startswith(stage))
        assert "[ok]" in line, line
    out = built["tmp"] / "out"
    geo = {r["photo_id"]: r for r in pq.read_table(out / "harvest" / "flickr_geo.parquet").to_pylist()}
    index = pq.read_table(out / "index" / "geoimagenet_images.parquet").to_pylist()
    assert index and all(geo[r["photo_id"]]["status"] == "ok" for r in index)
    gdf = geopandas.read_parquet(out / "index" / "geoimagenet_images.parquet")  # GeoParquet, lon/lat points
    assert (gdf.geometry.x - gdf["lon"]).abs().max() < 1e-9 and (
        gdf.geometry.y - gdf["lat"]
    ).abs().max() < 1e-9
    rejects = pq.read_table(out / "index" / "rejects.parquet").column("reason").to_pylist()
    assert sorted(rejects) == ["missing_image", "not_jpeg", "truncated_image"]
    words = dict(line.split("\t") for line in Path(built["world"]["words"]).read_text().splitlines())
    by_key = {r["key"]: r for r in index}
    samples = 0
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        keys = {name.split(".")[0] for name in members}
        for key in keys:
            meta = json.loads(members[f"{key}.json"])
            fields = [n[len(key) + 1 :] for n in members if n.split(".")[0] == key]
            assert sorted(fields) == ["00.jpg", "cls", "json"]
            assert check_sample(meta, fields, members[f"{key}.cls"]) == []
            row = by_key[meta["location_id"]]
            assert meta["wnid"] == row["wnid"] and meta["class_name"] == words[row["wnid"]]
            assert meta["category_index"] == row["class_index"] and meta["flickr_id"] == row["photo_id"]
            assert abs(meta["lat"] - geo[row["photo_id"]]["lat"]) < 1e-6
            assert abs(meta["lon"] - geo[row["photo_id"]]["lon"]) < 1e-6
            assert min(_jpeg_size(members[f"{key}.00.jpg"])) == 48
            samples += 1
    assert samples == len(index)
    card = json.loads((out / "dataset.json").read_text())
    assert card["dataset"] == "geoimagenet" and card["temporal_positives"] is False


def _jpeg_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size


def test_rebuild_asks_flickr_nothing(built) -> None:
    second = built["second"]
    assert second.returncode == 0, second.stderr.decode()[-2000:]
    assert built["calls_second"] == 0
    assert "calls this run: 0" in second.stdout.decode()


def test_training_side_single_views_and_no_temporal_positives(built) -> None:
    from geo_ssl.training.data.loader import eval_loader
    from geo_ssl.training.trainer.config import PretrainConfig
    from geo_ssl.training.trainer.feed import make_loader

    out = built["tmp"] / "out"
    with pytest.raises(GeoSSLError, match="temporal positives do not apply"):
        refuse_temporal(str(out), "moco+geo+tp")
    cfg = PretrainConfig(data=str(out), out=str(built["tmp"] / "run"), method="moco+tp", image_size=32,
                         batch_size=8, num_workers=0)  # fmt: skip
    with pytest.raises(GeoSSLError, match="use moco"):
        make_loader(cfg, 0, 1)
    cfg.method = "moco+geo"
    batch = next(iter(make_loader(cfg, 0, 1)))
    assert batch["q"].shape == batch["k"].shape == (8, 3, 32, 32)
    assert not bool((batch["q"] == batch["k"]).all())  # two augmentations of the one photo
    index = pq.read_table(out / "index" / "images.parquet").to_pylist()
    labels = {r["location_key"]: r["category_index"] for r in index}
    seen = 0
    for b in eval_loader(str(out), image_size=32, batch_size=16, num_workers=0, split="val"):
        for key, cat in zip(b["key"], b["category"].tolist(), strict=True):
            assert (
                labels[key.split("/")[0]] == cat
            )  # ImageNet class index: what kNN and the linear probe score
            seen += 1
    assert seen == sum(1 for r in index if r["split"] == "val") > 0


def test_index_reads_a_tree_in_object_storage(built, tmp_path) -> None:
    from geo_ssl.pipeline.geoimagenet.index import index_imagenet
    from tests.s3_support import s3_with_faults

    world, out = built["world"], built["tmp"] / "out"
    with s3_with_faults("geo-ssl-imagenet"):
        import s3fs

        s3fs.S3FileSystem().put(world["root"] + "/", "geo-ssl-imagenet/imagenet/", recursive=True)
        summary = index_imagenet("s3://geo-ssl-imagenet/imagenet", str(out / "harvest"), str(tmp_path / "idx"),
                                 words=world["words"])  # fmt: skip
    assert summary.reconciles
    local = pq.read_table(out / "index" / "geoimagenet_images.parquet").to_pylist()
    remote = pq.read_table(tmp_path / "idx" / "geoimagenet_images.parquet").to_pylist()
    assert [r["key"] for r in remote] == [r["key"] for r in local]
    assert all(r["image_path"].startswith("s3://geo-ssl-imagenet/imagenet/n") for r in remote)
    assert [r["file_size"] for r in remote] == [r["file_size"] for r in local]
    reasons = sorted(pq.read_table(tmp_path / "idx" / "rejects.parquet").column("reason").to_pylist())
    assert reasons == ["missing_image", "not_jpeg", "truncated_image"]


def test_synth_takes_class_names_from_imagenet_words(tmp_path, shared_dir) -> None:
    res = synth_imagenet(
        str(tmp_path), classes=2, per_class=2, words=str(shared_dir / "data" / "imagenet-words.txt")
    )
    names = dict(line.split("\t") for line in Path(res["words"]).read_text().splitlines())
    assert names == {"n01440764": "tench", "n01443537": "goldfish"}
