"""`geo-export` formats and model card; what it refuses (not a checkpoint, arch mismatch, special files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file

from geo_ssl.training.evaluation import cli as eval_cli
from geo_ssl.training.evaluation import export
from geo_ssl.training.models.backbone import ARCHS, FeatureExtractor
from geo_ssl.training.trainer.checkpoint import LAST
from geo_ssl.training.trainer.config import PretrainConfig
from geo_ssl.training.trainer.loop import pretrain
from tests.shard_fixtures import make_tiny_shards

BIN = Path(sys.executable).parent
FC = {"fc.weight", "fc.bias"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("shards")
    make_tiny_shards(folder, n_locations=8, n_shards=1, split="train", image_size=40, n_clusters=3)
    make_tiny_shards(folder, n_locations=4, n_shards=1, split="val", image_size=40, n_clusters=3, seed=1)
    card = {
        "name": "tiny test shards",
        "fingerprint": "0123abcd",
        "splits": {"train": {"samples": 8, "views": 20}},
    }
    (folder / "dataset.json").write_text(json.dumps(card))
    return str(folder)


@pytest.fixture(scope="module")
def ckpt(shards, tmp_path_factory) -> str:
    """A real geo-pretrain checkpoint: 2 steps of MoCo-v2+TP+Geo on a ResNet-18 at 32 px."""
    out = tmp_path_factory.mktemp("run")
    cfg = PretrainConfig(
        data=shards, out=str(out), arch="resnet18", method="moco+geo+tp", image_size=32, batch_size=4, moco_k=8,
        epochs=1, max_steps=2, num_workers=0, shuffle_buffer=4, n_clusters=3, knn_every=0, lr=0.03,
    )  # fmt: skip
    pretrain(cfg)
    return str(out / LAST)


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory) -> Path:
    """A safetensors export (+ .json and .md cards) of the checkpoint."""
    dst = tmp_path_factory.mktemp("export") / "resnet18-geo.safetensors"
    export.main([ckpt, str(dst)])
    return dst


def _features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_safetensors_loads_into_torchvision_and_timm_with_equal_features(
    ckpt, exported, tmp_path, monkeypatch
):
    sd = load_file(exported)
    tv = torchvision.models.resnet18()
    result = tv.load_state_dict(sd, strict=False)
    assert set(result.missing_keys) == FC and result.unexpected_keys == []
    tm = timm.create_model("resnet18", pretrained=False, num_classes=0)
    tm.load_state_dict(sd)  # strict: timm's ResNet keys are torchvision's, minus the classifier
    via_cfg = timm.create_model(
        "resnet18", pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(exported)}
    )
    reference, meta = export.load_backbone(ckpt)  # the exported backbone, read from the training checkpoint
    assert meta["step"] == 2 and meta["arch"] == "resnet18"
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    want = _features(FeatureExtractor(reference), x)
    tv.fc = torch.nn.Identity()
    for model in (tv, tm, via_cfg):
        assert torch.allclose(_features(model, x), want, atol=1e-5, rtol=1e-5)
    assert want.abs().sum() > 0
    # the loading code the card prints runs as written, from the folder holding the file
    card = json.loads(Path(f"{exported}.json").read_text())
    monkeypatch.chdir(exported.parent)
    for lib in ("torchvision", "timm"):
        namespace: dict = {}
        exec(card["load"][lib], namespace)
        assert torch.equal(namespace["model"].conv1.weight, sd["conv1.weight"])


def test_model_card_records_architecture_method_data_preprocessing_and_steps(shards, exported):
    card = json.loads(Path(f"{exported}.json").read_text())
    assert card["format"] == "safetensors" and card["arch"] == "resnet18" and card["method"] == "moco+geo+tp"
    assert card["step"] == 2 and card["feature_dim"] == 512 and card["tensors"] == len(load_file(exported))
    assert card["preprocessing"]["input_size"] == [3, 32, 32]
    assert card["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert card["data"] == {
        "shards": shards, "split": "train", "name": "tiny test shards", "fingerprint": "0123abcd",
        "locations": 8, "views": 20, "geo_clusters": 3,
    }  # fmt: skip
    assert card["training"]["batch_size"] == 4 and card["training"]["max_steps"] == 2
    assert card["torchgeo_style_name"].endswith(".safetensors")
    md = Path(f"{exported}.md").read_text()
    for needle in ("resnet18", "moco+geo+tp", "2 optimizer steps", "[0.229, 0.224, 0.225]", "32 x 32",
                   "tiny test shards", "timm.create_model(\"resnet18\"", "torchvision.models.resnet18()",
                   card["sha256"]):  # fmt: skip
        assert needle in md, needle
    with safe_open(str(exported), "pt") as f:
        meta = f.metadata()
    assert (
        meta["arch"] == "resnet18" and meta["step"] == "2" and json.loads(meta["input_size"]) == [3, 32, 32]
    )


def test_pth_still_works_and_safetensors_is_accepted_as_weights(ckpt, exported, shards, tmp_path, capsys):
    pth = tmp_path / "backbone.pth"
    export.main([ckpt, str(pth)])  # the suffix picks the format
    sd = torch.load(pth, weights_only=True)
    safe = load_file(exported)
    assert sd.keys() == safe.keys() and all(torch.equal(sd[k], safe[k]) for k in sd)
    assert json.loads(Path(f"{pth}.json").read_text())["format"] == "pth"
    explicit = tmp_path / "weights-file"
    export.main([ckpt, str(explicit), "--format", "pth"])
    assert torch.load(explicit, weights_only=True).keys() == sd.keys()
    export.main([ckpt, str(tmp_path / "no-suffix")])  # safetensors is the default
    assert load_file(tmp_path / "no-suffix").keys() == sd.keys()
    # an exported .safetensors re-exports and loads as --weights (arch and step kept from its metadata)
    resnet, meta = export.load_backbone(str(exported))
    assert meta == {"source": "backbone", "arch": "resnet18", "method": "moco+geo+tp", "step": 2,
                    "image_size": 32, "dropped_head_tensors": 0, "file_format": "safetensors"}  # fmt: skip
    assert torch.equal(resnet.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    again = tmp_path / "again.pth"
    export.main([str(exported), str(again)])
    assert torch.equal(torch.load(again, weights_only=True)["bn1.running_var"], sd["bn1.running_var"])
    common = ["--data", shards, "--image-size", "32", "--batch-size", "8", "--num-workers", "0"]
    eval_cli.main(
        ["knn", "--weights", str(exported), *common, "--k", "3", "--out", str(tmp_path / "knn.json")]
    )
    assert json.loads((tmp_path / "knn.json").read_text())["backbone"]["file_format"] == "safetensors"
    with pytest.raises(SystemExit) as exit_info:
        export.main([ckpt, str(tmp_path / "x.pth"), "--format", "safetensors"])
    assert exit_info.value.code == 2
    assert "the name says pth, but --format safetensors" in capsys.readouterr().err
    assert export.ARCH_NAMES == tuple(ARCHS)  # geo-export's torch-free copy of the arch list


def _run_all(*commands: list[str], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Run CLI commands side by side (each pays torch's import time) and collect their results."""
    env = {**os.environ, "GEO_SSL_PROGRESS": "0"}
    procs = [
        subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in commands
    ]
    results = []
    for argv, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=180)
        results.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    return results


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return _run_all(list(argv), cwd=cwd)[0]


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "weights_only" not in proc.stderr and "--trust" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    return proc.stderr


