"""`geo-export` and `geo-eval`: torchvision-loadable backbones, official checkpoints, frozen evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.data.loader import eval_loader
from geo_ssl.training.evaluation import cli as eval_cli
from geo_ssl.training.evaluation import export
from geo_ssl.training.evaluation.linear_probe import assert_unchanged, linear_probe, snapshot
from geo_ssl.training.models.backbone import FeatureExtractor, build_resnet, infer_arch
from geo_ssl.training.models.moco import MoCo
from geo_ssl.training.trainer.checkpoint import LAST
from tests.shard_fixtures import make_train_val_shards
from tests.training.tiny_run import tiny_run


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return make_train_val_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def run(shards, tmp_path_factory) -> Path:
    return tiny_run(shards, tmp_path_factory.mktemp("run"), method="moco+geo+tp", n_clusters=3)


def test_export_loads_into_torchvision_with_only_fc_missing(run, tmp_path):
    dst = tmp_path / "backbone.pth"
    export.main([str(run / LAST), str(dst)])
    sd = torch.load(dst, weights_only=True)
    model = torchvision.models.resnet18()
    result = model.load_state_dict(sd, strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"} and result.unexpected_keys == []
    trained = torch.load(run / LAST, weights_only=True)["model"]
    assert torch.equal(sd["layer4.1.conv2.weight"], trained["moco.encoder_q.layer4.1.conv2.weight"])
    assert torch.equal(sd["bn1.running_mean"], trained["moco.encoder_q.bn1.running_mean"])
    card = json.loads((tmp_path / "backbone.pth.json").read_text())
    assert card["arch"] == "resnet18" and card["method"] == "moco+geo+tp" and card["source"] == "geo-ssl"
    assert card["summary"]["written"] == len(sd) and card["summary"]["skipped"] == 4  # fc.0/fc.2 w+b
    assert card["torchgeo_style_name"].startswith("resnet18_fmow_rgb_moco_geo_tp-")


def test_official_moco_and_gassl_checkpoints_convert(tmp_path, capsys):
    torch.manual_seed(0)
    moco = MoCo("resnet18", dim=128, K=32)  # same attribute names as official moco/builder.py
    with torch.no_grad():
        moco.encoder_q.layer1[0].conv1.weight.add_(1.0)  # tell q from k
    state = {f"module.{k}": v for k, v in moco.state_dict().items()}
    geo_dict = {"module.1.weight": torch.randn(100, 128), "module.1.bias": torch.zeros(100)}
    optim = {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "params": [0, 1]}]}
    gassl = tmp_path / "checkpoint_0199.pth.tar"
    torch.save(
        {"epoch": 200, "arch": "resnet18", "state_dict": state, "geo_dict": geo_dict, "optimizer": optim},
        gassl,
    )
    dst = tmp_path / "gassl-r18.pth"
    export.main([str(gassl), str(dst)])
    sd = torch.load(dst, weights_only=True)
    assert torch.equal(sd["layer1.0.conv1.weight"], moco.encoder_q.layer1[0].conv1.weight)
    result = torchvision.models.resnet18().load_state_dict(sd, strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"} and not result.unexpected_keys
    assert json.loads((tmp_path / "gassl-r18.pth.json").read_text())["source"] == "gassl"
    # plain MoCo (no geo_dict, no module. prefix from a single-GPU port) and an exported backbone load too
    plain = tmp_path / "moco.pth.tar"
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": moco.state_dict()}, plain)
    resnet, meta = export.load_backbone(str(plain))
    assert meta["source"] == "moco" and meta["arch"] == "resnet18"
    assert torch.equal(resnet.layer1[0].conv1.weight, moco.encoder_q.layer1[0].conv1.weight)
    resnet, meta = export.load_backbone(str(dst))
    assert meta["source"] == "backbone"
    # a wrong arch claim and a non-checkpoint are one-line errors, exit 2
    torch.save({"epoch": 1, "arch": "resnet50", "state_dict": state}, tmp_path / "liar.pth.tar")
    with pytest.raises(GeoSSLError, match="says arch resnet50"):
        export.load_backbone(str(tmp_path / "liar.pth.tar"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        export.main([str(tmp_path / "junk.pth"), str(tmp_path / "x.pth")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_infer_arch_from_state_dict():
    for arch in ("resnet18", "resnet50"):
        assert infer_arch(build_resnet(arch).state_dict()) == arch


def test_linear_probe_leaves_backbone_unchanged(shards):
    torch.manual_seed(0)
    extractor = FeatureExtractor(build_resnet("resnet18"))
    before = snapshot(extractor)

    def loader(split):
        return eval_loader(shards, image_size=32, batch_size=8, num_workers=0, split=split)

    result = linear_probe(
        extractor, loader("train"), loader("val"), torch.device("cpu"), epochs=5, lr=0.1, batch_size=16
    )
    assert_unchanged(extractor, before)
    assert result["n_val"] == sum(len(b["category"]) for b in eval_loader(shards, 32, 64, 0, "val"))
    assert 0 <= result["top1"] <= result["top5"] <= 100 and result["dim"] == 512
    assert not any(p.requires_grad for p in extractor.parameters())
    # the check itself catches drift: a forward pass in train mode moves BN running stats
    extractor.train()
    extractor(torch.randn(4, 3, 32, 32))
    with pytest.raises(RuntimeError, match="running_mean changed"):
        assert_unchanged(extractor, before)


def test_geo_eval_cli_knn_and_linear_probe(run, shards, tmp_path, capsys):
    common = ["--data", shards, "--image-size", "32", "--batch-size", "8", "--num-workers", "0"]
    eval_cli.main(
        ["knn", "--weights", str(run / LAST), *common, "--k", "5", "--out", str(tmp_path / "knn.json")]
    )
    knn = json.loads((tmp_path / "knn.json").read_text())
    assert knn["eval"] == "knn" and knn["bank"] > 12 and 0 <= knn["top1"] <= 100  # every view of 12 locations
    assert knn["backbone"]["method"] == "moco+geo+tp"
    eval_cli.main(["linear-probe", "--weights", "random", "--arch", "resnet18", *common, "--epochs", "3",
                   "--out", str(tmp_path / "probe.json")])  # fmt: skip
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert (
        probe["eval"] == "linear-probe" and probe["epochs"] == 3 and probe["backbone"]["source"] == "random"
    )
    out = capsys.readouterr().out
    assert "knn top-1:" in out and "linear-probe top-1:" in out
    with pytest.raises(SystemExit):
        eval_cli.main(["linear-probe", "--help"])  # help strings format (no stray %)
    assert "--probe-batch-size" in capsys.readouterr().out
    assert "--trust" in export.build_parser().format_help()
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main(["knn", "--weights", str(tmp_path / "missing.pt"), *common])
    assert exit_info.value.code == 2
    assert "checkpoint not found" in capsys.readouterr().err
