"""geo-export's outputs for the Hub and timm: the model card's YAML and a config.json with the trained size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

from geo_ssl.training.evaluation import cli as eval_cli
from geo_ssl.training.evaluation import export, model_card
from geo_ssl.training.trainer.checkpoint import LAST
from geo_ssl.training.trainer.config import PretrainConfig
from geo_ssl.training.trainer.loop import pretrain
from tests.shard_fixtures import make_tiny_shards

SIZE = 32  # trained input size; timm's resnet default is 224


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A safetensors export of a real 2-step geo-pretrain run at 32 px."""
    shards = tmp_path_factory.mktemp("shards")
    make_tiny_shards(shards, n_locations=8, n_shards=1, split="train", image_size=40, n_clusters=3)
    (shards / "dataset.json").write_text(json.dumps({"name": "tiny", "splits": {"train": {"samples": 8}}}))
    run = tmp_path_factory.mktemp("run")
    cfg = PretrainConfig(
        data=str(shards), out=str(run), arch="resnet18", method="moco", image_size=SIZE, batch_size=4,
        moco_k=8, epochs=1, max_steps=2, num_workers=0, shuffle_buffer=4, n_clusters=3, knn_every=0,
    )  # fmt: skip
    pretrain(cfg)
    dst = tmp_path_factory.mktemp("export") / "resnet18-geo.safetensors"
    export.main([str(run / LAST), str(dst)])
    return dst


def _front_matter(md: str) -> dict:
    assert md.startswith("---\n")
    return yaml.safe_load(md.split("---\n")[1])


def test_timm_picks_up_the_trained_input_size_from_config_json(exported: Path) -> None:
    cfg = json.loads((exported.parent / "config.json").read_text())
    assert cfg["architecture"] == "resnet18" and cfg["num_features"] == 512
    pre = cfg["pretrained_cfg"]
    assert pre["input_size"] == [3, SIZE, SIZE] and pre["file"] == exported.name
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225]
    model = timm.create_model(
        cfg["architecture"],
        pretrained=True,
        num_classes=0,
        pretrained_cfg_overlay={**pre, "file": str(exported)},
    )
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert tuple(data_cfg["input_size"]) == (3, SIZE, SIZE) and data_cfg["crop_pct"] == 1.0
    weights = load_file(exported)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())  # the export's weights
    # without the overlay timm would feed 224 px
    assert timm.data.resolve_data_config({}, model=timm.create_model("resnet18"))["input_size"] == (
        3,
        224,
        224,
    )
    # the JSON card keeps its own copy (config.json is shared by exports into one folder)
    assert json.loads(Path(f"{exported}.json").read_text())["timm_config"] == cfg


def test_geo_eval_reads_the_size_from_config_json_alone(exported: Path, tmp_path: Path) -> None:
    """An export uploaded the Hub way (weights + config.json, no .json card) keeps its trained size."""
    weights = tmp_path / exported.name
    weights.write_bytes(exported.read_bytes())
    (tmp_path / "config.json").write_bytes((exported.parent / "config.json").read_bytes())
    assert eval_cli.input_size(str(weights), {}, None)["image_size"] == SIZE


def test_model_card_has_the_hub_metadata(exported: Path) -> None:
    meta = _front_matter(Path(f"{exported}.md").read_text())
    assert meta["library_name"] == "timm" and meta["pipeline_tag"] == "image-feature-extraction"
    assert meta["license"] == "other" and meta["license_name"] == "fmow-challenge-public-license"
    assert meta["license_link"].startswith("https://")
    assert {"timm", "self-supervised", "remote-sensing", "moco"} <= set(meta["tags"])
    assert "datasets" not in meta and "model-index" not in meta  # nothing known: nothing invented


def test_metrics_and_hub_dataset_go_into_the_yaml_when_known(exported: Path) -> None:
    card = json.loads(Path(f"{exported}.json").read_text())
    card["data"] = {"shards": "hf://datasets/someone/fmow-shards/data", "dataset": "geoimagenet"}
    card["evaluation"] = {"knn_top1": 41.5, "linear_top1": 47.25}
    meta = _front_matter(model_card.render(card))
    assert meta["datasets"] == ["someone/fmow-shards"]
    assert meta["license_name"].startswith("imagenet")
    (result,) = meta["model-index"][0]["results"]
    assert {m["type"]: m["value"] for m in result["metrics"]} == card["evaluation"]
