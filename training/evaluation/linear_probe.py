"""Frozen-backbone linear evaluation, the MoCo / GASSL protocol on precomputed features.

The backbone stays in eval mode and is never optimised (MoCo's main_lincls reasoning: BN in train mode
would revise the running statistics, so part of the pretrained model would change). A frozen eval-mode
backbone is a fixed function, so its features are computed once per image (eval transform, no
augmentation) and only fc = Linear(D, classes) is trained: SGD momentum 0.9, weight decay 0, fc init
N(0, 0.01) and bias 0, cosine or step (x0.1 at 60% and 80%) schedule. Afterwards every backbone tensor
is compared with the snapshot taken before, as MoCo's sanity_check does.

The headline figure is the last epoch's ("reported": "last-epoch"). GASSL's main_lincls.py scores the
test split after every epoch and keeps the best (`best_acc1`): picking the epoch on the split that is
reported tunes on the test set, so that figure is only added beside it, labelled `best_epoch_top1`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geo_ssl.pipeline.common.progress import progress
from geo_ssl.training.models.knn import Features, extract_features, require_labels
from geo_ssl.training.models.metrics import classification_report
from geo_ssl.training.trainer.schedule import LrFactor


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """Raise if any parameter or buffer of the frozen backbone moved."""
    for name, value in model.state_dict().items():
        if not torch.equal(value, before[name]):
            raise RuntimeError(f"frozen backbone tensor {name} changed during linear evaluation")


def train_linear(
    train: Features,
    val: Features,
    n_classes: int,
    epochs: int = 100,
    lr: float = 1.0,
    batch_size: int = 256,
    schedule: str = "step",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Train fc on fixed features; top-1 / top-5 / macro F1 (%) and the per-location top-1 on `val` after
    the last epoch, with the best epoch's top-1 beside it (module doc: why not the headline)."""
    gen = torch.Generator().manual_seed(seed)
    fc = nn.Linear(train.feats.shape[1], n_classes)
    with torch.no_grad():
        fc.weight.normal_(0.0, 0.01, generator=gen)
        fc.bias.zero_()
    opt = torch.optim.SGD(fc.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps_per_epoch = max(1, -(-len(train.labels) // batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, LrFactor(schedule, epochs * steps_per_epoch))
    history, val_top1 = [], []
    for _ in progress(range(epochs), total=epochs, desc="linear probe", unit="epoch"):
        order = torch.randperm(len(train.labels), generator=gen)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(fc(train.feats[idx]), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append(total / max(1, len(order)))
        with torch.no_grad():
            val_top1.append((fc(val.feats).argmax(1) == val.labels).double().mean().item() * 100)
    with torch.no_grad():
        result = classification_report(F.softmax(fc(val.feats), dim=1), val.labels, val.keys)
    best = max(range(epochs), key=val_top1.__getitem__)
    result.update(
        reported="last-epoch",
        reported_why="the epoch is not chosen on the split it is scored on (that would tune on the test set)",
        best_epoch_top1=val_top1[best],
        best_epoch=best + 1,
        best_epoch_note="GASSL main_lincls.py best_acc1: the epoch picked on this same split",
        train_loss_first=history[0],
        train_loss_last=history[-1],
    )
    return result


def linear_probe(
    backbone: nn.Module,
    train_batches: Iterable,
    val_batches: Iterable,
    device: torch.device,
    max_train: int = 0,
    max_val: int = 0,
    **train_kwargs: Any,
) -> dict[str, Any]:
    """Features of `backbone` (a FeatureExtractor) on both splits, then `train_linear`; checks the freeze."""
    before = snapshot(backbone)
    for p in backbone.parameters():
        p.requires_grad_(False)
    train = extract_features(
        backbone, train_batches, device, max_samples=max_train, normalize=False, desc="train features"
    )
    val = extract_features(
        backbone, val_batches, device, max_samples=max_val, normalize=False, desc="val features"
    )
    if len(train.labels) == 0 or len(val.labels) == 0:
        raise ValueError("linear probe needs labelled images in both splits")
    require_labels(train, val)
    n_classes = int(max(train.labels.max(), val.labels.max())) + 1
    result = train_linear(train, val, n_classes, **train_kwargs)
    assert_unchanged(backbone, before)
    result.update(
        n_train=len(train.labels), n_val=len(val.labels), n_classes=n_classes, dim=train.feats.shape[1]
    )
    return result