def test_not_a_checkpoint_and_arch_mismatch_are_one_line_errors(exported, shards, tmp_path, capsys):
    text = tmp_path / "notes.pth"
    text.write_text("these are my notes, not weights\n")
    noise = tmp_path / "noise.pth.tar"
    noise.write_bytes(b"\x00\xfe" + os.urandom(4094))  # random bytes (not starting like a zip or a pickle)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(torch_zip_head(tmp_path))
    eval_args = ["--data", shards, "--image-size", "32", "--num-workers", "0"]
    export_cmd, eval_cmd = str(BIN / "geo-export"), [str(BIN / "geo-eval"), "knn", *eval_args, "--weights"]
    *bad_inputs, mismatch = _run_all(
        [export_cmd, str(text), "out.safetensors"],
        [export_cmd, str(noise), "out.safetensors"],
        [*eval_cmd, str(text)],
        [*eval_cmd, str(noise)],
        [export_cmd, str(exported), "r50.pth", "--arch", "resnet50"],
        cwd=tmp_path,
    )
    for proc, bad in zip(bad_inputs, (text, noise, text, noise), strict=True):
        _one_line_error(proc, f"{bad} is not a checkpoint (")
    assert "resnet18" in _one_line_error(mismatch, "--arch resnet50")
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "r50.pth").exists()
    # a torch checkpoint cut short: the CLI's code path, in-process (torch is loaded already)
    with pytest.raises(SystemExit) as exit_info:
        export.main([str(cut), str(tmp_path / "out.safetensors")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(
        f"geo-export: error: {cut} is not a checkpoint (damaged torch file: "
    )


def torch_zip_head(tmp_path: Path) -> bytes:
    """The first half of a real torch checkpoint: a zip archive cut short."""
    whole = tmp_path / "whole.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, whole)
    data = whole.read_bytes()
    return data[: len(data) // 2]


def test_export_refuses_special_destinations_and_replaces_regular_files_atomically(exported, tmp_path):
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    for dst, kind in ((fifo, "fifo"), (folder, "directory")):
        _one_line_error(
            _run(str(BIN / "geo-export"), str(exported), str(dst), cwd=tmp_path),
            f"{dst} exists and is a {kind}, not a regular file",
        )
    assert fifo.is_fifo() and folder.is_dir() and not any(folder.iterdir())
    # a special file where a card goes is refused before anything is written
    os.mkfifo(tmp_path / "w.safetensors.md")
    _one_line_error(_run(str(BIN / "geo-export"), str(exported), "w.safetensors", cwd=tmp_path), "is a fifo")
    assert not (tmp_path / "w.safetensors").exists()
    # a regular file is replaced by rename: a hard link to the old file keeps the old bytes
    dst = tmp_path / "old.safetensors"
    dst.write_bytes(b"old weights")
    os.link(dst, tmp_path / "old-link")
    proc = _run(str(BIN / "geo-export"), str(exported), str(dst), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "old-link").read_bytes() == b"old weights"
    assert load_file(dst).keys() == load_file(exported).keys()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_pre_1_6_torch_files_of_official_checkpoints_convert(tmp_path, capsys):
    """Official MoCo / GASSL releases may be in torch's legacy (non-zip) format; protocol 2 loads safely."""
    resnet = torchvision.models.resnet18()
    state = {f"module.encoder_q.{k}": v for k, v in resnet.state_dict().items()}
    legacy = tmp_path / "moco_v2.pth.tar"
    torch.save(
        {"epoch": 200, "arch": "resnet18", "state_dict": state}, legacy, _use_new_zipfile_serialization=False
    )
    export.main([str(legacy), str(tmp_path / "moco.safetensors")])
    sd = load_file(tmp_path / "moco.safetensors")
    assert torch.equal(sd["layer2.0.downsample.0.weight"], resnet.layer2[0].downsample[0].weight)
    # a newer pickle protocol is a real torch file the safe loader cannot read: say so, and offer --trust
    proto4 = tmp_path / "proto4.pth.tar"
    torch.save({"state_dict": state}, proto4, _use_new_zipfile_serialization=False, pickle_protocol=4)
    with pytest.raises(SystemExit):
        export.main([str(proto4), str(tmp_path / "p4.safetensors")])
    err = capsys.readouterr().err
    assert "pickle protocol 4" in err and "--trust" in err and err.count("\n") == 1
    export.main([str(proto4), str(tmp_path / "p4.safetensors"), "--trust"])
    assert load_file(tmp_path / "p4.safetensors").keys() == sd.keys()
