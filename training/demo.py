"""The training half of `make demo`: a short CPU pretraining run on freshly built shards, then evaluation.

ResNet-18 at 64 px, moco+geo+tp, a small queue, a few epochs; then the exported backbone's kNN and
linear-probe top-1 on the val split's categories, next to a random-init backbone for scale. Re-running
continues the run (or skips it when complete) instead of starting over.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from geo_ssl.pipeline.common import fsio
from geo_ssl.training.evaluation.export import export_backbone, load_backbone
from geo_ssl.training.evaluation.linear_probe import assert_unchanged, snapshot, train_linear
from geo_ssl.training.models.backbone import FeatureExtractor
from geo_ssl.training.models.knn import Features, extract_features, knn_top1, normalized
from geo_ssl.training.trainer.checkpoint import LAST, load_checkpoint
from geo_ssl.training.trainer.config import PretrainConfig
from geo_ssl.training.trainer.loop import pretrain


def demo_config(shards_dir: str, out_dir: str, epochs: int = 12, num_workers: int = 2) -> PretrainConfig:
    return PretrainConfig(
        data=shards_dir, out=os.path.join(out_dir, "pretrain"), method="moco+geo+tp", arch="resnet18",
        image_size=64, batch_size=32, moco_k=128, moco_m=0.99, temperature=0.2, lr=0.06, epochs=epochs,
        num_workers=num_workers, shuffle_buffer=200, knn_every=epochs, knn_bank_samples=0, knn_query_samples=0,
        log_every=5, ckpt_every=50,
    )  # fmt: skip


#: The frozen evaluation's settings: weighted kNN (k, T) and the linear probe (train_linear's arguments).
KNN_K, KNN_T = 20, 0.1
PROBE: dict[str, Any] = {"epochs": 30, "lr": 1.0, "batch_size": 64, "schedule": "cosine"}


def frozen_features(
    extractor: nn.Module, shards_dir: str, split: str, image_size: int, num_workers: int, device: torch.device
) -> tuple[Features, torch.Tensor]:
    """Raw features of every view of `split` (labels: category; keys: `{key}/{NN}`) and each view's
    geo_cluster, read in the same pass (the ablation probes both)."""
    from geo_ssl.training.data.loader import eval_loader

    geo: list[torch.Tensor] = []

    def tapped() -> Iterator[dict]:
        for batch in eval_loader(
            shards_dir, image_size=image_size, batch_size=64, num_workers=num_workers, split=split
        ):
            geo.append(batch["geo_cluster"])
            yield batch

    feats = extract_features(extractor, tapped(), device, normalize=False, desc=f"{split} features")
    return feats, (torch.cat(geo).long() if geo else torch.empty(0, dtype=torch.long))


def linear_top1(train: Features, val: Features) -> float:
    """Top-1 (%) on `val` of the linear probe (PROBE settings) trained on `train`'s labels."""
    n_classes = int(max(train.labels.max(), val.labels.max())) + 1
    return train_linear(train, val, n_classes, **PROBE)["top1"]


def evaluate_backbone(
    weights: str, shards_dir: str, image_size: int, num_workers: int, arch: str | None = None
) -> dict:
    """kNN (k=20 on this small bank) and a 30-epoch linear probe on the same features, train -> val."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resnet, _ = load_backbone(weights, arch=arch)
    extractor = FeatureExtractor(resnet).to(device)
    before = snapshot(extractor)
    train, _ = frozen_features(extractor, shards_dir, "train", image_size, num_workers, device)
    val, _ = frozen_features(extractor, shards_dir, "val", image_size, num_workers, device)
    knn = knn_top1(normalized(train), normalized(val), k=KNN_K, T=KNN_T)
    linear = linear_top1(train, val)
    assert_unchanged(extractor, before)
    return {
        "knn_top1": knn["top1"],
        "linear_top1": linear,
        "n_train": len(train.labels),
        "n_val": len(val.labels),
    }


def run_demo_training(
    shards_dir: str, out_dir: str, epochs: int = 12, num_workers: int = 2
) -> dict[str, Any]:
    """Pretrain briefly on OUT/train-*.tar, evaluate on OUT/val-*.tar; print and return the top-1s."""
    cfg = demo_config(shards_dir, out_dir, epochs=epochs, num_workers=num_workers)
    ckpt_url = os.path.join(cfg.out, LAST)
    done = False
    if os.path.exists(ckpt_url):
        state = load_checkpoint(ckpt_url)
        done = state["step"] >= cfg.epochs * state["steps_per_epoch"]
        del state
    if not done:
        cfg.resume = os.path.exists(ckpt_url)
        pretrain(cfg)
    backbone = os.path.join(out_dir, "backbone-resnet18.pth")
    export_backbone(ckpt_url, backbone)
    print("== evaluating (frozen features, train split -> val split categories)")
    results = {
        "pretrained": evaluate_backbone(backbone, shards_dir, cfg.image_size, num_workers),
        "random_init": evaluate_backbone("random", shards_dir, cfg.image_size, num_workers, arch="resnet18"),
        "run": cfg.out,
        "backbone": backbone,
    }
    for name in ("pretrained", "random_init"):
        r = results[name]
        print(f"  {name:12s} kNN top-1 {r['knn_top1']:5.1f}%   linear-probe top-1 {r['linear_top1']:5.1f}%"
              f"   ({r['n_train']} train / {r['n_val']} val images)")  # fmt: skip
    fsio.atomic_write_text(os.path.join(out_dir, "eval.json"), json.dumps(results, indent=1) + "\n")
    return results
