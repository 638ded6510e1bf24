"""`geo-pretrain` end to end on tiny real shards: learning, exact resume, SIGTERM, config handling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.trainer.checkpoint import LAST
from geo_ssl.training.trainer.cli import build_parser, main
from geo_ssl.training.trainer.config import (
    PretrainConfig,
    config_from_args,
    config_from_dict,
    resolved_bn_splits,
    validate,
)
from geo_ssl.training.trainer.loop import pretrain
from geo_ssl.training.trainer.run_log import read_metrics
from tests.shard_fixtures import make_tiny_shards

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("shards")
    make_tiny_shards(folder, n_locations=16, n_shards=2, split="train", image_size=40, n_clusters=4)
    make_tiny_shards(folder, n_locations=8, n_shards=1, split="val", image_size=40, n_clusters=4, seed=1)
    return str(folder)


def tiny(shards: str, out: Path, **kw) -> PretrainConfig:
    """ResNet-18 at 32 px, no loader workers, no monitors unless asked."""
    values = dict(
        data=shards, out=str(out), arch="resnet18", image_size=32, batch_size=8, moco_k=16, moco_m=0.9, lr=0.03,
        epochs=1, num_workers=0, shuffle_buffer=8, n_clusters=4, knn_every=0, log_every=1, ckpt_every=1000,
    )  # fmt: skip
    values.update(kw)
    return PretrainConfig(**values)


def test_short_run_loss_falls_and_logs(shards, tmp_path):
    # Temporal pairs without augmentation: two dates of a place, learnable within 30 steps on CPU.
    cfg = tiny(shards, tmp_path / "run", method="moco+tp", augment=False, batch_size=16, moco_k=32,
               epoch_samples=16 * 30, schedule="constant", knn_every=1, knn_k=5)  # fmt: skip
    result = pretrain(cfg)
    rows = read_metrics(cfg.out, "train")
    assert [r["step"] for r in rows] == list(range(1, 31))
    losses = [r["loss"] for r in rows]
    early, late = sum(losses[2:10]) / 8, sum(losses[-8:]) / 8  # steps 1-2 still see the random queue
    assert late < early - 0.2, f"loss did not fall: {early:.3f} -> {late:.3f}"
    assert all(0 <= r["data_wait"] <= 1 and r["samples_per_s"] > 0 and r["q_std"] > 0 for r in rows)
    knn = read_metrics(cfg.out, "knn")
    assert len(knn) == 1 and knn[0]["bank"] == 16 and knn[0]["query"] == 8 and 0 <= knn[0]["top1"] <= 100
    assert knn[0]["k"] == 1  # --knn-k 5 fitted to the bank: at most a tenth of its 16 images
    assert result["knn"]["top1"] == knn[0]["top1"] and not result["interrupted"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "run" / "tb"))
    assert result["summary"]["inputs"] == result["summary"]["written"] == 30


def test_resume_after_interrupt_matches_uninterrupted_run(shards, tmp_path):
    common = dict(method="moco+geo+tp", epoch_samples=8 * 5, bn_splits=2, log_every=1)
    straight = pretrain(tiny(shards, tmp_path / "a", **common))
    assert straight["steps"] == 5
    first = pretrain(tiny(shards, tmp_path / "b", max_steps=3, **common))  # stops after step 3, checkpointed
    assert first["steps"] == 3
    resumed = pretrain(tiny(shards, tmp_path / "b", resume=True, **common))
    assert resumed["steps"] == 5 and resumed["trained_steps"] == 2
    a = {r["step"]: r for r in read_metrics(str(tmp_path / "a"), "train")}
    b = read_metrics(str(tmp_path / "b"), "train")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]  # nothing lost or duplicated in metrics.jsonl
    for r in b:
        for key in ("loss", "loss_moco", "loss_geo", "q_std"):
            assert r[key] == pytest.approx(a[r["step"]][key], rel=1e-5, abs=1e-6), (r["step"], key)
    sa = torch.load(tmp_path / "a" / LAST, weights_only=True)["model"]
    sb = torch.load(tmp_path / "b" / LAST, weights_only=True)["model"]
    for name, value in sa.items():
        assert torch.allclose(value.float(), sb[name].float(), atol=1e-5), name


def test_checkpoint_loads_weights_only(shards, tmp_path):
    pretrain(tiny(shards, tmp_path / "run", method="moco+geo", epoch_samples=8 * 2))
    ckpt = torch.load(tmp_path / "run" / LAST, weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "step", "epoch", "rng", "config"} <= set(ckpt)
    assert ckpt["step"] == 2 and ckpt["epoch"] == 1 and ckpt["epoch_step"] == 0
    assert ckpt["model"]["moco.queue"].shape == (128, 16) and int(ckpt["model"]["moco.queue_ptr"]) == 0
    assert "geo_head.1.weight" in ckpt["model"]
    rng = ckpt["rng"][0]
    assert all(isinstance(v, torch.Tensor) for v in rng.values())
    assert {"python_state", "numpy_keys", "torch"} <= set(rng)
    assert ckpt["config"]["arch"] == "resnet18" and ckpt["n_clusters"] == 4
    toml = (tmp_path / "run" / "config.toml").read_text()
    assert 'method = "moco+geo"' in toml and "resume = false" in toml


def test_sigterm_writes_checkpoint_and_exits(shards, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "geo_ssl.training.trainer.cli", "--data", shards, "--out", str(out), "--arch", "resnet18",
        "--image-size", "32", "--batch-size", "8", "--moco-k", "16", "--epochs", "50", "--num-workers", "0",
        "--n-clusters", "4", "--knn-every", "0", "--log-every", "1", "--shuffle-buffer", "8",
    ]  # fmt: skip
    env = {**os.environ, "GEO_SSL_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 90
    while not (metrics.exists() and metrics.read_text().strip()):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no training step within 90 s"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "--resume" in err
    ckpt = torch.load(out / LAST, weights_only=True)
    steps = [r["step"] for r in read_metrics(str(out), "train")]
    assert ckpt["step"] == steps[-1] >= 1
    assert ckpt["step"] < 50 * ckpt["steps_per_epoch"]
    # `--out RUN --resume` alone continues: the rest of the config comes from RUN/config.toml
    main(["--out", str(out), "--resume", "--max-steps", str(ckpt["step"] + 1)])
    assert torch.load(out / LAST, weights_only=True)["step"] == ckpt["step"] + 1


def test_config_file_flags_and_validation(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text('data = "shards"\narch = "resnet18"\nbatch_size = 64\nmoco_k = 128\nlr = 0.5\n')
    cfg = config_from_args(
        build_parser().parse_args(["--config", str(toml), "--batch-size", "32", "--no-mlp"])
    )
    assert (cfg.arch, cfg.batch_size, cfg.moco_k, cfg.lr, cfg.mlp) == ("resnet18", 32, 128, 0.5, False)
    assert "--moco-k" in build_parser().format_help()  # every field is a documented flag
    assert cfg.base_lr == 0.5 and PretrainConfig(batch_size=512).base_lr == pytest.approx(0.06)
    with pytest.raises(GeoSSLError, match=r"unknown key.*batchsize"):
        config_from_dict({"batchsize": 3})
    with pytest.raises(GeoSSLError, match="epochs = '3' should be int"):
        config_from_dict({"epochs": "3"})
    bad = [
        (dict(moco_k=16, batch_size=32), "moco_k = 16 is smaller than the global batch"),
        (dict(batch_size=24, bn_splits=5), "not divisible by bn_splits"),
        (dict(arch="vgg16"), "arch = 'vgg16'; choose one of"),
        (dict(moco_m=1.0), "moco_m = 1.0 must be in"),
        (dict(data=""), "data is empty"),
        (dict(image_size=16), "too small"),
        (dict(crop_scale=1.5), "crop_scale = 1.5 must be in"),
    ]
    for kw, message in bad:
        with pytest.raises(GeoSSLError, match=message):
            validate(PretrainConfig(**{"data": "x", **kw}))
    with pytest.raises(GeoSSLError, match="not divisible by the 3 ranks"):
        validate(PretrainConfig(data="x", batch_size=32), world_size=3)
    assert resolved_bn_splits(PretrainConfig(batch_size=256), 1) == 8
    assert resolved_bn_splits(PretrainConfig(batch_size=32), 1) == 2
    assert resolved_bn_splits(PretrainConfig(batch_size=256), 4) == 1
    (tmp_path / "broken.toml").write_text("data = [\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(tmp_path / "broken.toml")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geo-pretrain: error:") and "not valid TOML" in err and "\n" not in err


def test_resume_rules(shards, tmp_path):
    with pytest.raises(GeoSSLError, match="no checkpoint to resume"):
        pretrain(tiny(shards, tmp_path / "run", resume=True))
    pretrain(tiny(shards, tmp_path / "run", method="moco", epoch_samples=8))
    with pytest.raises(GeoSSLError, match="already holds a run"):
        pretrain(tiny(shards, tmp_path / "run", method="moco", epoch_samples=8))
    with pytest.raises(GeoSSLError, match=r"config differs.*moco_k: 16 -> 32"):
        pretrain(tiny(shards, tmp_path / "run", method="moco", epoch_samples=8, moco_k=32, resume=True))


def test_head_bn_crop_scale_and_cpu_bf16_reach_the_run(shards, tmp_path, capsys):
    """The short-run knobs of the toy ablation: BN in the head, a larger smallest crop, bf16 on CPU."""
    run = tmp_path / "run"
    pretrain(
        tiny(shards, run, method="moco+geo", epoch_samples=8 * 2, head_bn=True, crop_scale=0.5, amp="bf16")
    )
    assert "cpu bfloat16," in capsys.readouterr().err  # autocast on: only an explicit bf16 turns it on on CPU
    state = torch.load(run / LAST, weights_only=True)
    assert "moco.encoder_q.fc.1.running_var" in state["model"]  # the head's BatchNorm
    assert state["config"]["crop_scale"] == 0.5 and state["config"]["head_bn"] is True
    rows = read_metrics(str(run), "train")
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    with pytest.raises(GeoSSLError, match=r"config differs.*head_bn: True -> False"):
        pretrain(
            tiny(shards, run, method="moco+geo", epoch_samples=8 * 2, crop_scale=0.5, amp="bf16", resume=True)
        )
    pretrain(tiny(shards, tmp_path / "auto", method="moco", epoch_samples=8))
    assert "cpu," in capsys.readouterr().err  # amp auto stays off on CPU


def test_simclr_runs_on_views_loader(shards, tmp_path):
    result = pretrain(tiny(shards, tmp_path / "run", method="simclr", epoch_samples=8 * 2))
    rows = read_metrics(str(tmp_path / "run"), "train")
    assert [r["step"] for r in rows] == [1, 2] and result["steps"] == 2
    assert all(r["loss"] > 0 and 0 <= r["acc_simclr"] <= 1 for r in rows)
    state = torch.load(tmp_path / "run" / LAST, weights_only=True)
    assert state["method"] == "simclr" and "encoder.conv1.weight" in state["model"]
    assert json.loads(json.dumps(state["metrics"]))["step"] == 2
