"""Classification figures of every evaluation (kNN, linear probe, fine-tuning), computed in one place.

The paper reports top-1 and macro F1 (GASSL Table 1) and, for fMoW, a per-location accuracy where all
views of a location vote (Table 2; GASSL's main_lincls_fmow_temporal_cls.py). Here:

- macro F1: per class 2 TP / (2 TP + FP + FN), averaged over the classes that occur in the labels or
  the predictions: sklearn's `f1_score(average="macro")` with its default labels and zero_division (a
  class never predicted, or predicted but never true, counts as F1 0), which is what GASSL printed
  (`precision_recall_fscore_support(average="macro")`).
- per-location vote: the mean of the views' class probabilities (softmax of logits; kNN's normalised
  vote weights), then argmax. GASSL summed the softmax scores, which has the same argmax. Probabilities,
  not summed logits: each view gets one bounded vote, so one view with large logits cannot outvote the
  others on its own.
- A location is the part of an eval_loader key before its last '/' (all_views=True gives
  "{sample key}/{NN}" per view). Where no location has two views (GeoImageNet, or all_views=False) the
  per-location figure is None: it would only repeat top-1.

Lives in models/ (not evaluation/) because models/knn.py, under the trainer, reports it too.
"""

from __future__ import annotations

from typing import Any

import torch


def macro_f1(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Macro F1 (%) of predicted vs true class indices (1-D int tensors of one length)."""
    if len(labels) == 0:
        return float("nan")
    n = int(max(pred.max(), labels.max())) + 1
    tp = torch.bincount(labels[pred == labels], minlength=n).double()
    predicted = torch.bincount(pred, minlength=n).double()
    true = torch.bincount(labels, minlength=n).double()
    occurs = (predicted + true) > 0
    f1 = 2 * tp[occurs] / (predicted[occurs] + true[occurs])  # 2TP / (2TP + FP + FN)
    return f1.mean().item() * 100


def location_of(key: str) -> str:
    """The location of an eval_loader key: "{sample key}/{NN}" per view, the sample key otherwise."""
    return key.rsplit("/", 1)[0] if "/" in key else key


def location_vote(
    probs: torch.Tensor, labels: torch.Tensor, keys: list[str]
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(predicted class, true class) per location from the mean of its views' probabilities, and the
    number of locations with more than one view."""
    index: dict[str, int] = {}
    ids = torch.tensor([index.setdefault(location_of(k), len(index)) for k in keys], dtype=torch.long)
    total = torch.zeros(len(index), probs.shape[1], dtype=torch.float64)
    total.index_add_(0, ids, probs.double())
    views = torch.bincount(ids, minlength=len(index))
    loc_labels = torch.empty(len(index), dtype=torch.long)
    loc_labels[ids] = labels.long()  # every view of a location has the location's category
    return (total / views[:, None]).argmax(1), loc_labels, int((views > 1).sum())


def classification_report(probs: torch.Tensor, labels: torch.Tensor, keys: list[str] | None = None) -> dict:
    """top1, top5, macro_f1 (%) per image, and per_location_top1 / per_location_macro_f1 (views vote;
    None where no location has several views). `probs`: N x C class scores that sum to 1 per row."""
    if len(labels) == 0:
        raise ValueError("no labelled images to score")
    labels = labels.long()
    top = probs.topk(min(5, probs.shape[1]), dim=1).indices
    pred = top[:, 0]
    out: dict[str, Any] = {
        "top1": (pred == labels).double().mean().item() * 100,
        "top5": (top == labels[:, None]).any(1).double().mean().item() * 100,
        "macro_f1": macro_f1(pred, labels),
        "per_location_top1": None,
        "per_location_macro_f1": None,
    }
    if keys is not None and len(keys) == len(labels) and all(keys):  # "" = a loader without keys
        loc_pred, loc_labels, multi = location_vote(probs, labels, keys)
        out.update(locations=len(loc_labels), multi_view_locations=multi)
        if multi:
            out.update(
                per_location_top1=(loc_pred == loc_labels).double().mean().item() * 100,
                per_location_macro_f1=macro_f1(loc_pred, loc_labels),
            )
    return out


def format_report(result: dict) -> str:
    """'top-1: 61.20%, macro F1: 55.00%, per-location top-1: 66.10%' (n/a where it does not apply)."""
    loc = result.get("per_location_top1")
    where = f"{loc:.2f}%" if loc is not None else "n/a (one view per location)"
    return f"top-1: {result['top1']:.2f}%, macro F1: {result['macro_f1']:.2f}%, per-location top-1: {where}"
