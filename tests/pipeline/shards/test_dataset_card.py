"""Self-describing shards (issue 9 item 2): the dataset card alone tells a trainer k, the centroids and the
categories, so a bucket holding only shards, manifest and card can be trained on. Real S3 (moto server)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import torch

from geo_ssl.pipeline.build import BuildConfig, build
from geo_ssl.pipeline.common import fsio
from geo_ssl.pipeline.fmow.synth import synth_fmow
from geo_ssl.pipeline.shards.card import portable_location
from geo_ssl.pipeline.shards.options import ShardOptions
from geo_ssl.training.trainer.checkpoint import LAST
from geo_ssl.training.trainer.config import PretrainConfig
from geo_ssl.training.trainer.loop import pretrain
from tests.s3_support import s3_with_faults


def test_input_locations_are_relative_or_urls(tmp_path: Path) -> None:
    out = tmp_path / "build"
    assert portable_location(str(tmp_path / "build" / "index"), str(out)) == "index"
    assert portable_location(str(tmp_path / "idx"), str(out)) == "../idx"
    assert portable_location("s3://b/x/index", "s3://b/x") == "index"
    assert portable_location("gs://b/idx", "s3://b/x") == "gs://b/idx"
    assert portable_location(str(tmp_path / "idx"), "s3://b/x") == "local:idx"  # no machine path in a bucket


def test_pretrain_from_a_bucket_holding_only_shards_manifest_and_card(tmp_path: Path) -> None:
    with s3_with_faults("geo-ssl-card") as s3:
        import s3fs

        root, out = "s3://geo-ssl-card/fmow", "s3://geo-ssl-card/build"  # from a bucket into a bucket
        synth_fmow(root, locations=16, seed=2, workers=1)
        shard_opts = ShardOptions(workers=1, resize=48, shard_bytes=40_000, seed=0)
        build(BuildConfig(root=root, out=out, k=3, seed=0, index_workers=1, shards=shard_opts))
        fs = s3fs.S3FileSystem()
        card_text = fs.cat("geo-ssl-card/build/dataset.json").decode()
        card = json.loads(card_text)
        centroids = pq.read_table(fs.open("geo-ssl-card/build/index/centroids.parquet")).to_pylist()

        # The card describes the shards on its own ...
        assert card["k"] == card["geo_clusters"]["k"] == 3
        assert [(c["lat"], c["lon"]) for c in card["geo_clusters"]["centroids"]] == [
            (c["lat"], c["lon"]) for c in sorted(centroids, key=lambda c: c["cluster"])
        ]
        assert card["categories"] and all(set(c) == {"id", "name"} for c in card["categories"])
        assert set(card["splits"]) == {"train", "val"} and card["splits"]["train"]["samples"] > 0
        assert card["sample_format_version"] == card["schema_version"]
        # ... and names no path of this machine.
        assert card["inputs"]["index"] == "index" and card["inputs"]["clusters"] == "index"
        assert str(tmp_path) not in card_text and str(Path.home()) not in card_text

        # Only shards, manifest and card stay in the bucket; a trainer needs no index and no --n-clusters.
        fs.rm("geo-ssl-card/build/index", recursive=True)
        fs.invalidate_cache()
        assert not fs.exists("geo-ssl-card/build/index/cluster_stats.json")
        run = tmp_path / "run"
        cfg = PretrainConfig(
            data=out, out=str(run), arch="resnet18", image_size=32, batch_size=4, moco_k=8, epochs=1,
            max_steps=2, num_workers=0, shuffle_buffer=4, n_clusters=0, knn_every=0, log_every=1,
            method="moco+geo+tp",
        )  # fmt: skip
        pretrain(cfg)
        assert s3.faults.failed == {}
    ckpt = torch.load(run / LAST, weights_only=True)
    assert ckpt["n_clusters"] == 3 and ckpt["step"] == 2
    assert fsio.exists(str(run / LAST))
