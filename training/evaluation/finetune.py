"""End-to-end fine-tuning (`geo-eval finetune`): the whole network, backbone and a new fc, trained on the
train split's categories and scored on the val split, the paper's "Finetune" column (GASSL Table 1).

GASSL's protocol is main_lincls_fmow_chenlin.py (commit 5b52afe, removed later), run by
lincls_fmow_chenlin.sh. Each value and where it comes from:

- whole network trained: main_lincls.py with its freeze loop (`requires_grad = False` on all but fc)
  commented out and `assert len(parameters) == 2` disabled; the SGD optimizer gets every parameter.
- fc = Linear(feature dim, classes), weight N(0, 0.01), bias 0: same file (`model.fc.weight.data.normal_`).
- SGD momentum 0.9 (`--momentum` default), weight decay 0 (`--wd` default 0.).
- lr 0.001 at batch 256: `LIN_LR=0.001`, `--batch-size 256` in lincls_fmow_chenlin.sh. Ours: --lr is the
  lr of a batch of 256, scaled linearly to --batch-size (as geo-eval linear-probe does).
- 100 epochs (`--epochs` default), step schedule x0.1 at epochs 60 and 80 (`--schedule [60, 80]`, no
  `--cos`): `--schedule step` here (x0.1 at 60% and 80% of the steps, updated per step).
- BatchNorm keeps its pretrained running statistics: the script's train() calls `model.eval()` (inherited
  from the frozen protocol), so BN normalises with the stored statistics while its affine weights and all
  convolutions train. `--bn train` (ours) lets BN update them instead.
- an epoch is every train image once (GASSL's CSV lists images): the loader's epoch_unit "image".
- fp32 (the script has no autocast).
- test transform Scale(224) + CenterCrop(224) + ImageNet normalisation: eval_loader's transform.
- train transform: GASSL used Scale(224) + RandomCrop(224) (no flip, no colour). Ours differs: the
  project's loader offers the MoCo-v2 augmentation (augment.py: RandomResizedCrop, colour jitter,
  grayscale, blur, flip; `--crop-scale` sets its smallest crop) or, with `--no-augment`, the eval
  transform on train images; we do not add a third augmentation for this one command.
- reported figure: the last epoch. GASSL validated on the test split after every epoch and kept the best
  (`best_acc1`), which selects the epoch on the split it reports; we score once, at the end.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.pipeline.common.progress import progress
from geo_ssl.schemas.dataset_card import category_names, load_card
from geo_ssl.training.evaluation.linear_probe import snapshot
from geo_ssl.training.models.backbone import feature_dim
from geo_ssl.training.models.knn import Features, extract_features, require_labels
from geo_ssl.training.models.metrics import classification_report
from geo_ssl.training.trainer.schedule import LrFactor

BN_MODES = ("frozen", "train")


def card_classes(data: str) -> int:
    """Classes of the shards' labels from the dataset card beside them (largest category id + 1), or 0
    when there is no card that lists categories (a shard pattern, a hand-made folder)."""
    if not isinstance(data, str) or "{" in data or data.endswith(".tar"):
        return 0
    names = category_names(load_card(data))
    return max(names) + 1 if names else 0


def new_classifier(resnet: torchvision.models.ResNet, n_classes: int, seed: int) -> nn.Module:
    """`resnet` with fc = Linear(D, n_classes), weight N(0, 0.01) and bias 0 (GASSL / MoCo lincls init)."""
    fc = nn.Linear(feature_dim(resnet), n_classes)
    with torch.no_grad():
        fc.weight.normal_(0.0, 0.01, generator=torch.Generator().manual_seed(seed))
        fc.bias.zero_()
    resnet.fc = fc
    return resnet


def _labels(category: torch.Tensor, n_classes: int) -> torch.Tensor:
    if int(category.min()) < 0:
        require_labels(Features(torch.empty(0), category, []))  # the anonymised-split message
    if int(category.max()) >= n_classes:
        raise GeoSSLError(
            f"category {int(category.max())} is outside the {n_classes} classes; give --num-classes above it"
        )
    return category


def finetune(
    resnet: torchvision.models.ResNet,
    train_loader: Any,
    val_batches: Iterable,
    device: torch.device,
    n_classes: int,
    epochs: int = 100,
    lr: float = 0.001,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "step",
    bn: str = "frozen",
    max_steps: int = 0,
    max_val: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Train backbone + new fc on `train_loader` (a views_loader with one view: {"views": [B, 1, 3, S, S],
    "category"}), then score the val split once; returns the report with how the backbone moved.

    `max_steps` (> 0) stops early for smoke tests; the lr schedule still spans all epochs."""
    if bn not in BN_MODES:
        raise GeoSSLError(f"--bn {bn}: choose one of {', '.join(BN_MODES)}")
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise GeoSSLError("the train split has fewer images than one --batch-size batch")
    model = new_classifier(resnet, n_classes, seed).to(device)
    before = {k: v.cpu() for k, v in snapshot(model).items() if not k.startswith("fc.")}
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, LrFactor(schedule, epochs * steps_per_epoch))
    step, losses = 0, []
    for epoch in range(epochs):
        model.train(bn == "train")  # "frozen": GASSL's model.eval() while training (module doc)
        train_loader.set_epoch(epoch)
        total, seen = 0.0, 0
        for batch in progress(train_loader, total=steps_per_epoch, desc=f"finetune {epoch + 1}/{epochs}"):
            images = batch["views"][:, 0].to(device, non_blocking=True)
            target = _labels(batch["category"], n_classes).to(device)
            loss = F.cross_entropy(model(images), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            total, seen = total + loss.item() * len(target), seen + len(target)
            if max_steps and step >= max_steps:
                break
        losses.append(total / max(1, seen))
        if max_steps and step >= max_steps:
            break
    # class probabilities of every val image (extract_features: eval mode, max_samples, keys)
    val = extract_features(
        nn.Sequential(model, nn.Softmax(dim=1)), val_batches, device, max_val, False, "val"
    )
    if len(val.labels) == 0:
        raise GeoSSLError("the val split has no images to score")
    require_labels(val)
    after = model.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k].cpu())]
    result = classification_report(val.feats, val.labels, val.keys)
    result.update(
        reported="last-epoch",
        reported_why="scored once after the last epoch: picking the best epoch on the scored split "
        "(GASSL's best_acc1) would tune on the test set",
        steps=step,
        epochs_run=len(losses),
        steps_per_epoch=steps_per_epoch,
        n_val=len(val.labels),
        n_classes=n_classes,
        train_loss_first=losses[0],
        train_loss_last=losses[-1],
        backbone_tensors_changed=len(changed),
        backbone_tensors=len(before),
    )
    return result
